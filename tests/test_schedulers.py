"""src/tools/training/schedulers.py: every schedule against its formula (the MindSpore model zoo RepVGG's, written
out in the module's docstring) at several steps."""
import math

import numpy as np
import pytest

from src.config import make_config
from src.tools.training.schedulers import lr_at, lr_schedule

STEPS = 10  # steps per epoch


def config(**overrides):
    values = dict(base_lr=0.1, epochs=6, warmup_length=0, warmup_lr=0.001, min_lr=0.0, lr_gamma=0.5,
                  lr_adjust=2, lr_scheduler='cosine_lr')
    values.update(overrides)
    return make_config(**values)


def epoch_of(step):
    return step / STEPS


@pytest.mark.parametrize('step', [0, 1, 9, 10, 25, 59])
def test_cosine_matches_formula_after_warmup(step):
    args = config(warmup_length=2)
    e = epoch_of(step)
    warmup = 0.001 + (0.1 - 0.001) * e / 2
    cosine = 0.5 * (1 + math.cos(math.pi * (e - 2) / (6 - 2))) * 0.1
    expected = warmup if e < 2 else cosine
    assert lr_schedule(args, STEPS)[step] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize('step', [0, 3, 17, 42, 59])
def test_exp_lr_is_gamma_to_the_fractional_epoch(step):
    args = config(lr_scheduler='exp_lr')
    assert lr_schedule(args, STEPS)[step] == pytest.approx(0.1 * 0.5 ** epoch_of(step), rel=1e-6)


@pytest.mark.parametrize('step', [0, 7, 20, 33, 59])
def test_multistep_lr_is_continuous_as_in_the_reference(step):
    args = config(lr_scheduler='multistep_lr')
    assert lr_schedule(args, STEPS)[step] == pytest.approx(0.1 * 0.5 ** (epoch_of(step) / 2), rel=1e-6)


def test_constant_lr_with_warmup_rises_linearly_then_stays():
    values = lr_schedule(config(lr_scheduler='constant_lr', warmup_length=1), STEPS)
    np.testing.assert_allclose(values[:STEPS], 0.001 + (0.1 - 0.001) * np.arange(STEPS) / STEPS, rtol=1e-6)
    np.testing.assert_allclose(values[STEPS:], 0.1, rtol=1e-6)


def test_min_lr_clips_from_below_only():
    values = lr_schedule(config(min_lr=0.02), STEPS)
    unclipped = lr_schedule(config(min_lr=0.0), STEPS)
    np.testing.assert_allclose(values, np.maximum(unclipped, 0.02), rtol=1e-6)
    assert values.min() == pytest.approx(0.02) and values.max() == pytest.approx(0.1)


def test_one_value_per_step_of_the_whole_run():
    values = lr_schedule(config(), STEPS)
    assert values.shape == (6 * STEPS,) and values.dtype == np.float32
    assert values[0] == pytest.approx(0.1)          # cosine starts at base_lr
    assert values[-1] < values[len(values) // 2] < values[0]


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match='cosine_lr'):
        lr_at(0.5, 'linear_lr', base_lr=0.1, epochs=2)
