"""src/repvgg.py: architecture, parameter counts, fusion math, exact re-parameterization."""
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from src.config import make_config
from src.repvgg import (
    ARCH_NAMES,
    ARCH_SPECS,
    QA_ARCH_NAMES,
    RepVGGBlock,
    count_macs,
    count_params,
    create_model,
    func_dict,
    fuse_conv_bn,
    get_model,
    get_RepVGG_func_by_name,
    identity_kernel,
    pad_1x1_to_3x3,
    switch_net_to_deploy,
)
from src.tools.base.numerics import relative_difference
from src.tools.checkpoints.format import load_weights
from tests.helpers import randomize_bn, slow_except

# Trainable parameters at 1000 classes (train form, deploy form) of the variants as the RepVGG paper
# (arXiv 2101.03697) defines them and the official implementation (DingXiaoH/RepVGG) builds them.
PAPER_COUNTS = {
    'RepVGG-A0': (9_108_968, 8_309_384), 'RepVGG-A1': (14_092_264, 12_789_864),
    'RepVGG-A2': (28_210_600, 25_499_944), 'RepVGG-B0': (15_817_960, 14_339_048),
    'RepVGG-B1': (57_415_016, 51_829_480), 'RepVGG-B1g2': (45_782_376, 41_360_104),
    'RepVGG-B1g4': (39_966_056, 36_125_416), 'RepVGG-B2': (89_022_376, 80_315_112),
    'RepVGG-B2g4': (61_758_376, 55_777_512), 'RepVGG-B3': (123_085_288, 110_960_872),
    'RepVGG-B3g2': (96_911_848, 87_404_776), 'RepVGG-B3g4': (83_825_128, 75_626_728),
    'RepVGG-D2se': (133_334_836, 120_387_572),
}
GROUPED = ('RepVGG-B1g2', 'RepVGG-B1g4', 'RepVGG-B2g2', 'RepVGG-B2g4', 'RepVGG-B3g2', 'RepVGG-B3g4')
REPVGG_NAMES = tuple(arch for arch in ARCH_NAMES if arch not in QA_ARCH_NAMES)


def count_from_rules(depths, widths, groups, use_se, num_classes=1000, quantization_friendly=False):
    """Parameter counts derived from the paper's rules alone (blocks, widths, groups; the official
    block's branches), independently of src/repvgg.py.

    QARepVGG block (arXiv 2212.01593): 3x3 conv + BN, bias-free 1x1 conv, identity without BN,
    one BN after the sum; its deploy form is RepVGG's single 3x3 conv with bias.
    """
    channels = [min(64, int(64 * widths[0]))] + [int(b * w) for b, w in zip((64, 128, 256, 512), widths, strict=True)]
    train = deploy = 0
    layer = 0
    blocks = [(3, channels[0], 2, 1)]
    for stage, depth in enumerate(depths):
        for j in range(depth):
            layer += 1
            cin = channels[stage] if j == 0 else channels[stage + 1]
            blocks.append((cin, channels[stage + 1], 2 if j == 0 else 1,
                           groups if groups > 1 and layer % 2 == 0 and layer <= 26 else 1))
    for cin, cout, stride, g in blocks:
        squeezed = cout // 16
        se = (cout * squeezed + squeezed) + (squeezed * cout + cout) if use_se else 0
        if quantization_friendly:  # dense conv + BN, 1x1 conv, post-BN
            train += cout * cin // g * 9 + 2 * cout + cout * cin // g + 2 * cout
        else:  # dense conv + BN, 1x1 conv + BN, identity BN
            identity = 2 * cout if cin == cout and stride == 1 else 0
            train += cout * cin // g * 9 + 2 * cout + cout * cin // g + 2 * cout + identity + se
        deploy += cout * cin // g * 9 + cout + se
    head = channels[4] * num_classes + num_classes
    return train + head, deploy + head


