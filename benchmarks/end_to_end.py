"""infer.py and eval.py over a folder of photos, whole process, per back-end; and where the time goes.

    python benchmarks/end_to_end.py [--images 1500] [--repeats 3] [--folder DIR]
    python benchmarks/end_to_end.py --breakdown [--images 1500] [--folder DIR]

Writes ``--images`` photo-like JPEGs (quality 90: random crops of scikit-learn's two sample photos,
resized to 500 px on the longer side as most ImageNet photos are, some mirrored, with noise) once
flat (infer.py) and once, as hard links, in class folders (eval.py); and RepVGG-A0 with 1000
classes and random BatchNorm statistics as a .ckpt (train form) and an .onnx (see ``write_models``
for its classifier). ``--folder`` keeps them there for the next run (default: a temporary folder).

Then it runs each command of COMMANDS as a new process, the commands taking turns over
``--repeats`` rounds, and prints per command the median wall clock (from the start of Python to its
exit, start-up and model loading included), images/s, the peak resident memory, the precision that
ran, and the ratio to the same command with ``--backend onnxruntime``. The goal it checks: infer.py
over the .onnx at least 1.8x faster with ``--backend auto`` (OpenVINO) than with ``--backend
onnxruntime`` on a CPU with AMX; the header names the CPU and its instruction sets, so that other
CPUs report theirs.

``--breakdown``: where the time of one such run goes, measured piece by piece in one process: the
imports of infer.py, loading / compiling the model per engine, and per image decoding, resizing +
cropping, normalising (one thread) and the network (its own threads, batch 32).

A benchmark, not a test: the numbers depend on the machine and on what else runs on it.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARCH, NUM_CLASSES, ACTIVE_CLASSES, BATCH = 'RepVGG-A0', 1000, 5, 32
CLASS_NAMES = [f'n{index:08d}' for index in range(NUM_CLASSES)]
GOAL = 1.8  # infer.py .onnx, --backend auto over --backend onnxruntime (issue 19)
# (script, model, backend): each a whole run over the folder
COMMANDS = tuple((script, model, backend) for script in ('infer.py', 'eval.py') for model in ('onnx', 'ckpt')
                 for backend in ('auto', 'onnxruntime'))


def machine():
    """The CPU, its instruction sets that decide the engines' speed, and the CPUs this process may use."""
    from src.tools.deployment.openvino_engine import cpu_features, default_threads
    return f'{cpu_features()}; {default_threads()} CPUs for this process'


