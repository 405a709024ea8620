"""One training step: MindSpore's ``nn.TrainOneStepWithLossScaleCell`` (scaling, gradient mean over
ranks, loss-scale update) plus the EMA update after each successful step. Replaced: the overflow
check (MindSpore's takes the Ascend path on CPU, which does not exist there: here IsFinite over the
gradients, summed over ranks) and the step counter, which advances on a skipped step too, so that the
per-step learning rates stay aligned with the data.
"""
import mindspore as ms
from mindspore import nn, ops

_grad_scale = ops.MultitypeFuncGraph('grad_scale')


@_grad_scale.register('Tensor', 'Tensor')
def _tensor_grad_scale(scale, grad):
    return grad * ops.cast(ops.reciprocal(scale), ops.dtype(grad))


_not_finite = ops.MultitypeFuncGraph('not_finite')


@_not_finite.register('Tensor')
def _tensor_not_finite(grad):
    return ops.cast(ops.logical_not(ops.isfinite(grad)).any(), ms.float32)


class TrainOneStepWithEMA(nn.TrainOneStepWithLossScaleCell):
    """Returns (loss, overflow, loss scale) like its parent; ``ema`` is an EMA cell or None."""

    def __init__(self, network, optimizer, scale_sense, ema=None):
        super().__init__(network, optimizer, scale_sense)
        self.ema = ema
        self.with_ema = ema is not None

    def get_overflow_status(self, _status, compute_output):
        flag = ops.AddN()(self.hyper_map(_not_finite, compute_output))
        if self.is_distributed:
            flag = self.allreduce(flag)
        return flag > 0

    def construct(self, *inputs):
        loss = self.network(*inputs)
        scaling_sens = self.scale_sense
        scaling_sens_filled = ops.ones_like(loss) * ops.cast(scaling_sens, ops.dtype(loss))
        grads = self.grad(self.network, self.weights)(*inputs, scaling_sens_filled)
        grads = self.hyper_map(ops.partial(_grad_scale, scaling_sens), grads)
        grads = self.grad_reducer(grads)
        overflow = self.get_overflow_status(None, grads)
        overflow = self.process_loss_scale(overflow)
        if not overflow:
            loss = ops.depend(loss, self.optimizer(grads))
            if self.with_ema:
                loss = ops.depend(loss, self.ema())
        else:
            step = self.optimizer.global_step
            loss = ops.depend(loss, ops.assign_add(step, ops.ones_like(step)))
        return loss, overflow, scaling_sens
