"""Inference and training speed of RepVGG on this CPU, every row measured in the same run.

    python benchmarks/speed.py                      # A0 and B0, batch 1 and 8, 224x224, every row
    python benchmarks/speed.py --archs RepVGG-A0 --batches 8 --rows openvino-bf16 onnxruntime-fp32
    python benchmarks/speed.py --study              # the settings that matter: threads, batch, thread pools
    python benchmarks/speed.py --int8_types         # which INT8 types ONNX Runtime runs fastest

Rows (ROWS): the deploy ONNX export in ONNX Runtime and in OpenVINO (the engine of eval.py and
infer.py on CPU, src/tools/deployment/openvino_engine.py) in fp32, bf16 (CPUs with AMX or
AVX512_BF16) and INT8 (the file export.py --quantize int8 writes, calibrated here on 16 random
images: speed does not depend on the calibration data); MindSpore's train and deploy forms (GRAPH
mode); PyTorch eager on the reparameterized model (timm's ``repvgg_*`` + ``reparameterize_model``
when timm imports, else the same plain 3x3 conv + ReLU stack written here) in fp32 and under bf16
autocast; then training images/s (forward, backward, momentum update) in MindSpore and PyTorch.

Each row runs in its own process, so its peak resident memory (VmHWM) is its own; the rows take
turns over ``--repeats`` rounds and the median is shown, so that a slow spell of a shared machine
hits every row alike. Ratios are within the run: every row against ONNX Runtime fp32, and the
pairs of RATIOS. The header names the CPU and the instruction sets that decide these numbers. The
same seeded input feeds every row. Not a test: it prints figures and asserts nothing.
"""
import argparse
import contextlib
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

ROWS = ('onnxruntime-fp32', 'onnxruntime-int8', 'openvino-fp32', 'openvino-bf16', 'openvino-int8',
        'ms-train', 'ms-deploy', 'torch-fp32', 'torch-bf16')
TRAINING_ROWS = ('ms-train-step', 'torch-train-step')
BASELINE = 'onnxruntime-fp32'
RATIOS = (  # (label, row, baseline row): printed under each block
    ('OpenVINO bf16 / OpenVINO fp32', 'openvino-bf16', 'openvino-fp32'),
    ('OpenVINO INT8 / OpenVINO fp32', 'openvino-int8', 'openvino-fp32'),
    ('ONNX Runtime INT8 / ONNX Runtime fp32', 'onnxruntime-int8', 'onnxruntime-fp32'),
    ('OpenVINO INT8 / ONNX Runtime INT8', 'openvino-int8', 'onnxruntime-int8'),
    ('MindSpore deploy / train form', 'ms-deploy', 'ms-train'),
    ('PyTorch bf16 autocast / PyTorch fp32', 'torch-bf16', 'torch-fp32'),
    ('OpenVINO bf16 / PyTorch bf16 autocast', 'openvino-bf16', 'torch-bf16'),
)
ONNX_FILES = {'onnxruntime-fp32': 'fp32', 'openvino-fp32': 'fp32', 'openvino-bf16': 'fp32',
              'onnxruntime-int8': 'int8', 'openvino-int8': 'int8'}  # the file each ONNX row runs


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


# ----------------------------------------------------------------------------- one row (child process)
def mindspore_step(row, arch, batch, size, threads):
    from mindspore import Tensor, nn

    from src.repvgg import create_model
    from src.tools.base.device import set_device
    set_device('CPU', cpu_threads=threads)  # 0: MindSpore's own thread count
    x = Tensor(images(batch, size))
    if row == 'ms-train-step':
        net = create_model(arch, num_classes=1000)
        loss_net = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction='mean'))
        train_step = nn.TrainOneStepCell(loss_net, nn.Momentum(net.trainable_params(), learning_rate=0.01,
                                                               momentum=0.9))
        train_step.set_train(True)
        labels = Tensor(np.arange(batch, dtype=np.int32) % 1000)
        return lambda: train_step(x, labels).asnumpy()
    net = create_model(arch, deploy=row == 'ms-deploy')
    net.set_train(False)
    return lambda: net(x).asnumpy()


