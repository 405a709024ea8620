"""src/tools/training/optimizer.py: weight decay on conv and dense kernels only, per-step learning rates."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from src.config import make_config
from src.repvgg import create_model
from src.tools.training.optimizer import get_optimizer, param_groups
from tests.helpers import slow_except


@pytest.mark.parametrize('deploy', [False, True])
def test_only_conv_and_dense_kernels_are_decayed(deploy):
    net = create_model('RepVGG-A0', num_classes=10, deploy=deploy)
    decayed, plain, order = param_groups(net, 1e-4)
    decayed_names = {p.name for p in decayed['params']}
    kernels = {name for name, _ in net.parameters_and_names()
               if name.endswith('weight') and ('conv' in name or 'rbr_reparam' in name or name == 'linear.weight')}
    assert decayed_names == kernels and 'linear.weight' in decayed_names
    assert all(name.endswith(('gamma', 'beta', 'bias')) for name in (p.name for p in plain['params']))
    assert decayed['weight_decay'] == 1e-4 and plain['weight_decay'] == 0.0
    assert [p.name for p in order['order_params']] == [p.name for p in net.trainable_params()]


@pytest.mark.parametrize('optimizer', slow_except(['momentum', 'adamw'], 'momentum'))
def test_a_zero_gradient_step_changes_only_decayed_parameters(optimizer):
    """With zero gradients only weight decay moves a parameter: kernels shrink, BN and biases stay."""
    net = create_model('RepVGG-A0', num_classes=10)
    for param in net.trainable_params():  # non-zero BN/bias values, so a decay of them would show
        param.set_data(Tensor(np.full(param.shape, 0.5, np.float32)))
    args = make_config(optimizer=optimizer, weight_decay=0.1)
    opt = get_optimizer(args, net, np.full(4, 0.5, np.float32))
    before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    opt(tuple(ms.ops.zeros_like(p) for p in net.trainable_params()))
    for param in net.trainable_params():
        changed = not np.array_equal(param.asnumpy(), before[param.name])
        assert changed == (len(param.shape) >= 2), param.name


def test_learning_rate_is_read_at_the_global_step():
    net = create_model('RepVGG-A0', num_classes=10)
    opt = get_optimizer(make_config(), net, np.array([0.1, 0.2, 0.3], np.float32))
    opt.global_step.set_data(Tensor([2], opt.global_step.dtype))
    assert float(opt.get_lr().asnumpy()) == pytest.approx(0.3)
