"""Shared by the training tests: a tiny image-folder data set and the train.py command line."""
import os
import socket
import sys
from pathlib import Path

from src.tools.checkpoints.saver import CheckpointSaver
from src.tools.image_folders import tinted_folder

REPO = Path(__file__).resolve().parents[1]


def make_image_folder(root, classes=3, train_per_class=8, val_per_class=2, size=16, seed=0):
    """root/train/class_<c>/*.png and root/val/class_<c>/*.png of tinted noise: every image distinct."""
    tinted_folder(Path(root) / 'train', [train_per_class] * classes, size, seed=seed)
    tinted_folder(Path(root) / 'val', [val_per_class] * classes, size, seed=seed + 1000)
    return Path(root)


def train_args(data, runs, **overrides):
    """Command-line flags for a tiny CPU run of RepVGG-A0 (values as strings)."""
    flags = dict(config=REPO / 'src/configs/RepVGG.yaml', arch='RepVGG-A0', num_classes=3, image_size=24,
                 batch_size=2, epochs=2, device_target='CPU', data_url=data, train_url=runs, aug_type='none',
                 num_parallel_workers=1, prefetch=2, base_lr=0.001, warmup_length=0.5, save_every=4,
                 keep_checkpoint_max=3, keep_best_checkpoints_max=1, brief='test')
    flags.update(overrides)
    args = []
    for key, value in flags.items():
        args += [f'--{key}', str(value)]
    return args


def command(*args):
    return [sys.executable, str(REPO / 'train.py'), *args]


def environment():
    env = dict(os.environ)
    env['PYTHONUNBUFFERED'] = '1'
    env['GLOG_v'] = '3'  # MindSpore: errors only
    return env


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def worker_pid(rank, cwd):
    """The pid of the msrun worker of ``rank`` started from ``cwd`` (read from /proc), or None."""
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / 'environ').read_bytes().split(b'\0')
            if Path(os.readlink(entry / 'cwd')) != Path(cwd).resolve():
                continue
        except OSError:
            continue
        if b'MS_ROLE=MS_WORKER' in environ and f'RANK_ID={rank}'.encode() in environ:
            return int(entry.name)
    return None


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] if Path(f'/proc/{pid}').exists() else 'X'
    return state not in ('Z', 'X')


def periodic(folder, arch, rank=0):
    """{(epoch_num, step_num): path} of one rank's periodic checkpoints in a run folder."""
    return CheckpointSaver(folder, arch, rank, keep_last=1, keep_best=0).periodic()


def samples_by_step(path):
    """{(epoch, step): [image fingerprints, in the order logged]} of a log_samples file; a line
    that a killed run cut short is left out."""
    by_step = {}
    for line in Path(path).read_text().splitlines():
        fields = line.split()
        if len(fields) != 3 or len(fields[2]) != 16:
            continue
        by_step.setdefault((int(fields[0]), int(fields[1])), []).append(fields[2])
    return by_step
