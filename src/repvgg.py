"""RepVGG (Ding et al., CVPR 2021): three-branch blocks for training, plain 3x3 convs for deploy.

Parameter names follow the official PyTorch layout so that weights map by name alone:
``stage0.rbr_dense.conv.weight``, ``stage1.0.rbr_1x1.bn.gamma``, ``stage2.3.rbr_identity.moving_mean``,
``stage4.0.rbr_reparam.bias``, ``stage0.se.down.weight``, ``linear.weight``. BN tensors use
MindSpore's names (gamma, beta, moving_mean, moving_variance). A network converted with
``switch_net_to_deploy`` and one built with ``deploy=True`` have exactly the same names.

QARepVGG (Chu, Li, Zhang, "Make RepVGG Greater Again: A Quantization-aware Approach", AAAI 2024,
arXiv 2212.01593) is the same family with a quantization-friendly block: the 1x1 and identity
branches lose their BN and one BN follows the sum (``stage1.0.rbr_1x1.weight``, ``stage1.0.bn.gamma``).
It fuses into the same single 3x3 conv, so a QARepVGG deploy network has exactly the names, shapes
and parameter count of the RepVGG deploy network of the same size.
"""
import difflib
import functools
import time

import numpy as np
from mindspore import Tensor, nn, ops

from src.variants import ARCH_NAMES, ARCH_SPECS, QA_ARCH_NAMES

_GROUPED_LAYERS = tuple(range(2, 27, 2))  # layers are numbered from 1 over stages 1-4
_STAGE_BASE_WIDTHS = (64, 128, 256, 512)


def is_quantization_friendly(arch):
    """Whether ``arch`` names a QARepVGG (its blocks have the post-sum BN)."""
    return arch in QA_ARCH_NAMES


# ----------------------------------------------------------------------------- layout rules
def stage_widths(width_multiplier):
    """Channels of stages 0-4: min(64, int(64a)), then int(64a), int(128a), int(256a), int(512b)."""
    return (min(64, int(64 * width_multiplier[0])),
            *(int(base * mult) for base, mult in zip(_STAGE_BASE_WIDTHS, width_multiplier, strict=True)))


def block_names(depths):
    """Parameter-name prefixes of every block in order: 'stage0', 'stage1.0', ..., 'stage4.0'."""
    return ['stage0'] + [f'stage{stage}.{index}' for stage, count in enumerate(depths, 1) for index in range(count)]


# ----------------------------------------------------------------------------- fusion math
def fuse_conv_bn(kernel, gamma, beta, mean, var, eps):
    """Fold an inference-mode BN into the preceding bias-free conv, in float64: a lower precision leaves
    a per-block error that compounds over the 22-48 layers of the network."""
    kernel, gamma, beta, mean, var = (np.asarray(a, np.float64) for a in (kernel, gamma, beta, mean, var))
    scale = gamma / np.sqrt(var + eps)
    return kernel * scale.reshape(-1, 1, 1, 1), beta - mean * scale


def pad_1x1_to_3x3(kernel):
    """A 1x1 kernel as the equivalent 3x3 kernel (the centre tap; valid with padding 1 vs 0)."""
    return np.pad(kernel, ((0, 0), (0, 0), (1, 1), (1, 1)))


def identity_kernel(channels, groups=1):
    """The 3x3 (grouped) conv kernel that copies its input: 1 at [i, i mod (C/groups), 1, 1]."""
    in_per_group = channels // groups
    kernel = np.zeros((channels, in_per_group, 3, 3), np.float64)
    kernel[np.arange(channels), np.arange(channels) % in_per_group, 1, 1] = 1.0
    return kernel


def _bn_arrays(bn):
    return (bn.gamma.asnumpy(), bn.beta.asnumpy(), bn.moving_mean.asnumpy(),
            bn.moving_variance.asnumpy(), bn.eps)


