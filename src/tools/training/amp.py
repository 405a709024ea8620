"""Mixed precision (amp_level O0-O3) with BatchNorm always in float32, and the loss-scale cell.

Levels, as cast by ``Cell.to_float`` (the parameters stay float32; only the computation is cast):
- O0: everything float32, loss scale fixed at 1 (nothing can overflow that scaling would fix).
- O1: convolutions and dense layers in float16, everything else float32.
- O2, O3: the whole network in float16 except BatchNorm.

Why not ``mindspore.amp.auto_mixed_precision``: its O1 rewrites the network's source and fails on
RepVGG (a NameError in the generated code, measured with MindSpore 2.8); its O2 replaces every BN
cell by a wrapper, changing the structure that re-parameterization reads; its O3 casts BN to
float16 too, whose batch statistics then lose precision. The level semantics are the same, so
O3 here equals O2 (the only difference, BN precision, is not negotiable). The loss is cast to
float32 by the criterion (src/tools/training/criterion.py).
"""
from mindspore import nn
from mindspore.common import dtype as mstype

AMP_LEVELS = ('O0', 'O1', 'O2', 'O3')
_FP16_IN_O1 = (nn.Conv2d, nn.Dense)


def cast_amp(net, amp_level):
    """Cast ``net`` in place for ``amp_level`` and return it; BatchNorm stays float32."""
    if amp_level not in AMP_LEVELS:
        raise ValueError(f"unknown amp_level '{amp_level}'; choose one of: {', '.join(AMP_LEVELS)}")
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
    """The scale-update cell of TrainOneStepWithLossScaleCell.

    Dynamic: start at 2^24, halve on overflow, double after 2000 clean steps (the reference's
    values). Fixed: ``loss_scale``, or 1 under O0. A step whose gradients overflow is skipped either way.
    """
    if amp_level == 'O0':
        return nn.FixedLossScaleUpdateCell(loss_scale_value=1.0)
    if is_dynamic:
        return nn.DynamicLossScaleUpdateCell(loss_scale_value=2.0 ** 24, scale_factor=2, scale_window=2000)
    return nn.FixedLossScaleUpdateCell(loss_scale_value=loss_scale)
