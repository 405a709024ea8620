"""How a run restarts from a checkpoint: where it starts, and which state it takes back.

- ``continues RUN_FOLDER``: the newest periodic checkpoint of the folder at a position that every
  rank completed (agreed through a collective, so each machine may keep its own copy of the
  folder); one that cannot be read (truncated, failing its CRC) is passed over for the one before
  it, with a note. Weights, optimizer, loss scale and EMA are restored, training goes on at its
  epoch and step (so at its learning rate) and writes into the same folder.
- ``pretrained CKPT``: the weights; a classifier of another class count is dropped (transfer
  learning). Unless ``exclude_epoch_state`` is set (or the head was dropped), the checkpoint's
  epoch, step and optimizer/EMA state are taken too.
- otherwise: fresh weights at ``start_epoch`` / ``start_step``.
"""
from dataclasses import dataclass
from pathlib import Path

import mindspore as ms

from src.tools.base.cli import UserError
from src.tools.checkpoints.format import (EMA_PREFIX, check_recorded_arch, integer, load_weights,
                                          read_checkpoint, recorded_class_names)
from src.tools.checkpoints.saver import CheckpointSaver

# Train-cell state restored on resume (the network tensors are loaded by load_weights).
_RESTORED_PREFIXES = ('moments.', 'adam_m.', 'adam_v.', EMA_PREFIX)
_RESTORED_NAMES = ('scale_sense', 'current_iterator_step', 'last_overflow_iterator_step')


@dataclass
class Start:
    epoch: int                  # 0-based epoch to start in
    step: int                   # steps of that epoch already taken
    checkpoint: dict = None     # whose optimizer / EMA state to restore, if any
    source: str = None          # for the log line
    saved_steps_per_epoch: int = None  # continues: the steps per epoch the run had (None: not recorded)


def check_continues(args):
    """UserError for a ``continues`` that cannot be a run folder, before anything is built."""
    if args.continues is None:
        return
    if args.pretrained is not None:
        raise UserError('set either continues (resume a run folder) or pretrained (start from weights), not both')
    folder = Path(args.continues)
    if folder.is_file():
        raise UserError(f'continues takes the run folder, not a file: pass --continues {folder.parent}, '
                        f'or --pretrained {folder} to start a new run from it')
    if not folder.is_dir():
        raise UserError(f'continues: run folder {folder} does not exist')


def starting_point(args, net, steps_per_epoch, rank=0, group_size=1, classes=None, total=None):
    """Load what the run starts from into ``net`` and say where training begins.

    ``classes``: the class names of the training folder, in label order. A resumed run must train
    on the classes it started with; a pretrained classifier kept for other classes is named in a note.
    ``total`` sums numbers over ranks (None: one process): with it the ranks agree on the checkpoint
    to resume.
    """
    if args.continues is not None:
        saver = CheckpointSaver(args.continues, args.arch, rank, args.keep_checkpoint_max,
                                args.keep_best_checkpoints_max)
        candidates = saver.resume_candidates(group_size, total, count=args.keep_checkpoint_max)
        path, checkpoint = first_readable(candidates, total, rank)
        source = f'checkpoint {path}'
        check_recorded_arch(checkpoint, args.arch, source)
        _check_same_classes(checkpoint, classes, source, args.data_url)
        load_weights(net, checkpoint, source=source)
        position = start_position(checkpoint, steps_per_epoch)
        if position is None:
            raise UserError(f'{source} has no epoch_num/step_num; resume needs a checkpoint written by train.py')
        saved_steps = integer(checkpoint['steps_per_epoch']) if 'steps_per_epoch' in checkpoint else None
        return _checked(Start(*position, checkpoint, source, saved_steps), args, steps_per_epoch)
    if args.pretrained is not None:
        source = f'checkpoint {args.pretrained}'
        checkpoint = read_training_checkpoint(args.pretrained, args.arch, source)
        dropped = load_weights(net, checkpoint, drop_head_on_mismatch=True, source=source)
        if dropped:
            print(f'=> {source}: classifier of another class count dropped ({", ".join(dropped)}); '
                  f'training starts at epoch 0 with a new {args.num_classes}-class head', flush=True)
        else:
            _note_other_classes(checkpoint, classes, source)
        position = None if (args.exclude_epoch_state or dropped) else start_position(checkpoint, steps_per_epoch)
        if position is None:
            return _checked(Start(args.start_epoch, args.start_step, None, source), args, steps_per_epoch)
        return _checked(Start(*position, checkpoint, source), args, steps_per_epoch)
    return _checked(Start(args.start_epoch, args.start_step), args, steps_per_epoch)


