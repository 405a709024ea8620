"""Inference and training speed of RepVGG on this machine, every row measured in the same run.

    python benchmarks/speed.py                      # A0 and B0, batch 1 and 8, 224x224
    python benchmarks/speed.py --archs RepVGG-A0 --batches 8 --threads 2
    python benchmarks/speed.py --int8_types --min_iters 30   # which INT8 types ONNX Runtime runs fastest

Rows: MindSpore train form and deploy form (GRAPH mode), each with MindSpore's own Conv2D and
with the oneDNN direct kernel of src/tools/deployment/onednn (``+onednn``), ONNX Runtime on the exported
deploy ONNX in fp32 and statically quantized to INT8 (``onnxruntime-int8``: export.py --quantize int8's
quantization, calibrated on 16 random images, as speed does not depend on the calibration data; the
INT8 / fp32 ratio is measured once more with both sessions in one process taking turns), and
PyTorch eager on the reparameterized model when torch is installed (timm's
``repvgg_*`` + ``reparameterize_model`` when timm imports, else the same plain 3x3 conv + ReLU
stack written here); then training images/s (forward, backward, momentum update). Each case runs
in its own process, so the peak resident memory (VmHWM) is that case's alone. The same seeded
input feeds every case. Not a test: it prints figures and asserts nothing.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

INFERENCE_CASES = ('ms-train', 'ms-train+onednn', 'ms-deploy', 'ms-deploy+onednn', 'onnxruntime', 'onnxruntime-int8',
                   'torch-eager')
TRAINING_CASES = ('ms-train-step', 'torch-train-step')


def peak_rss_mb():
    """Peak resident memory of this process (VmHWM), MiB."""
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024
    return float('nan')


def images(batch, size):
    return np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)


def timed(step, batch, min_iters, min_seconds):
    """Images per second of ``step`` after two warm-up calls (the first one compiles)."""
    step()
    step()
    iters, start = 0, time.perf_counter()
    while iters < min_iters or time.perf_counter() - start < min_seconds:
        step()
        iters += 1
    return batch * iters / (time.perf_counter() - start)


# ----------------------------------------------------------------------------- MindSpore
def mindspore_step(case, arch, batch, size, threads, jit_level=''):
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    from mindspore import Tensor, nn  # pylint: disable=import-outside-toplevel
    from src.repvgg import create_model  # pylint: disable=import-outside-toplevel
    from src.tools.base.device import set_device  # pylint: disable=import-outside-toplevel
    set_device('CPU', cpu_threads=threads)  # 0: MindSpore's own thread count
    if jit_level:
        ms.set_context(jit_config={'jit_level': jit_level})
    x = Tensor(images(batch, size))
    if case == 'ms-train-step':
        net = create_model(arch, num_classes=1000)
        loss_net = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction='mean'))
        optimizer = nn.Momentum(net.trainable_params(), learning_rate=0.01, momentum=0.9)
        train_step = nn.TrainOneStepCell(loss_net, optimizer)
        train_step.set_train(True)
        labels = Tensor(np.arange(batch, dtype=np.int32) % 1000)
        return lambda: train_step(x, labels).asnumpy()
    net = create_model(arch, deploy=case.startswith('ms-deploy'))
    net.set_train(False)
    if case.endswith('+onednn'):
        from src.tools.deployment.onednn.kernel import use_onednn_convs  # pylint: disable=import-outside-toplevel
        use_onednn_convs(net)
    return lambda: net(x).asnumpy()


def onnx_step(onnx_path, batch, size, threads, level='ORT_ENABLE_ALL'):
    import onnxruntime as ort  # pylint: disable=import-outside-toplevel
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(threads, 0)  # 0: ONNX Runtime's default
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    session = ort.InferenceSession(onnx_path, options, providers=['CPUExecutionProvider'])
    name, x = session.get_inputs()[0].name, images(batch, size)
    return lambda: session.run(None, {name: x})


# ----------------------------------------------------------------------------- PyTorch
def torch_model(arch, deploy):
    """(model, label): timm's model when timm imports, else the same layers written in PyTorch."""
    try:
        import timm  # pylint: disable=import-outside-toplevel
        from timm.utils.model import reparameterize_model  # pylint: disable=import-outside-toplevel
        model = timm.create_model(arch.lower().replace('-', '_'), pretrained=False).eval()
        return (reparameterize_model(model) if deploy else model), f'timm {timm.__version__}'
    except ImportError:
        pass
    if deploy:
        return plain_torch_stack(arch), 'plain conv+ReLU stack'
    from src.repvgg import ARCH_SPECS  # pylint: disable=import-outside-toplevel
    from benchmarks.torch_repvgg import TorchRepVGG  # pylint: disable=import-outside-toplevel
    return TorchRepVGG(*ARCH_SPECS[arch], num_classes=1000), 'official-layout PyTorch model'