def onnxruntime_session(onnx_path, threads, spinning=True):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(threads, 0)  # 0: ONNX Runtime's default, one per core
    if not spinning:
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    return ort.InferenceSession(onnx_path, options, providers=['CPUExecutionProvider'])


def onnxruntime_step(onnx_path, batch, size, threads):
    session = onnxruntime_session(onnx_path, threads)
    name, x = session.get_inputs()[0].name, images(batch, size)
    return lambda: session.run(None, {name: x})


def openvino_step(onnx_path, precision, batch, size, threads):
    """The project's OpenVINO loader, as infer.py runs it; (step, what ran)."""
    from src.tools.deployment.openvino_engine import load_openvino
    predictor = load_openvino(onnx_path, batch, size, precision, threads)
    x = images(batch, size)
    return lambda: predictor(x), predictor.precision


def torch_model(arch, deploy):
    """(model, label): timm's model when timm imports, else the same layers written in PyTorch."""
    try:
        import timm
        from timm.utils.model import reparameterize_model
        model = timm.create_model(arch.lower().replace('-', '_'), pretrained=False).eval()
        return (reparameterize_model(model) if deploy else model), f'timm {timm.__version__}'
    except ImportError:
        pass
    if deploy:
        return plain_torch_stack(arch), 'plain conv+ReLU stack'
    from benchmarks.torch_repvgg import TorchRepVGG
    from src.repvgg import ARCH_SPECS
    return TorchRepVGG(*ARCH_SPECS[arch], num_classes=1000), 'official-layout PyTorch model'


def plain_torch_stack(arch):
    """The deploy-form RepVGG in PyTorch: the layers of timm's reparameterized model."""
    import torch

    from src.repvgg import create_model
    blocks = create_model(arch, deploy=True).blocks()
    if any(block.use_se for block in blocks):
        raise ValueError('the plain stack has no SE; install timm for D2se')
    layers = []
    for block in blocks:
        layers += [torch.nn.Conv2d(block.in_channels, block.out_channels, 3, block.stride, 1,
                                   groups=block.groups), torch.nn.ReLU()]
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(blocks[-1].out_channels, 1000)]
    return torch.nn.Sequential(*layers).eval()


