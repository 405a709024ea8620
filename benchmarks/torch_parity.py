"""Does this project train RepVGG exactly as PyTorch does? Same weights, same batches, N steps, compared.

    python benchmarks/torch_parity.py
    python benchmarks/torch_parity.py --arch RepVGG-B0 --image_size 32 --steps 2

Equal logits of converted weights (tests/test_convert.py) say nothing about training: the loss,
label smoothing, the gradient of BN in train mode, BN's moving statistics, weight decay on kernels
only, momentum and the per-step learning rate could each differ from PyTorch. Here the PyTorch
twin of the official model (benchmarks/torch_repvgg.py) gets seeded random weights and BN
statistics, the MindSpore network the same values, and both train on the same seeded batches:
MindSpore through train.py's own pieces (NetWithLoss, get_criterion, get_optimizer, lr_schedule,
TrainOneStepWithEMA at amp_level O0), PyTorch through torch.optim.SGD with the same two parameter
groups and F.cross_entropy. A third copy, PyTorch in float64, shows how far float32 rounding alone
moves each figure (the floor any float32 implementation sits on). It prints figures, asserts nothing.

Conventions that read differently but are the same update: MindSpore's BN momentum 0.9 weighs the
old moving value, PyTorch's 0.1 the batch value; both keep the unbiased (n / (n - 1)) batch variance
in the moving variance (measured and printed below, not assumed).
"""
import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# pylint: disable=wrong-import-position  (after the path insert, so that the script runs from anywhere)
import mindspore as ms
import torch
import torch.nn.functional as F

from benchmarks.torch_repvgg import TorchRepVGG
from src.config import make_config
from src.ema.train_one_step_with_ema import TrainOneStepWithEMA
from src.repvgg import ARCH_SPECS, create_model
from src.tools.base.device import set_device
from src.tools.base.numerics import relative_difference
from src.tools.checkpoints.format import load_weights
from src.tools.conversion.convert import to_mindspore_names
from src.tools.training.amp import loss_scale_cell
from src.tools.training.criterion import NetWithLoss, get_criterion
from src.tools.training.optimizer import get_optimizer
from src.tools.training.schedulers import lr_schedule

FLOAT32_ROUNDING = 1e-5
CLASSES = 10


def randomized_twin(arch, seed):
    """The official-layout PyTorch model (train form) with seeded random weights and BN statistics."""
    depths, multipliers, groups, use_se = ARCH_SPECS[arch]
    torch.manual_seed(seed)
    model = TorchRepVGG(depths, multipliers, groups, use_se, CLASSES)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    return model


def project_names(tensors, what):
    """{official name: torch tensor} under this project's names (the converter's mapping), as float64 numpy."""
    arrays = {name: value.detach().double().numpy().copy() for name, value in tensors.items()}
    return to_mindspore_names(arrays, 'official', what)[0]


class TorchSide:
    """The PyTorch twin training with SGD (decay on ndim >= 2 only) and cross-entropy, in ``dtype``."""

    def __init__(self, model, args, dtype):
        self.model, self.dtype, self.smoothing = model.to(dtype).train(), dtype, args.label_smoothing
        params = list(model.parameters())
        self.optimizer = torch.optim.SGD([{'params': [p for p in params if p.ndim >= 2], 'weight_decay': args.weight_decay},
                                          {'params': [p for p in params if p.ndim < 2], 'weight_decay': 0.0}],
                                         lr=args.base_lr, momentum=args.momentum)

    def step(self, images, labels, lr):
        for group in self.optimizer.param_groups:
            group['lr'] = lr
        self.optimizer.zero_grad()
        loss = F.cross_entropy(self.model(torch.from_numpy(images).to(self.dtype)), torch.from_numpy(labels).long(),
                               label_smoothing=self.smoothing)
        loss.backward()
        self.optimizer.step()
        return float(loss)

    def tensors(self):
        return project_names(self.model.state_dict(), 'the PyTorch twin')

    def moments(self):
        return project_names({name: self.optimizer.state[p]['momentum_buffer']
                              for name, p in self.model.named_parameters()}, 'momentum buffers')

    def logits(self, images):
        self.model.eval()
        with torch.no_grad():
            return self.model(torch.from_numpy(images).to(self.dtype)).double().numpy()


