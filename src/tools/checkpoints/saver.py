"""Where a run's checkpoints go: their names in the run folder, and which are kept (docs/training.md).

Periodic ones (every rank, MindSpore ModelCheckpoint's names) are pruned only once every rank has
written the new one, so that the ranks always share a position to resume from.
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
        """Write this rank's checkpoint (inside ``writing``, the watchdog's hold), then, once ``all_written()``
        (a barrier over ranks) returns, delete its old ones beyond ``keep_last``."""
        with writing or contextlib.nullcontext():
            path = save_checkpoint(entries, self.periodic_path(append_dict['epoch_num'], append_dict['step_num']),
                                   append_dict)
        if all_written is not None:
            all_written()
        mine = self.periodic()
        for position in sorted(mine)[:-self.keep_last]:
            mine[position].unlink(missing_ok=True)
        return path

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

    def save_best(self, entries, append_dict, epoch, acc):
        """Write the epoch's checkpoint if it ranks among the best (at the 4 decimals of the names) and
        is not there yet (a resumed run writes again what a kill may have lost); prune; the path or None."""
        kept = self.best()
        ranks = self.keep_best > 0 and (len(kept) < self.keep_best or round(acc, 4) > kept[self.keep_best - 1][0])
        if self.best_path(epoch, acc).exists() or not ranks:
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
