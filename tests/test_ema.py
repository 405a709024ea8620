"""src/ema: the EMA update formula, swapping the averaged weights in, and the training step
(EMA only after successful steps, overflowing steps skipped, the schedule index still advancing)."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from src.config import make_config
from src.ema.ema import EMA
from src.ema.train_one_step_with_ema import TrainOneStepWithEMA
from src.tools.training.amp import loss_scale_cell
from src.tools.training.criterion import CrossEntropy, NetWithLoss
from src.tools.training.optimizer import get_optimizer


def small_net():
    ms.set_seed(1)
    return nn.SequentialCell([nn.Dense(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Dense(4, 3)])


def values(params):
    return [p.asnumpy().copy() for p in params]


def test_update_is_decay_times_average_plus_rest_times_weights():
    net = small_net()
    ema = EMA(net.get_parameters(), decay=0.9)
    assert [s.name for s in ema.shadow] == ['ema.' + p.name for p in net.get_parameters()]
    expected = values(ema.shadow)
    rng = np.random.default_rng(0)
    for _ in range(3):
        for param in net.get_parameters():
            param.set_data(Tensor(rng.normal(size=param.shape).astype(np.float32)))
        ema()
        expected = [0.9 * e + 0.1 * w for e, w in zip(expected, values(net.get_parameters()), strict=True)]
        for got, want in zip(values(ema.shadow), expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # BN moving statistics are averaged too.
    assert any(s.name.endswith('moving_variance') for s in ema.shadow)


def test_applied_swaps_the_average_in_and_restores_the_live_weights():
    net = small_net()
    ema = EMA(net.get_parameters(), decay=0.5)
    live = values(net.get_parameters())
    for shadow in ema.shadow:
        shadow.set_data(Tensor(np.full(shadow.shape, 7.0, np.float32)))
    with ema.applied():
        assert all(np.all(v == 7.0) for v in values(net.get_parameters()))
    for got, want in zip(values(net.get_parameters()), live, strict=True):
        np.testing.assert_array_equal(got, want)


def make_step(net, amp_level='O2', decay=0.5):
    args = make_config(weight_decay=0.0, momentum=0.9)
    optimizer = get_optimizer(args, net, np.full(10, 0.1, np.float32))
    ema = EMA(net.get_parameters(), decay)
    cell = TrainOneStepWithEMA(NetWithLoss(net, CrossEntropy()), optimizer,
                               loss_scale_cell(amp_level, 1024.0, True), ema)
    cell.set_train(True)
    return cell, optimizer, ema


X = Tensor(np.random.default_rng(2).normal(size=(6, 3)).astype(np.float32))
Y = Tensor(np.array([0, 1, 2, 0, 1, 2], np.int32))


def test_successful_step_updates_weights_then_ema():
    net = small_net()
    cell, optimizer, ema = make_step(net)
    before = values(ema.shadow)
    loss, overflow, scale = cell(X, Y)
    assert not bool(overflow.asnumpy()) and np.isfinite(loss.asnumpy())
    assert float(scale.asnumpy()) == 2.0 ** 24
    after_weights = values(net.get_parameters())
    for got, old, weight in zip(values(ema.shadow), before, after_weights, strict=True):
        np.testing.assert_allclose(got, 0.5 * old + 0.5 * weight, rtol=1e-5, atol=1e-6)
    assert int(optimizer.global_step.asnumpy()[0]) == 1


@pytest.mark.slow
def test_overflowing_step_is_skipped_but_the_schedule_advances():
    net = small_net()
    cell, optimizer, ema = make_step(net)
    cell(X, Y)
    weights, shadow = values(net.trainable_params()), values(ema.shadow)
    moments = values(optimizer.moments)
    bad = Tensor(np.full((6, 3), np.inf, np.float32))
    _, overflow, scale = cell(bad, Y)
    assert bool(overflow.asnumpy())
    assert float(scale.asnumpy()) == 2.0 ** 23          # dynamic scale halves
    for got, want in zip(values(net.trainable_params()) + values(ema.shadow) + values(optimizer.moments),
                         [*weights, *shadow, *moments], strict=True):
        np.testing.assert_array_equal(got, want)
    assert int(optimizer.global_step.asnumpy()[0]) == 2  # lr index stays aligned with the data


@pytest.mark.slow
def test_o0_uses_a_fixed_unit_loss_scale():
    net = small_net()
    cell, _, _ = make_step(net, amp_level='O0')
    _, _, scale = cell(X, Y)
    assert float(scale.asnumpy()) == 1.0