def plain_torch_stack(arch):
    """The deploy-form RepVGG in PyTorch: the layers of timm's reparameterized model."""
    import torch  # pylint: disable=import-outside-toplevel
    from src.repvgg import create_model  # pylint: disable=import-outside-toplevel
    ms_net = create_model(arch, deploy=True)
    layers = []
    blocks = ms_net.blocks()
    if any(block.use_se for block in blocks):
        raise ValueError('the plain stack has no SE; install timm for D2se')
    for block in blocks:
        layers += [torch.nn.Conv2d(block.in_channels, block.out_channels, 3, block.stride, 1,
                                   groups=block.groups), torch.nn.ReLU()]
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(blocks[-1].out_channels, 1000)]
    return torch.nn.Sequential(*layers).eval()


def torch_step(case, arch, batch, size, threads):
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(threads)
    x = torch.from_numpy(images(batch, size))
    if case == 'torch-train-step':
        model, label = torch_model(arch, deploy=False)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        labels = torch.arange(batch) % 1000

        def step():
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), labels).backward()
            optimizer.step()
        return step, label
    model, label = torch_model(arch, deploy=True)

    def infer():
        with torch.no_grad():
            model(x)
    return infer, label


# ----------------------------------------------------------------------------- one case (child process)
def run_profile(args):
    """One timed forward after warm-up, between markers, so that oneDNN's verbose lines
    (DNNL_VERBOSE=1, set by the parent) of that forward alone can be summed."""
    step = mindspore_step(args.case.replace('-profile', ''), args.arch, args.batch, args.image_size, args.threads)
    step()
    step()
    print('PROFILE-BEGIN', flush=True)
    begin = time.perf_counter()
    step()
    print(f'PROFILE-END {1000 * (time.perf_counter() - begin):.1f}', flush=True)


def onednn_breakdown(case, arch, batch, args):
    """(forward ms, forward ms while oneDNN logs, {oneDNN primitive and implementation: (calls, ms)})
    of one MindSpore forward. Logging can slow oneDNN down, so the forward is timed once more
    without it."""
    command = [sys.executable, __file__, '--case', case, '--arch', arch, '--batch', str(batch),
               '--image_size', str(args.image_size), '--threads', str(args.threads)]
    results = []
    for verbose in ('0', '1'):
        out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False,
                             env=child_env(args.threads, DNNL_VERBOSE=verbose)).stdout
        results.append(out.splitlines())
    plain, logged = results
    wall = float(next(line for line in plain if line.startswith('PROFILE-END')).split()[1])
    begin = logged.index('PROFILE-BEGIN')
    end = next(i for i, line in enumerate(logged) if line.startswith('PROFILE-END'))
    totals = {}
    for line in logged[begin + 1:end]:
        fields = line.split(',')
        if len(fields) > 5 and fields[1] == 'exec':
            key = f'{fields[3]} ({fields[4]})'
            calls, ms_total = totals.get(key, (0, 0.0))
            totals[key] = (calls + 1, ms_total + float(fields[-1]))
    return wall, float(logged[end].split()[1]), totals


def child_env(threads, **extra):
    """Environment of a child case: the oneDNN kernel's thread pool gets the same thread count as the
    frameworks (0: each library's own default)."""
    env = dict(os.environ, **extra)
    if threads > 0:
        env['REPVGG_ONEDNN_THREADS'] = str(threads)
    return env


