"""Training checkpoints: what they hold, how they are named, written, kept and resumed from.

What a checkpoint holds (the contract that eval.py, export.py, convert.py and resume rely on):
- the network's tensors under their own names (``stage0.*`` ... ``stage4.*``, ``linear.*``), as
  ``mindspore.save_checkpoint`` names them for the network: ``load_weights(net, path)`` loads them;
- with ``with_ema``, the EMA copies of all of them under ``ema.<name>``:
  ``load_weights(net, path, prefix='ema.')`` loads those;
- optimizer and loss-scale state under MindSpore's own names, none of which is a network root:
  ``moments.*`` (momentum) or ``adam_m.*``/``adam_v.*`` (adamw), ``global_step``, ``momentum``,
  ``scale_sense``, ``current_iterator_step``, ``last_overflow_iterator_step``;
- the position: ``epoch_num`` (1-based epoch of the last step taken), ``step_num`` (steps of
  that epoch taken), ``steps_per_epoch``; and ``arch`` (str) and ``num_classes``.

Names, in the run folder:
- periodic, every ``save_every`` steps and at each epoch's end, per rank:
  ``<arch>_<rank>-<epoch_num>_<step_num>.ckpt`` (MindSpore ModelCheckpoint's pattern); the
  ``keep_checkpoint_max`` newest of each rank are kept;
- best, after each epoch's validation, rank 0: ``<arch>_epoch=<E>_acc=<top-1, 4 decimals>.ckpt``;
  the ``keep_best_checkpoints_max`` best by top-1 are kept (on a tie the older stays). They hold
  the weights that were validated: with ``eval_ema`` the EMA weights are under the network names.

Every file is written to a hidden temporary name in the same folder and moved into place with
``os.replace``, so a run killed at any moment leaves only complete checkpoints.
"""
import re
from pathlib import Path

import mindspore as ms

from src.tools.checkpoints.format import read_checkpoint
from src.tools.base.cli import UserError
from src.tools.base.files import atomic_path

# Train-cell parameters that are derived from the config, not state: rebuilt, never restored.
_NOT_SAVED = ('learning_rate',)
_RESTORED_PREFIXES = ('moments.', 'adam_m.', 'adam_v.', 'ema.')
_RESTORED_NAMES = ('scale_sense', 'current_iterator_step', 'last_overflow_iterator_step')


def save_atomic(entries, path, append_dict=None):
    """``mindspore.save_checkpoint`` to a hidden temporary file, then ``os.replace`` onto ``path``.

    MindSpore's writer happens to rename its own temporary file too, but only as an undocumented
    detail and after deleting an existing file of the same name; this keeps the guarantee ours.
    """
    with atomic_path(path, '.ckpt') as temporary:
        ms.save_checkpoint(entries, str(temporary), append_dict=append_dict)
    return Path(path)


def train_state(train_cell, epoch_num, step_num, steps_per_epoch, arch, num_classes):
    """(entries, append_dict) for ``save_atomic``: every parameter of the train cell (network,
    optimizer, loss scale, EMA) except the per-step learning rates, plus the position."""
    entries = [{'name': param.name, 'data': param} for param in train_cell.get_parameters()
               if param.name not in _NOT_SAVED]
    append = {'epoch_num': int(epoch_num), 'step_num': int(step_num), 'steps_per_epoch': int(steps_per_epoch),
              'arch': arch, 'num_classes': int(num_classes)}
    return entries, append


def _int(value):
    return int(value.asnumpy()) if hasattr(value, 'asnumpy') else int(value)


def check_arch(checkpoint, arch, source):
    """UserError when the checkpoint says it was trained as another arch."""
    saved = checkpoint.get('arch')
    if isinstance(saved, str) and saved != arch:
        raise UserError(f'{source} was trained as {saved}, the config asks for {arch}: '
                        f'set arch: {saved}, or use a checkpoint of {arch}')


def start_position(checkpoint, steps_per_epoch):
    """(epoch index, step) at which training continues after ``checkpoint``, or None if it has none."""
    if 'epoch_num' not in checkpoint or 'step_num' not in checkpoint:
        return None
    epoch_num, step_num = _int(checkpoint['epoch_num']), _int(checkpoint['step_num'])
    saved_steps = _int(checkpoint['steps_per_epoch']) if 'steps_per_epoch' in checkpoint else steps_per_epoch
    if step_num >= saved_steps:
        return epoch_num, 0
    return epoch_num - 1, min(step_num, steps_per_epoch - 1)


