"""A PyTorch re-implementation of the official RepVGG module tree (test and benchmark use only).

It writes real official-layout state dicts for the converter tests, fuses blocks in float64 as an
independent oracle, and gives benchmarks/speed.py a PyTorch train-form model when timm is absent.
"""
from collections import OrderedDict

import torch


class TorchSE(torch.nn.Module):
    def __init__(self, channels, internal):
        super().__init__()
        self.down = torch.nn.Conv2d(channels, internal, 1, bias=True)
        self.up = torch.nn.Conv2d(internal, channels, 1, bias=True)

    def forward(self, x):
        w = torch.sigmoid(self.up(torch.relu(self.down(x.mean((2, 3), keepdim=True)))))
        return x * w


class TorchBlock(torch.nn.Module):
    """The official training-time block: names rbr_dense/rbr_1x1 (conv, bn), rbr_identity, se."""

    def __init__(self, cin, cout, stride, groups, use_se):
        super().__init__()
        self.groups = groups

        def conv_bn(kernel, padding):
            branch = torch.nn.Sequential()
            branch.add_module('conv', torch.nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False))
            branch.add_module('bn', torch.nn.BatchNorm2d(cout))
            return branch

        self.rbr_identity = torch.nn.BatchNorm2d(cout) if cin == cout and stride == 1 else None
        self.rbr_dense = conv_bn(3, 1)
        self.rbr_1x1 = conv_bn(1, 0)
        self.se = TorchSE(cout, cout // 16) if use_se else torch.nn.Identity()

    def forward(self, x):
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return torch.relu(self.se(out))

    def fused(self):
        """(kernel, bias) of the equivalent 3x3 conv, in float64 (the test's own oracle)."""
        def fold(kernel, bn):
            t = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
            return kernel.double() * t.reshape(-1, 1, 1, 1), bn.bias.double() - bn.running_mean.double() * t

        k3, b3 = fold(self.rbr_dense.conv.weight, self.rbr_dense.bn)
        k1, b1 = fold(self.rbr_1x1.conv.weight, self.rbr_1x1.bn)
        kernel, bias = k3 + torch.nn.functional.pad(k1, (1, 1, 1, 1)), b3 + b1
        if self.rbr_identity is not None:
            cout, per_group = k3.shape[0], k3.shape[1]
            eye = torch.zeros_like(k3)
            eye[torch.arange(cout), torch.arange(cout) % per_group, 1, 1] = 1
            ki, bi = fold(eye, self.rbr_identity)
            kernel, bias = kernel + ki, bias + bi
        return kernel, bias


class TorchRepVGG(torch.nn.Module):
    """stage0, stage1..4 (Sequential), linear: the official module tree."""

    def __init__(self, depths, multipliers, groups, use_se, num_classes):
        super().__init__()
        channels = [min(64, int(64 * multipliers[0])),
                    *(int(b * m) for b, m in zip((64, 128, 256, 512), multipliers, strict=True))]
        self.stage0 = TorchBlock(3, channels[0], 2, 1, use_se)
        layer = 0
        for stage, depth in enumerate(depths, start=1):
            blocks = []
            for j in range(depth):
                layer += 1
                grouped = groups > 1 and layer % 2 == 0 and layer <= 26
                blocks.append(TorchBlock(channels[stage - 1] if j == 0 else channels[stage], channels[stage],
                                         2 if j == 0 else 1, groups if grouped else 1, use_se))
            setattr(self, f'stage{stage}', torch.nn.Sequential(*blocks))
        self.linear = torch.nn.Linear(channels[4], num_classes)

    def forward(self, x):
        for stage in ('stage0', 'stage1', 'stage2', 'stage3', 'stage4'):
            x = getattr(self, stage)(x)
        return self.linear(x.mean((2, 3)))

    @torch.no_grad()
    def deploy_state_dict(self):
        """Official deploy-form state dict: rbr_reparam per block, SE and classifier as they are."""
        state = OrderedDict()
        for name, module in self.named_modules():
            if isinstance(module, TorchBlock):
                kernel, bias = module.fused()
                state[f'{name}.rbr_reparam.weight'] = kernel.float()
                state[f'{name}.rbr_reparam.bias'] = bias.float()
                if isinstance(module.se, TorchSE):
                    for key, value in module.se.state_dict().items():
                        state[f'{name}.se.{key}'] = value
        state['linear.weight'], state['linear.bias'] = self.linear.weight.detach(), self.linear.bias.detach()
        return state


@torch.no_grad()
def randomize_torch_bn(model):
    """Random BN moving statistics and affine parameters (torch's global seed decides them), as
    tests/helpers.randomize_bn does for MindSpore: default statistics (mean 0, var 1, gamma 1,
    beta 0) would make a comparison prove little. Returns ``model``."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.uniform_(0.5, 1.5)
            module.bias.normal_(0, 0.1)
    return model