def test_rules_reproduce_the_paper_counts():
    for arch, counts in PAPER_COUNTS.items():
        assert count_from_rules(*ARCH_SPECS[arch]) == counts, arch


@pytest.mark.parametrize('arch', slow_except(REPVGG_NAMES, 'RepVGG-A0'))
def test_parameter_counts(arch):
    expected = PAPER_COUNTS.get(arch) or count_from_rules(*ARCH_SPECS[arch])  # B2g2: from the rules
    assert count_params(create_model(arch)) == expected[0]
    assert count_params(create_model(arch, deploy=True)) == expected[1]


@pytest.mark.parametrize('arch', slow_except(QA_ARCH_NAMES, 'QARepVGG-A0'))
def test_qarepvgg_parameter_counts(arch):
    """Train form from the QA rules; deploy form exactly the RepVGG deploy form of the same size."""
    repvgg = arch[len('QA'):]
    train, deploy = count_from_rules(*ARCH_SPECS[repvgg], quantization_friendly=True)
    assert deploy == count_from_rules(*ARCH_SPECS[repvgg])[1]
    assert count_params(create_model(arch)) == train
    assert count_params(create_model(arch, deploy=True)) == deploy


def test_qarepvgg_a0_counts_and_block_layout():
    # A0: the 17 identity blocks (1 + 3 + 13) lose their identity BN: 2 x (48 + 3 x 96 + 13 x 192) = 5,664.
    assert count_from_rules(*ARCH_SPECS['RepVGG-A0'], quantization_friendly=True) == (9_103_304, 8_309_384)
    net = create_model('QARepVGG-A0', num_classes=10)
    block = net.stage2[1]
    names = sorted(name[len('stage2.1.'):] for name, _ in net.parameters_and_names() if name.startswith('stage2.1.'))
    assert names == ['bn.beta', 'bn.gamma', 'bn.moving_mean', 'bn.moving_variance', 'rbr_1x1.weight',
                     'rbr_dense.bn.beta', 'rbr_dense.bn.gamma', 'rbr_dense.bn.moving_mean',
                     'rbr_dense.bn.moving_variance', 'rbr_dense.conv.weight']
    assert block.rbr_identity is not None and net.stage2[0].rbr_identity is None
    deploy_names = [p.name for p in switch_net_to_deploy(net).get_parameters()]
    assert deploy_names == [p.name for p in create_model('RepVGG-A0', num_classes=10, deploy=True).get_parameters()]


def test_b2g2_counts_follow_the_rules():
    assert count_from_rules(*ARCH_SPECS['RepVGG-B2g2']) == (70_846_376, 63_956_712)


def test_stage_layout_and_grouping():
    net = create_model('RepVGG-B1g4', num_classes=10)
    blocks = net.blocks()
    assert [b.groups for b in blocks] == [1] + [4 if i % 2 == 0 and i <= 26 else 1 for i in range(1, 28)]
    assert [b.stride for b in blocks[1:]] == [2, 1, 1, 1, 2] + [1] * 5 + [2] + [1] * 15 + [2]
    assert (blocks[0].in_channels, blocks[0].out_channels) == (3, 64)
    assert [s[0].out_channels for s in (net.stage1, net.stage2, net.stage3, net.stage4)] == [128, 256, 512, 2048]
    assert blocks[0].rbr_identity is None and blocks[2].rbr_identity is not None
    a0 = create_model('RepVGG-A0')
    assert a0.stage0.out_channels == 48 and a0.linear.in_channels == 1280


def test_fuse_conv_bn_matches_bn_formula():
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(4, 3, 3, 3))
    gamma, beta, mean = rng.normal(size=4), rng.normal(size=4), rng.normal(size=4)
    var, eps = rng.uniform(1e-4, 2, size=4), 1e-5
    x = rng.normal(size=(3, 3, 3))
    conv_out = np.einsum('oikl,ikl->o', kernel, x)
    bn_out = gamma * (conv_out - mean) / np.sqrt(var + eps) + beta
    fused_kernel, fused_bias = fuse_conv_bn(kernel, gamma, beta, mean, var, eps)
    np.testing.assert_allclose(np.einsum('oikl,ikl->o', fused_kernel, x) + fused_bias, bn_out, rtol=1e-12)
    assert fused_kernel.dtype == np.float64