def restore_state(train_cell, checkpoint):
    """Copy optimizer, loss-scale and EMA state of ``checkpoint`` into ``train_cell``.

    Returns the names restored; state the checkpoint lacks (e.g. it had no EMA) keeps its value.
    """
    restored = []
    for param in train_cell.get_parameters():
        name = param.name
        if not (name.startswith(_RESTORED_PREFIXES) or name in _RESTORED_NAMES) or name not in checkpoint:
            continue
        value = checkpoint[name]
        if tuple(value.shape) != tuple(param.shape):
            continue  # e.g. moments of a classifier whose class count changed
        param.set_data(ms.Tensor(value.asnumpy().copy(), param.dtype))
        restored.append(name)
    return restored


class CheckpointSaver:
    """Writes and prunes the periodic (per rank) and best (rank 0) checkpoints of one run folder."""

    def __init__(self, folder, arch, rank, keep_last, keep_best):
        if keep_last < 1:
            raise UserError(f'keep_checkpoint_max is {keep_last}; it must be at least 1 (resume needs one)')
        self.folder = Path(folder)
        self.arch = arch
        self.rank = rank
        self.keep_last = keep_last
        self.keep_best = max(keep_best, 0)
        self._periodic = re.compile(re.escape(f'{arch}_') + r'(\d+)-(\d+)_(\d+)\.ckpt$')
        self._best = re.compile(re.escape(f'{arch}_epoch=') + r'(\d+)_acc=([0-9.]+)\.ckpt$')

    # ------------------------------------------------------------------ periodic
    def periodic_path(self, epoch_num, step_num, rank=None):
        return self.folder / f'{self.arch}_{self.rank if rank is None else rank}-{epoch_num}_{step_num}.ckpt'

    def periodic(self, rank=None):
        """{(epoch_num, step_num): path} of one rank's periodic checkpoints."""
        rank = self.rank if rank is None else rank
        found = {}
        for path in self.folder.glob(f'{self.arch}_{rank}-*.ckpt'):
            match = self._periodic.match(path.name)
            if match and int(match.group(1)) == rank:
                found[(int(match.group(2)), int(match.group(3)))] = path
        return found

    def save_periodic(self, entries, append_dict):
        path = save_atomic(entries, self.periodic_path(append_dict['epoch_num'], append_dict['step_num']),
                           append_dict)
        mine = self.periodic()
        for position in sorted(mine)[:-self.keep_last]:
            mine[position].unlink(missing_ok=True)
        return path

    def resume_path(self, group_size):
        """This rank's newest checkpoint at a position that every rank reached; else rank 0's
        newest (the group size changed); a UserError when the folder has none."""
        per_rank = [self.periodic(rank) for rank in range(group_size)]
        common = set(per_rank[0]).intersection(*per_rank[1:])
        if common:
            return per_rank[self.rank][max(common)]
        rank0 = self.periodic(0)
        if rank0:
            return rank0[max(rank0)]
        raise UserError(f'continues: {self.folder} holds no periodic checkpoint '
                        f'{self.arch}_<rank>-<epoch>_<step>.ckpt; pass the run folder of an earlier run of '
                        f'{self.arch}, or start without continues')

    # ------------------------------------------------------------------ best
    def best_path(self, epoch, acc):
        return self.folder / f'{self.arch}_epoch={epoch}_acc={acc:.4f}.ckpt'

    def best(self):
        """[(top-1, epoch, path)] best first; ties keep the older epoch first."""
        found = []
        for path in self.folder.glob(f'{self.arch}_epoch=*.ckpt'):
            match = self._best.match(path.name)
            if match:
                found.append((float(match.group(2)), int(match.group(1)), path))
        return sorted(found, key=lambda item: (-item[0], item[1]))

    def is_best(self, acc):
        """Whether ``acc`` (compared at the 4 decimals of the names) enters the best list."""
        acc = round(acc, 4)
        kept = self.best()
        return self.keep_best > 0 and (len(kept) < self.keep_best or acc > kept[self.keep_best - 1][0])

    def save_best(self, entries, append_dict, epoch, acc):
        """Write the epoch's checkpoint if it ranks among the best; prune; the path or None."""
        if not self.is_best(acc):
            return None
        path = save_atomic(entries, self.best_path(epoch, acc), append_dict)
        for _, _, old in self.best()[self.keep_best:]:
            old.unlink(missing_ok=True)
        return path

    def forget_after(self, epoch_num):
        """Delete best checkpoints of epochs after ``epoch_num`` (a resumed run redoes them)."""
        for _, epoch, path in self.best():
            if epoch > epoch_num:
                path.unlink(missing_ok=True)


def read_training_checkpoint(path, arch, source):
    """The checkpoint dict, checked to be of ``arch`` when it says which it is."""
    checkpoint = read_checkpoint(path)
    check_arch(checkpoint, arch, source)
    return checkpoint
