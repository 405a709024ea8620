"""Does this project train RepVGG as PyTorch does? Same weights, same batches, compared step by step.

    python benchmarks/torch_parity.py
    python benchmarks/torch_parity.py --arch RepVGG-B0 --image_size 32

Equal logits of converted weights (tests/test_convert.py) say nothing about training: the loss with
label smoothing, BN's gradient in train mode, BN's moving statistics, weight decay on kernels only,
momentum and the per-step learning rate could each differ from PyTorch. Here the PyTorch twin of the
official model (benchmarks/torch_repvgg.py) gets seeded random weights and BN statistics, this
project's network the same values, and both train on the same seeded batches: MindSpore through
train.py's own pieces (NetWithLoss, get_criterion, get_optimizer, lr_schedule, TrainOneStepWithEMA at
amp_level O0, GRAPH mode), PyTorch through torch.optim.SGD with the same two parameter groups and
F.cross_entropy. A float64 copy of the PyTorch model is the exact answer both float32 runs are
measured against: its distance to PyTorch float32 is what float32 rounding amounts to here.

Two comparisons:
- each step from the same state: before every step, PyTorch's weights, BN statistics and momentum
  buffers are copied into the MindSpore network and the float64 copy. This is the training step
  itself. One thing float32 rounding can do besides small differences: a ReLU input within rounding
  of zero (about one in a million) lands on the other side of zero, and that element's gradient path
  opens or closes, moving a few tensors by 1e-3 or more. So where MindSpore is more than 1e-5 from
  float64, the float64 step is redone with the ReLU pattern MindSpore computed (marked *); that row
  is the step without this effect.
- a free run of N steps, each framework on its own trajectory: the rounding of step 1 feeds back (and
  ReLU flips compound), in PyTorch float32 against float64 as well, so this run is shown next to that
  drift and is not expected to stay within 1e-5.

Conventions that read differently but are the same update: MindSpore's BN momentum 0.9 weighs the
old moving value, PyTorch's 0.1 the batch value; both keep the unbiased (n / (n - 1)) batch variance
in the moving variance (measured below, not assumed). The script prints figures and asserts nothing.
"""
import argparse
import copy
import functools
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mindspore as ms
import torch
import torch.nn.functional as F

from benchmarks.torch_repvgg import TorchBlock, TorchRepVGG, randomize_torch_bn
from src.config import make_config
from src.ema.train_one_step_with_ema import TrainOneStepWithEMA
from src.repvgg import ARCH_SPECS, QA_ARCH_NAMES, RepVGGBlock, create_model
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
FIGURES = ('loss', 'weights', 'BN statistics', 'momentum')
ARCH_NAMES_WITHOUT_QA = sorted(set(ARCH_SPECS) - set(QA_ARCH_NAMES))


def randomized_twin(arch, seed):
    """The official-layout PyTorch model (train form) with seeded random weights and BN statistics."""
    depths, multipliers, groups, use_se = ARCH_SPECS[arch]
    torch.manual_seed(seed)
    return randomize_torch_bn(TorchRepVGG(depths, multipliers, groups, use_se, CLASSES))


def project_names(tensors, what):
    """{official name: torch tensor} as {this project's name: float64 array} (the converter's mapping)."""
    arrays = {name: value.detach().double().numpy().copy() for name, value in tensors.items()}
    return to_mindspore_names(arrays, 'official', what)[0]