# ----------------------------------------------------------------------------- data and model
def write_photos(folder, count, seed=0):
    """``count`` JPEGs in ``folder``/infer and the same files (hard links) in ``folder``/val/<class>/."""
    from sklearn.datasets import load_sample_images
    sources = [Image.fromarray(image) for image in load_sample_images().images]
    rng = np.random.default_rng(seed)
    flat = Path(folder) / 'infer'
    flat.mkdir(parents=True)
    for index in range(count):
        source = sources[index % len(sources)]
        width, height = source.size
        area = rng.uniform(0.25, 1.0) * width * height
        ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        crop_w = int(min(width, round(np.sqrt(area * ratio))))
        crop_h = int(min(height, round(np.sqrt(area / ratio))))
        left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
        scale = 500 / max(crop_w, crop_h)
        photo = source.crop((left, top, left + crop_w, top + crop_h)).resize(
            (round(crop_w * scale), round(crop_h * scale)), Image.BICUBIC)
        if rng.random() < 0.5:
            photo = photo.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = np.asarray(photo, np.float32) + rng.normal(0, 4, (photo.height, photo.width, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(flat / f'{index:05d}.jpg', quality=90)
    for index, path in enumerate(sorted(flat.iterdir())):
        target = Path(folder) / 'val' / CLASS_NAMES[index % ACTIVE_CLASSES]
        target.mkdir(parents=True, exist_ok=True)
        os.link(path, target / path.name)
    return flat, Path(folder) / 'val'


def write_models(folder, photos, components=2, fitted=128):
    """RepVGG-A0 (1000 classes, random BatchNorm statistics, class names recorded) as .ckpt (train
    form) and .onnx (deploy form), with confident, varied predictions, as a trained model gives.

    Random statistics leave the pooled features of all photos nearly one vector: a random
    classifier gives one class for every photo, and centred random logits are decided by
    differences that bf16 does not keep (infer.py's bf16 check would then fall back to fp32, which
    it does not for a trained model). So the last block's input to its ReLU is centred per channel
    over ``fitted`` photos (the features then vary more from photo to photo), and the classifier is
    a nearest-centre one in the ``components`` main directions in which their features vary, with
    ACTIVE_CLASSES centres found by k-means; the other classes never win. bf16 then changes the top-1
    class of about one photo in a thousand (checked with OpenVINO on these photos).
    """
    from mindspore import Tensor, ops

    from src.dataset import Preprocessing, eval_batches
    from src.repvgg import create_model, switch_net_to_deploy
    from src.tools.base.device import set_device, set_seed
    from src.tools.checkpoints.format import save_checkpoint
    from src.tools.checkpoints.model_card import ModelCard
    from src.tools.deployment.export import export_network
    set_device('CPU')
    set_seed(0)
    net = random_statistics(create_model(ARCH, num_classes=NUM_CLASSES))
    net.set_train(False)
    paths = sorted(Path(photos).iterdir())[:fitted]
    sample = [Tensor(images) for _, images in eval_batches(paths, Preprocessing(224), 32)]
    last = net.blocks()[-1]  # centre its input to the ReLU per channel: the features then vary more
    inputs = [net.forward_stages(images)[3] for images in sample]
    before_relu = np.concatenate([(last.rbr_dense(x) + last.rbr_1x1(x)).asnumpy() for x in inputs])
    beta = last.rbr_dense.bn.beta
    beta.set_data(Tensor(beta.asnumpy() - before_relu.mean(axis=(0, 2, 3)).astype(np.float32)))
    features = np.concatenate([ops.mean(net.forward_stages(images)[-1], (2, 3)).asnumpy()
                               for images in sample]).astype(np.float64)
    mean = features.mean(axis=0)
    _, spread, directions = np.linalg.svd(features - mean, full_matrices=False)
    whiten = directions[:components].T / (spread[0] / np.sqrt(fitted))  # the main direction: unit variance
    centres = k_means((features - mean) @ whiten, ACTIVE_CLASSES)
    weight = np.zeros((NUM_CLASSES, len(mean)))
    bias = np.full(NUM_CLASSES, -1000.0)
    weight[:ACTIVE_CLASSES] = 2 * centres @ whiten.T  # -|z - c|^2 + |z|^2, linear in the features
    bias[:ACTIVE_CLASSES] = -2 * centres @ whiten.T @ mean - (centres ** 2).sum(axis=1)
    net.linear.weight.set_data(Tensor(weight.astype(np.float32)))
    net.linear.bias.set_data(Tensor(bias.astype(np.float32)))
    ckpt = Path(folder) / 'a0.ckpt'
    card = ModelCard.of(ARCH, NUM_CLASSES, False, CLASS_NAMES, Preprocessing(224))
    save_checkpoint([{'name': p.name, 'data': p} for p in net.get_parameters()], ckpt, append_dict=card.entries())
    onnx, _, _ = export_network(switch_net_to_deploy(net), 224, 'ONNX', Path(folder) / 'a0', card)
    return ckpt, onnx


def random_statistics(net, seed=0):
    """Random BatchNorm statistics and affine parameters (as tests/helpers.randomize_bn gives,
    which benchmarks do not import): activations stay in a sane range over the 22 blocks."""
    from mindspore import Tensor
    rng = np.random.default_rng(seed)
    for name, param in net.parameters_and_names():
        leaf = name.rsplit('.', 1)[-1]
        if leaf in ('moving_mean', 'beta'):
            param.set_data(Tensor(rng.normal(0.0, 0.1, param.shape).astype(np.float32)))
        elif leaf in ('moving_variance', 'gamma'):
            param.set_data(Tensor(rng.uniform(0.5, 1.5, param.shape).astype(np.float32)))
    return net


def k_means(points, count, iterations=30, seed=0):
    """``count`` centres of ``points`` (N, D) by Lloyd's iterations from random points."""
    centres = points[np.random.default_rng(seed).choice(len(points), count, replace=False)]
    for _ in range(iterations):
        nearest = ((points[:, None] - centres[None]) ** 2).sum(axis=-1).argmin(axis=1)
        centres = np.stack([points[nearest == index].mean(axis=0) if (nearest == index).any() else centres[index]
                            for index in range(count)])
    return centres


# ----------------------------------------------------------------------------- whole commands
def command_line(script, model, backend, work):
    """The argv of one run of ``script`` over the photos with the .onnx or .ckpt ``model``."""
    common = ['--config', str(work / 'a0.yaml'), '--pretrained', str(work / f'a0.{model}'), '--backend', backend]
    if script == 'infer.py':
        return [script, *common, '--dataset_path', str(work / 'photos' / 'infer'),
                '--pred_output', str(work / f'predictions-{model}-{backend}.json')]
    return [script, *common, '--dataset_path', str(work / 'photos' / 'val')]


def run_once(argv):
    """(wall seconds, peak resident MiB, stdout) of ``python argv`` as a new process."""
    with tempfile.TemporaryFile('w+') as out, tempfile.TemporaryFile('w+') as err:
        began = time.perf_counter()
        process = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=out, stderr=err, text=True,
                                   env=dict(os.environ, GLOG_v='3'))
        _, status, usage = os.wait4(process.pid, 0)  # the child's own peak memory, which Popen does not give
        seconds = time.perf_counter() - began
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode:
            raise SystemExit(f'{" ".join(argv)} failed ({process.returncode}): {err.read().strip().splitlines()[-1:]}')
        return seconds, usage.ru_maxrss / 1024, out.read()


def ran_precision(out):
    """What the engine line and the bf16 check of a run's output say ran: 'bf16', 'fp32', ..."""
    lines = out.splitlines()
    if any(line.startswith('=> bf16 checked') for line in lines):
        return 'bf16 (checked)'
    if any(line.startswith('=> note: in bf16') for line in lines):
        return 'fp32 (bf16 check failed)'
    engine = next((line for line in lines if line.startswith(('=> OpenVINO', '=> ONNX Runtime'))), '')
    return engine[3:].split(';')[0].split(', ')[1] if ', ' in engine else '?'


def time_commands(work, repeats):
    """{command: (median seconds, peak MiB, precision)} over ``repeats`` rounds of COMMANDS taking turns."""
    runs = {command: [] for command in COMMANDS}
    for round_ in range(repeats):
        for command in COMMANDS:
            runs[command].append(run_once(command_line(*command, work)))
            print(f'  round {round_ + 1}/{repeats}: {" ".join(command)}: {runs[command][-1][0]:.1f} s', file=sys.stderr)
    return {command: (statistics.median(seconds for seconds, _, _ in done), max(mib for _, mib, _ in done),
                      ran_precision(done[-1][2])) for command, done in runs.items()}


def print_table(results, images, repeats, cpu):
    print(f'# {cpu}')
    print(f'# {images} photos (JPEG, 500 px longer side), {ARCH} at 224x224, batch {BATCH}; median of {repeats} '
          f'runs of each command (whole process), the commands taking turns')
    header = f'{"command":<44} {"seconds":>8} {"images/s":>9} {"peak MiB":>9}  {"vs onnxruntime":>14}  precision'
    print(header)
    print('-' * len(header))
    for (script, model, backend), (seconds, mib, precision) in results.items():
        baseline = results[(script, model, 'onnxruntime')][0]
        print(f'{script + " a0." + model + " --backend " + backend:<44} {seconds:>8.1f} {images / seconds:>9.1f} '
              f'{mib:>9.0f}  {baseline / seconds:>13.2f}x  {precision}')
    ratio = results[('infer.py', 'onnx', 'onnxruntime')][0] / results[('infer.py', 'onnx', 'auto')][0]
    verdict = 'met' if ratio >= GOAL else 'NOT met'
    print(f'=> goal: infer.py a0.onnx --backend auto at least {GOAL}x --backend onnxruntime, whole process: '
          f'{ratio:.2f}x, {verdict}')


# ----------------------------------------------------------------------------- where the time goes
def per_image_ms(step, items):
    """Median milliseconds of ``step`` per item over ``items`` (one thread), and the results."""
    results, times = [], []
    for item in items:
        began = time.perf_counter()
        results.append(step(item))
        times.append(time.perf_counter() - began)
    return 1000 * statistics.median(times), results


def import_seconds(module, repeats=3):
    """Median wall seconds of ``python -c 'import module'`` minus that of ``python -c pass``."""
    def wall(code):
        began = time.perf_counter()
        subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True, env=dict(os.environ, GLOG_v='3'))
        return time.perf_counter() - began
    return statistics.median(wall(f'import {module}') - wall('pass') for _ in range(repeats))