def test_pad_1x1_puts_the_kernel_in_the_centre():
    kernel = np.arange(6.0).reshape(2, 3, 1, 1)
    padded = pad_1x1_to_3x3(kernel)
    assert padded.shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(padded[:, :, 1, 1], kernel[:, :, 0, 0])
    assert padded.sum() == kernel.sum()


@pytest.mark.parametrize('groups', [1, 2, 4])
def test_identity_kernel_copies_its_input(groups):
    channels = 8
    kernel = identity_kernel(channels, groups)
    assert kernel.shape == (channels, channels // groups, 3, 3)
    conv = ms.nn.Conv2d(channels, channels, 3, pad_mode='pad', padding=1, group=groups, has_bias=False)
    conv.weight.set_data(Tensor(kernel.astype(np.float32)))
    x = np.random.default_rng(2).normal(size=(2, channels, 5, 6)).astype(np.float32)
    np.testing.assert_array_equal(conv(Tensor(x)).asnumpy(), x)


def numpy_conv(x, kernel, stride, padding, groups=1):
    """Direct convolution with symmetric zero padding (the PyTorch semantics)."""
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    n, _, h, w = x.shape
    out_c, in_per_group, k, _ = kernel.shape
    out_h, out_w = (h - k) // stride + 1, (w - k) // stride + 1
    out = np.zeros((n, out_c, out_h, out_w))
    per_group = out_c // groups
    for o in range(out_c):
        g = o // per_group
        xs = x[:, g * in_per_group:(g + 1) * in_per_group]
        for i in range(out_h):
            for j in range(out_w):
                patch = xs[:, :, i * stride:i * stride + k, j * stride:j * stride + k]
                out[:, o, i, j] = np.einsum('nikl,ikl->n', patch, kernel[o])
    return out


def test_stride2_block_pads_symmetrically_like_pytorch():
    block = randomize_bn(RepVGGBlock(4, 6, stride=2), seed=3)
    block.set_train(False)
    x = np.random.default_rng(3).normal(size=(1, 4, 7, 8)).astype(np.float32)
    k3, b3 = fuse_conv_bn(block.rbr_dense.conv.weight.asnumpy(), block.rbr_dense.bn.gamma.asnumpy(),
                          block.rbr_dense.bn.beta.asnumpy(), block.rbr_dense.bn.moving_mean.asnumpy(),
                          block.rbr_dense.bn.moving_variance.asnumpy(), 1e-5)
    k1, b1 = fuse_conv_bn(block.rbr_1x1.conv.weight.asnumpy(), block.rbr_1x1.bn.gamma.asnumpy(),
                          block.rbr_1x1.bn.beta.asnumpy(), block.rbr_1x1.bn.moving_mean.asnumpy(),
                          block.rbr_1x1.bn.moving_variance.asnumpy(), 1e-5)
    expected = numpy_conv(x, k3, 2, 1) + b3.reshape(1, -1, 1, 1) + numpy_conv(x, k1, 2, 0) + b1.reshape(1, -1, 1, 1)
    expected = np.maximum(expected, 0)
    actual = block(Tensor(x)).asnumpy()
    assert actual.shape == (1, 6, 4, 4)
    assert relative_difference(actual, expected) < 1e-6


@pytest.mark.slow  # grouped identity kernels, fast: test_identity_kernel_copies_its_input
@pytest.mark.parametrize('arch', GROUPED)
def test_grouped_blocks_convert_exactly(arch):
    """Every block of a grouped arch (narrowed to 10 classes) equals its fused 3x3 conv."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = randomize_bn(create_model(arch, num_classes=10), seed=4)
    net.set_train(False)
    rng = np.random.default_rng(4)
    blocks = net.blocks()
    grouped = 0
    for block in blocks:
        x = Tensor(rng.normal(size=(1, block.in_channels, 6, 6)).astype(np.float32))
        before = block(x).asnumpy()
        block.switch_to_deploy()
        after = block(x).asnumpy()
        assert relative_difference(after, before) < 1e-5, (arch, block.rbr_reparam.weight.name)
        grouped += block.groups > 1
    assert grouped == 13


def _logits(net, inputs, mode):
    ms.set_context(mode=mode)
    return [net(x).asnumpy() for x in inputs]


@pytest.mark.parametrize('arch', slow_except(REPVGG_NAMES, 'RepVGG-A0'))
def test_conversion_is_exact_in_both_modes(arch, tmp_path):
    """Train form == converted == deploy=True loaded from the saved conversion (rel. err <= 1e-5)."""
    rng = np.random.default_rng(5)
    inputs = [Tensor(rng.normal(size=(2, 3, 32, 32)).astype(np.float32)),
              Tensor(rng.normal(size=(1, 3, 40, 64)).astype(np.float32))]
    net = randomize_bn(create_model(arch, num_classes=10), seed=5)
    net.set_train(False)
    modes = (ms.GRAPH_MODE, ms.PYNATIVE_MODE)
    reference = {mode: _logits(net, inputs, mode) for mode in modes}
    switch_net_to_deploy(net)
    assert all(block.rbr_dense is None for _, block in net.cells_and_names() if isinstance(block, RepVGGBlock))
    ms.save_checkpoint(net, str(tmp_path / 'deploy.ckpt'))
    deploy = create_model(arch, num_classes=10, deploy=True)
    deploy.set_train(False)
    load_weights(deploy, tmp_path / 'deploy.ckpt')
    for mode in modes:
        for candidate in (net, deploy):
            for got, want in zip(_logits(candidate, inputs, mode), reference[mode], strict=True):
                assert np.abs(want).max() > 1e-3
                assert relative_difference(got, want) <= 1e-5, (arch, mode)


@pytest.mark.slow  # fast: a trained QARepVGG-A0 through convert.py (tests/test_quantize.py)
@pytest.mark.parametrize('arch', QA_ARCH_NAMES)
def test_qarepvgg_conversion_is_exact_in_both_modes(arch):
    """Train form == re-parameterized form (rel. err <= 1e-5) in GRAPH and PYNATIVE mode; the deploy
    network is RepVGG's, whose reload is tested above, so one input and no file keep this short."""
    x = Tensor(np.random.default_rng(8).normal(size=(2, 3, 32, 32)).astype(np.float32))
    net = randomize_bn(create_model(arch, num_classes=10), seed=8)
    net.set_train(False)
    modes = (ms.GRAPH_MODE, ms.PYNATIVE_MODE)
    reference = {mode: _logits(net, [x], mode)[0] for mode in modes}
    switch_net_to_deploy(net)
    assert all(block.bn is None and block.rbr_1x1 is None for block in net.blocks())
    for mode in modes:
        assert np.abs(reference[mode]).max() > 1e-3
        assert relative_difference(_logits(net, [x], mode)[0], reference[mode]) <= 1e-5, (arch, mode)


@pytest.mark.slow
def test_deploy_parameter_names_match_conversion():
    converted = switch_net_to_deploy(create_model('RepVGG-D2se', num_classes=10))
    built = create_model('RepVGG-D2se', num_classes=10, deploy=True)
    names = [p.name for p in converted.get_parameters()]
    assert names == [p.name for p in built.get_parameters()]
    assert names == [name for name, _ in built.parameters_and_names()]
    assert 'stage0.rbr_reparam.weight' in names and 'stage3.23.se.up.bias' in names


@pytest.mark.parametrize('mode', slow_except([ms.GRAPH_MODE, ms.PYNATIVE_MODE], ms.PYNATIVE_MODE))
def test_features_only_backbone_survives_conversion(mode):
    ms.set_context(mode=mode)
    net = randomize_bn(create_model('RepVGG-A0', features_only=True, out_indices=(0, 2, 4)), seed=6)
    net.set_train(False)
    assert not any(name.startswith('linear') for name, _ in net.parameters_and_names())
    assert [(f['channels'], f['reduction']) for f in net.feature_info] == \
        [(48, 2), (48, 4), (96, 8), (192, 16), (1280, 32)]
    x = Tensor(np.random.default_rng(6).normal(size=(1, 3, 64, 96)).astype(np.float32))
    before = [f.asnumpy() for f in net(x)]
    assert [f.shape for f in before] == [(1, 48, 32, 48), (1, 96, 8, 12), (1, 1280, 2, 3)]
    after = [f.asnumpy() for f in switch_net_to_deploy(net)(x)]
    for got, want in zip(after, before, strict=True):
        assert relative_difference(got, want) <= 1e-5


def test_registry_names_and_errors():
    assert set(func_dict) == set(ARCH_NAMES) and len(ARCH_NAMES) == 27
    assert tuple('QA' + arch for arch in REPVGG_NAMES if arch != 'RepVGG-D2se') == QA_ARCH_NAMES
    net = get_RepVGG_func_by_name('RepVGG-A0')(num_classes=7, deploy=True)
    assert net.linear.out_channels == 7 and net.deploy
    qa = get_RepVGG_func_by_name('QARepVGG-B1g4')(num_classes=7)
    assert qa.stage1[1].bn is not None and qa.stage1[1].groups == 4
    assert get_model(make_config(arch='QARepVGG-A0', num_classes=3)).stage0.quantization_friendly
    assert get_model(make_config(arch='RepVGG-A1', num_classes=3)).stage0.out_channels == 64
    with pytest.raises(ValueError, match="did you mean 'RepVGG-B0'"):
        create_model('RepVGG-B00')


@pytest.mark.slow
def test_macs_match_the_paper():
    # Paper Table (FLOPs column, deploy form): B0 3.06 G, B1g4 7.31 G, B3 26.21 G at 224x224.
    for arch, gmacs in (('RepVGG-B0', 3.06), ('RepVGG-B1g4', 7.31), ('RepVGG-B3', 26.21)):
        assert round(count_macs(create_model(arch, deploy=True), 224, 224) / 1e9, 2) == gmacs


@pytest.mark.slow
def test_summary_command_prints_counts():
    out = subprocess.run([sys.executable, '-m', 'src.repvgg', '--summary', '--arch', 'RepVGG-A0', 'RepVGG-B0',
                          'QARepVGG-A0'], capture_output=True, text=True, check=True).stdout
    assert 'RepVGG-A0            9,108,968      8,309,384' in out
    assert 'RepVGG-B0           15,817,960     14,339,048        3.397         3.058' in out
    assert 'QARepVGG-A0          9,103,304      8,309,384        1.513         1.361' in out


@pytest.mark.slow
def test_graph_mode_runs_the_converted_structure():
    """A GRAPH-mode graph compiled before conversion must not be reused after it."""
    ms.set_context(mode=ms.GRAPH_MODE)
    net = randomize_bn(create_model('RepVGG-A0', num_classes=10), seed=7)
    net.set_train(False)
    x = Tensor(np.random.default_rng(7).normal(size=(1, 3, 32, 32)).astype(np.float32))
    net(x)
    switch_net_to_deploy(net)
    head = net.stage4[0].rbr_reparam
    head.weight.set_data(Tensor(np.zeros(head.weight.shape, np.float32)))
    head.bias.set_data(Tensor(np.zeros(head.bias.shape, np.float32)))
    # stage 4 now outputs zeros, so the logits are the classifier bias alone
    np.testing.assert_allclose(net(x).asnumpy()[0], net.linear.bias.asnumpy(), atol=1e-6)