def torch_step(row, arch, batch, size, threads):
    """(step, label) of a PyTorch row."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    x = torch.from_numpy(images(batch, size))
    if row == 'torch-train-step':
        model, label = torch_model(arch, deploy=False)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        labels = torch.arange(batch) % 1000

        def train_step():
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), labels).backward()
            optimizer.step()
        return train_step, label
    model, label = torch_model(arch, deploy=True)
    bf16 = row == 'torch-bf16'

    def infer():
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            model(x)
    return infer, label


def crowd(onnx_path, arch, size, threads):
    """Load and run, once, a MindSpore network and an ONNX Runtime session in this process, as a
    script that keeps both around would (the --study row 'in one process with MindSpore and ONNX Runtime')."""
    mindspore_step('ms-deploy', arch, 1, size, threads)()
    onnxruntime_step(onnx_path, 1, size, threads)()


def run_row(args):
    """Measure one row in this process and print its result as one JSON line."""
    from src.tools.base.cli import UserError
    note = ''
    try:
        if args.crowded:
            crowd(args.onnx, args.arch, args.image_size, args.threads)
        if args.row.startswith('ms-'):
            step = mindspore_step(args.row, args.arch, args.batch, args.image_size, args.threads)
        elif args.row.startswith('onnxruntime'):
            step = onnxruntime_step(args.onnx, args.batch, args.image_size, args.threads)
        elif args.row.startswith('openvino'):
            precision = 'bf16' if args.row == 'openvino-bf16' else 'fp32'
            step, note = openvino_step(args.onnx, precision, args.batch, args.image_size, args.threads)
        else:
            step, note = torch_step(args.row, args.arch, args.batch, args.image_size, args.threads)
    except ImportError as error:
        print(json.dumps({'skipped': f'{error.name or error} not installed'}))
        return
    except (UserError, RuntimeError, ValueError) as error:  # a row that cannot run here, e.g. bf16
        print(json.dumps({'skipped': str(error).strip().splitlines()[0]}))
        return
    speed = timed(step, args.batch, args.min_iters, args.min_seconds)
    print(json.dumps({'images_per_s': speed, 'peak_rss_mb': peak_rss_mb(), 'note': note}))


# ----------------------------------------------------------------------------- the table (parent process)
def child(row, arch, batch, args, onnx_path='', threads=None, crowded=False):
    """The result of ``row`` measured in a new process: {'images_per_s', 'peak_rss_mb', 'note'} or {'skipped'}."""
    threads = args.threads if threads is None else threads
    command = [sys.executable, __file__, '--row', row, '--arch', arch, '--batch', str(batch),
               '--image_size', str(args.image_size), '--threads', str(threads), '--min_iters', str(args.min_iters),
               '--min_seconds', str(args.min_seconds), '--onnx', onnx_path] + (['--crowded'] if crowded else [])
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False,
                            env=dict(os.environ, GLOG_v='3'))
    lines = [line for line in result.stdout.splitlines() if line.startswith('{')]
    if result.returncode or not lines:
        return {'skipped': f'failed: {result.stderr.strip().splitlines()[-1:]}'}
    return json.loads(lines[-1])


def measure(cases, args):
    """{label: result} of ``cases`` ({label: child() keyword arguments}), taking turns over
    ``args.repeats`` rounds: the median speed, the largest peak memory."""
    runs = {label: [] for label in cases}
    for _ in range(args.repeats):
        for label, kwargs in cases.items():
            runs[label].append(child(args=args, **kwargs))
    results = {}
    for label, done in runs.items():
        measured = [run for run in done if 'skipped' not in run]
        results[label] = done[0] if not measured else dict(
            measured[0], images_per_s=float(np.median([run['images_per_s'] for run in measured])),
            peak_rss_mb=max(run['peak_rss_mb'] for run in measured))
    return results


def export_onnx(arch, image_size, folder):
    """The deploy-form ONNX of a randomly initialised ``arch`` (speed does not depend on values)."""
    from src.repvgg import create_model
    from src.tools.base.device import set_device
    from src.tools.deployment.export import export_network
    set_device('CPU', graph_mode=True)
    net = create_model(arch, deploy=True)
    net.set_train(False)
    path, _, _ = export_network(net, image_size, 'ONNX', Path(folder) / arch)
    return str(path)


def quantize_int8(onnx_path, image_size, folder, name='int8', **types):
    """The INT8 model of ``onnx_path`` as export.py --quantize int8 writes it, calibrated on 16 random
    images; ``types``: activation_type / reduce_range for the type study."""
    from src.tools.deployment.quantize import quantize_onnx
    path = Path(folder) / f'{Path(onnx_path).stem}-{name}.onnx'
    quantize_onnx(onnx_path, path, images(16, image_size), folder, **types)
    return str(path)


def onnx_files(rows, arch, image_size, folder):
    """{'fp32': path, 'int8': path} of the ONNX files ``rows`` run (only those asked for)."""
    kinds = {ONNX_FILES[row] for row in rows if row in ONNX_FILES}
    files = {'fp32': export_onnx(arch, image_size, folder)} if kinds else {}
    if 'int8' in kinds:
        files['int8'] = quantize_int8(files['fp32'], image_size, folder)
    return files


def machine():
    """The CPU with the instruction sets that decide these numbers, and the versions that ran."""
    from src.tools.deployment.openvino_engine import cpu_features, import_openvino
    versions = [f'openvino {import_openvino().get_version().split("-")[0]}']
    for package in ('onnxruntime', 'mindspore', 'torch', 'timm'):
        with contextlib.suppress(ImportError):
            versions.append(f'{package} {__import__(package).__version__}')
    return f'{cpu_features()}; {len(os.sched_getaffinity(0))} CPUs; ' + ', '.join(versions)


def print_block(arch, batch, results):
    base = results.get(BASELINE, {}).get('images_per_s')
    for row, result in results.items():
        label = row + (f' [{result["note"]}]' if result.get('note') else '')
        if 'skipped' in result:
            print(f'{arch:<10} {batch:>5}  {row:<58} skipped: {result["skipped"]}')
            continue
        speed = result['images_per_s']
        versus = f'{speed / base:.2f}x' if base else '-'
        print(f'{arch:<10} {batch:>5}  {label:<58} {speed:>9.1f} {versus:>8} {result["peak_rss_mb"]:>9.0f}')
    for label, row, baseline in RATIOS:
        speed, over = (results.get(name, {}).get('images_per_s') for name in (row, baseline))
        if speed and over:
            print(f'{"":<17} {label + ":":<58} {speed / over:.2f}x')


def table(args):
    print(f'# {machine()}')
    print(f'# input {args.image_size}x{args.image_size}, {args.threads or "all"} threads per engine, median of '
          f'{args.repeats} runs taking turns; "vs ORT" = images/s / ONNX Runtime fp32 images/s')
    header = f'{"arch":<10} {"batch":>5}  {"row":<58} {"images/s":>9} {"vs ORT":>8} {"peak MiB":>9}'
    print(header)
    print('-' * len(header))
    with tempfile.TemporaryDirectory() as folder:
        for arch in args.archs:
            files = onnx_files(args.rows, arch, args.image_size, folder)
            for batch in args.batches:
                cases = {row: {'row': row, 'arch': arch, 'batch': batch,
                               'onnx_path': files.get(ONNX_FILES.get(row), '')}
                         for row in args.rows}
                print_block(arch, batch, measure(cases, args))
    if args.train_batch:
        cases = {row: {'row': row, 'arch': args.archs[0], 'batch': args.train_batch} for row in TRAINING_ROWS}
        results = measure(cases, args)
        print_block(args.archs[0], args.train_batch, {f'{row} (training)': result for row, result in results.items()})


# ----------------------------------------------------------------------------- settings investigated
def study_cases(arch, batch, files):
    """{label: child() keyword arguments}: the settings docs/performance.md discusses."""
    fp32 = files['fp32']
    common = {'arch': arch, 'onnx_path': fp32}
    return {
        f'OpenVINO bf16, batch {batch}, one thread per CPU (the default)':
            dict(common, row='openvino-bf16', batch=batch),
        f'OpenVINO bf16, batch {batch}, 1 thread': dict(common, row='openvino-bf16', batch=batch, threads=1),
        'OpenVINO bf16, batch 1': dict(common, row='openvino-bf16', batch=1),
        'OpenVINO bf16, batch 32': dict(common, row='openvino-bf16', batch=32),
        'OpenVINO fp32, batch 32': dict(common, row='openvino-fp32', batch=32),
        f'OpenVINO bf16, batch {batch}, in one process with MindSpore and ONNX Runtime': dict(
            common, row='openvino-bf16', batch=batch, crowded=True),
        f'ONNX Runtime fp32, batch {batch}, one thread per CPU (its default)': dict(
            common, row='onnxruntime-fp32', batch=batch),
        f'ONNX Runtime fp32, batch {batch}, 1 thread': dict(common, row='onnxruntime-fp32', batch=batch, threads=1),
        f'MindSpore deploy, batch {batch}, MindSpore default threads (30)': dict(
            common, row='ms-deploy', batch=batch, threads=0),
        f'MindSpore deploy, batch {batch}, one thread per CPU': dict(common, row='ms-deploy', batch=batch),
    }


def study(args):
    """One line per setting of ``study_cases``, taking turns over the repeats, medians."""
    arch, batch = args.archs[0], max(args.batches)
    print(f'# {machine()}')
    print(f'# {arch}, input {args.image_size}x{args.image_size}, median of {args.repeats} runs taking turns')
    with tempfile.TemporaryDirectory() as folder:
        results = measure(study_cases(arch, batch, onnx_files(['onnxruntime-fp32'], arch, args.image_size, folder)),
                          args)
    for label, result in results.items():
        speed = f'{result["images_per_s"]:8.1f} images/s' if 'images_per_s' in result else result['skipped']
        print(f'{label:<78} {speed}')


INT8_TYPES = (  # (label, quantize_onnx keyword arguments); weights are always int8, per channel
    ('uint8 activations (U8S8)', {'activation_type': 'uint8', 'reduce_range': False}),
    ('int8 activations (S8S8)', {'activation_type': 'int8', 'reduce_range': False}),
    ('uint8 activations, reduce_range', {'activation_type': 'uint8', 'reduce_range': True}),
    ('int8 activations, reduce_range', {'activation_type': 'int8', 'reduce_range': True}),
)


def interleaved_speeds(paths, batch, image_size, threads, calls, block=5):
    """{label: images/s} of the ONNX files ``paths`` ({label: path}) in ONNX Runtime, all sessions in this
    process taking turns in blocks of ``block`` timed calls, so that a slow spell of a shared machine hits
    every model alike; each figure is batch / median call time over ``calls`` calls. Each block starts
    with one untimed call: a model that follows another finds the caches full of the other's weights.
    Spinning is off: the idle sessions' spinning threads would take the cores of the running one."""
    sessions = {label: onnxruntime_session(path, threads, spinning=False) for label, path in paths.items()}
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
        print(f'# {machine()}; {arch}, input {args.image_size}x{args.image_size}, {args.threads or "all"} threads; '
              f'QDQ, per-channel int8 weights; batch / median of {args.min_iters} calls, models taking turns')
        print(f'{"model":<36}' + ''.join(f'{f"batch {batch}":>12}' for batch in args.batches) + '   images/s')
        speeds = [interleaved_speeds(paths, batch, args.image_size, args.threads, args.min_iters)
                  for batch in args.batches]
    for label in paths:
        print(f'{label:<36}' + ''.join(f'{by_label[label]:>12.1f}' for by_label in speeds))


