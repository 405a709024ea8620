"""ImageNet-style image folders (``root/<class>/<file>``) written on the fly: the one writer behind the
digits demo set (src/tools/demo_data.py), the tests and the benchmarks, with the kinds of picture they need.

Each kind shows something a check needs:

- ``tinted_noise``: noise on a class tint. Every image differs, and the classes can be learnt, so a few
  steps of training move the loss: the training runs of the tests.
- ``solid``: one colour per image (``solid_colour(index)``). It survives crops, flips and resizes, so a
  normalised pixel names the image after any weak augmentation (``colour_index``): the pipeline tests.
- ``textured``: smooth random colour fields with some noise. It compresses and resizes like a photo:
  eval-transform comparisons and the data-pipeline benchmark (at 500x375, ImageNet's typical size).
- ``write_odd_files``: pictures in every mode and format the readers meet (grey, 16-bit, palette, alpha,
  CMYK, PNG data named .jpg, upper-case suffixes).

PIL and numpy only: a benchmark's child process or a test imports it without MindSpore.
"""
import io
from pathlib import Path

import numpy as np
from PIL import Image

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as the pipeline's default


def write_folder(root, classes, **save_options):
    """Write ``{class name: {file name: picture}}`` under ``root``; returns {class name: [paths]}.

    A picture is a PIL image, saved in the format its suffix names (with ``save_options``, e.g.
    quality), or bytes, written as they are (one encoding copied to many files is fast).
    """
    written = {}
    for name, files in classes.items():
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        written[name] = []
        for file_name, picture in files.items():
            path = folder / file_name
            if isinstance(picture, bytes):
                path.write_bytes(picture)
            else:
                picture.save(path, **save_options)
            written[name].append(path)
    return written


def class_folder_names(count, names=None):
    return list(names) if names is not None else [f'class_{label}' for label in range(count)]


def encoded(picture, image_format, **save_options):
    """The bytes of ``picture`` saved in ``image_format`` (for ``write_folder``)."""
    buffer = io.BytesIO()
    picture.save(buffer, image_format, **save_options)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- noise on a class tint
def tinted_noise(rng, label, size):
    """A (width, height) picture of noise around grey, raised by 120 in channel ``label % 3``."""
    width, height = (size, size) if isinstance(size, int) else size
    tint = np.zeros(3)
    tint[label % 3] = 120
    return Image.fromarray(np.clip(rng.normal(100, 40, (height, width, 3)) + tint, 0, 255).astype(np.uint8))


def tinted_folder(root, counts, size=16, names=None, seed=0, suffixes=('.png',)):
    """``root/<class>/<i>.png``, ``counts[c]`` tinted-noise pictures in class c (folders ``names`` or
    class_<c>; file i gets ``suffixes[i % len(suffixes)]``); returns {class name: [paths]}."""
    rng = np.random.default_rng(seed)
    names = class_folder_names(len(counts), names)
    return write_folder(root, {name: {f'{index:03d}{suffixes[index % len(suffixes)]}': tinted_noise(rng, label, size)
                                      for index in range(count)}
                               for label, (name, count) in enumerate(zip(names, counts, strict=True))})


# ----------------------------------------------------------------------------- one colour per image
def solid_colour(index):
    """A distinct RGB colour for image ``index`` (< 216), 30 levels apart in each channel."""
    return (40 + 30 * (index % 6), 40 + 30 * (index // 6 % 6), 40 + 30 * (index // 36 % 6))


def colour_index(chw, mean=MEAN, std=STD):
    """The ``solid_colour`` index of a normalised (3, H, W) image (inverse of the above)."""
    rgb = np.asarray(chw, np.float64).mean(axis=(1, 2)) * np.array(std) * 255 + np.array(mean) * 255
    steps = np.rint((rgb - 40) / 30).astype(int)
    return int(steps[0] + 6 * steps[1] + 36 * steps[2])


def solid_folder(root, counts, size=(24, 20), suffix='.png'):
    """``root/class_<c>/<index>.png`` with ``counts[c]`` solid-colour images in class c, numbered across
    the classes; returns the colour index of every image, by class."""
    starts = np.cumsum([0, *counts])
    by_class = [list(range(start, start + count)) for start, count in zip(starts, counts, strict=False)]
    write_folder(root, {f'class_{label}': {f'{index:03d}{suffix}': Image.new('RGB', size, solid_colour(index))
                                           for index in indices}
                        for label, indices in enumerate(by_class)})
    return by_class


# ----------------------------------------------------------------------------- photo-like
def textured(rng, width, height, noise=8.0):
    """Smooth random colour fields (bicubic from 8x6) plus Gaussian noise of ``noise`` levels."""
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(base, np.float64) + rng.normal(0, noise, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def textured_folder(root, counts, size=(50, 38), seed=0, suffixes=('.jpg', '.png'), noise=8.0, **save_options):
    """``root/class_<c>/<i><suffix>`` with ``counts[c]`` textured (width, height) pictures, the suffixes
    taken in turn; returns {class name: [paths]}."""
    rng = np.random.default_rng(seed)
    return write_folder(root, {f'class_{label}': {f'{index:03d}{suffixes[index % len(suffixes)]}':
                                                  textured(rng, *size, noise=noise) for index in range(count)}
                               for label, count in enumerate(counts)}, **save_options)


# ----------------------------------------------------------------------------- odd modes and formats
# (file name, mode, save options): each a way an image file reaches the readers.
ODD_FILES = (
    ('grey.png', 'L', {}), ('grey.jpg', 'L', {}), ('grey16.png', 'I;16', {}), ('palette.png', 'P', {}),
    ('palette_alpha.png', 'P', {'transparency': 0}), ('rgba.png', 'RGBA', {}), ('la.png', 'LA', {}),
    ('cmyk.jpg', 'CMYK', {}), ('png_named.jpg', 'RGB', {'format': 'PNG'}), ('rgb.JPG', 'RGB', {}),
    ('rgb.jpeg', 'RGB', {}), ('rgb.png', 'RGB', {}), ('rgb_q90.jpg', 'RGB', {'quality': 90}),
)


def in_mode(picture, mode):
    """``picture`` (RGB) in ``mode``; 16-bit grey spreads the 8-bit grey over 0..65535."""
    if mode == 'I;16':
        return Image.fromarray(np.asarray(picture.convert('L')).astype(np.uint16) * 257)
    return picture.convert(mode)


def write_odd_files(folder, pictures):
    """One file per entry of ODD_FILES in ``folder``, the i-th of ``pictures`` (taken in turn) in its
    mode and format; returns the paths, sorted."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index, (name, mode, options) in enumerate(ODD_FILES):
        in_mode(pictures[index % len(pictures)], mode).save(folder / name, **options)
    return sorted(folder / name for name, _, _ in ODD_FILES)