class MindSporeSide:
    """This project's network trained by train.py's own step (O0: float32, loss scale 1)."""

    def __init__(self, arch, weights, args, lr_values):
        self.net = create_model(arch, num_classes=CLASSES)
        load_weights(self.net, {name: ms.Tensor(value.astype(np.float32)) for name, value in weights.items()},
                     source='the PyTorch twin')
        self.optimizer = get_optimizer(args, self.net, lr_values)
        criterion = get_criterion(args.label_smoothing, soft_targets=False)
        self.cell = TrainOneStepWithEMA(NetWithLoss(self.net, criterion), self.optimizer,
                                        loss_scale_cell('O0', args.loss_scale, True))
        self.cell.set_train(True)

    def step(self, images, labels, _lr):  # the rate comes from lr_values[global_step], as in train.py
        loss, overflow, _ = self.cell(ms.Tensor(images), ms.Tensor(labels))
        if bool(overflow.asnumpy()):
            print('  MindSpore reported an overflow: the step was skipped')
        return float(loss.asnumpy())

    def tensors(self):
        return {p.name: p.asnumpy() for p in self.net.get_parameters()}

    def moments(self):
        return {m.name[len('moments.'):]: m.asnumpy() for m in self.optimizer.moments}

    def logits(self, images):
        self.net.set_train(False)
        return self.net(ms.Tensor(images)).asnumpy()


def batches(count, batch, image_size, seed):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(batch, 3, image_size, image_size)).astype(np.float32),
             rng.integers(0, CLASSES, batch).astype(np.int32)) for _ in range(count)]


def worst(actual, expected, keep):
    """(max relative difference, tensor name) over the names ``keep`` accepts."""
    return max((relative_difference(actual[name], value), name) for name, value in expected.items() if keep(name))


def compare(side, reference, check_images):
    """{figure: (max relative difference, worst tensor)} of ``side`` against ``reference`` after training."""
    tensors, expected = side.tensors(), reference.tensors()
    is_stat = lambda name: name.endswith(('moving_mean', 'moving_variance'))  # noqa: E731
    return {'weights (every trained tensor)': worst(tensors, expected, lambda n: not is_stat(n)),
            'BN moving mean and variance': worst(tensors, expected, is_stat),
            'momentum buffers': worst(side.moments(), reference.moments(), lambda n: True),
            'eval-mode logits after training': (relative_difference(side.logits(check_images),
                                                                    reference.logits(check_images)), '')}


def bn_variance_convention(seed):
    """Which batch variance ('unbiased' or 'biased') each framework keeps after one train-mode call."""
    x = np.random.default_rng(seed).normal(size=(4, 3, 5, 5)).astype(np.float32)
    n, biased = x.size // x.shape[1], x.var(axis=(0, 2, 3))
    expected = {'unbiased': 0.9 + 0.1 * biased * n / (n - 1), 'biased': 0.9 + 0.1 * biased}
    ms_bn, torch_bn = ms.nn.BatchNorm2d(3, momentum=0.9), torch.nn.BatchNorm2d(3, momentum=0.1)
    ms_bn.set_train(True)
    ms_bn(ms.Tensor(x))
    torch_bn.train()(torch.from_numpy(x))
    kind = lambda var: min(expected, key=lambda k: relative_difference(var, expected[k]))  # noqa: E731
    return kind(ms_bn.moving_variance.asnumpy()), kind(torch_bn.running_var.numpy())