class TorchSide:
    """The PyTorch twin trained by SGD (decay on ndim >= 2 only) and cross-entropy, in ``dtype``."""

    def __init__(self, model, args, dtype):
        self.model, self.dtype, self.smoothing = model.to(dtype), dtype, args.label_smoothing
        params = list(model.parameters())
        groups = [{'params': [p for p in params if p.ndim >= 2], 'weight_decay': args.weight_decay},
                  {'params': [p for p in params if p.ndim < 2], 'weight_decay': 0.0}]
        self.optimizer = torch.optim.SGD(groups, lr=args.base_lr, momentum=args.momentum)
        self.loss = None

    def step(self, images, labels, lr):
        for group in self.optimizer.param_groups:
            group['lr'] = lr
        self.optimizer.zero_grad()
        loss = F.cross_entropy(self.model.train()(torch.from_numpy(images).to(self.dtype)),
                               torch.from_numpy(labels).long(), label_smoothing=self.smoothing)
        loss.backward()
        self.optimizer.step()
        self.loss = float(loss.detach())

    def tensors(self):
        return project_names(self.model.state_dict(), 'the PyTorch twin')

    def moments(self):
        return project_names({name: self.optimizer.state[p].get('momentum_buffer', torch.zeros_like(p))
                              for name, p in self.model.named_parameters()}, 'momentum buffers')  # 0 before step 1

    def copy_state(self, other):
        """Take ``other``'s weights, BN statistics and momentum buffers (another TorchSide)."""
        self.model.load_state_dict(other.model.state_dict())
        for mine, theirs in zip(self.model.parameters(), other.model.parameters(), strict=True):
            buffer = other.optimizer.state[theirs].get('momentum_buffer', torch.zeros_like(theirs))
            self.optimizer.state[mine]['momentum_buffer'] = buffer.detach().to(self.dtype, copy=True)

    def logits(self, images):
        with torch.no_grad():
            return self.model.eval()(torch.from_numpy(images).to(self.dtype)).double().numpy()

    def force_relu_pattern(self, passes):
        """Make every block's ReLU pass exactly where ``passes`` (one bool array per block) says; the
        returned list fills, at the next forward, with each block's count of inputs on the other side."""
        flipped = []

        def forward(block, keep, x):
            out = block.rbr_dense(x) + block.rbr_1x1(x)
            if block.rbr_identity is not None:
                out = out + block.rbr_identity(x)
            out = block.se(out)
            flipped.append(int(((out > 0) != keep).sum()))
            return out * keep

        blocks = [m for m in self.model.modules() if isinstance(m, TorchBlock)]
        for block, keep in zip(blocks, passes, strict=True):
            block.forward = functools.partial(forward, block, torch.from_numpy(keep))
        return flipped


class MindSporeSide:
    """This project's network trained by train.py's own step (O0: float32, loss scale 1)."""

    def __init__(self, arch, weights, args, lr_values):
        self.net = create_model(arch, num_classes=CLASSES)
        load_weights(self.net, {name: ms.Tensor(value.astype(np.float32)) for name, value in weights.items()},
                     source='the PyTorch twin')
        self.optimizer = get_optimizer(args, self.net, lr_values)
        self.cell = TrainOneStepWithEMA(NetWithLoss(self.net, get_criterion(args.label_smoothing, soft_targets=False)),
                                        self.optimizer, loss_scale_cell('O0', args.loss_scale, True))
        self.loss = self.probe = None

    def step(self, images, labels, _lr):  # the rate is lr_values[global_step], as in train.py
        self.cell.set_train(True)
        loss, overflow, _ = self.cell(ms.Tensor(images), ms.Tensor(labels))
        if bool(overflow.asnumpy()):
            print('  MindSpore reported an overflow: the step was skipped')
        self.loss = float(loss.asnumpy())

    def tensors(self):  # copies: asnumpy() can share memory that the next step overwrites
        return {p.name: p.asnumpy().copy() for p in self.net.get_parameters()}

    def moments(self):
        return {m.name[len('moments.'):]: m.asnumpy().copy() for m in self.optimizer.moments}

    def copy_state(self, other):
        """Take ``other``'s (a TorchSide's) weights, BN statistics and momentum buffers.

        ops.assign writes in place: after the step's graph has run, ``set_data`` on a moment gives
        the Parameter a new buffer that the graph (the optimizer sits in an ``if`` branch) neither
        reads nor writes (measured with MindSpore 2.8).
        """
        tensors, moments = other.tensors(), other.moments()
        for param in self.net.get_parameters():
            ms.ops.assign(param, ms.Tensor(tensors[param.name].astype(np.float32)))
        for moment in self.optimizer.moments:
            ms.ops.assign(moment, ms.Tensor(moments[moment.name[len('moments.'):]].astype(np.float32)))

    def logits(self, images):
        self.net.set_train(False)
        return self.net(ms.Tensor(images)).asnumpy()

    def relu_passes(self, images):
        """Where each block's ReLU passes its input in a train-mode forward (BN statistics move)."""
        self.probe = self.probe or ReluInputs(self.net)
        self.probe.set_train(True)
        return [value.asnumpy() > 0 for value in self.probe(ms.Tensor(images))]


