"""Training loss: cross-entropy in float32 (logits cast before the softmax, whatever the AMP level)."""
import mindspore as ms
from mindspore import nn, ops


class CrossEntropy(nn.Cell):
    """MindSpore's nn.CrossEntropyLoss (class indices or soft targets, label smoothing) in float32."""

    def __init__(self, label_smoothing=0.0, reduction='mean'):
        super().__init__()
        self.loss = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=label_smoothing)

    def construct(self, logits, labels):
        return self.loss(ops.cast(logits, ms.float32), labels)


def get_criterion(label_smoothing, soft_targets):
    """Cross-entropy, label-smoothed unless the data gives mixup/cutmix targets (smoothed by the mixing)."""
    return CrossEntropy(0.0 if soft_targets else label_smoothing)


class NetWithLoss(nn.Cell):
    """network + criterion; keeps the network's parameter names (no prefix)."""

    def __init__(self, network, criterion):
        super().__init__(auto_prefix=False)
        self.network = network
        self.criterion = criterion

    def construct(self, images, labels):
        return self.criterion(self.network(images), labels)