def _check_same_classes(checkpoint, classes, source, data_url):
    recorded = recorded_class_names(checkpoint, source)
    if recorded is not None and classes is not None and recorded != list(classes):
        changed = [f'{index}: {old!r} -> {new!r}' for index, (old, new) in enumerate(zip(recorded, classes))
                   if old != new][:3]
        counts = f'{len(recorded)} classes then, {len(classes)} now' if len(recorded) != len(classes) else ''
        raise UserError(f'{source} was trained on other classes than {data_url}/train holds now '
                        f'({"; ".join(changed) or counts}); resume on the data it started with, or start a new run')


def _note_other_classes(checkpoint, classes, source):
    recorded = recorded_class_names(checkpoint, source)
    if recorded is not None and classes is not None and recorded != list(classes):
        print(f'=> note: {source} was trained on other class names ({recorded[0]!r}, ... vs {classes[0]!r}, ...); '
              f'its classifier is kept (same class count) and trained on the new classes', flush=True)


def _checked(start, args, steps_per_epoch):
    where = start.source or 'start_epoch'
    if not 0 <= start.epoch < args.epochs:
        raise UserError(f'{where} starts at epoch {start.epoch + 1}, but epochs is {args.epochs}: nothing to '
                        f'train; raise epochs, or set exclude_epoch_state: 1 to start counting from 0')
    if not 0 <= start.step < steps_per_epoch:
        raise UserError(f'start_step is {start.step}, but an epoch has {steps_per_epoch} steps; '
                        f'set start_step between 0 and {steps_per_epoch - 1}')
    return start


def first_readable(candidates, total=None, rank=0):
    """(path, checkpoint) of the first of ``candidates`` (newest first) that every rank can read;
    each one passed over is named. With ``total`` all ranks try the same positions in step."""
    errors = []
    for index, path in enumerate(candidates):
        try:
            checkpoint, error = read_checkpoint(path), None
        except UserError as failure:
            checkpoint, error = None, str(failure)
        failed = int(error is not None) if total is None else int(total([float(error is not None)])[0])
        if not failed:
            return path, checkpoint
        errors.append(error or f'{failed} other rank(s) cannot read theirs')
        later = 'falling back to the one before it' if index + 1 < len(candidates) else 'none is left'
        if error is not None:
            print(f'=> note: {error}; {later}', flush=True)
        elif rank == 0:
            print(f'=> note: the checkpoint {Path(path).name} cannot be read on {failed} rank(s) (see their '
                  f'logs); {later}', flush=True)
    raise UserError(f'continues: no checkpoint to resume from can be read ({"; ".join(errors[:2])}); '
                    f'start a new run, or restore the files')


def read_training_checkpoint(path, arch, source):
    """The checkpoint dict, checked to be of ``arch`` when it says which it is."""
    checkpoint = read_checkpoint(path)
    check_recorded_arch(checkpoint, arch, source)
    return checkpoint


def start_position(checkpoint, steps_per_epoch):
    """(epoch index, step) at which training continues after ``checkpoint``, or None if it has none."""
    if 'epoch_num' not in checkpoint or 'step_num' not in checkpoint:
        return None
    epoch_num, step_num = integer(checkpoint['epoch_num']), integer(checkpoint['step_num'])
    saved_steps = integer(checkpoint['steps_per_epoch']) if 'steps_per_epoch' in checkpoint else steps_per_epoch
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
