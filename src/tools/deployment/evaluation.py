"""Scoring a model on labelled batches: the one loop behind eval.py, eval_onnx.py and the validation of
every training epoch, in float64 from the logits, so that every format scores comparably.
"""
import ast
import csv
import io
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from src.dataset import class_names, eval_batches, labelled_images
from src.tools.base.cli import UserError
from src.tools.base.files import atomic_path, check_writable, check_writable_file, write_text_atomic

REPORT_FILES = ('per_class_top1.csv', 'confusion_matrix.png')  # what report_dir receives


def check_finite_logits(logits, model, batch):
    """A UserError naming ``model`` when any logit of a batch is NaN or inf: no class is larger than a
    NaN, so every label would score a hit and argmax would name class 0."""
    bad = int((~np.isfinite(np.asarray(logits)).all(axis=1)).sum())
    if bad:
        raise UserError(f'{model} gives non-finite logits (NaN/inf) for {bad} of the {len(logits)} images of {batch}: '
                        f'its weights are broken (a diverged run?) or its float16 computation overflows; nothing '
                        f'is scored, predicted or saved from it: use an earlier checkpoint, or train again with a '
                        f'lower base_lr (or amp_level O0)')


class ClassificationMetrics:
    """Running sums of cross-entropy and top-1 / top-k hits (k: 5, or fewer classes). A label is within
    the top k when fewer than k classes have a strictly larger logit: no dependence on how ties sort."""

    def __init__(self, num_classes, top_k=5):
        self.num_classes = num_classes
        self.top_k = min(top_k, num_classes)
        self.count = 0
        self.loss_sum = 0.0
        self.top1 = 0
        self.topk = 0
        self.confusion = np.zeros((num_classes, num_classes), np.int64)  # [label, top-1 prediction]

    def update(self, logits, labels):
        logits = np.asarray(logits, np.float64)
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise UserError(f'label {labels.max()} is outside the {self.num_classes} classes of the model')
        rows = np.arange(len(labels))
        label_logits = logits[rows, labels]
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(shifted).sum(axis=1)) + logits.max(axis=1)
        self.loss_sum += float((log_norm - label_logits).sum())
        rank = (logits > label_logits[:, None]).sum(axis=1)
        rank[~np.isfinite(logits).all(axis=1)] = self.num_classes  # NaN > x is False: never a hit
        self.top1 += int((rank < 1).sum())
        self.topk += int((rank < self.top_k).sum())
        self.count += len(labels)
        np.add.at(self.confusion, (labels, logits.argmax(axis=1)), 1)

    def sums(self):
        return [self.loss_sum, self.top1, self.topk, self.count]


def score(predict, batches, num_classes, num_batches=None, reduce=None, show_progress=True, desc='eval',
          source='the data', model='the model'):
    """Score ``predict`` (images -> logits) over ``batches`` of (images, labels); ``reduce`` sums over
    data-parallel ranks. {'loss', 'top1', 'top5', 'count', 'batches', 'time', 'confusion' (this process's)}."""
    metrics = ClassificationMetrics(num_classes)
    steps = 0
    begin = time.time()
    for images, labels in tqdm(batches, total=num_batches, desc=desc, unit='batch', leave=False,
                               disable=None if show_progress else True):
        logits = predict(images)
        check_finite_logits(logits, model, f'batch {steps + 1} of {source}')
        metrics.update(logits, labels)
        steps += 1
    loss_sum, top1, topk, count = reduce(metrics.sums()) if reduce is not None else metrics.sums()
    if count == 0:
        raise UserError(f'no image of {source} could be scored (every one failed to decode: see the '
                        f'warnings above, which name the files); fix or remove them')
    return {'loss': loss_sum / count, 'top1': top1 / count, 'top5': topk / count, 'count': int(count),
            'batches': steps, 'time': time.time() - begin, 'confusion': metrics.confusion}


def partial_count_line(scored, total, source):
    """The line that says images were skipped (undecodable), or None when every image was scored."""
    if scored >= total:
        return None
    return (f'=> scored {scored} of {total} images of {source}; {total - scored} could not be decoded '
            f'(the warnings above name them)')


def reference_results(result, with_loss=True):
    """{'Loss': ..., 'Top1-Acc': ..., 'Top5-Acc': ...}: the keys of the reference's eval printout."""
    return {**({'Loss': result['loss']} if with_loss else {}), 'Top1-Acc': result['top1'], 'Top5-Acc': result['top5']}


RESULTS_PREFIX = '=> eval results:'


def format_results(results):
    """The reference's result line: ``=> eval results:{'Loss': ..., 'Top1-Acc': ..., ...}``."""
    return f'{RESULTS_PREFIX}{results}'