class ReluInputs(ms.nn.Cell):
    """Every block's ReLU input, computed as RepVGGBlock.construct computes it, in one graph."""

    def __init__(self, net):
        super().__init__(auto_prefix=False)  # keeps the network's parameter names
        self.net = net

    def construct(self, x):
        inputs = ()
        for stage in (self.net.stage0, self.net.stage1, self.net.stage2, self.net.stage3, self.net.stage4):
            for block in (stage,) if isinstance(stage, RepVGGBlock) else stage:
                out = block.rbr_dense(x) + block.rbr_1x1(x)
                if block.rbr_identity is not None:
                    out = out + block.rbr_identity(x)
                out = block.se(out)
                inputs += (out,)
                x = block.relu(out)
        return inputs


def differences(side, reference):
    """{figure: max relative difference over the tensors of that kind} of ``side`` against ``reference``."""
    tensors, expected = side.tensors(), reference.tensors()

    def is_stat(name):
        return name.endswith(('moving_mean', 'moving_variance'))

    moments, expected_moments = side.moments(), reference.moments()
    return {'loss': relative_difference(side.loss, reference.loss),
            'weights': max(relative_difference(tensors[n], v) for n, v in expected.items() if not is_stat(n)),
            'BN statistics': max(relative_difference(tensors[n], v) for n, v in expected.items() if is_stat(n)),
            'momentum': max(relative_difference(moments[n], v) for n, v in expected_moments.items())}


def batches(count, batch, image_size, seed):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(batch, 3, image_size, image_size)).astype(np.float32),
             rng.integers(0, CLASSES, batch).astype(np.int32)) for _ in range(count)]


def bn_variance_convention(seed):
    """Which batch variance ('unbiased' or 'biased') each framework keeps after one train-mode call."""
    x = np.random.default_rng(seed).normal(size=(4, 3, 5, 5)).astype(np.float32)
    n, biased = x.size // x.shape[1], x.var(axis=(0, 2, 3))
    expected = {'unbiased': 0.9 + 0.1 * biased * n / (n - 1), 'biased': 0.9 + 0.1 * biased}
    ms_bn, torch_bn = ms.nn.BatchNorm2d(3, momentum=0.9), torch.nn.BatchNorm2d(3, momentum=0.1)
    ms_bn.set_train(True)
    ms_bn(ms.Tensor(x))
    torch_bn.train()(torch.from_numpy(x))

    def kind(var):
        return min(expected, key=lambda k: relative_difference(var, expected[k]))

    return kind(ms_bn.moving_variance.asnumpy()), kind(torch_bn.running_var.numpy())


def versions():
    cpu = next((line.split(':', 1)[1].strip() for line in Path('/proc/cpuinfo').read_text().splitlines()
                if line.startswith('model name')), platform.processor() or 'unknown CPU')
    return (f'{cpu}, {len(os.sched_getaffinity(0))} cores; Python {platform.python_version()}, '
            f'mindspore {ms.__version__}, torch {torch.__version__}, numpy {np.__version__}')


