"""Exponential moving average of a network's tensors: ema = d * ema + (1 - d) * w.

The average covers every network tensor, trainable weights and BN moving statistics alike
(as timm's ModelEmaV2 does), so the averaged weights are evaluated with statistics that belong
to them. The copies are named ``ema.<name>``; a checkpoint that holds them can be loaded into a
plain network with ``load_weights(net, path, prefix='ema.')``.
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
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f'ema_decay must be in [0, 1], got {decay}')
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
        """Inside the block the network holds the averaged tensors; the live ones come back after.

        Copies, not views: on CPU ``asnumpy`` may share the parameter's memory, and ``set_data``
        writes into it.
        """
        live = [weight.asnumpy().copy() for weight in self.weights]
        for shadow, weight in zip(self.shadow, self.weights, strict=True):
            weight.set_data(Tensor(shadow.asnumpy().copy()))
        try:
            yield
        finally:
            for value, weight in zip(live, self.weights, strict=True):
                weight.set_data(Tensor(value))
