"""Throughput of the data pipeline against a plain PIL + multiprocessing loader doing the same work.

    python benchmarks/data_pipeline.py [--images 256] [--workers 2] [--epochs 4] [--repeats 3]

Writes ``--images`` generated 500x375 JPEGs (ImageNet's typical size, photo-like content) to a
temporary folder, then for each pipeline (train ``weak``, train ``auto`` with
``rand-m9-mstd0.5-inc1`` and random erasing 0.25, and ``eval``) measures images per second of
src/dataset.py with ``--workers`` workers and of a baseline that runs the same transforms with
PIL in a ``multiprocessing.Pool`` of as many processes and stacks batches. The first epoch
(worker start-up) is not timed; the two loaders run alternately ``--repeats`` times and the table
shows the medians. A benchmark, not a test: numbers depend on the machine and on what else runs
on it.
"""
import argparse
import math
import multiprocessing
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.augment import RandomErasing, policy_from_string
from src.config import make_config
from src.dataset import (
    CROP_RATIO,
    CROP_SCALE,
    eval_resize_size,
    get_dataset,
    normalize_chw,
    read_image_rgb,
    resize_center_crop,
)

POLICY = 'rand-m9-mstd0.5-inc1'
RE_PROB = 0.25


def write_images(folder, count, classes=4, seed=0):
    """``count`` photo-like 500x375 JPEGs (smooth colour fields + noise, quality 90)."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        target = folder / 'train' / f'class_{index % classes}'
        target.mkdir(parents=True, exist_ok=True)
        base = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        base = base.resize((500, 375), Image.BICUBIC)
        pixels = np.asarray(base, np.float64) + rng.normal(0, 10, (375, 500, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(target / f'{index:05d}.jpg', quality=90)
    (folder / 'val').symlink_to(folder / 'train', target_is_directory=True)


# ----------------------------------------------------------------------------- PIL baseline
def random_resized_crop_box(width, height):
    """A RandomResizedCrop box (scale 0.08-1, ratio 3/4-4/3), sampled as torchvision does."""
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * random.uniform(*CROP_SCALE)
        aspect = math.exp(random.uniform(*log_ratio))
        crop_w, crop_h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left, top = random.randint(0, width - crop_w), random.randint(0, height - crop_h)
            return left, top, left + crop_w, top + crop_h
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2


class PilTransform:
    """One image file -> normalised CHW float32, with PIL and numpy only."""

    def __init__(self, kind, size):
        self.kind, self.size = kind, size
        self.policy = policy_from_string(POLICY) if kind == 'auto' else None
        self.erasing = RandomErasing(RE_PROB) if kind == 'auto' else None

    def __call__(self, path):
        img = read_image_rgb(path)
        if self.kind == 'eval':
            return normalize_chw(resize_center_crop(img, eval_resize_size(self.size), self.size))
        img = img.resize((self.size, self.size), Image.BILINEAR, box=random_resized_crop_box(*img.size))
        if random.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.policy is not None:
            img = self.policy(img)
        image = normalize_chw(np.asarray(img))
        return self.erasing(image) if self.erasing is not None else image


def _seed_worker(seed):
    random.seed(seed + os.getpid())
    np.random.seed((seed + os.getpid()) % 2 ** 32)


def pil_images_per_second(paths, kind, size, workers, batch_size, epochs):
    """One continuous stream of all epochs (as a pipeline runs); batches within each epoch."""
    transform = PilTransform(kind, size)
    orders = [random.sample(paths, len(paths)) if kind != 'eval' else paths for _ in range(epochs)]
    stream = [path for order in orders for path in order]
    with multiprocessing.Pool(workers, initializer=_seed_worker, initargs=(0,)) as pool:
        start, images, batch = None, 0, []
        for index, image in enumerate(pool.imap(transform, stream, chunksize=8)):
            if index % len(paths) == 0:
                batch = []  # train drops the remainder of an epoch
            batch.append(image)
            last = index % len(paths) == len(paths) - 1
            if len(batch) == batch_size or (last and kind == 'eval'):
                images += len(np.stack(batch))
                batch = []
            if index == len(paths) - 1:  # the first epoch (start-up) is not timed
                start, images = time.perf_counter(), 0
        return images / (time.perf_counter() - start)


# ----------------------------------------------------------------------------- MindSpore pipeline
def mindspore_images_per_second(folder, kind, size, workers, batch_size, epochs):
    config = make_config(data_url=folder, image_size=size, batch_size=batch_size, num_parallel_workers=workers,
                         aug_type='auto' if kind == 'auto' else 'weak', auto_augment=POLICY,
                         re_prob=RE_PROB if kind == 'auto' else 0.0, device_target='CPU', seed=1)
    dataset = get_dataset(config, training=kind != 'eval')
    iterator = dataset.create_tuple_iterator(output_numpy=True, num_epochs=epochs)
    start, images = None, 0
    for epoch in range(epochs):
        if epoch == 1:
            start, images = time.perf_counter(), 0
        for image_batch, _ in iterator:
            images += len(image_batch)
    return images / (time.perf_counter() - start)


def _cpu_model():
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--images', type=int, default=256, help='Generated JPEGs (500x375).')
    parser.add_argument('--workers', type=int, default=2, help='Workers of both loaders.')
    parser.add_argument('--batch_size', type=int, default=32)
    parser.add_argument('--image_size', type=int, default=224)
    parser.add_argument('--epochs', type=int, default=4, help='Epochs per measurement; the first is not timed.')
    parser.add_argument('--pipelines', default='weak,auto,eval', help='Comma-separated: weak, auto, eval.')
    parser.add_argument('--repeats', type=int, default=3,
                        help='Alternating runs of each loader; the table shows medians.')
    args = parser.parse_args()

    import mindspore
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_images(folder, args.images)
        paths = sorted((folder / 'train').glob('*/*.jpg'))
        rows = []
        for kind in args.pipelines.split(','):
            ours, baseline = [], []
            for _ in range(args.repeats):  # alternate, so a change in machine load hits both
                ours.append(mindspore_images_per_second(folder, kind, args.image_size, args.workers,
                                                        args.batch_size, args.epochs))
                baseline.append(pil_images_per_second(paths, kind, args.image_size, args.workers,
                                                      args.batch_size, args.epochs))
            rows.append((kind, float(np.median(ours)), float(np.median(baseline))))
    print(f'\n{args.images} JPEGs 500x375 -> {args.image_size}x{args.image_size}, batch {args.batch_size}, '
          f'{args.workers} workers, {args.epochs - 1} timed epochs, median of {args.repeats} runs; '
          f'{os.cpu_count()} CPUs ({_cpu_model()}), '
          f'MindSpore {mindspore.__version__}, Pillow {Image.__version__}')
    print(f'{"pipeline":<10} {"src/dataset.py img/s":>21} {"PIL+multiprocessing img/s":>26} {"ratio":>7}')
    for kind, ours, baseline in rows:
        label = {'weak': 'weak', 'auto': 'auto*', 'eval': 'eval'}[kind]
        print(f'{label:<10} {ours:>21.1f} {baseline:>26.1f} {ours / baseline:>7.2f}')
    if any(kind == 'auto' for kind, _, _ in rows):
        print(f'* auto = weak + {POLICY} + random erasing p={RE_PROB}')


if __name__ == '__main__':
    main()