def versions():
    cpu = next((line.split(':', 1)[1].strip() for line in Path('/proc/cpuinfo').read_text().splitlines()
                if line.startswith('model name')), platform.processor() or 'unknown CPU')
    return (f'{cpu}, {len(os.sched_getaffinity(0))} cores; Python {platform.python_version()}, '
            f'mindspore {ms.__version__}, torch {torch.__version__}, numpy {np.__version__}')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', default='RepVGG-A0', choices=sorted(ARCH_SPECS))
    parser.add_argument('--image_size', type=int, default=64)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--base_lr', type=float, default=0.1, help='peak of the cosine schedule over the steps')
    parser.add_argument('--label_smoothing', type=float, default=0.1)
    opts = parser.parse_args()
    set_device('CPU', graph_mode=True)
    print(versions())
    ms_var, torch_var = bn_variance_convention(opts.seed)
    print(f'BN moving variance: MindSpore keeps the {ms_var} batch variance, PyTorch the {torch_var} one'
          + ('' if ms_var == torch_var else '  <-- CONVENTIONS DIFFER'))

    # Cosine schedule over the run, so that every step has its own rate (and a wrong index would show).
    args = make_config(arch=opts.arch, num_classes=CLASSES, optimizer='momentum', momentum=0.9, weight_decay=1e-4,
                       base_lr=opts.base_lr, lr_scheduler='cosine_lr', warmup_length=0, epochs=1,
                       label_smoothing=opts.label_smoothing, amp_level='O0')
    lr_values = lr_schedule(args, steps_per_epoch=opts.steps)
    twin = randomized_twin(opts.arch, opts.seed)
    mindspore = MindSporeSide(opts.arch, project_names(twin.state_dict(), 'the PyTorch twin'), args, lr_values)
    pytorch64 = TorchSide(copy.deepcopy(twin), args, torch.float64)
    pytorch = TorchSide(twin, args, torch.float32)
    print(f'{opts.arch}, {sum(p.numel() for p in twin.parameters())} parameters, batch {opts.batch} x 3 x '
          f'{opts.image_size}^2, {opts.steps} steps, lr {", ".join(f"{v:.6g}" for v in lr_values)}, momentum '
          f'{args.momentum}, weight decay {args.weight_decay} (ndim >= 2), label smoothing {args.label_smoothing}, '
          f'seed {opts.seed}')

    print('step  loss MindSpore  loss PyTorch  rel. diff  | PyTorch fp32 vs fp64 | seconds MS / PT')
    loss_figures = []
    for step, (images, labels) in enumerate(batches(opts.steps, opts.batch, opts.image_size, opts.seed), 1):
        lr = float(lr_values[step - 1])
        start = time.perf_counter()
        ms_loss = mindspore.step(images, labels, lr)
        middle = time.perf_counter()
        torch_loss = pytorch.step(images, labels, lr)
        end = time.perf_counter()
        floor = relative_difference(torch_loss, pytorch64.step(images, labels, lr))
        loss_figures.append(relative_difference(ms_loss, torch_loss))
        print(f'{step:4d}  {ms_loss:14.7f}  {torch_loss:12.7f}  {loss_figures[-1]:9.2e}  | {floor:20.2e} | '
              f'{middle - start:.2f} / {end - middle:.2f}')

    check_images = batches(1, opts.batch, opts.image_size, opts.seed + 1)[0][0]
    figures, floors = compare(mindspore, pytorch, check_images), compare(pytorch, pytorch64, check_images)
    print(f'after {opts.steps} steps, max relative difference (worst tensor):')
    print(f'  {"":32s} {"MindSpore vs PyTorch":>21s}   {"PyTorch fp32 vs fp64":>21s}')
    for what, (value, name) in figures.items():
        print(f'  {what:32s} {value:21.2e}   {floors[what][0]:21.2e}' + (f'   ({name})' if name else ''))
    largest = max(loss_figures + [value for value, _ in figures.values()])
    within = largest <= FLOAT32_ROUNDING and ms_var == torch_var
    print(f'{"within" if within else "NOT within"} {FLOAT32_ROUNDING:g} (float32 rounding): largest MindSpore-vs-'
          f'PyTorch figure {largest:.2e} over {len(loss_figures)} losses, weights, BN statistics, momentum buffers '
          f'and logits; largest fp32-vs-fp64 figure of PyTorch itself '
          f'{max(value for value, _ in floors.values()):.2e}')


if __name__ == '__main__':
    main()