def row(label, figures):
    return f'  {label:26s}' + ''.join(f'{value:>15.2e}' for value in figures.values())


def header(keys):
    return f'  {"":26s}' + ''.join(f'{key:>15s}' for key in keys)


def within(value):
    return f'{"within" if value <= FLOAT32_ROUNDING else "NOT within"} {FLOAT32_ROUNDING:g}'


def same_state_steps(sides, data, lr_values, args):
    """Each step from PyTorch float32's state; returns per step {comparison: largest figure}.

    Where MindSpore is more than 1e-5 from float64, the float64 step is redone with MindSpore's ReLU
    pattern (which block inputs its ReLUs passed): if that agrees, the difference came from ReLU
    inputs within float32 rounding of zero that MindSpore computed on the other side of zero.
    """
    mindspore, pytorch, exact = sides
    print("\nEach step from the same state (PyTorch float32's, copied into the others first); max relative "
          "difference:")
    print(header(FIGURES))
    largest = []
    for step, (images, labels) in enumerate(data, 1):
        lr = float(lr_values[step - 1])
        mindspore.copy_state(pytorch)
        passes = mindspore.relu_passes(images)  # this forward moves the BN statistics: copied again
        mindspore.copy_state(pytorch)
        exact.copy_state(pytorch)
        before = copy.deepcopy(pytorch)
        for side in sides:
            side.step(images, labels, lr)
        print(f' step {step}: loss MindSpore {mindspore.loss:.7f}, PyTorch {pytorch.loss:.7f}, '
              f'float64 {exact.loss:.7f}')
        pairs = {'MindSpore vs PyTorch': differences(mindspore, pytorch),
                 'MindSpore vs float64': differences(mindspore, exact),
                 'PyTorch vs float64': differences(pytorch, exact)}
        note = ''
        if max(pairs['MindSpore vs float64'].values()) > FLOAT32_ROUNDING:
            forced = TorchSide(copy.deepcopy(before.model), args, torch.float64)
            forced.copy_state(before)
            flipped = forced.force_relu_pattern(passes)
            forced.step(images, labels, lr)
            note = (f'  {sum(flipped)} of {sum(p.size for p in passes)} ReLU inputs are on the other side of zero '
                    f'in MindSpore')
            if sum(flipped):
                pairs['MindSpore vs float64*'] = differences(mindspore, forced)
                note += '; * float64 redone with MindSpore\'s ReLU pattern'
        for label, figures in pairs.items():
            print(row(label, figures))
        if note:
            print(note)
        largest.append({label: max(figures.values()) for label, figures in pairs.items()})
    return largest


