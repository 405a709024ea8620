"""Where a run starts, in one place: ``start_run`` returns the position, the state to restore, the
run folder, its checkpoint saver and its metrics log; train.py calls it once. What ``continues``,
``pretrained`` and a fresh start each do: docs/training.md, "Resuming"; several ranks too.
"""
from dataclasses import dataclass
from pathlib import Path

import mindspore as ms
import yaml

from src.config import OPTION_BY_NAME
from src.tools.base.cli import UserError
from src.tools.base.files import remove_partial_files
from src.tools.checkpoints.format import (
    EMA_PREFIX,
    check_recorded_arch,
    integer,
    load_weights,
    read_checkpoint,
    recorded_class_names,
    recorded_epoch_metrics,
)
from src.tools.checkpoints.saver import CheckpointSaver
from src.tools.training.distributed import Ranks
from src.tools.training.run_folder import MetricsLog, new_run_folder

# Train-cell state restored on resume (the network tensors are loaded by load_weights).
_RESTORED_PREFIXES = ('moments.', 'adam_m.', 'adam_v.', EMA_PREFIX)
_RESTORED_NAMES = ('scale_sense', 'current_iterator_step', 'last_overflow_iterator_step')

# The settings that define the per-step learning rates (src/tools/training/schedulers.py); with the
# steps per epoch (batch size, number of ranks, training images) they fix the rate of every step.
SCHEDULE_KEYS = ('epochs', 'batch_size', 'lr_scheduler', 'base_lr', 'warmup_length', 'warmup_lr', 'min_lr',
                 'lr_adjust', 'lr_gamma')


@dataclass
class Start:
    epoch: int                  # 0-based epoch to start in
    step: int                   # steps of that epoch already taken
    folder: Path = None         # the run folder
    saver: CheckpointSaver = None
    metrics_log: MetricsLog = None
    checkpoint: dict = None     # whose optimizer / EMA state to restore (restore_state), if any
    source: str = None          # for the log line
    epoch_metrics: dict = None  # continues from an epoch's end: its metrics row, to be written again


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


def start_run(args, net, steps_per_epoch, ranks=None, classes=None):
    """Load what the run starts from into ``net``; the Start: where, from what, into which folder."""
    ranks = ranks or Ranks()
    if args.continues is not None:
        return _resume(args, net, steps_per_epoch, ranks, classes)
    start = starting_point(args, net, steps_per_epoch, classes)
    start.folder = new_run_folder(args.train_url, args.arch, args.brief, ranks)
    start.saver = CheckpointSaver(start.folder, args.arch, ranks.rank, args.keep_checkpoint_max,
                                  args.keep_best_checkpoints_max)
    start.metrics_log = MetricsLog(start.folder)
    return start


def _resume(args, net, steps_per_epoch, ranks, classes):
    folder = Path(args.continues)
    remove_partial_files(folder, '.' if ranks.is_main else f'.{args.arch}_{ranks.rank}-')  # each machine its own
    saver = CheckpointSaver(folder, args.arch, ranks.rank, args.keep_checkpoint_max, args.keep_best_checkpoints_max)
    candidates = resume_candidates(saver, ranks.group_size, ranks, count=args.keep_checkpoint_max)
    path, checkpoint = first_readable(candidates, ranks.sum, ranks.rank)
    source = f'checkpoint {path}'
    check_recorded_arch(checkpoint, args.arch, source)
    recorded = _other_classes(checkpoint, classes, source)
    if recorded is not None:
        pairs = enumerate(zip(recorded, classes, strict=False))  # the counts may differ: said below
        changed = [f'{index}: {old!r} -> {new!r}' for index, (old, new) in pairs if old != new][:3]
        counts = f'{len(recorded)} classes then, {len(classes)} now' if len(recorded) != len(classes) else ''
        raise UserError(f'{source} was trained on other classes than {args.data_url}/train holds now '
                        f'({"; ".join(changed) or counts}); resume on the data it started with, or start a new run')
    load_weights(net, checkpoint, source=source)
    position = start_position(checkpoint, steps_per_epoch)
    if position is None:
        raise UserError(f'{source} has no epoch_num/step_num; resume needs a checkpoint written by train.py')
    start = _checked(Start(*position, folder, saver, MetricsLog(folder), checkpoint, source,
                           recorded_epoch_metrics(checkpoint)), args, steps_per_epoch)
    saved_steps = integer(checkpoint['steps_per_epoch']) if 'steps_per_epoch' in checkpoint else None
    check_schedule(folder, args, saved_steps, steps_per_epoch, ranks)
    if ranks.is_main:  # the epochs after the position are redone
        start.metrics_log.keep_until(start.epoch)
        saver.forget_after(start.epoch)
    return start


