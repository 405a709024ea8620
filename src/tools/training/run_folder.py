"""A training run's folder: its name, config copy, start-up log, metrics file and curves (docs/training.md,
"What a run writes"). Rank 0 writes all but the periodic checkpoints; which folder a run uses: resume.py.
"""
import csv
import json
import os
import time
from pathlib import Path

import yaml

from src.config import config_to_dict
from src.tools.base.files import atomic_path, write_text_atomic

METRIC_FIELDS = ('epoch', 'lr', 'train_loss', 'eval_loss', 'top1', 'top5', 'epoch_time_s', 'eval_time_s',
                 'overflow_steps')


def run_folder_name(stamp, arch, brief=None):
    """Folder name from a Unix time, the arch and the optional brief."""
    name = time.strftime('%Y%m%d-%H%M%S', time.localtime(stamp)) + f'_{arch}'
    if brief:
        name += '_' + str(brief).replace(os.sep, '-')
    return name


def new_run_folder(train_url, arch, brief, ranks):
    """Create a new run folder named by rank 0's clock, claimed by ``mkdir`` (taken: the next second),
    so that two runs started together never share one; every rank gets the name."""
    train_url = Path(train_url)
    stamp = int(time.time())
    if ranks.is_main:
        train_url.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                (train_url / run_folder_name(stamp, arch, brief)).mkdir()
                break
            except FileExistsError:
                stamp += 1
    days, seconds = ranks.from_main(divmod(stamp, 86400))  # each an int32, past 2038 too
    stamp = days * 86400 + seconds
    folder = train_url / run_folder_name(stamp, arch, brief)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_config(folder, args):
    """config.yaml: the configuration this run used (a resumed run adds config_resumed_<n>.yaml)."""
    path = Path(folder) / 'config.yaml'
    if path.exists():
        count = len(list(Path(folder).glob('config_resumed_*.yaml'))) + 1
        path = Path(folder) / f'config_resumed_{count}.yaml'
    write_text_atomic(path, yaml.safe_dump(config_to_dict(args), sort_keys=False))
    return path


def save_class_names(folder, classes):
    """class_names.json: the training classes in label order (also inside every checkpoint)."""
    path = Path(folder) / 'class_names.json'
    write_text_atomic(path, json.dumps(list(classes), ensure_ascii=False, indent=1) + '\n')
    return path


def log_start_up(folder, lines):
    """Add ``lines`` (the data sets' ``start_up``), time-stamped, to startup.log."""
    path = Path(folder) / 'startup.log'
    before = path.read_text(encoding='utf-8') if path.exists() else ''
    stamp = time.strftime('%Y-%m-%d %H:%M:%S')
    write_text_atomic(path, before + ''.join(f'{stamp} {line}\n' for line in lines))
    return path


class MetricsLog:
    """metrics.csv (one row per epoch, rewritten atomically) and curves.png of the same numbers."""

    def __init__(self, folder):
        self.csv_path = Path(folder) / 'metrics.csv'
        self.png_path = Path(folder) / 'curves.png'
        self.rows = []
        if self.csv_path.exists():
            with self.csv_path.open(encoding='utf-8', newline='') as handle:
                self.rows = [{key: int(value) if key == 'epoch' else float(value) for key, value in row.items()}
                             for row in csv.DictReader(handle)]

    def keep_until(self, epoch):
        """Drop rows of epochs after ``epoch`` (a resumed run redoes them)."""
        self.rows = [row for row in self.rows if row['epoch'] <= epoch]

    def add(self, row):
        self.rows = [old for old in self.rows if old['epoch'] != row['epoch']] + [dict(row)]
        self.rows.sort(key=lambda item: item['epoch'])
        lines = [','.join(METRIC_FIELDS)]
        lines += [','.join(f'{value:.6g}' if isinstance(value, float) else str(value)
                           for value in (row.get(field, '') for field in METRIC_FIELDS)) for row in self.rows]
        write_text_atomic(self.csv_path, '\n'.join(lines) + '\n')
        self.plot()

    def plot(self):
        """Loss, accuracy and learning-rate curves per epoch."""
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        epochs = [row['epoch'] for row in self.rows]
        figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        axes[0].plot(epochs, [row['train_loss'] for row in self.rows], 'o-', label='train loss')
        axes[0].plot(epochs, [row['eval_loss'] for row in self.rows], 's-', label='eval loss')
        axes[1].plot(epochs, [row['top1'] for row in self.rows], 'o-', label='top-1')
        axes[1].plot(epochs, [row['top5'] for row in self.rows], 's-', label='top-5')
        axes[2].plot(epochs, [row['lr'] for row in self.rows], 'o-', label='learning rate')
        for axis, title in zip(axes, ('loss', 'validation accuracy', 'learning rate (last step)'), strict=True):
            axis.set_title(title)
            axis.set_xlabel('epoch')
            axis.grid(alpha=0.3)
            axis.legend()
        figure.tight_layout()
        with atomic_path(self.png_path) as temporary:
            figure.savefig(temporary, dpi=90)
        plt.close(figure)