def free_run(mindspore, pytorch, exact, data, lr_values, check_images):
    """N steps, each side on its own trajectory; returns {comparison: largest figure} after the last."""
    print('\nFree run: each framework on its own trajectory from the same start')
    for step, (images, labels) in enumerate(data, 1):
        for side in (mindspore, pytorch, exact):
            side.step(images, labels, float(lr_values[step - 1]))
        print(f' step {step}: loss MindSpore {mindspore.loss:.7f}, PyTorch {pytorch.loss:.7f} (relative difference '
              f'{relative_difference(mindspore.loss, pytorch.loss):.2e}), float64 {exact.loss:.7f}')
    logits = {side: side.logits(check_images) for side in (mindspore, pytorch, exact)}
    print(f'after step {len(data)}, max relative difference:')
    print(header((*FIGURES, 'eval logits')))
    largest = {}
    for label, (side, reference) in {'MindSpore vs PyTorch': (mindspore, pytorch),
                                     'PyTorch vs float64': (pytorch, exact)}.items():
        figures = dict(differences(side, reference),
                       **{'eval logits': relative_difference(logits[side], logits[reference])})
        print(row(label, figures))
        largest[label] = max(figures.values())
    for name, side in (('MindSpore', mindspore), ('PyTorch', pytorch)):
        print(f'  eval-mode logits, first check image, {name:9s} '
              f'{np.array2string(logits[side][0].astype(np.float32), precision=5, max_line_width=200)}')
    return largest


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', default='RepVGG-A0', choices=ARCH_NAMES_WITHOUT_QA,
                        help='a RepVGG arch (the PyTorch twin has the plain block, not QARepVGG\'s)')
    parser.add_argument('--image_size', type=int, default=64)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--steps', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--base_lr', type=float, default=0.1, help='peak of the cosine schedule over the steps')
    parser.add_argument('--label_smoothing', type=float, default=0.1)
    opts = parser.parse_args()
    set_device('CPU', graph_mode=True)
    print(versions())
    ms_var, torch_var = bn_variance_convention(opts.seed)
    print(f'BN moving variance: MindSpore (momentum 0.9) keeps the {ms_var} batch variance, PyTorch (momentum 0.1) '
          f'the {torch_var} one' + ('' if ms_var == torch_var else '  <-- CONVENTIONS DIFFER'))

    # Cosine schedule over the run, so that every step has its own rate (and a wrong index would show).
    args = make_config(arch=opts.arch, num_classes=CLASSES, optimizer='momentum', momentum=0.9, weight_decay=1e-4,
                       base_lr=opts.base_lr, lr_scheduler='cosine_lr', warmup_length=0, epochs=1,
                       label_smoothing=opts.label_smoothing, amp_level='O0')
    lr_values = lr_schedule(args, steps_per_epoch=opts.steps)
    twin = randomized_twin(opts.arch, opts.seed)
    weights = project_names(twin.state_dict(), 'the PyTorch twin')
    print(f'{opts.arch}, {sum(p.numel() for p in twin.parameters())} parameters, batch {opts.batch} x 3 x '
          f'{opts.image_size}^2, {opts.steps} steps, lr {", ".join(f"{v:.6g}" for v in lr_values)}, momentum '
          f'{args.momentum}, weight decay {args.weight_decay} (ndim >= 2), label smoothing {args.label_smoothing}, '
          f'seed {opts.seed}')
    data = batches(opts.steps, opts.batch, opts.image_size, opts.seed)
    check_images = batches(1, opts.batch, opts.image_size, opts.seed + 1)[0][0]

    def new_sides():
        return (MindSporeSide(opts.arch, weights, args, lr_values), TorchSide(copy.deepcopy(twin), args, torch.float32),
                TorchSide(copy.deepcopy(twin), args, torch.float64))

    per_step = same_state_steps(new_sides(), data, lr_values, args)
    free = free_run(*new_sides(), data, lr_values, check_images)


    def worst(label):
        return max(largest.get(label, 0.0) for largest in per_step)

    own_relus = max(min(largest['MindSpore vs float64'], largest.get('MindSpore vs float64*', np.inf))
                    for largest in per_step)
    print(f'\nBN conventions: {"the same" if ms_var == torch_var else "DIFFERENT"}')
    print(f'each step from the same state, {opts.steps} steps, largest figure: MindSpore vs PyTorch '
          f'{worst("MindSpore vs PyTorch"):.2e} ({within(worst("MindSpore vs PyTorch"))}); MindSpore vs float64 '
          f'{worst("MindSpore vs float64"):.2e}, {own_relus:.2e} with its own ReLU pattern ({within(own_relus)}); '
          f'PyTorch float32 vs float64 {worst("PyTorch vs float64"):.2e} ({within(worst("PyTorch vs float64"))})')
    print(f'free run of {opts.steps} steps, largest figure: MindSpore vs PyTorch '
          f'{free["MindSpore vs PyTorch"]:.2e} ({within(free["MindSpore vs PyTorch"])}); PyTorch float32 vs float64 '
          f'{free["PyTorch vs float64"]:.2e} ({within(free["PyTorch vs float64"])})')

if __name__ == '__main__':
    main()
