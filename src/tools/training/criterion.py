"""Training loss: soft-target, label-smoothing or plain cross-entropy (eval metrics:
src/tools/deployment/evaluation.py).

The loss is always computed in float32: logits are cast before the softmax, so AMP levels that
run the network in float16 do not compute the log-sum-exp in float16.
"""
import mindspore as ms
from mindspore import nn, ops


class CrossEntropy(nn.Cell):
    """Mean cross-entropy in float32 for class indices (int) or soft targets (float, one row per image).

    MindSpore's nn.CrossEntropyLoss already handles both target kinds and label smoothing
    (off = s / C, on = 1 - s + s / C); this cell only adds the float32 cast.
    """

    def __init__(self, label_smoothing=0.0, reduction='mean'):
        super().__init__()
        self.loss = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=label_smoothing)

    def construct(self, logits, labels):
        return self.loss(ops.cast(logits, ms.float32), labels)


def get_criterion(label_smoothing, soft_targets):
    """Soft-target CE when the data gives mixup/cutmix targets (already smoothed by the mixing),
    else label-smoothing CE when label_smoothing > 0, else plain CE."""
    return CrossEntropy(0.0 if soft_targets else label_smoothing)


class NetWithLoss(nn.Cell):
    """network + criterion; keeps the network's parameter names (no prefix)."""

    def __init__(self, network, criterion):
        super().__init__(auto_prefix=False)
        self.network = network
        self.criterion = criterion

    def construct(self, images, labels):
        return self.criterion(self.network(images), labels)