# ----------------------------------------------------------------------------- main
def row_names(text):
    """ROWS from a comma- or space-separated list (argparse type)."""
    names = [name for name in text.split(',') if name]
    unknown = [name for name in names if name not in ROWS]
    if unknown:
        raise argparse.ArgumentTypeError(f'unknown row {", ".join(unknown)}; choose from {", ".join(ROWS)}')
    return names


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--archs', nargs='+', default=['RepVGG-A0', 'RepVGG-B0'], help='default: RepVGG-A0 RepVGG-B0')
    parser.add_argument('--batches', nargs='+', type=int, default=[1, 8], help='default: 1 8')
    parser.add_argument('--rows', nargs='+', type=row_names, default=[list(ROWS)],
                        help=f'inference rows, space- or comma-separated (default: all): {", ".join(ROWS)}')
    parser.add_argument('--image_size', type=int, default=224, help='default: 224')
    parser.add_argument('--threads', type=int, default=0,
                        help='threads per engine; 0 (default): one per CPU this process may use (MindSpore: '
                             'that many too, not its own default of 30)')
    parser.add_argument('--repeats', type=int, default=3, help='runs per row, taking turns; the median is shown')
    parser.add_argument('--min_iters', type=int, default=5, help='timed calls per run, at least (default: 5)')
    parser.add_argument('--min_seconds', type=float, default=2.0, help='timed seconds per run, at least (default: 2)')
    parser.add_argument('--train_batch', type=int, default=16, help='batch of the training rows; 0: none (default: 16)')
    parser.add_argument('--study', action='store_true', help='instead of the table: the settings investigated '
                        '(threads, batch, engines in one process) on the first arch and the largest batch')
    parser.add_argument('--int8_types', action='store_true',
                        help='instead of the table: ONNX Runtime INT8 speed with uint8 or int8 activations, '
                             'reduce_range or not (weights int8 per channel), on the first arch')
    for hidden in ('--row', '--arch', '--onnx'):  # one row in a child process
        parser.add_argument(hidden, default='', help=argparse.SUPPRESS)
    parser.add_argument('--batch', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--crowded', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.rows = list(dict.fromkeys(name for names in args.rows for name in names))
    if not args.threads and not args.row:
        args.threads = len(os.sched_getaffinity(0))
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.row:
        run_row(args)
    elif args.study:
        study(args)
    elif args.int8_types:
        int8_types(args)
    else:
        table(args)


if __name__ == '__main__':
    main()