def run_case(args):
    note = ''
    if args.case.endswith('-profile'):
        run_profile(args)
        return
    if args.case.startswith('ms-'):
        step = mindspore_step(args.case, args.arch, args.batch, args.image_size, args.threads, args.jit_level)
    elif args.case.startswith('onnxruntime'):
        step = onnx_step(args.onnx, args.batch, args.image_size, args.threads, args.ort_level)
    else:
        try:
            step, note = torch_step(args.case, args.arch, args.batch, args.image_size, args.threads)
        except ImportError:
            step, note = None, 'torch not installed'
    if step is None:
        print(json.dumps({'skipped': note}))
        return
    speed = timed(step, args.batch, args.min_iters, args.min_seconds)
    print(json.dumps({'images_per_s': speed, 'peak_rss_mb': peak_rss_mb(), 'note': note}))


def child(case, arch, batch, args, onnx_path='', threads=None, jit_level='', ort_level='ORT_ENABLE_ALL'):
    command = [sys.executable, __file__, '--case', case, '--arch', arch, '--batch', str(batch),
               '--image_size', str(args.image_size), '--threads', str(args.threads if threads is None else threads),
               '--min_iters', str(args.min_iters), '--min_seconds', str(args.min_seconds), '--onnx', onnx_path,
               '--jit_level', jit_level, '--ort_level', ort_level]
    env = child_env(args.threads if threads is None else threads)
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith('{')]
    if result.returncode or not lines:
        return {'skipped': f'failed: {result.stderr.strip().splitlines()[-1:]}'}
    return json.loads(lines[-1])


def export_onnx(arch, image_size, folder):
    """The deploy-form ONNX of a randomly initialised ``arch`` (speed does not depend on values)."""
    from src.repvgg import create_model  # pylint: disable=import-outside-toplevel
    from src.tools.base.device import set_device  # pylint: disable=import-outside-toplevel
    from src.tools.deployment.export import export_network  # pylint: disable=import-outside-toplevel
    set_device('CPU', graph_mode=True)
    net = create_model(arch, deploy=True)
    net.set_train(False)
    path, _, _ = export_network(net, image_size, 'ONNX', Path(folder) / arch)
    return str(path)


def quantize_int8(onnx_path, image_size, folder, name='int8', **types):
    """The INT8 model of ``onnx_path`` as export.py --quantize int8 writes it, calibrated on 16 random
    images; ``types``: activation_type / reduce_range for the type study."""
    from src.tools.deployment.quantize import quantize_onnx  # pylint: disable=import-outside-toplevel
    path = Path(folder) / f'{Path(onnx_path).stem}-{name}.onnx'
    quantize_onnx(onnx_path, path, images(16, image_size), folder, **types)
    return str(path)


