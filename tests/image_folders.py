"""Tiny ImageNet-style folders for the data tests (not fixtures)."""
from pathlib import Path

import numpy as np
from PIL import Image

from src.config import make_config


def solid_colour(index):
    """A distinct RGB colour for image ``index`` (< 216): survives crops, flips and resizes, so
    the normalised pixel value identifies the image after any weak augmentation."""
    return (40 + 30 * (index % 6), 40 + 30 * (index // 6 % 6), 40 + 30 * (index // 36 % 6))


def colour_index(chw):
    """The ``solid_colour`` index of a normalised (3, H, W) image (inverse of the above)."""
    mean = np.array([0.485, 0.456, 0.406]) * 255
    std = np.array([0.229, 0.224, 0.225]) * 255
    rgb = np.asarray(chw, np.float64).mean(axis=(1, 2)) * std + mean
    steps = np.rint((rgb - 40) / 30).astype(int)
    return int(steps[0] + 6 * steps[1] + 36 * steps[2])


def textured(rng, height, width):
    """A smooth random picture with some noise: compresses and resizes like a photo."""
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    base = base.resize((width, height), Image.BICUBIC)
    noisy = np.asarray(base, np.float64) + rng.normal(0, 8, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def solid_folder(root, counts, size=(24, 20), suffix='.png'):
    """``root/<class>/<i>.png`` with ``counts[c]`` solid-colour images in class c; returns the
    colour index of every image, by class."""
    root = Path(root)
    index, by_class = 0, []
    for label, count in enumerate(counts):
        folder = root / f'class_{label}'
        folder.mkdir(parents=True, exist_ok=True)
        indices = []
        for _ in range(count):
            Image.new('RGB', size, solid_colour(index)).save(folder / f'{index:03d}{suffix}')
            indices.append(index)
            index += 1
        by_class.append(indices)
    return by_class


def textured_folder(root, counts, size=(50, 38), seed=0):
    """``root/<class>/<i>.jpg|png`` with textured pictures, alternating JPEG and PNG."""
    rng = np.random.default_rng(seed)
    paths = []
    for label, count in enumerate(counts):
        folder = Path(root) / f'class_{label}'
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = folder / f'{i:03d}{".jpg" if i % 2 == 0 else ".png"}'
            textured(rng, size[1], size[0]).save(path)
            paths.append(path)
    return paths


def data_config(data_url=None, **overrides):
    """A CPU config for the data tests: tiny images, one worker unless overridden."""
    values = dict(data_url=data_url, image_size=16, batch_size=4, num_classes=10, num_parallel_workers=1,
                  prefetch=2, device_target='CPU', seed=1)
    values.update(overrides)
    return make_config(**values)


def batches(dataset):
    """All batches of one epoch as numpy dicts."""
    return list(dataset.create_dict_iterator(output_numpy=True, num_epochs=1))
