"""src/tools/training/criterion.py: losses and eval metrics against numpy."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from src.tools.training.criterion import CrossEntropy, NetWithLoss, get_criterion


def numpy_ce(logits, targets):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-(targets * log_probs).sum(axis=1).mean())


RNG = np.random.default_rng(0)
LOGITS = RNG.normal(0, 3, (6, 7)).astype(np.float32)
LABELS = np.array([0, 6, 3, 3, 1, 5], np.int32)
ONE_HOT = np.eye(7)[LABELS]


def test_plain_cross_entropy():
    loss = get_criterion(0.0, soft_targets=False)(Tensor(LOGITS), Tensor(LABELS))
    assert float(loss.asnumpy()) == pytest.approx(numpy_ce(LOGITS, ONE_HOT), rel=1e-5)


def test_label_smoothing_spreads_s_over_the_classes():
    s = 0.1
    loss = get_criterion(s, soft_targets=False)(Tensor(LOGITS), Tensor(LABELS))
    expected = numpy_ce(LOGITS, ONE_HOT * (1 - s) + s / 7)
    assert float(loss.asnumpy()) == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(numpy_ce(LOGITS, ONE_HOT), rel=1e-3)


def test_soft_targets_are_used_as_given_without_smoothing_them_again():
    soft = RNG.dirichlet(np.ones(7), 6).astype(np.float32)
    criterion = get_criterion(0.1, soft_targets=True)  # mixup targets are already smoothed
    loss = criterion(Tensor(LOGITS), Tensor(soft))
    assert float(loss.asnumpy()) == pytest.approx(numpy_ce(LOGITS, soft), rel=1e-5)


def test_loss_is_float32_for_float16_logits():
    net = nn.Dense(4, 3).to_float(ms.float16)
    loss = NetWithLoss(net, CrossEntropy())(Tensor(np.ones((2, 4), np.float32)), Tensor(np.array([0, 2], np.int32)))
    assert loss.dtype == ms.float32