# ----------------------------------------------------------------------------- layers
class ConvBN(nn.Cell):
    """Bias-free conv followed by BN; the ``conv``/``bn`` names match the official layout."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, groups):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, pad_mode='pad',
                              padding=padding, group=groups, has_bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.9)

    def construct(self, x):
        return self.bn(self.conv(x))


class SEBlock(nn.Cell):
    """Squeeze-excitation of RepVGG-D2se; pools with a mean so any input shape works."""

    def __init__(self, channels, internal_channels):
        super().__init__()
        self.down = nn.Conv2d(channels, internal_channels, 1, pad_mode='valid', has_bias=True)
        self.up = nn.Conv2d(internal_channels, channels, 1, pad_mode='valid', has_bias=True)
        self.relu = nn.ReLU()
        self.sigmoid = nn.Sigmoid()

    def construct(self, x):
        weight = ops.mean(x, (2, 3), True)
        weight = self.sigmoid(self.up(self.relu(self.down(weight))))
        return x * weight


class RepVGGBlock(nn.Cell):
    """ReLU(SE(3x3 conv+BN + 1x1 conv+BN + BN)) for training; ReLU(SE(3x3 conv)) once deployed.

    With ``quantization_friendly`` (QARepVGG): ReLU(BN(3x3 conv+BN + 1x1 conv + identity)). The 1x1
    conv has no bias, as in the authors' default block and YOLOv6's: a constant added before a BN
    that normalises with the batch mean cancels, so such a bias would never get a gradient. The
    identity branch has no parameters. Once deployed both kinds are the same single 3x3 conv.
    """

    def __init__(self, in_channels, out_channels, stride=1, groups=1, deploy=False, use_se=False,
                 quantization_friendly=False):
        super().__init__()
        if use_se and quantization_friendly:
            raise ValueError('the quantization-friendly block has no SE variant')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.groups = groups
        self.deploy = deploy
        self.use_se = use_se
        self.quantization_friendly = quantization_friendly
        self.se = SEBlock(out_channels, out_channels // 16) if use_se else nn.Identity()
        self.relu = nn.ReLU()
        self.rbr_reparam = self.rbr_dense = self.rbr_1x1 = self.rbr_identity = None
        self.bn = None  # QARepVGG's BN after the sum of the branches
        if deploy:
            self.rbr_reparam = self._reparam_conv()
            return
        self.rbr_dense = ConvBN(in_channels, out_channels, 3, stride, 1, groups)
        has_identity = in_channels == out_channels and stride == 1
        if quantization_friendly:
            self.rbr_1x1 = nn.Conv2d(in_channels, out_channels, 1, stride=stride, pad_mode='valid', group=groups,
                                     has_bias=False)
            self.rbr_identity = nn.Identity() if has_identity else None
            self.bn = nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.9)
        else:
            self.rbr_1x1 = ConvBN(in_channels, out_channels, 1, stride, 0, groups)
            self.rbr_identity = nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.9) if has_identity else None

    def _reparam_conv(self):
        return nn.Conv2d(self.in_channels, self.out_channels, 3, stride=self.stride, pad_mode='pad',
                         padding=1, group=self.groups, has_bias=True)

    def construct(self, x):
        if self.rbr_reparam is not None:
            return self.relu(self.se(self.rbr_reparam(x)))
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        if self.bn is not None:
            out = self.bn(out)
        return self.relu(self.se(out))

    def get_equivalent_kernel_bias(self):
        """(kernel, bias) of the single 3x3 conv equal to this block's branches, float64 numpy; from the
        BN moving statistics, so it equals the train-time block in eval mode only."""
        if self.deploy:
            return (self.rbr_reparam.weight.asnumpy().astype(np.float64),
                    self.rbr_reparam.bias.asnumpy().astype(np.float64))
        kernel, bias = fuse_conv_bn(self.rbr_dense.conv.weight.asnumpy(), *_bn_arrays(self.rbr_dense.bn))
        if self.quantization_friendly:
            kernel = kernel + pad_1x1_to_3x3(self.rbr_1x1.weight.asnumpy().astype(np.float64))
            if self.rbr_identity is not None:
                kernel = kernel + identity_kernel(self.in_channels, self.groups)
            # The post-BN of a conv with bias b is the BN of the bias-free conv with its mean moved by b.
            gamma, beta, mean, var, eps = _bn_arrays(self.bn)
            return fuse_conv_bn(kernel, gamma, beta, mean - bias, var, eps)
        kernel_1x1, bias_1x1 = fuse_conv_bn(self.rbr_1x1.conv.weight.asnumpy(), *_bn_arrays(self.rbr_1x1.bn))
        kernel = kernel + pad_1x1_to_3x3(kernel_1x1)
        bias = bias + bias_1x1
        if self.rbr_identity is not None:
            kernel_id, bias_id = fuse_conv_bn(identity_kernel(self.in_channels, self.groups),
                                              *_bn_arrays(self.rbr_identity))
            kernel = kernel + kernel_id
            bias = bias + bias_id
        return kernel, bias

    def switch_to_deploy(self):
        """Replace the branches by one 3x3 conv with bias, keeping the parameter-name prefix."""
        if self.deploy:
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        prefix = self.rbr_dense.conv.weight.name[:-len('rbr_dense.conv.weight')]
        dtype = self.rbr_dense.conv.weight.dtype
        conv = self._reparam_conv()
        self.rbr_reparam = conv
        for param, value in ((conv.weight, kernel), (conv.bias, bias)):
            param.set_data(Tensor(value.astype(np.float32), dtype))
            param.name = prefix + 'rbr_reparam.' + param.name.rsplit('.', 1)[-1]
        self.rbr_dense = self.rbr_1x1 = self.rbr_identity = self.bn = None
        self.deploy = True


# ----------------------------------------------------------------------------- network
class RepVGG(nn.Cell):
    """RepVGG classifier, or a backbone returning stage outputs when ``features_only``.

    Stage 0 is one block (stride 2); stages 1-4 start with a stride-2 block. ``feature_info``
    lists channels and total stride (reduction) of each stage for backbone use.
    ``quantization_friendly``: QARepVGG blocks (see RepVGGBlock).
    """

    def __init__(self, num_blocks, num_classes=1000, width_multiplier=None, override_groups_map=None,
                 deploy=False, use_se=False, features_only=False, out_indices=(1, 2, 3, 4),
                 quantization_friendly=False):
        super().__init__()
        if len(num_blocks) != 4 or len(width_multiplier) != 4:
            raise ValueError('num_blocks and width_multiplier need 4 entries (stages 1-4)')
        override_groups_map = override_groups_map or {}
        if 0 in override_groups_map:
            raise ValueError('stage0 (layer 0) is never grouped')
        self.deploy = deploy
        self.features_only = features_only
        self.out_indices = tuple(out_indices)
        if not set(self.out_indices) <= {0, 1, 2, 3, 4}:
            raise ValueError(f'out_indices must be stage numbers 0-4, got {out_indices}')

        self.depths = tuple(num_blocks)
        widths = stage_widths(width_multiplier)
        self.stage0 = RepVGGBlock(3, widths[0], stride=2, deploy=deploy, use_se=use_se,
                                  quantization_friendly=quantization_friendly)
        layer_index = 1
        stages = []
        for stage_blocks, in_ch, out_ch in zip(num_blocks, widths[:-1], widths[1:], strict=True):
            blocks = []
            for j in range(stage_blocks):
                blocks.append(RepVGGBlock(in_ch if j == 0 else out_ch, out_ch, stride=2 if j == 0 else 1,
                                          groups=override_groups_map.get(layer_index, 1),
                                          deploy=deploy, use_se=use_se,
                                          quantization_friendly=quantization_friendly))
                layer_index += 1
            stages.append(nn.SequentialCell(blocks))
        self.stage1, self.stage2, self.stage3, self.stage4 = stages
        self.feature_info = [dict(stage=i, channels=widths[i], reduction=2 ** (i + 1)) for i in range(5)]
        self.num_features = widths[4]
        if not features_only:
            self.linear = nn.Dense(widths[4], num_classes)

    def blocks(self):
        """Every RepVGGBlock in order, stage0 first (names: ``block_names(self.depths)``)."""
        return [self.stage0] + [block for stage in (self.stage1, self.stage2, self.stage3, self.stage4)
                                for block in stage]

    def forward_stages(self, x):
        """Outputs of stages 0-4."""
        s0 = self.stage0(x)
        s1 = self.stage1(s0)
        s2 = self.stage2(s1)
        s3 = self.stage3(s2)
        s4 = self.stage4(s3)
        return s0, s1, s2, s3, s4

    def construct(self, x):
        if self.features_only:
            stages = self.forward_stages(x)
            return tuple([stages[i] for i in self.out_indices])
        x = self.stage4(self.stage3(self.stage2(self.stage1(self.stage0(x)))))
        return self.linear(ops.mean(x, (2, 3)))


def switch_net_to_deploy(net):
    """Re-parameterize every RepVGGBlock of ``net`` in place (exact in eval mode) and return ``net``."""
    for _, cell in net.cells_and_names():
        if isinstance(cell, RepVGGBlock):
            cell.switch_to_deploy()
        if isinstance(cell, RepVGG):
            cell.deploy = True
    # GRAPH_MODE caches each cell's compiled graph under a key built from its creation time, and would
    # run the old branches: a new stamp makes it recompile (there is no public API).
    stamp = time.time_ns()
    for _, cell in net.cells_and_names():
        object.__setattr__(cell, '_create_time', stamp)
    return net


# ----------------------------------------------------------------------------- registry
def check_arch_name(arch):
    """Raise a ValueError naming the closest known arch when ``arch`` is not one."""
    if arch not in ARCH_SPECS:
        close = difflib.get_close_matches(str(arch), ARCH_NAMES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ''
        raise ValueError(f"unknown arch '{arch}'{hint}; choose one of: {', '.join(ARCH_NAMES)}")


def create_model(arch, num_classes=1000, deploy=False, **kwargs):
    """Build a registered RepVGG or QARepVGG by name; ``kwargs`` go to ``RepVGG`` (e.g. features_only)."""
    check_arch_name(arch)
    depths, widths, groups, use_se = ARCH_SPECS[arch]
    groups_map = dict.fromkeys(_GROUPED_LAYERS, groups) if groups > 1 else None
    return RepVGG(depths, num_classes=num_classes, width_multiplier=widths, override_groups_map=groups_map,
                  deploy=deploy, use_se=use_se, quantization_friendly=is_quantization_friendly(arch), **kwargs)


func_dict = {arch: functools.partial(create_model, arch) for arch in ARCH_NAMES}


def get_RepVGG_func_by_name(arch):  # noqa: N802  the reference's name
    """The constructor of ``arch`` (taking ``num_classes=1000, deploy=False``)."""
    check_arch_name(arch)
    return func_dict[arch]


def get_model(args):
    """The network that ``args`` (the config) describes: arch, num_classes, deploy."""
    return create_model(args.arch, num_classes=args.num_classes, deploy=bool(args.deploy))


# ----------------------------------------------------------------------------- summary
def count_params(net):
    """Trainable parameters (BN moving statistics excluded)."""
    return sum(int(np.prod(p.shape)) for p in net.trainable_params())


def count_macs(net, height, width):
    """Multiply-accumulates of one image, from the network's own layers (train form: the 3x3 and 1x1
    convs, BN excluded; deploy form: the single 3x3 conv)."""
    macs = 0
    for block in net.blocks():
        height = (height + 2 - 3) // block.stride + 1
        width = (width + 2 - 3) // block.stride + 1
        per_pixel = block.out_channels * block.in_channels // block.groups
        taps = 9 if block.deploy else 9 + 1
        macs += per_pixel * taps * height * width
        if block.use_se:
            macs += 2 * block.out_channels * (block.out_channels // 16)
    if not net.features_only:
        macs += net.linear.in_channels * net.linear.out_channels
    return macs


def summary(image_size=224, num_classes=1000, archs=ARCH_NAMES):
    """Rows of (arch, train params, deploy params, train GMACs, deploy GMACs)."""
    rows = []
    for arch in archs:
        train_net = create_model(arch, num_classes=num_classes)
        deploy_net = create_model(arch, num_classes=num_classes, deploy=True)
        rows.append((arch, count_params(train_net), count_params(deploy_net),
                     count_macs(train_net, image_size, image_size) / 1e9,
                     count_macs(deploy_net, image_size, image_size) / 1e9))
    return rows


def _main():
    import argparse
    parser = argparse.ArgumentParser(description='Parameter counts and GMACs of every RepVGG.')
    parser.add_argument('--summary', action='store_true', help='print the table (the default action)')
    parser.add_argument('--image_size', type=int, default=224)
    parser.add_argument('--num_classes', type=int, default=1000)
    parser.add_argument('--arch', nargs='*', default=list(ARCH_NAMES), choices=ARCH_NAMES)
    args = parser.parse_args()
    print(f'{"arch":<15} {"train params":>14} {"deploy params":>14} '
          f'{"train GMACs":>12} {"deploy GMACs":>13}   (input {args.image_size}x{args.image_size})')
    for arch, train_params, deploy_params, train_gmacs, deploy_gmacs in summary(
            args.image_size, args.num_classes, args.arch):
        print(f'{arch:<15} {train_params:>14,} {deploy_params:>14,} {train_gmacs:>12.3f} {deploy_gmacs:>13.3f}')


if __name__ == '__main__':
    _main()