def breakdown(work, images, count=200):
    """Print where a run's time goes (module docstring), per image over ``count`` photos."""
    import mindspore  # noqa: F401  before onnx, which the ONNX Runtime loader imports (model_files.py)

    from src.config import make_config
    from src.dataset import (
        eval_resize_size,
        normalize_chw,
        read_image_rgb,
        resize_center_crop,
    )
    from src.tools.deployment.backends import load_predictor
    paths = sorted((work / 'photos' / 'infer').iterdir())[:count]
    print(f'# {machine()}')
    print(f'# where the time of infer.py over {images} photos goes ({ARCH}, 224x224, batch {BATCH}); per image: '
          f'median over {len(paths)} photos')
    label = 'start-up: python -c "import infer", beyond python itself'
    print(f'{label:<58} {import_seconds("infer"):>8.2f} s')
    decode_ms, decoded = per_image_ms(read_image_rgb, paths)
    resize_ms, crops = per_image_ms(lambda image: resize_center_crop(image, eval_resize_size(224), 224), decoded)
    normalize_ms, normalized = per_image_ms(normalize_chw, crops)
    batch = np.stack(normalized[:BATCH])
    rows = [('decode (PIL, libjpeg-turbo), one thread', decode_ms),
            ('resize + centre crop (PIL), one thread', resize_ms),
            ('normalise (numpy), one thread', normalize_ms)]
    for engine, model, precision in (('onnxruntime', 'onnx', 'fp32'), ('openvino', 'onnx', 'fp32'),
                                     ('openvino', 'onnx', 'bf16'), ('openvino', 'ckpt', 'bf16')):
        config = make_config(work / 'a0.yaml', pretrained=str(work / f'a0.{model}'), backend=engine,
                             precision=precision, batch_size=BATCH)
        began = time.perf_counter()
        predictor = load_predictor(config)
        print(f'{f"load / compile: a0.{model}, {engine} {precision}":<58} {time.perf_counter() - began:>8.2f} s')
        if model == 'onnx':
            predictor(batch)  # the first call allocates
            began = time.perf_counter()
            for _ in range(3):
                predictor(batch)
            per_image = 1000 * (time.perf_counter() - began) / (3 * BATCH)
            rows.append((f'network: {engine} {precision}, batch {BATCH}', per_image))
    for label, milliseconds in rows:
        print(f'{label:<58} {milliseconds:>8.2f} ms/image  {milliseconds * images / 1000:>6.1f} s for {images}')


