"""src/tools/training/amp.py: which cells compute in float16 at each level; BN always float32."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from src.config import make_config
from src.ema.train_one_step_with_ema import TrainOneStepWithEMA
from src.repvgg import create_model
from src.tools.training.amp import cast_amp, loss_scale_cell
from src.tools.training.criterion import CrossEntropy, NetWithLoss
from src.tools.training.optimizer import get_optimizer


def precision(cell):
    flags = cell.get_flags()
    return 'fp16' if flags.get('fp16') else 'fp32' if flags.get('fp32') else 'default'


@pytest.mark.parametrize('level, conv, relu', [('O0', 'default', 'default'), ('O1', 'fp16', 'default'),
                                               ('O2', 'fp16', 'fp16'), ('O3', 'fp16', 'fp16')])
def test_levels_cast_convs_and_keep_batchnorm_float32(level, conv, relu):
    net = cast_amp(create_model('RepVGG-A0', num_classes=10), level)
    block = net.stage2[1]
    assert precision(block.rbr_dense.conv) == conv and precision(net.linear) == conv
    assert precision(block.relu) == relu
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.BatchNorm2d):
            assert precision(cell) in (('default',) if level in ('O0', 'O1') else ('fp32',))
    # Casting only changes the computation: parameter names and storage stay.
    assert all(p.dtype == ms.float32 for p in net.get_parameters())
    assert [p.name for p in net.get_parameters()] == [p.name for p in create_model('RepVGG-A0', 10).get_parameters()]


@pytest.mark.slow
def test_o2_training_step_runs_with_float32_loss():
    net = cast_amp(create_model('RepVGG-A0', num_classes=4), 'O2')
    optimizer = get_optimizer(make_config(), net, np.full(3, 0.01, np.float32))
    cell = TrainOneStepWithEMA(NetWithLoss(net, CrossEntropy()), optimizer, loss_scale_cell('O2', 1024.0, False))
    cell.set_train(True)
    images = Tensor(np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32))
    loss, overflow, scale = cell(images, Tensor(np.array([0, 3, 1, 2], np.int32)))
    assert loss.dtype == ms.float32 and np.isfinite(loss.asnumpy())
    assert not bool(overflow.asnumpy()) and float(scale.asnumpy()) == 1024.0
    assert net.stage0.rbr_dense.bn.moving_mean.dtype == ms.float32
