"""The training loop: steps, loss lines, periodic checkpoints, per-epoch validation, best checkpoints.

Not ``mindspore.train.Model.train``: it starts only at an epoch boundary, while a killed run resumes at
its step, and validation here is sharded over ranks with exact summed metrics. The step is MindSpore's
``TrainOneStepWithLossScaleCell`` (src/ema); the log lines are those of the reference's LossMonitor,
TimeMonitor and evaluation callback (docs/training.md, "What a run writes").
"""
import contextlib
import hashlib
import os
import time

import numpy as np

from src.dataset import resume_batches
from src.tools.base.cli import UserError, restore_ctrl_c
from src.tools.checkpoints.format import train_state
from src.tools.deployment.evaluation import partial_count_line, score


def validate(net, num_classes, dataset, ranks, desc='eval', model='the network'):
    """Validation over this rank's shard, summed over ranks, by eval.py's scoring loop."""
    net.set_train(False)
    batches = dataset.create_tuple_iterator(num_epochs=1)
    return score(lambda images: net(images).asnumpy(), ((images, labels.asnumpy()) for images, labels in batches),
                 num_classes, dataset.get_dataset_size(), reduce=ranks.sum, show_progress=ranks.is_main, desc=desc,
                 source='the validation set', model=model)


def open_sample_log(path):
    """The log_samples file, appended to; a line cut short by a killed run is ended first."""
    cut_short = False
    if os.path.exists(path) and os.path.getsize(path):
        with open(path, 'rb') as existing:
            existing.seek(-1, os.SEEK_END)
            cut_short = existing.read(1) != b'\n'
    handle = open(path, 'a', encoding='utf-8')  # noqa: SIM115  returned open; train.py closes it
    if cut_short:
        handle.write('\n')
    return handle


