"""Learning-rate schedules, one value per training step: pure functions of the fractional epoch
e = epoch + step / steps_per_epoch, with a linear warm-up and ``min_lr`` below (docs/training.md).
"""
import math

import numpy as np

SCHEDULES = ('constant_lr', 'cosine_lr', 'exp_lr', 'multistep_lr')


def warmup_lr(epoch, warmup_length, warmup_lr_value, base_lr):
    """Linear warm-up: warmup_lr at epoch 0, base_lr at epoch warmup_length."""
    return warmup_lr_value + (base_lr - warmup_lr_value) * epoch / warmup_length


def constant_lr(_epoch, base_lr, **_):
    return base_lr


def cosine_lr(epoch, base_lr, epochs, warmup_length=0.0, **_):
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_length) / (epochs - warmup_length))) * base_lr


def exp_lr(epoch, base_lr, lr_gamma, **_):
    return base_lr * lr_gamma ** epoch


def multistep_lr(epoch, base_lr, lr_gamma, lr_adjust, **_):
    return base_lr * lr_gamma ** (epoch / lr_adjust)


_FORMULAS = {'constant_lr': constant_lr, 'cosine_lr': cosine_lr, 'exp_lr': exp_lr, 'multistep_lr': multistep_lr}


def lr_at(epoch, name, *, base_lr, epochs, warmup_length=0.0, warmup_lr_value=0.0, lr_gamma=0.97,
          lr_adjust=30.0, min_lr=0.0):
    """The learning rate of schedule ``name`` at fractional epoch ``epoch``."""
    if name not in _FORMULAS:
        raise ValueError(f"unknown lr_scheduler '{name}'; choose one of: {', '.join(SCHEDULES)}")
    if epoch < warmup_length:
        value = warmup_lr(epoch, warmup_length, warmup_lr_value, base_lr)
    else:
        value = _FORMULAS[name](epoch, base_lr=base_lr, epochs=epochs, warmup_length=warmup_length,
                                lr_gamma=lr_gamma, lr_adjust=lr_adjust)
    return max(value, min_lr)


def lr_schedule(args, steps_per_epoch):
    """float32 array of epochs * steps_per_epoch rates; the optimizer reads entry global_step."""
    kwargs = dict(base_lr=args.base_lr, epochs=args.epochs, warmup_length=args.warmup_length,
                  warmup_lr_value=args.warmup_lr, lr_gamma=args.lr_gamma, lr_adjust=args.lr_adjust,
                  min_lr=args.min_lr)
    values = [lr_at(step / steps_per_epoch, args.lr_scheduler, **kwargs)
              for step in range(args.epochs * steps_per_epoch)]
    return np.asarray(values, np.float32)
