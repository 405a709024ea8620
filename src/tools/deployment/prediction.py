"""Inference on an image or a folder of images: the reference's printout and a {path: class} JSON,
the same for infer.py and infer_onnx.py whatever the model format (class names, or indices for a
model that records none).
"""
import json
import sys
from pathlib import Path

from tqdm import tqdm

from src.dataset import IMAGE_SUFFIXES, eval_batches, list_images
from src.image_check import check_images
from src.tools.base.cli import UserError
from src.tools.base.files import write_text_atomic
from src.tools.deployment.evaluation import check_finite_logits

BANNERS = {'directory': '===== Load directory =====', 'single': '===== Load single image ====='}


def list_inputs(path):
    """('directory', images directly in the folder) or ('single', [path]); a UserError otherwise."""
    if path is None:
        raise UserError('pass an image or a folder of images to predict (--dataset_path)')
    path = Path(path)
    kinds = '/'.join(sorted(IMAGE_SUFFIXES))
    if path.is_dir():
        images = list_images(path)
        others = sorted(entry.name for entry in path.iterdir()
                        if entry.is_file() and entry.suffix.lower() not in IMAGE_SUFFIXES)
        if not images:
            found = f' (it holds {len(others)} other files, e.g. {others[0]})' if others else ''
            raise UserError(f'folder {path} has no {kinds} images{found}')
        if others:
            print(f'note: skipped {len(others)} files in {path} that are not {kinds} images '
                  f'(e.g. {others[0]})', file=sys.stderr)
        return 'directory', images
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise UserError(f'{path} is not a {kinds} image; pass one, or a folder of them')
        return 'single', [path]
    raise UserError(f'{path} does not exist; pass an image or a folder of images')


def predict_classes(predictor, paths, workers=None, model='the model'):
    """{str(path): class index} for ``paths``, preprocessed as in evaluation by ``workers`` threads while
    the model runs (src/dataset.eval_batches); a non-finite logit is an error naming ``model``."""
    predictions = {}
    with tqdm(total=len(paths), desc='infer', unit='img', leave=False) as bar:
        for chunk, images in eval_batches(paths, predictor.card.preprocessing, predictor.batch_size, workers):
            logits = predictor(images)
            check_finite_logits(logits, model, f'the batch from {chunk[0]}')
            for path, label in zip(chunk, logits.argmax(axis=1), strict=True):
                predictions[str(path)] = int(label)
            bar.update(len(chunk))
    return predictions


def run_inference(predictor, inputs, output, with_index=False, workers=None, model='the model'):
    """Predict the images of ``inputs`` (``list_inputs``), checked first as training checks them; print the
    reference's lines and write ``output`` ({path: class name or index}) only when every image was predicted."""
    kind, paths = inputs
    turned = check_images(paths, show_progress=len(paths) > 1)
    if turned:
        print(f'=> note: {len(turned)} of the {len(paths)} images carry an EXIF orientation that turns or mirrors '
              f'them (e.g. {turned[0]}); they are predicted as stored, as training reads its images: '
              f'docs/data.md says how to turn them upright')
    names = predictor.class_names
    if names is None:
        print('=> note: the model records no class names (an older checkpoint, or converted weights): '
              'predictions are class indices')
    print(BANNERS[kind])
    indices = predict_classes(predictor, paths, workers, model)
    predictions = {}
    for path, index in indices.items():
        label = names[index] if names is not None else index
        print(f'{path} (class: {label})')
        predictions[path] = {'class': label, 'index': index} if with_index else label
    write_text_atomic(output, json.dumps(predictions, indent=2) + '\n')
    print(f'=> {len(predictions)} prediction{"s" if len(predictions) != 1 else ""} written to {output}')
    return predictions