def starting_point(args, net, steps_per_epoch, classes=None):
    """Where a new run starts (its weights loaded into ``net``): fresh, or from ``pretrained``."""
    if args.pretrained is None:
        return _checked(Start(args.start_epoch, args.start_step), args, steps_per_epoch)
    source = f'checkpoint {args.pretrained}'
    checkpoint = read_checkpoint(args.pretrained)
    check_recorded_arch(checkpoint, args.arch, source)
    dropped = load_weights(net, checkpoint, drop_head_on_mismatch=True, source=source)
    recorded = None if dropped else _other_classes(checkpoint, classes, source)
    if dropped:
        print(f'=> {source}: classifier of another class count dropped ({", ".join(dropped)}); '
              f'training starts at epoch 0 with a new {args.num_classes}-class head', flush=True)
    elif recorded is not None:
        print(f'=> note: {source} was trained on other class names ({recorded[0]!r}, ... vs {classes[0]!r}, ...); '
              f'its classifier is kept (same class count) and trained on the new classes', flush=True)
    position = None if (args.exclude_epoch_state or dropped) else start_position(checkpoint, steps_per_epoch)
    if position is None:
        return _checked(Start(args.start_epoch, args.start_step, source=source), args, steps_per_epoch)
    return _checked(Start(*position, checkpoint=checkpoint, source=source), args, steps_per_epoch)


def _other_classes(checkpoint, classes, source):
    """The class names the checkpoint records when they are not ``classes``, else None."""
    recorded = recorded_class_names(checkpoint, source)
    return recorded if recorded is not None and classes is not None and recorded != list(classes) else None


def _checked(start, args, steps_per_epoch):
    where = start.source or 'start_epoch'
    if not 0 <= start.epoch < args.epochs:
        raise UserError(f'{where} starts at epoch {start.epoch + 1}, but epochs is {args.epochs}: nothing to '
                        f'train; raise epochs, or set exclude_epoch_state: 1 to start counting from 0')
    if not 0 <= start.step < steps_per_epoch:
        raise UserError(f'start_step is {start.step}, but an epoch has {steps_per_epoch} steps; '
                        f'set start_step between 0 and {steps_per_epoch - 1}')
    return start


def resume_candidates(saver, group_size, ranks=None, count=None):
    """This rank's checkpoints at the positions every rank reached, newest first, else rank 0's newest (the
    group size changed). Without ``ranks`` one folder holds every rank's files; with them each rank looks
    at its own (docs/training.md, "Resuming"), a sum over ranks counting who has each (exact in float32)."""
    mine = saver.periodic()
    if ranks is None or group_size == 1:
        per_rank = [saver.periodic(rank) for rank in range(group_size)]
        common = sorted(set(per_rank[0]).intersection(*per_rank[1:]), reverse=True)
        rank0_newest = max(per_rank[0]) if per_rank[0] else None
    else:
        count = max(int(count or 0), 1)
        newest = sorted(mine, reverse=True)[:count] if saver.rank == 0 else []
        named = ranks.from_main([list(position) for position in newest] + [[0, 0]] * (count - len(newest)))
        positions = [(epoch, step) for epoch, step in named if epoch > 0]
        held = ranks.sum([float(position in mine) for position in positions] + [0.0] * (count - len(positions)))
        common = [position for position, holders in zip(positions, held, strict=False) if int(holders) == group_size]
        rank0_newest = positions[0] if positions else None
    if common:
        return [mine[position] for position in common]
    if rank0_newest is not None:
        return [saver.periodic_path(*rank0_newest, rank=0)]
    raise UserError(f'continues: nothing to resume yet: {saver.folder} holds no periodic checkpoint '
                    f'{saver.arch}_<rank>-<epoch>_<step>.ckpt (the run stopped before its first one was '
                    f'complete, or it is no run folder of {saver.arch}); start again without continues')


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