# ----------------------------------------------------------------------------- main
def prepare(folder, images):
    """The photos, the models and a config in ``folder`` (written once; kept for later runs)."""
    folder = Path(folder)
    if not (folder / 'photos' / 'infer').is_dir():
        write_photos(folder / 'photos', images)
    if not (folder / 'a0.onnx').is_file():
        write_models(folder, folder / 'photos' / 'infer')
    (folder / 'a0.yaml').write_text(f'arch: {ARCH}\nnum_classes: {NUM_CLASSES}\nimage_size: 224\n'
                                    f'batch_size: {BATCH}\ndevice_target: CPU\n')
    count = len(list((folder / 'photos' / 'infer').iterdir()))
    if count != images:
        raise SystemExit(f'{folder} holds {count} photos, not {images}: pass --images {count} or another --folder')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=1500, help='photos to write and predict (default: 1500)')
    parser.add_argument('--repeats', type=int, default=3, help='runs per command; the median is shown (default: 3)')
    parser.add_argument('--folder', type=Path, help='keep the photos and models here and reuse them next time '
                                                    '(default: a temporary folder)')
    parser.add_argument('--breakdown', action='store_true', help='instead of the table: where the time goes')
    parser.add_argument('--prepare', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare:
        prepare(args.folder, args.images)
        print(machine())
        return
    with tempfile.TemporaryDirectory() as temporary:
        work = args.folder or Path(temporary)
        # In a child process: a process started by this one counts this one's memory at the start as its
        # own peak (Linux), so this one stays small.
        _, _, out = run_once([__file__, '--prepare', '--folder', str(work), '--images', str(args.images)])
        if args.breakdown:
            breakdown(work, args.images)
        else:
            print_table(time_commands(work, args.repeats), args.images, args.repeats, out.strip())


if __name__ == '__main__':
    main()