class Trainer:
    """Runs epochs ``start_epoch``..``epochs - 1`` of one run; see the module docstring."""

    def __init__(self, *, args, train_cell, net, ema, saver, metrics_log, ranks,
                 steps_per_epoch, lr_values, card, sample_log=None, watchdog=None):
        self.args = args
        self.card = card  # the ModelCard every checkpoint records
        self.train_cell = train_cell
        self.net = net
        self.ema = ema
        self.saver = saver
        self.metrics_log = metrics_log
        self.ranks = ranks
        self.steps_per_epoch = steps_per_epoch
        self.lr_values = lr_values
        self.sample_log = sample_log
        self.watchdog = watchdog  # src/tools/training/watchdog.py, under msrun with several ranks
        self.updated_steps = 0  # steps of this run that updated the weights: nothing is saved before the first
        self.bn_statistics = [p for p in train_cell.get_parameters()
                              if p.name.endswith(('moving_mean', 'moving_variance'))]

    def _state(self, epoch_num, step_num, epoch_metrics=None):
        return train_state(self.train_cell, epoch_num, step_num, self.steps_per_epoch, self.card, epoch_metrics)

    def _writing(self):
        """A lost rank stops this one only after the checkpoint being written is complete."""
        return self.watchdog.holding() if self.watchdog is not None else contextlib.nullcontext()

    def save_periodic(self, epoch_num, step_num, epoch_metrics=None):
        return self.saver.save_periodic(*self._state(epoch_num, step_num, epoch_metrics),
                                        all_written=self.ranks.barrier, writing=self._writing())

    def fit(self, train_ds, val_ds, start_epoch, start_step, epoch_metrics=None):
        """Train from (start_epoch, start_step), first recording ``epoch_metrics`` again; {'best', 'last'}."""
        args = self.args
        if epoch_metrics is not None and self.ranks.is_main:
            self.record_epoch(epoch_metrics)
        batches = resume_batches(train_ds, args.epochs, start_epoch, start_step)  # the done steps are not read
        last = None
        for epoch in range(start_epoch, args.epochs):
            first_step = start_step + 1 if epoch == start_epoch else 1
            train_loss, overflows, train_time, steps_run = self._train_epoch(batches, epoch, first_step)
            last = self._end_epoch(epoch, val_ds, train_loss, overflows, train_time, steps_run)
        best = self.saver.best()[0] if self.ranks.is_main and self.saver.best() else None
        return {'best': best, 'last': last}

    def _train_epoch(self, batches, epoch, first_step):
        self.train_cell.set_train(True)
        losses, overflows, steps_run = [], 0, 0
        begin = time.time()
        for step, (images, labels) in enumerate(batches, first_step):
            if self.watchdog is not None:
                self.watchdog.position = f'epoch {epoch + 1} step {step}'
            loss, overflow, _ = self.train_cell(images, labels)
            restore_ctrl_c()
            loss = np.float32(loss.asnumpy())  # printed as the reference's LossMonitor does
            steps_run += 1
            overflowed = bool(overflow.asnumpy())  # the same on every rank: the check sums over ranks
            self.updated_steps += not overflowed
            if overflowed:
                overflows += 1
                print('=============Over Flow, skipping=============', flush=True)
            elif np.isfinite(loss):
                losses.append(float(loss))
            if self.sample_log is not None:
                self._log_samples(epoch + 1, step, images)
            global_step = epoch * self.steps_per_epoch + step
            if global_step % self.args.save_every == 0:
                print(f"epoch: {epoch + 1} step: {step}, loss is {loss!s}", flush=True)
                if step < self.steps_per_epoch and self.updated_steps:  # the epoch's end: after validation
                    self.save_periodic(epoch + 1, step)
        train_time = time.time() - begin
        total, count = self.ranks.sum([sum(losses), len(losses)])
        if count == 0:
            self._nothing_trained(epoch, steps_run)
            return float('nan'), overflows, train_time, steps_run
        return total / count, overflows, train_time, steps_run

    def _nothing_trained(self, epoch, steps_run):
        """No step of the epoch updated the weights: the rule of docs/training.md (a note while the dynamic
        loss scale comes down from 2^24 and the run may still update them, else an error)."""
        if steps_run == 0:
            raise UserError(f'epoch {epoch + 1}: the training data gave no batch (every image failed to decode? '
                            f'see the warnings above, which name the files)')
        scale = float(self.train_cell.scale_sense.asnumpy().reshape(-1)[0])
        amp_hint = f'; amp_level {self.args.amp_level} computes in float16: amp_level O0 avoids that' \
            if self.args.amp_level != 'O0' else ''
        coming_down = self.args.is_dynamic_loss_scale and self.args.amp_level != 'O0' and scale > 1.0
        if coming_down and (self.updated_steps or epoch + 1 < self.args.epochs):
            print(f'=> note: no step of epoch {epoch + 1} updated the weights: all {steps_run} overflowed while the '
                  f'dynamic loss scale came down (now {scale:g}){amp_hint}; nothing is saved before a step '
                  f'updates them', flush=True)
            return
        if coming_down:
            raise UserError(f'epoch {epoch + 1}: no step of this run updated the weights (every gradient overflowed '
                            f'while the dynamic loss scale came down from 2^24, now {scale:g}){amp_hint}; nothing '
                            f'was saved')
        raise UserError(f'epoch {epoch + 1}: none of its {steps_run} steps updated the weights (every gradient '
                        f'overflowed or the loss was not finite){amp_hint}; nothing was saved from this epoch')

    def _end_epoch(self, epoch, val_ds, train_loss, overflows, train_time, steps_run):
        """Validate and print the reference's lines; then the epoch's periodic checkpoint (the resume
        point, carrying the metrics row) first, its record after."""
        args = self.args
        # Each rank's BN statistics come from its own batches: one model for everyone first.
        self.ranks.average_params('bn', self.bn_statistics)
        self._check_finite(epoch)
        with self._validated():
            result = validate(self.net, args.num_classes, val_ds, self.ranks, desc=f'eval epoch {epoch + 1}',
                              model=f"epoch {epoch + 1}: the {'EMA of the ' if args.eval_ema else ''}network")
        skipped = partial_count_line(result['count'], val_ds.image_count, 'the validation set')
        if skipped and self.ranks.is_main:
            print(skipped)
        per_eval = 1000 * result['time'] / max(result['batches'], 1)
        print(f"Eval epoch time: {1000 * result['time']:.3f} ms, per step time: {per_eval:.3f} ms")
        summary = {'acc': result['top1'], 'eval_loss': result['loss'], 'loss': train_loss}
        print(f'Result metrics epoch {epoch + 1}: {summary}')
        per_step = 1000 * train_time / max(steps_run, 1)
        print(f'Train epoch time: {1000 * train_time:.3f} ms, per step time: {per_step:.3f} ms')
        metrics = {'acc': result['top1'], 'top5': result['top5'], 'eval_loss': result['loss'], 'loss': train_loss}
        print(f'Eval result: epoch {epoch + 1}, metrics: {metrics}', flush=True)
        row = {'epoch': epoch + 1, 'lr': float(self.lr_values[(epoch + 1) * self.steps_per_epoch - 1]),
               'train_loss': train_loss, 'eval_loss': result['loss'], 'top1': result['top1'], 'top5': result['top5'],
               'epoch_time_s': train_time, 'eval_time_s': result['time'], 'overflow_steps': overflows,
               'eval_ema': int(bool(args.eval_ema))}
        if self.updated_steps:  # nothing is saved before a step updated the weights
            self.save_periodic(epoch + 1, self.steps_per_epoch, row)
        if self.ranks.is_main:
            self.record_epoch(row)
        return metrics

    def record_epoch(self, row):
        """metrics.csv and curves.png with the epoch's row, and its best checkpoint if it ranks; again
        on resuming at that epoch's end, where a kill may have cut them short."""
        self.metrics_log.add(row)
        if not np.isfinite(row['train_loss']) or row.get('eval_ema') != int(bool(self.args.eval_ema)):
            return  # an epoch that updated no weights is no candidate; nor weights other than those validated
        with self._validated(), self._writing():  # the best checkpoints hold the weights that were validated
            best_path = self.saver.save_best(*self._state(row['epoch'], self.steps_per_epoch), row['epoch'],
                                             row['top1'])
        if best_path is not None:
            print(f'=> new best top-1 {row["top1"]:.4f}: {best_path}', flush=True)

    def _validated(self):
        """The weights validated: the EMA's with eval_ema, else the network's own."""
        return self.ema.applied() if self.args.eval_ema else contextlib.nullcontext()

    def _check_finite(self, epoch):
        """Stop when training diverged, before inf/NaN weights are validated, saved and reported."""
        broken = [param.name for param in self.net.get_parameters() if not np.isfinite(param.asnumpy()).all()]
        if broken:
            raise UserError(f'epoch {epoch + 1}: training diverged: {len(broken)} tensors of the network are no '
                            f'longer finite (e.g. {broken[0]}); lower base_lr or raise batch_size; nothing was '
                            f'saved from this epoch')

    def _log_samples(self, epoch_num, step, images):
        for image in images.asnumpy():
            fingerprint = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=8).hexdigest()
            self.sample_log.write(f'{epoch_num} {step} {fingerprint}\n')
        self.sample_log.flush()