def machine():
    model = next((line.split(':', 1)[1].strip() for line in Path('/proc/cpuinfo').read_text().splitlines()
                  if line.startswith('model name')), 'unknown CPU')
    versions = []
    for package in ('mindspore', 'onnxruntime', 'torch', 'timm'):
        try:
            versions.append(f'{package} {__import__(package).__version__}')
        except ImportError:
            pass
    return f'{model}, {len(os.sched_getaffinity(0))} cores; ' + ', '.join(versions)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--archs', nargs='+', default=['RepVGG-A0', 'RepVGG-B0'])
    parser.add_argument('--batches', nargs='+', type=int, default=[1, 8])
    parser.add_argument('--train_arch', default='RepVGG-A0')
    parser.add_argument('--train_batch', type=int, default=16, help='0: no training rows')
    parser.add_argument('--image_size', type=int, default=224)
    parser.add_argument('--threads', type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument('--min_iters', type=int, default=5)
    parser.add_argument('--min_seconds', type=float, default=2.0)
    parser.add_argument('--repeats', type=int, default=3, help='runs per case; the median is shown')
    parser.add_argument('--case', help=argparse.SUPPRESS)
    parser.add_argument('--arch', help=argparse.SUPPRESS)
    parser.add_argument('--batch', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--study', action='store_true',
                        help='instead of the table: the settings investigated (threads, jit level, ONNX Runtime '
                             'graph optimisation) on the first arch and the largest batch')
    parser.add_argument('--int8_types', action='store_true',
                        help='instead of the table: ONNX Runtime INT8 speed with uint8 or int8 activations, '
                             'reduce_range or not (weights int8 per channel), on the first arch')
    parser.add_argument('--paired_calls', type=int, default=30,
                        help='calls per model of the interleaved INT8 / fp32 ONNX Runtime ratio')
    parser.add_argument('--cases', nargs='+', default=list(INFERENCE_CASES), choices=INFERENCE_CASES,
                        help='inference rows to measure (default: all)')
    parser.add_argument('--onnx', default='', help=argparse.SUPPRESS)
    parser.add_argument('--jit_level', default='', help=argparse.SUPPRESS)
    parser.add_argument('--ort_level', default='ORT_ENABLE_ALL', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_case(args)
        return
    if args.study:
        study(args)
        return
    if args.int8_types:
        int8_types(args)
        return

    print(f'# {machine()}; {args.threads} threads, input {args.image_size}x{args.image_size}, '
          f'median of {args.repeats} runs')
    header = f'{"arch":<10} {"batch":>5}  {"case":<58} {"images/s":>9} {"peak RSS MiB":>13}'
    print(header)
    print('-' * len(header))
    with tempfile.TemporaryDirectory() as folder:
        for arch in args.archs:
            onnx_paths = {}  # exported (and quantized) only for the ONNX Runtime rows asked for
            if {'onnxruntime', 'onnxruntime-int8'} & set(args.cases):
                onnx_paths['onnxruntime'] = export_onnx(arch, args.image_size, folder)
            if 'onnxruntime-int8' in args.cases:
                onnx_paths['onnxruntime-int8'] = quantize_int8(onnx_paths['onnxruntime'], args.image_size, folder)
            for batch in args.batches:
                results = measure(args.cases, arch, batch, args, onnx_paths)
                for case, result in results.items():
                    print_row(arch, batch, case, result)
                print_ratios(results)
                if {'onnxruntime', 'onnxruntime-int8'} <= set(args.cases):
                    print_paired_int8(onnx_paths, batch, args)
    if args.train_batch < 1:
        return
    for case, result in measure(TRAINING_CASES, args.train_arch, args.train_batch, args).items():
        print_row(args.train_arch, args.train_batch, case + ' (training)', result)


def print_ratios(results):
    speed = {case: result.get('images_per_s') for case, result in results.items()}
    ratios = (
        ('MindSpore deploy / train form, MindSpore Conv2D', 'ms-deploy', ('ms-train',)),
        ('MindSpore deploy / train form, oneDNN kernel', 'ms-deploy+onednn', ('ms-train+onednn',)),
        ('MindSpore deploy+onednn / fastest train form', 'ms-deploy+onednn', ('ms-train', 'ms-train+onednn')),
        ('ONNX Runtime / PyTorch eager', 'onnxruntime', ('torch-eager',)),
        ('MindSpore deploy+onednn / PyTorch eager', 'ms-deploy+onednn', ('torch-eager',)),
        ('ONNX Runtime INT8 / ONNX Runtime fp32', 'onnxruntime-int8', ('onnxruntime',)),
        ('ONNX Runtime INT8 / fastest MindSpore deploy', 'onnxruntime-int8', ('ms-deploy', 'ms-deploy+onednn')),
        ('ONNX Runtime INT8 / PyTorch eager', 'onnxruntime-int8', ('torch-eager',)),
    )
    for label, case, baselines in ratios:
        baseline = max((speed.get(b) or 0 for b in baselines), default=0)
        if speed.get(case) and baseline:
            print(f'{"":<17} {label + ":":<48} {speed[case] / baseline:.2f}x')


def print_paired_int8(onnx_paths, batch, args):
    """The INT8 / fp32 ONNX Runtime ratio once more, both sessions in one process taking turns
    (``interleaved_speeds``): the rows above run at different moments, which on a shared machine can
    move a ratio of two rows by tens of percent."""
    speed = interleaved_speeds({case: onnx_paths[case] for case in ('onnxruntime', 'onnxruntime-int8')}, batch,
                               args.image_size, args.threads, args.paired_calls)
    ratio = speed['onnxruntime-int8'] / speed['onnxruntime']
    print(f'{"":<17} {"ONNX Runtime INT8 / fp32, taking turns:":<48} {ratio:.2f}x '
          f'({speed["onnxruntime-int8"]:.1f} / {speed["onnxruntime"]:.1f} images/s, median of {args.paired_calls})')


def measure(cases, arch, batch, args, onnx_paths=None):
    """{case: result} with the median speed of ``args.repeats`` runs, the cases interleaved so
    that a slow spell of a shared machine hits all of them alike. ``onnx_paths``: {case: ONNX file}."""
    runs = {case: [] for case in cases}
    for _ in range(args.repeats):
        for case in cases:
            runs[case].append(child(case, arch, batch, args, (onnx_paths or {}).get(case, '')))
    results = {}
    for case, case_runs in runs.items():
        done = [run for run in case_runs if 'skipped' not in run]
        if not done:
            results[case] = case_runs[0]
            continue
        results[case] = dict(done[0], images_per_s=float(np.median([run['images_per_s'] for run in done])),
                             peak_rss_mb=max(run['peak_rss_mb'] for run in done))
    return results


STUDY = (  # (label, case, child keyword arguments); threads=0 means the library's own default
    ('MindSpore deploy, MindSpore default threads (30)', 'ms-deploy', dict(threads=0)),
    ('MindSpore deploy, one thread per core (the table\'s setting)', 'ms-deploy', {}),
    ('MindSpore deploy, jit_level O1', 'ms-deploy', dict(jit_level='O1')),
    ('MindSpore deploy, jit_level O2', 'ms-deploy', dict(jit_level='O2')),
    ('MindSpore deploy, oneDNN blocked kernel (src/tools/deployment/onednn)', 'ms-deploy+onednn', {}),
    ('MindSpore train form, MindSpore default threads (30)', 'ms-train', dict(threads=0)),
    ('MindSpore train form, one thread per core', 'ms-train', {}),
    ('ONNX Runtime, ORT_ENABLE_BASIC', 'onnxruntime', dict(ort_level='ORT_ENABLE_BASIC')),
    ('ONNX Runtime, ORT_ENABLE_EXTENDED', 'onnxruntime', dict(ort_level='ORT_ENABLE_EXTENDED')),
    ('ONNX Runtime, ORT_ENABLE_ALL (the default)', 'onnxruntime', {}),
    ('ONNX Runtime, ORT_ENABLE_ALL, 1 thread', 'onnxruntime', dict(threads=1)),
)


def study(args):
    """One row per setting, interleaved over repeats, medians (see STUDY)."""
    arch, batch = args.archs[0], max(args.batches)
    print(f'# {machine()}; {arch}, batch {batch}, input {args.image_size}x{args.image_size}, '
          f'median of {args.repeats} runs')
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = export_onnx(arch, args.image_size, folder)
        runs = {label: [] for label, _, _ in STUDY}
        for _ in range(args.repeats):
            for label, case, kwargs in STUDY:
                runs[label].append(child(case, arch, batch, args, onnx_path, **kwargs).get('images_per_s'))
    for label, speeds in runs.items():
        speeds = [speed for speed in speeds if speed]
        print(f'{label:<60} {np.median(speeds) if speeds else float("nan"):>8.1f} images/s')
    print(f'\n# Where one MindSpore forward spends its time (oneDNN verbose, {arch}, batch {batch})')
    for case in ('ms-train-profile', 'ms-deploy-profile', 'ms-deploy+onednn-profile'):
        wall, logged, totals = onednn_breakdown(case, arch, batch, args)
        inside = sum(ms_total for _, ms_total in totals.values())
        print(f'{case.replace("-profile", ""):<16} forward {wall:6.1f} ms; while oneDNN logs: forward {logged:6.1f} ms, '
              f'in oneDNN {inside:6.1f} ms, elsewhere (bias, ReLU, adds, ...) {logged - inside:5.1f} ms')
        for key, (calls, ms_total) in sorted(totals.items(), key=lambda item: -item[1][1]):
            print(f'{"":<18}{key:<40} {calls:>4} calls {ms_total:8.1f} ms')


INT8_TYPES = (  # (label, quantize_onnx keyword arguments); weights are always int8, per channel
    ('uint8 activations (U8S8)', dict(activation_type='uint8', reduce_range=False)),
    ('int8 activations (S8S8)', dict(activation_type='int8', reduce_range=False)),
    ('uint8 activations, reduce_range', dict(activation_type='uint8', reduce_range=True)),
    ('int8 activations, reduce_range', dict(activation_type='int8', reduce_range=True)),
)


def interleaved_speeds(paths, batch, image_size, threads, calls, block=5):
    """{label: images/s} of the ONNX files ``paths`` ({label: path}) in ONNX Runtime, all sessions in this
    process taking turns in blocks of ``block`` timed calls, so that a slow spell of a shared machine hits
    every model alike; each figure is batch / median call time over ``calls`` calls. Each block starts
    with one untimed call: a model that follows another finds the caches full of the other's weights
    (taking turns call by call measured INT8 / fp32 at 2.67x where blocks of 3 and 6 gave 3.17x and
    3.29x, RepVGG-A0 batch 8)."""
    import onnxruntime as ort  # pylint: disable=import-outside-toplevel
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(threads, 0)
    # Each session's thread pool spins after its work; with two sessions in one process the idle
    # one's spinning threads take cores from the other. Measured (RepVGG-A0, batch 1, 2 cores):
    # 81 / 162 images/s fp32 / INT8 with spinning, 143 / 393 without; at batch 8 the same either way.
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    sessions = {label: ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
                for label, path in paths.items()}
    feed = images(batch, image_size)
    times = {label: [] for label in sessions}
    for _ in range(max(1, calls // block)):
        for label, session in sessions.items():
            for index in range(1 + block):
                begin = time.perf_counter()
                session.run(None, {session.get_inputs()[0].name: feed})
                if index:
                    times[label].append(time.perf_counter() - begin)
    return {label: batch / float(np.median(calls_)) for label, calls_ in times.items()}


def int8_types(args):
    """ONNX Runtime INT8 images/s per activation type (the choice in src/tools/deployment/quantize.py),
    fp32 beside them, measured by ``interleaved_speeds``."""
    arch = args.archs[0]
    with tempfile.TemporaryDirectory() as folder:
        fp32 = export_onnx(arch, args.image_size, folder)
        paths = {'fp32 (no quantization)': fp32}
        for index, (label, types) in enumerate(INT8_TYPES):
            paths[label] = quantize_int8(fp32, args.image_size, folder, name=f'types{index}', **types)
        print(f'# {machine()}; {arch}, input {args.image_size}x{args.image_size}, {args.threads} threads; '
              f'QDQ, per-channel int8 weights; batch / median of {args.min_iters} calls, models taking turns')
        print(f'{"model":<36}' + ''.join(f'{f"batch {batch}":>12}' for batch in args.batches) + '   images/s')
        speeds = [interleaved_speeds(paths, batch, args.image_size, args.threads, args.min_iters)
                  for batch in args.batches]
    for label in paths:
        print(f'{label:<36}' + ''.join(f'{by_label[label]:>12.1f}' for by_label in speeds))


def print_row(arch, batch, case, result):
    label = case + (f' [{result["note"]}]' if result.get('note') else '')
    if 'skipped' in result:
        print(f'{arch:<10} {batch:>5}  {case:<58} skipped: {result["skipped"]}')
    else:
        print(f'{arch:<10} {batch:>5}  {label:<58} {result["images_per_s"]:>9.1f} {result["peak_rss_mb"]:>13.0f}')


if __name__ == '__main__':
    main()
