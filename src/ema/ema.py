"""Exponential moving average of every network tensor, BN moving statistics included (as timm's
ModelEmaV2), as ``ema.<name>`` copies: ``load_weights(net, path, prefix='ema.')`` loads them.
"""
import contextlib

import mindspore as ms
from mindspore import Tensor, nn, ops

_ema_update = ops.MultitypeFuncGraph('ema_update')


@_ema_update.register('Tensor', 'Tensor', 'Tensor')
def _update(decay, shadow, weight):
    return ops.assign(shadow, decay * shadow + (1.0 - decay) * weight)


class EMA(nn.Cell):
    """Holds ``ema.*`` copies of ``params``; calling the cell applies one update (graph-safe)."""

    def __init__(self, params, decay):
        super().__init__()
        self.weights = ms.ParameterTuple(params)
        self.shadow = self.weights.clone(prefix='ema', init='same')
        for shadow in self.shadow:
            shadow.requires_grad = False
        self.decay = Tensor(decay, ms.float32)
        self.hyper_map = ops.HyperMap()

    def construct(self):
        return self.hyper_map(ops.partial(_ema_update, self.decay), self.shadow, self.weights)

    @contextlib.contextmanager
    def applied(self):
        """Inside the block the network holds the averaged tensors, the live ones after (copies: on CPU
        ``asnumpy`` may share the parameter's memory, which ``set_data`` writes into)."""
        live = [weight.asnumpy().copy() for weight in self.weights]
        for shadow, weight in zip(self.shadow, self.weights, strict=True):
            weight.set_data(Tensor(shadow.asnumpy().copy()))
        try:
            yield
        finally:
            for value, weight in zip(live, self.weights, strict=True):
                weight.set_data(Tensor(value))
