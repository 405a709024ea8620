"""Mixed precision (amp_level O0-O3) with BatchNorm always in float32, and the loss-scale cell.

Not ``mindspore.amp.auto_mixed_precision``: its O1 fails on RepVGG (a NameError in the code it
generates), its O2 wraps every BN cell, changing what re-parameterization reads, and its O3 casts BN
to float16 (docs/training.md). The loss is cast to float32 by the criterion.
"""
from mindspore import nn
from mindspore.common import dtype as mstype

_FP16_IN_O1 = (nn.Conv2d, nn.Dense)


def cast_amp(net, amp_level):
    """Cast ``net`` in place for ``amp_level`` and return it; BatchNorm stays float32."""
    if amp_level == 'O0':
        return net
    if amp_level == 'O1':
        for _, cell in net.cells_and_names():
            if isinstance(cell, _FP16_IN_O1):
                cell.to_float(mstype.float16)
        return net
    net.to_float(mstype.float16)
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.BatchNorm2d):
            cell.to_float(mstype.float32)
    return net


def loss_scale_cell(amp_level, loss_scale, is_dynamic):
    """Dynamic loss scale from 2^24 (the reference's), or fixed at ``loss_scale`` (1 under O0)."""
    if amp_level == 'O0':
        return nn.FixedLossScaleUpdateCell(loss_scale_value=1.0)
    if is_dynamic:
        return nn.DynamicLossScaleUpdateCell(loss_scale_value=2.0 ** 24, scale_factor=2, scale_window=2000)
    return nn.FixedLossScaleUpdateCell(loss_scale_value=loss_scale)
