"""Scoring a model on labelled batches: the one loop behind eval.py, eval_onnx.py and the
validation of every training epoch.

The metrics are computed here from the logits in float64, the same way for a network in training,
a checkpoint, a MINDIR and an ONNX file, so all of them can be compared exactly.
"""
import argparse
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from src.dataset import class_names, create_dataset_imagenet
from src.tools.base.cli import UserError


class ClassificationMetrics:
    """Running sums of cross-entropy and top-1 / top-k hits over every image seen.

    A label counts as within the top k when fewer than k classes have a strictly larger logit, so
    the result does not depend on how a sort breaks ties. k is 5, or the class count if smaller.
    """

    def __init__(self, num_classes, top_k=5):
        self.num_classes = num_classes
        self.top_k = min(top_k, num_classes)
        self.count = 0
        self.loss_sum = 0.0
        self.top1 = 0
        self.topk = 0

    def update(self, logits, labels):
        logits = np.asarray(logits, np.float64)
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if logits.shape != (len(labels), self.num_classes):
            raise ValueError(f'logits of shape {logits.shape} for {len(labels)} labels and '
                             f'{self.num_classes} classes')
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise UserError(f'label {labels.max()} is outside the {self.num_classes} classes of the model')
        rows = np.arange(len(labels))
        label_logits = logits[rows, labels]
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(shifted).sum(axis=1)) + logits.max(axis=1)
        self.loss_sum += float((log_norm - label_logits).sum())
        rank = (logits > label_logits[:, None]).sum(axis=1)
        self.top1 += int((rank < 1).sum())
        self.topk += int((rank < self.top_k).sum())
        self.count += len(labels)

    def sums(self):
        return [self.loss_sum, self.top1, self.topk, self.count]


def score(predict, batches, num_classes, num_batches=None, reduce=None, show_progress=True, desc='eval'):
    """Run ``predict`` (images -> logits) over ``batches`` of (images, labels) and score it.

    ``reduce`` sums a vector over data-parallel ranks (training validation: every rank scores its
    own part of the set); without it the sums are this process's. Returns {'loss', 'top1', 'top5',
    'count', 'batches', 'time'}; 'top5' is top-min(5, classes).
    """
    metrics = ClassificationMetrics(num_classes)
    steps = 0
    begin = time.time()
    for images, labels in tqdm(batches, total=num_batches, desc=desc, unit='batch', leave=False,
                               disable=None if show_progress else True):
        metrics.update(predict(images), labels)
        steps += 1
    loss_sum, top1, topk, count = reduce(metrics.sums()) if reduce is not None else metrics.sums()
    if count == 0:
        raise UserError('no images were evaluated')
    return {'loss': loss_sum / count, 'top1': top1 / count, 'top5': topk / count, 'count': int(count),
            'batches': steps, 'time': time.time() - begin}


def reference_results(result, with_loss=True):
    """{'Loss': ..., 'Top1-Acc': ..., 'Top5-Acc': ...}: the keys of the reference's eval printout."""
    printed = {'Loss': result['loss']} if with_loss else {}
    printed['Top1-Acc'] = result['top1']
    printed['Top5-Acc'] = result['top5']
    return printed


def format_results(results):
    """The reference's result line: ``=> eval results:{'Loss': ..., 'Top1-Acc': ..., ...}``."""
    return f'=> eval results:{results}'


def check_class_count(folder, num_classes):
    """A UserError when the folder's class folders do not match the model's outputs."""
    classes = class_names(folder)
    if len(classes) != num_classes:
        raise UserError(f'{folder} has {len(classes)} class folders but the model predicts {num_classes} '
                        f'classes: evaluate on the validation folder of the data set it was trained on')
    return classes


def validation_folder(dataset_path, data_url=None):
    """The folder to evaluate: ``dataset_path``, else ``data_url``/val; checked before any model loads."""
    folder = dataset_path if dataset_path is not None else (data_url / 'val' if data_url else None)
    if folder is None:
        raise UserError('pass --dataset_path with the validation folder (one sub-folder per class)')
    if not Path(folder).is_dir():
        raise UserError(f'validation folder {folder} does not exist (expected one sub-folder per class)')
    class_names(folder)
    return folder


def evaluate_folder(predictor, folder, config, with_loss=True):
    """Evaluate on ``folder`` (one sub-folder per class) with the eval pipeline of src/dataset.py;
    returns the reference's result dict.

    ``config`` supplies what the pipeline reads (batch_size, interpolation, workers, ...); image
    size and class count are the predictor's, so the model always gets the size it was built for.
    """
    check_class_count(folder, predictor.num_classes)
    config = argparse.Namespace(**{**vars(config), 'image_size': predictor.image_size,
                                   'num_classes': predictor.num_classes})
    dataset = create_dataset_imagenet(str(folder), config, training=False)
    batches = dataset.create_tuple_iterator(columns=['image', 'label'], output_numpy=True, num_epochs=1)
    result = score(predictor, batches, predictor.num_classes, dataset.get_dataset_size())
    return reference_results(result, with_loss)
