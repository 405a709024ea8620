"""A real, tiny demo data set that needs no download: scikit-learn's handwritten digits, upscaled to
32x32 RGB PNGs in an ImageNet-style folder with a fixed stratified split (docs/data.md).

``python -m src.tools.demo_data OUT_DIR``. The build is atomic and idempotent: files go to a temporary
sibling folder, renamed into place when complete, with a ``demo_data.json`` manifest.
"""
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from src.tools.base.cli import UserError, user_entry_point
from src.tools.base.files import make_folder, partial_name, remove_partial_files
from src.tools.image_folders import write_folder

IMAGE_SIZE = 32
VAL_FRACTION = 0.2
SPLIT_SEED = 0
MANIFEST = 'demo_data.json'


def digit_images():
    """(images uint8 (N, 8, 8) with ink dark on white, labels (N,)) from scikit-learn."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    ink = digits.images / 16.0  # 0 (paper) .. 1 (ink)
    return np.rint(255 * (1.0 - ink)).astype(np.uint8), digits.target.astype(int)


def split_indices(labels):
    """{'train': indices, 'val': indices}: stratified, fixed seed."""
    from sklearn.model_selection import train_test_split
    indices = np.arange(len(labels))
    train, val = train_test_split(indices, test_size=VAL_FRACTION, stratify=labels, random_state=SPLIT_SEED)
    return {'train': np.sort(train), 'val': np.sort(val)}


def is_complete(out_dir):
    """Whether ``out_dir`` holds a finished build: manifest present and every file counted."""
    out_dir = Path(out_dir)
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text(encoding='utf-8'))
        return all(len(list((out_dir / split / name).glob('*.png'))) == count
                   for split, classes in manifest['counts'].items() for name, count in classes.items())
    except (OSError, ValueError, KeyError, AttributeError):
        return False


def digit_picture(image):
    """One 8x8 scan as the demo set stores it: upscaled to IMAGE_SIZE (bicubic), RGB."""
    return Image.fromarray(image).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC).convert('RGB')


def digit_folder(images, labels, indices):
    """{digit: {file name: picture}} of the samples ``indices``, for ``write_folder``."""
    return {str(digit): {f'{index:04d}.png': digit_picture(images[index])
                         for index in indices if labels[index] == digit} for digit in range(10)}


def _write(target, images, labels, splits):
    for split, indices in splits.items():
        write_folder(target / split, digit_folder(images, labels, indices))
    manifest = {'source': 'sklearn.datasets.load_digits', 'image_size': IMAGE_SIZE,
                'val_fraction': VAL_FRACTION, 'split_seed': SPLIT_SEED,
                'counts': {split: {str(c): int(np.sum(labels[indices] == c)) for c in range(10)}
                           for split, indices in splits.items()}}
    (target / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding='utf-8')


def build_demo_data(out_dir):
    """Write the demo data set to ``out_dir`` unless it is already complete; returns its Path."""
    out_dir = Path(out_dir)
    if is_complete(out_dir):
        return out_dir
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f'{out_dir} exists and is not a complete demo data set; remove it or choose '
                        f'another folder')
    images, labels = digit_images()
    splits = split_indices(labels)
    make_folder(out_dir.parent)
    remove_partial_files(out_dir.parent, f'.{out_dir.name}.')  # of a build that was killed
    try:
        staging = Path(tempfile.mkdtemp(prefix=partial_name(out_dir, '-').name, dir=out_dir.parent))
    except OSError as error:
        raise UserError(f'could not build the demo data in {out_dir}: {error.strerror or error}') from None
    try:
        _write(staging, images, labels, splits)
        if out_dir.exists():
            out_dir.rmdir()  # an empty folder the user made for us
        os.rename(staging, out_dir)
    except OSError as error:
        if not is_complete(out_dir):  # another process may have finished the same build first
            raise UserError(f'could not build the demo data in {out_dir}: {error.strerror or error}') from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith('-'):
        raise UserError('usage: python -m src.tools.demo_data OUT_DIR')
    out_dir = build_demo_data(argv[0])
    manifest = json.loads((out_dir / MANIFEST).read_text(encoding='utf-8'))
    totals = {split: sum(classes.values()) for split, classes in manifest['counts'].items()}
    print(f'demo data (scikit-learn digits, 10 classes, {IMAGE_SIZE}x{IMAGE_SIZE} RGB PNG) in {out_dir}: '
          f"{totals['train']} train, {totals['val']} val images")


if __name__ == '__main__':
    user_entry_point(_main)()
