"""src/tools/deployment/onednn/kernel.py: the oneDNN convolution kernel against MindSpore's own Conv2D."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from src.tools.deployment.onednn import kernel as onednn
from src.tools.deployment.onednn.kernel import (OneDNNConv2d, OneDNNCheckFailed, OneDNNUnavailable, build_kernel,
                                use_onednn_convs, use_onednn_convs_checked)
from src.repvgg import RepVGG, create_model, switch_net_to_deploy
from src.tools.base.numerics import relative_difference
from tests.helpers import randomize_bn


@pytest.fixture(autouse=True, scope='module')
def _kernel():
    try:
        build_kernel()
    except OneDNNUnavailable as error:  # e.g. no C++ compiler: eval.py then falls back (tested there)
        pytest.skip(f'the oneDNN kernel cannot be built here: {error}')


@pytest.fixture(autouse=True, params=[ms.PYNATIVE_MODE, ms.GRAPH_MODE], ids=['pynative', 'graph'])
def _mode(request):
    ms.set_device('CPU')
    mode = ms.get_context('mode')
    ms.set_context(mode=request.param)
    yield
    ms.set_context(mode=mode)


def random(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


def plain_conv(in_channels, out_channels, kernel, stride, groups, bias, seed):
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, pad_mode='pad', padding=kernel // 2,
                     group=groups, has_bias=bias)
    conv.weight.set_data(Tensor(random(conv.weight.shape, seed, 0.2)))
    if bias:
        conv.bias.set_data(Tensor(random(conv.bias.shape, seed + 1)))
    return conv


# (in channels, out channels, kernel, stride, groups, bias, batch, size): odd sizes, channels that
# are not multiples of oneDNN's 16-wide blocks, grouped and 1x1 convolutions
CONVS = [(3, 24, 3, 2, 1, True, 2, 17), (16, 16, 3, 1, 1, True, 1, 9), (20, 36, 3, 1, 4, True, 3, 8),
         (32, 64, 3, 2, 2, False, 2, 15), (24, 40, 1, 2, 1, False, 2, 11), (48, 48, 1, 1, 1, True, 1, 7)]


@pytest.mark.parametrize('in_channels,out_channels,kernel,stride,groups,bias,batch,size', CONVS)
@pytest.mark.parametrize('relu,x_nhwc,y_nhwc', [(False, False, False), (True, False, True), (True, True, False),
                                                 (False, True, True)])
def test_conv_matches_mindspore(in_channels, out_channels, kernel, stride, groups, bias, batch, size, relu,
                                x_nhwc, y_nhwc):
    conv = plain_conv(in_channels, out_channels, kernel, stride, groups, bias, seed=size)
    x = random((batch, in_channels, size, size), seed=batch)
    expected = conv(Tensor(x)).asnumpy()
    if relu:
        expected = np.maximum(expected, 0)
    fast = OneDNNConv2d(conv, relu=relu, x_nhwc=x_nhwc, y_nhwc=y_nhwc)
    assert fast.weight is conv.weight
    out = fast(Tensor(x.transpose(0, 2, 3, 1).copy() if x_nhwc else x)).asnumpy()
    if y_nhwc:
        out = out.transpose(0, 3, 1, 2)
    assert out.shape == expected.shape
    assert relative_difference(out, expected) < 1e-5
    if relu:
        assert (out >= 0).all() and (out == 0).mean() > 0.2  # the fused ReLU cut the negatives


def test_same_shapes_different_weights_stay_apart():
    # Both convolutions share one cached oneDNN plan; their packed weights must not.
    x = Tensor(random((2, 16, 8, 8), seed=0))
    convs = [plain_conv(16, 16, 3, 1, 1, True, seed) for seed in (1, 2)]
    fast = [OneDNNConv2d(conv) for conv in convs]
    for _ in range(2):
        for conv, layer in zip(convs, fast):
            assert relative_difference(layer(x).asnumpy(), conv(x).asnumpy()) < 1e-5


def tiny_repvgg(deploy, use_se=False, features_only=False, groups=None):
    net = RepVGG((1, 2, 1, 1), num_classes=7, width_multiplier=(0.25, 0.5, 0.5, 0.5), use_se=use_se,
                 override_groups_map=groups, features_only=features_only)
    randomize_bn(net, seed=3)
    net.set_train(False)
    return switch_net_to_deploy(net) if deploy else net


@pytest.mark.parametrize('name,build', [
    ('deploy chain', lambda: tiny_repvgg(True)),
    ('deploy grouped', lambda: tiny_repvgg(True, groups={2: 2, 4: 2})),
    ('train form', lambda: tiny_repvgg(False)),
    ('deploy SE', lambda: tiny_repvgg(True, use_se=True)),
    ('deploy backbone', lambda: tiny_repvgg(True, features_only=True)),
])
def test_network_matches_and_keeps_its_parameters(name, build):
    net = build()
    x = Tensor(random((2, 3, 40, 40), seed=5))
    expected = net(x)
    expected = [t.asnumpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
    names = {param.name: param for param in net.get_parameters()}
    convs = sum(isinstance(cell, nn.Conv2d) for _, cell in net.cells_and_names())
    assert use_onednn_convs(net) == convs, name
    assert not any(isinstance(cell, nn.Conv2d) for _, cell in net.cells_and_names())
    assert {param.name: param for param in net.get_parameters()} == names  # same objects, same names
    out = net(x)
    out = [t.asnumpy() for t in (out if isinstance(out, tuple) else (out,))]
    assert [o.shape for o in out] == [e.shape for e in expected]
    for o, e in zip(out, expected):
        assert relative_difference(o, e) < 1e-5, name
    fused = [cell for _, cell in net.cells_and_names() if isinstance(cell, OneDNNConv2d) and cell.relu]
    assert len(fused) == (6 if name.startswith('deploy') and name not in ('deploy SE', 'deploy backbone') else 0)


def sane_deploy_a0():
    """A deploy-form A0 whose logits depend on its features (with default initialisation the
    activations vanish over 22 layers and the logits are the head's bias)."""
    net = randomize_bn(create_model('RepVGG-A0', num_classes=5))
    net.set_train(False)
    return switch_net_to_deploy(net)


def test_checked_conversion_reports_its_difference_and_refuses_a_wrong_kernel(monkeypatch):
    net = sane_deploy_a0()
    difference = use_onednn_convs_checked(net, 32)
    assert 0 <= difference < 1e-5
    assert isinstance(net.stage0.rbr_reparam, OneDNNConv2d)

    def wrong_kernel(net, library=None):
        use_onednn_convs(net, library)
        net.stage1[0].rbr_reparam.weight.set_data(net.stage1[0].rbr_reparam.weight * 1.5)
    other = sane_deploy_a0()
    monkeypatch.setattr(onednn, 'use_onednn_convs', wrong_kernel)
    with pytest.raises(OneDNNCheckFailed, match='changed the outputs'):
        use_onednn_convs_checked(other, 32)


def test_kernel_is_built_once_and_a_missing_compiler_is_explained(tmp_path, monkeypatch):
    first = build_kernel(tmp_path)
    assert first.parent == tmp_path and first.suffix == '.so'
    assert build_kernel(tmp_path) == first
    assert not list(tmp_path.glob('.*partial*'))
    monkeypatch.setattr(onednn, '_built', set())
    monkeypatch.setenv('CXX', 'no-such-compiler')
    assert build_kernel(tmp_path) == first  # cached: no compiler needed
    with pytest.raises(OneDNNUnavailable, match='no C.. compiler'):
        build_kernel(tmp_path / 'elsewhere')
    monkeypatch.delenv('CXX')
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    with pytest.raises(OneDNNUnavailable, match='cannot build into'):
        build_kernel(blocker / 'cache')


def test_unsupported_convolutions_are_refused():
    dilated = nn.Conv2d(4, 4, 3, pad_mode='pad', padding=2, dilation=2)
    with pytest.raises(ValueError, match='dilation'):
        OneDNNConv2d(dilated)
    asymmetric = nn.Conv2d(4, 4, 3, pad_mode='pad', padding=(1, 1, 0, 0))
    with pytest.raises(ValueError, match='symmetric'):
        OneDNNConv2d(asymmetric)