def start_position(checkpoint, steps_per_epoch):
    """(epoch index, step) at which training continues after ``checkpoint``, or None if it has none."""
    if 'epoch_num' not in checkpoint or 'step_num' not in checkpoint:
        return None
    epoch_num, step_num = integer(checkpoint['epoch_num']), integer(checkpoint['step_num'])
    saved_steps = integer(checkpoint['steps_per_epoch']) if 'steps_per_epoch' in checkpoint else steps_per_epoch
    if step_num >= saved_steps:
        return epoch_num, 0
    return epoch_num - 1, min(step_num, steps_per_epoch - 1)


def last_config(folder):
    """The settings ``folder``'s run last ran with (its newest config copy); {} without one."""
    copies = sorted(Path(folder).glob('config_resumed_*.yaml'), key=lambda path: int(path.stem.rsplit('_', 1)[1])
                    if path.stem.rsplit('_', 1)[1].isdigit() else 0)
    for path in [*copies[::-1], Path(folder) / 'config.yaml']:
        if path.is_file():
            try:
                return yaml.safe_load(path.read_text(encoding='utf-8')) or {}
            except yaml.YAMLError:
                continue
    return {}


def schedule_changes(folder, args, saved_steps_per_epoch=None, steps_per_epoch=None):
    """[(setting, before, now)] where resuming ``folder`` with ``args`` changes the learning rates."""
    saved = last_config(folder)
    changes = []
    for key in SCHEDULE_KEYS:
        if key in saved:
            try:
                before = OPTION_BY_NAME[key].convert(saved[key])
            except (TypeError, ValueError):
                before = saved[key]
            if before != getattr(args, key):
                changes.append((key, before, getattr(args, key)))
    if saved_steps_per_epoch is not None and steps_per_epoch is not None and saved_steps_per_epoch != steps_per_epoch:
        changes.append(('steps per epoch', saved_steps_per_epoch, steps_per_epoch))
    return changes


def check_schedule(folder, args, saved_steps_per_epoch, steps_per_epoch, ranks):
    """Refuse a ``continues`` that would change the learning-rate schedule mid-run, unless
    ``allow_schedule_change``. Rank 0 decides: only its machine is sure to hold the config copy."""
    changes = schedule_changes(folder, args, saved_steps_per_epoch, steps_per_epoch)
    (changed,) = ranks.from_main([int(bool(changes))])
    if not changed:
        return
    listed = ', '.join(f'{key} {before} -> {now}' for key, before, now in changes) or 'see rank 0'
    if not args.allow_schedule_change:
        raise UserError(f'continues: the learning-rate schedule of {folder} would change mid-run ({listed}); '
                        f'resume with the settings of its config.yaml, or set allow_schedule_change: 1 to go on '
                        f'with the new schedule from the checkpoint\'s step')
    if ranks.is_main:
        print(f'=> note: the learning-rate schedule changes from here on ({listed}; allow_schedule_change)',
              flush=True)


def restore_state(train_cell, checkpoint):
    """Copy optimizer, loss-scale and EMA state of ``checkpoint`` into ``train_cell``; the names."""
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