def parse_results(output):
    """The result dict of the first ``format_results`` line in a script's ``output`` (benchmarks, tests)."""
    line = next(line for line in output.splitlines() if line.startswith(RESULTS_PREFIX))
    return ast.literal_eval(line[len(RESULTS_PREFIX):])


def validation_folder(dataset_path, data_url=None):
    """The folder to evaluate: ``dataset_path``, else ``data_url``/val; checked before any model loads."""
    folder = dataset_path if dataset_path is not None else (data_url / 'val' if data_url else None)
    if folder is None:
        raise UserError('pass --dataset_path with the validation folder (one sub-folder per class)')
    if not Path(folder).is_dir():
        raise UserError(f'validation folder {folder} does not exist (expected one sub-folder per class)')
    class_names(folder)
    return folder


def evaluate_folder(predictor, folder, workers=None, image_check='cached', image_check_cache=None,
                    with_loss=True, report_dir=None, model='the model'):
    """The reference's result dict of ``predictor`` on ``folder``, read by ``eval_batches`` threads, not a
    MindSpore pipeline (less CPU time; ONNX Runtime and OpenVINO never load MindSpore: docs/performance.md)."""
    if report_dir is not None:
        check_writable(report_dir, 'report folder')
        for name in REPORT_FILES:
            check_writable_file(Path(report_dir) / name, 'report file')
    if predictor.class_names is None:  # labels can only be matched by position
        classes = class_names(folder)
        if len(classes) != predictor.num_classes:
            raise UserError(f'{folder} has {len(classes)} class folders but the model predicts {predictor.num_classes} '
                            f'classes: evaluate on the validation folder of the data set it was trained on')
        print(f'=> note: the model records no class names (an older checkpoint, or converted weights): '
              f'the sorted class folders of {folder} are taken as its classes 0-{predictor.num_classes - 1}')
    paths, labels = labelled_images(folder, predictor.class_names, predictor.num_classes, image_check,
                                    image_check_cache)
    label_of = dict(zip(paths, labels, strict=True))
    batches = ((images, np.array([label_of[path] for path in chunk], np.int32))
               for chunk, images in eval_batches(paths, predictor.card.preprocessing, predictor.batch_size,
                                                 workers, skip_unreadable=True))
    result = score(predictor, batches, predictor.num_classes, -(-len(paths) // predictor.batch_size), source=folder,
                   model=model)
    skipped = partial_count_line(result['count'], len(paths), folder)
    if skipped:
        print(skipped)
    if report_dir is not None:
        names = predictor.class_names or [str(index) for index in range(predictor.num_classes)]
        for path in write_report(report_dir, result['confusion'], names):
            print(f'=> wrote {path}')
    return reference_results(result, with_loss)


def write_report(folder, confusion, names):
    """per_class_top1.csv (per class with images: its top-1 and the class it is most often taken for) and
    confusion_matrix.png in ``folder``; returns their paths."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator='\n')
    writer.writerow(['index', 'class', 'images', 'top1', 'most_confused_with', 'times'])
    for index, name in enumerate(names):
        images = int(confusion[index].sum())
        if images:
            wrong = confusion[index].copy()
            wrong[index] = 0
            confused = int(wrong.argmax())
            writer.writerow([index, name, images, f'{confusion[index, index] / images:.4f}',
                             names[confused] if wrong[confused] else '', int(wrong[confused])])
    csv_path, png_path = (Path(folder) / file for file in REPORT_FILES)
    write_text_atomic(csv_path, text.getvalue())
    _plot_confusion(confusion, names, png_path)
    return csv_path, png_path


def _plot_confusion(confusion, names, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    totals = confusion.sum(axis=1, keepdims=True)
    shares = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
    count = len(names)
    side = min(4 + 0.35 * count, 20)
    figure, axis = plt.subplots(figsize=(side + 1.5, side))
    image = axis.imshow(shares, cmap='Blues', vmin=0, vmax=1)
    figure.colorbar(image, ax=axis, fraction=0.046, label='share of the class\'s images')
    if count <= 40:  # beyond that, labels overlap: the CSV names the classes
        axis.set_xticks(range(count), names, rotation=90, fontsize=8)
        axis.set_yticks(range(count), names, fontsize=8)
        if count <= 15:
            for row in range(count):
                for column in range(count):
                    if confusion[row, column]:
                        axis.text(column, row, int(confusion[row, column]), ha='center', va='center', fontsize=7,
                                  color='white' if shares[row, column] > 0.5 else 'black')
    axis.set_xlabel('predicted class')
    axis.set_ylabel('true class')
    images = int(confusion.sum())
    axis.set_title(f'confusion matrix ({images} images, top-1 {np.trace(confusion) / max(images, 1):.4f})')
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100, format='png')
    plt.close(figure)
