"""Start-up at ImageNet size: class scan, image check and pipeline build on a first and a second
start, and resuming late in an epoch against starting at step 0.

    python benchmarks/startup.py [--files 200000] [--classes 1000] [--ranks 1 8] [--batch 32]
                                 [--resume_step 6000] [--repeats 3] [--folder DIR]

Writes ``--files`` tiny JPEGs (24x20, 64 distinct ones, about 1.2 kB each) in ``--classes``
class folders to a temporary folder under /tmp (deleted at the end unless ``--folder`` is given),
then:

- start-up: for each rank count R, a fresh manifest (in a temporary cache folder), then two starts
  (each a new process building the training pipeline as train.py does) as rank 0 of R: the times
  train.py keeps in the run folder's startup.log for the class scan, the image check of rank 0's
  slice (cached mode: the first start checks every file of the slice and writes the manifest, the
  second stats them) and the pipeline build;
- resume: the time to the first batch of a pipeline (aug_type weak, batch ``--batch``, one rank)
  started at step 0 and at ``--resume_step`` with ``resume_batches`` (medians of ``--repeats``
  new processes), and once the way train.py resumed before: reading the skipped batches and
  discarding them.

The folder's files sit in the page cache (they were just written): a cold start on a network disk
reads more slowly. A benchmark, not a test: the numbers depend on the machine and on what else runs.
"""
import argparse
import io
import json
import os
import platform
import re
import shutil
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

START_LINE = re.compile(r'start-up: class scan ([0-9.]+) s, image check ([0-9.]+) s \(cached: (\d+) files on this '
                        r'rank, (\d+) unchanged since checked, (\d+) checked;.*\), pipeline build ([0-9.]+) s')


def write_folder(root, files, classes):
    """``files`` tiny JPEGs in ``classes`` folders of root/train (ImageNet's names and suffix)."""
    rng = np.random.default_rng(0)
    variants = []
    for _ in range(64):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(buffer, 'JPEG', quality=90)
        variants.append(buffer.getvalue())
    per_class = -(-files // classes)
    written = 0
    for label in range(classes):
        folder = root / 'train' / f'n{label:08d}'
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(min(per_class, files - written)):
            (folder / f'n{label:08d}_{index:05d}.JPEG').write_bytes(variants[written % 64])
            written += 1
    return written


def config(root, batch):
    from src.config import make_config
    return make_config(data_url=root, num_classes=1000, image_size=16, batch_size=batch, aug_type='weak',
                       num_parallel_workers=2, prefetch=2, device_target='CPU', seed=1)


# ----------------------------------------------------------------------------- child processes
def child_start(root, rank, ranks, batch):
    """Build the training pipeline as rank ``rank`` of ``ranks``; print the start-up details that
    train.py writes to the run folder's startup.log."""
    from src.dataset import get_dataset
    print(get_dataset(config(root, batch), training=True, rank=rank, group_size=ranks).start_up)


def child_resume(root, batch, step, how):
    """Seconds to the first batch at ``step`` of epoch 1 (``how``: init_step or discard)."""
    from src.dataset import get_dataset, resume_batches
    args = config(root, batch)
    args.image_check = 'off'
    dataset = get_dataset(args, training=True)
    began = time.perf_counter()
    if how == 'init_step':
        next(resume_batches(dataset, 1, 0, step))
    else:  # before: iterate from step 0 and drop what the checkpoint had done
        batches = dataset.create_tuple_iterator(num_epochs=1)
        for _ in range(step + 1):
            next(batches)
    seconds = time.perf_counter() - began
    print(json.dumps({'seconds': seconds}))


def run_child(*args, cache=None):
    env = dict(os.environ, GLOG_v='3', PYTHONUNBUFFERED='1', **({'XDG_CACHE_HOME': str(cache)} if cache else {}))
    done = subprocess.run([sys.executable, __file__, '--child', *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=3600, check=False)
    if done.returncode != 0:
        raise SystemExit(f'child {args} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}')
    return done.stdout


# ----------------------------------------------------------------------------- main
def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--files', type=int, default=200_000)
    parser.add_argument('--classes', type=int, default=1000)
    parser.add_argument('--ranks', type=int, nargs='+', default=[1, 8])
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--resume_step', type=int, default=None, help='default: 96%% of the epoch')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--folder', type=Path, default=None, help='use (and keep) this folder')
    parser.add_argument('--child', nargs='+', help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        kind, root, *rest = options.child
        if kind == 'start':
            child_start(Path(root), *map(int, rest))
        else:
            child_resume(Path(root), int(rest[0]), int(rest[1]), rest[2])
        return

    import mindspore as ms
    print(f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, MindSpore {ms.__version__}')
    temporary = options.folder is None
    root = Path(tempfile.mkdtemp(prefix='startup_', dir='/tmp')) if temporary else options.folder
    try:
        began = time.perf_counter()
        if not (root / 'train').is_dir():
            count = write_folder(root, options.files, options.classes)
            print(f'wrote {count} files in {options.classes} classes to {root}/train in '
                  f'{time.perf_counter() - began:.1f} s')
        files = sum(1 for _ in (root / 'train').glob('*/*.JPEG'))

        print(f'\nstart-up (rank 0 of R, image_check cached), {files} files:')
        print(f'{"ranks":>5}  {"start":<6} {"class scan s":>12} {"image check s":>13} {"checked":>8} '
              f'{"unchanged":>9} {"pipeline build s":>16}')
        for ranks in options.ranks:
            cache = Path(tempfile.mkdtemp(prefix='startup_cache_', dir='/tmp'))  # a fresh manifest
            for start in ('first', 'second'):
                found = START_LINE.search(run_child('start', root, 0, ranks, options.batch, cache=cache))
                scan, check, _, unchanged, checked, build = found.groups()
                print(f'{ranks:>5}  {start:<6} {float(scan):>12.1f} {float(check):>13.1f} {int(checked):>8} '
                      f'{int(unchanged):>9} {float(build):>16.1f}')
            shutil.rmtree(cache)

        steps = files // options.batch
        step = options.resume_step if options.resume_step is not None else int(steps * 0.96)
        print(f'\nresume (one rank, batch {options.batch}, aug_type weak, {steps} steps an epoch): seconds to '
              f'the first batch, median of {options.repeats}')

        def first_batch(at, how):
            return json.loads(run_child('resume', root, options.batch, at, how).strip().splitlines()[-1])['seconds']

        at_zero = statistics.median(first_batch(0, 'init_step') for _ in range(options.repeats))
        resumed = statistics.median(first_batch(step, 'init_step') for _ in range(options.repeats))
        discarded = first_batch(step, 'discard')
        rows = [('start at step 0', at_zero), (f'resume at step {step}: set_init_step (skipped batches not read)',
                                                 resumed),
                (f'resume at step {step}: read and discard the skipped batches (before; one run)', discarded)]
        for label, seconds in rows:
            print(f'  {label:<78} {seconds:8.2f} s')
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    main()
