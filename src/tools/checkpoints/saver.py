"""Where a run's checkpoints go: their names in the run folder, and which are kept.

- periodic, every ``save_every`` steps and at each epoch's end, per rank:
  ``<arch>_<rank>-<epoch_num>_<step_num>.ckpt`` (MindSpore ModelCheckpoint's pattern); the
  ``keep_checkpoint_max`` newest of each rank are kept, older ones only deleted once every rank has
  written the new one (so the ranks always share a position to resume from, even with 1 kept);
- best, after each epoch's validation, rank 0: ``<arch>_epoch=<E>_acc=<top-1, 4 decimals>.ckpt``;
  the ``keep_best_checkpoints_max`` best by top-1 are kept (on a tie the older stays). They hold
  the weights that were validated: with ``eval_ema`` the EMA weights are under the network names.

What is inside a checkpoint and how it is written: src/tools/checkpoints/format.py; which one a
run resumes from: src/tools/training/resume.py.
"""
import contextlib
import re
from pathlib import Path

from src.tools.base.cli import UserError
from src.tools.checkpoints.format import save_checkpoint


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

    def save_periodic(self, entries, append_dict, all_written=None, writing=None):
        """Write this rank's checkpoint, then delete its old ones beyond ``keep_last``;
        ``all_written()`` (a barrier over ranks) returns once every rank has written its own.
        ``writing``: a context held during the write only (the training watchdog's)."""
        with writing or contextlib.nullcontext():
            path = self.write_periodic(entries, append_dict)
        if all_written is not None:
            all_written()
        self.prune_periodic()
        return path

    def write_periodic(self, entries, append_dict):
        return save_checkpoint(entries, self.periodic_path(append_dict['epoch_num'], append_dict['step_num']),
                               append_dict)

    def prune_periodic(self):
        mine = self.periodic()
        for position in sorted(mine)[:-self.keep_last]:
            mine[position].unlink(missing_ok=True)

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
        """Write the epoch's checkpoint if it ranks among the best and is not there yet (a resumed
        run writes again what a kill may have lost); prune; the path or None."""
        if self.best_path(epoch, acc).exists() or not self.is_best(acc):
            return None
        path = save_checkpoint(entries, self.best_path(epoch, acc), append_dict)
        for _, _, old in self.best()[self.keep_best:]:
            old.unlink(missing_ok=True)
        return path

    def forget_after(self, epoch_num):
        """Delete best checkpoints of epochs after ``epoch_num`` (a resumed run redoes them)."""
        for _, epoch, path in self.best():
            if epoch > epoch_num:
                path.unlink(missing_ok=True)
