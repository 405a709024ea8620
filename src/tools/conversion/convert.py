"""Weights from the official PyTorch RepVGG and from timm, as checkpoints of this project (docs/weights.md).

Three layouts hold the same tensors under other names: official (``stage1.0.rbr_1x1.bn.running_var``),
timm (``stages.0.0.conv_1x1.bn.running_var``, ``stem.``, ``head.fc``) and this project's (the official
names with MindSpore's BN names; its QARepVGG files exist only here). Every source name must map to
exactly one network tensor and every network tensor must come from the file. A conversion checks
itself: strict load, train vs deploy logits, and the written file reloaded into a fresh network.
"""
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import mindspore as ms
import numpy as np

from src.repvgg import (
    ARCH_NAMES,
    ARCH_SPECS,
    block_names,
    create_model,
    is_quantization_friendly,
    stage_widths,
    switch_net_to_deploy,
)
from src.tools.base.cli import UserError, listed
from src.tools.base.files import check_writable_file, regular_target, remove_partial_files
from src.tools.base.numerics import RELOAD_TOLERANCE, REPARAM_TOLERANCE, relative_difference
from src.tools.checkpoints.format import EMA_PREFIX, load_weights, read_checkpoint, save_checkpoint
from src.tools.checkpoints.model_card import ENTRY_NAMES, IMAGENET_CARD, ModelCard
from src.tools.conversion.torch_pickle import is_safetensors, read_pth, read_safetensors

NETWORK_ROOTS = ('stage0', 'stage1', 'stage2', 'stage3', 'stage4', 'linear')
DROP = object()  # mapping result of tensors with no counterpart by design (BN step counters)
CHECK_IMAGE_SIZE = 64

_TORCH_BN_LEAVES = {'weight': 'gamma', 'bias': 'beta', 'running_mean': 'moving_mean',
                    'running_var': 'moving_variance'}
_OFFICIAL_BLOCK = re.compile(r'(stage0|stage[1-4]\.\d+)\.(.+)')
_OFFICIAL_PLAIN = re.compile(r'(rbr_dense|rbr_1x1)\.conv\.weight|rbr_reparam\.(weight|bias)'
                             r'|se\.(down|up)\.(weight|bias)')
_OFFICIAL_BN = re.compile(r'(rbr_dense\.bn|rbr_1x1\.bn|rbr_identity)\.(\w+)')
_TIMM_BLOCK = re.compile(r'(stem|stages\.([0-3])\.(\d+))\.(.+)')
_TIMM_BRANCHES = (('conv_kxk.', 'rbr_dense.'), ('conv_1x1.', 'rbr_1x1.'), ('identity.', 'rbr_identity.'),
                  ('reparam_conv.', 'rbr_reparam.'), ('attn.fc1.', 'se.down.'), ('attn.fc2.', 'se.up.'))


# ----------------------------------------------------------------------------- names
def official_to_mindspore(name):
    """The network name of an official-layout tensor; DROP for BN step counters; None if none."""
    if name in ('linear.weight', 'linear.bias'):
        return name
    match = _OFFICIAL_BLOCK.fullmatch(name)
    if not match:
        return None
    block, tail = match.groups()
    if _OFFICIAL_PLAIN.fullmatch(tail):
        return name
    bn = _OFFICIAL_BN.fullmatch(tail)
    if bn and bn[2] == 'num_batches_tracked':
        return DROP
    if bn and bn[2] in _TORCH_BN_LEAVES:
        return f'{block}.{bn[1]}.{_TORCH_BN_LEAVES[bn[2]]}'
    return None


def timm_to_official(name):
    """The official-layout name of a timm tensor, or None if it has none."""
    if name.startswith('head.fc.'):
        return 'linear.' + name[len('head.fc.'):]
    match = _TIMM_BLOCK.fullmatch(name)
    if not match:
        return None
    block = 'stage0' if match[1] == 'stem' else f'stage{int(match[2]) + 1}.{match[3]}'
    tail = match[4]
    for timm_branch, official_branch in _TIMM_BRANCHES:
        if tail.startswith(timm_branch):
            return f'{block}.{official_branch}{tail[len(timm_branch):]}'
    return None


def detect_form(names, source):
    """'train' (branches) or 'deploy' (rbr_reparam) from network names; mixing both is an error."""
    deploy = any('.rbr_reparam.' in n for n in names)
    train = any(re.search(r'\.(rbr_dense|rbr_1x1|rbr_identity)\.', n) for n in names)
    if deploy and train:
        raise UserError(f'{source} mixes train-form blocks (rbr_dense/conv_kxk) and deploy-form blocks '
                        f'(rbr_reparam/reparam_conv); convert a file that is wholly one form')
    if not deploy and not train:
        raise UserError(f'{source} holds no RepVGG block tensors; is it a RepVGG checkpoint?')
    return 'deploy' if deploy else 'train'


def to_mindspore_names(tensors, layout, source):
    """({network name: array}, dropped source names) of a torch-layout state dict; a UserError unless
    every name maps, each to a tensor of its own."""
    mapped, dropped, unmapped, origin = {}, [], [], {}
    for name, value in tensors.items():
        official = timm_to_official(name) if layout == 'timm' else name
        target = official_to_mindspore(official) if official is not None else None
        if target is DROP:
            dropped.append(name)
        elif target is None:
            unmapped.append(name)
        elif target in mapped:
            raise UserError(f'{source}: {origin[target]} and {name} both map to {target}')
        else:
            mapped[target], origin[target] = value, name
    if unmapped:
        raise UserError(f'{source} ({layout} layout) has tensors that map to no RepVGG tensor: '
                        f'{listed(unmapped)}; nothing was converted')
    return mapped, dropped


# ----------------------------------------------------------------------------- reading
@dataclass
class Source:
    """What a file holds, in network names; ``notes`` say what was unwrapped or left out."""
    path: Path
    container: str          # 'pth', 'safetensors' or 'ckpt'
    layout: str             # 'official', 'timm' or 'mindspore'
    form: str               # 'train' or 'deploy'
    tensors: dict           # network name -> float32 array
    read_count: int         # entries read from the file (before dropping counters etc.)
    notes: list = field(default_factory=list)
    card: ModelCard = IMAGENET_CARD  # what a checkpoint of this project records; PyTorch/timm: ImageNet's


def unwrap_state_dict(obj, source):
    """The flat {name: array} inside a loaded ``.pth`` object (also in 'state_dict' / 'model', with
    DataParallel's 'module.' prefix), and notes on what was unwrapped."""
    notes = []
    for _ in range(4):
        if not isinstance(obj, dict):
            raise UserError(f'{source} holds a {type(obj).__name__}, not a state dict')
        if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
            break
        key = next((k for k in ('state_dict', 'model') if isinstance(obj.get(k), dict)), None)
        if key is None:
            others = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
            raise UserError(f'{source}: found no state dict (tensors only) and no state_dict/model entry; '
                            f'entries that are not tensors: {listed(map(str, others))}')
        rest = sorted(str(k) for k in obj if k != key)
        notes.append(f"took '{key}'" + (f" (left out {', '.join(rest)})" if rest else ''))
        obj = obj[key]
    else:
        raise UserError(f'{source}: state dict nested too deeply')
    names = list(obj)
    if all(isinstance(n, str) and n.startswith('module.') for n in names):
        obj = {n[len('module.'):]: v for n, v in obj.items()}
        notes.append("removed the 'module.' prefix")
    return dict(obj), notes


def _as_float32(tensors, source):
    converted, not_float = {}, []
    for name, value in tensors.items():
        if np.issubdtype(value.dtype, np.floating):
            converted[name] = np.ascontiguousarray(value, np.float32)
        else:
            not_float.append(f'{name} ({value.dtype})')
    if not_float:
        raise UserError(f'{source}: network tensors must be floating point, these are not: {listed(not_float)}')
    return converted


def read_source(path, ema=False):
    """Read any supported file as a ``Source``; the layout and form are detected from names."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f'input file {path} does not exist')
    source = f'input {path}'
    if path.suffix == '.ckpt':
        return _read_mindspore(path, ema)
    if ema:
        raise UserError('--ema applies to MindSpore .ckpt files only (their ema.* copy of the weights)')
    if is_safetensors(path):
        container, state, notes = 'safetensors', read_safetensors(path), []
    else:  # read_pth says what the file is when it is not a torch archive
        container = 'pth'
        state, notes = unwrap_state_dict(read_pth(path), source)
    layout = 'timm' if any(name.startswith(('stem.', 'stages.', 'head.')) for name in state) else 'official'
    tensors, dropped = to_mindspore_names(state, layout, source)
    if dropped:
        notes.append(f'dropped {len(dropped)} BN num_batches_tracked counters')
    form = detect_form(tensors, source)
    return Source(path, container, layout, form, _as_float32(tensors, source), len(state), notes)


def _read_mindspore(path, ema):
    checkpoint = read_checkpoint(path)
    prefix = EMA_PREFIX if ema else ''
    tensors = {}
    for name, value in checkpoint.items():
        if name.startswith(prefix) and name[len(prefix):].split('.', 1)[0] in NETWORK_ROOTS:
            tensors[name[len(prefix):]] = value.asnumpy()
    source = f'input {path}'
    if not tensors:
        where = f' under {prefix}' if prefix else ''
        raise UserError(f'{source} holds no network tensors{where} (stage0-4, linear)')
    notes = [f'used the {prefix}* copy' if ema else 'used the network weights']
    left_out = len(checkpoint) - len(tensors) - len(set(checkpoint) & set(ENTRY_NAMES))
    if left_out:
        has_ema = not ema and any(n.startswith(EMA_PREFIX) for n in checkpoint)
        notes.append(f'left out {left_out} training-state entries (optimizer, counters'
                     f'{", EMA copy: add --ema to convert it instead" if has_ema else ""})')
    form = detect_form(tensors, source)
    card = ModelCard.read(checkpoint, source, 're-save it with this project')
    if card.class_names:
        notes.append(f'carried its {len(card.class_names)} class names')
    return Source(path, 'ckpt', 'mindspore', form, _as_float32(tensors, source), len(checkpoint), notes, card)


# ----------------------------------------------------------------------------- arch
def arch_signature(arch):
    """(blocks per stage 1-4, channels of stages 0-4, groups of grouped layers, SE, QARepVGG block) of an arch."""
    depths, widths, groups, use_se = ARCH_SPECS[arch]
    return tuple(depths), stage_widths(widths), groups, use_se, is_quantization_friendly(arch)


def signature_of(tensors):
    """The same signature read from the shapes of network-named tensors; None if incomplete. The block
    kind is None for a deploy-form file (QARepVGG's train-form 1x1 has no BN: ``rbr_1x1.weight``)."""
    def kernel(block):
        for leaf in ('rbr_dense.conv.weight', 'rbr_reparam.weight'):
            if f'{block}.{leaf}' in tensors:
                return tensors[f'{block}.{leaf}']
        return None

    depths = tuple(len({int(n.split('.')[1]) for n in tensors if n.startswith(f'stage{s}.')})
                   for s in range(1, 5))
    if 0 in depths:
        return None
    kernels = [kernel(block) for block in block_names(depths)]
    if any(k is None or k.ndim != 4 for k in kernels):
        return None
    widths = (kernels[0].shape[0], *(kernel(f'stage{s}.0').shape[0] for s in range(1, 5)))
    in_channels = [3] + [k.shape[0] for k in kernels[:-1]]
    groups = max(c // k.shape[1] for c, k in zip(in_channels, kernels, strict=True) if k.shape[1])
    use_se = any('.se.' in n for n in tensors)
    if any('.rbr_reparam.' in n for n in tensors):
        quantization_friendly = None
    else:
        quantization_friendly = any(n.endswith('.rbr_1x1.weight') for n in tensors)
    return depths, widths, groups, use_se, quantization_friendly


def resolve_arch(tensors, arch, source):
    """The arch to build: ``arch`` if the shapes agree, else a UserError naming the right one (the first
    whose shapes the tensors have: a deploy-form file fits RepVGG and QARepVGG alike)."""
    signature = signature_of(tensors)
    matching = [] if signature is None else [name for name in ARCH_NAMES if arch_signature(name)[:4] == signature[:4]
                                             and signature[4] in (None, arch_signature(name)[4])]
    detected = next(iter(matching), None)
    if arch is None:
        if detected is None:
            raise UserError(f'cannot tell the arch from the shapes in {source}; pass --arch')
        return detected
    if detected is not None and arch not in matching:
        raise UserError(f'{source} looks like {detected}, not {arch}: use --arch {detected}')
    return arch


def resolve_num_classes(tensors, num_classes, source):
    """The classifier size of the file; a UserError if ``num_classes`` asks for another."""
    head = tensors.get('linear.bias', tensors.get('linear.weight'))
    if head is None:
        return num_classes or 1000  # strict loading will name the missing classifier
    found = int(head.shape[0])
    if num_classes is not None and num_classes != found:
        raise UserError(f'{source} has {found} classes, --num_classes asks for {num_classes}: drop '
                        f'--num_classes (the converted file keeps its {found}-class classifier); to train on '
                        f'{num_classes} classes, pass the converted file as pretrained to train.py with '
                        f'num_classes: {num_classes}, which replaces the classifier')
    return found


# ----------------------------------------------------------------------------- conversion
@dataclass
class Conversion:
    """The converted network and what its self-check measured."""
    net: object
    deploy: bool
    params: dict                  # network name -> float32 array, in network order
    logits: np.ndarray            # of the converted network on the check input
    check_input: np.ndarray
    relative_error: float = None  # train vs deploy logits, when re-parameterized


def check_input(seed=0, image_size=CHECK_IMAGE_SIZE):
    """The random image batch every self-check runs (2 x 3 x size x size, standard normal)."""
    return np.random.default_rng(seed).standard_normal((2, 3, image_size, image_size)).astype(np.float32)


def _logits(net, images):
    return net(ms.Tensor(images)).asnumpy()


def convert_tensors(tensors, build, form, deploy, source='checkpoint', images=None):
    """Load network-named ``tensors`` (of ``form``) strictly into the fresh network ``build(deploy=...)``;
    with ``deploy`` re-parameterize a train-form network and compare logits before and after."""
    images = check_input() if images is None else images
    net = build(deploy=form == 'deploy')
    load_weights(net, {name: ms.Tensor(value) for name, value in tensors.items()}, source=source)
    net.set_train(False)  # the fusion uses the BN moving statistics: compare in eval mode
    logits = _logits(net, images)
    error = None
    if deploy and form == 'train':
        switch_net_to_deploy(net)
        before, logits = logits, _logits(net, images)
        error = relative_difference(logits, before)
        if not error <= REPARAM_TOLERANCE:
            raise UserError(f'self-check failed: deploy logits differ from the train-time logits by '
                            f'{error:.2e} (relative); nothing was written')
    params = {p.name: p.asnumpy().astype(np.float32) for p in net.get_parameters()}
    return Conversion(net, deploy or form == 'deploy', params, logits, images, error)


def verify_written(path, build, conversion, source_tensors, source_form, name):
    """Reload ``path`` strictly into a fresh network: the conversion's logits, and the exact values of
    tensors copied without fusion. Returns the largest absolute logit difference (0.0 expected)."""
    net = build(deploy=conversion.deploy)
    load_weights(net, read_checkpoint(path), source=f'output {name}')
    net.set_train(False)
    written = {p.name: p.asnumpy() for p in net.get_parameters()}
    if source_form == ('deploy' if conversion.deploy else 'train'):
        changed = [key for key, value in source_tensors.items() if not np.array_equal(written[key], value)]
        if changed:
            raise UserError(f'self-check failed: {name} would change the values of {listed(changed)}; '
                            f'nothing was written')
    reloaded = _logits(net, conversion.check_input)
    if not relative_difference(reloaded, conversion.logits) <= RELOAD_TOLERANCE:
        raise UserError(f'self-check failed: {name} reloaded gives other logits '
                        f'({relative_difference(reloaded, conversion.logits):.2e} relative); nothing was written')
    return float(np.abs(reloaded - conversion.logits).max())


@dataclass
class Report:
    """What ``convert_file`` read, wrote and measured; ``lines()`` is what convert.py prints."""
    source: Source
    arch: str
    num_classes: int
    output: Path
    conversion: Conversion
    reload_diff: float
    deploy_requested: bool

    def lines(self):
        src, conv = self.source, self.conversion
        notes = f" ({'; '.join(src.notes)})" if src.notes else ''
        form_out = 'deploy' if conv.deploy else 'train'
        out = [f'read {src.path}: {src.layout} layout, {src.form} form, {src.container}, '
               f'{src.read_count} entries -> {len(src.tensors)} network tensors{notes}',
               f'wrote {self.output}: {self.arch}, {form_out} form, {self.num_classes} classes, '
               f'{len(conv.params)} tensors']
        if conv.relative_error is not None:
            out.append(f'self-check: train vs deploy logits relative error {conv.relative_error:.2e} '
                       f'(input {"x".join(map(str, conv.check_input.shape))}, eval mode)')
        out.append(f"self-check: {self.output.name} loads strictly into create_model('{self.arch}', "
                   f'num_classes={self.num_classes}, deploy={conv.deploy}), logits reproduced '
                   f'(max abs diff {self.reload_diff:.1e})')
        if src.form == 'deploy' and not self.deploy_requested:
            out.append('note: the source is in deploy form, so the output is too (load with deploy: 1)')
        return out


def convert_file(input_path, output_path, arch=None, deploy=False, num_classes=None, ema=False):
    """Convert any supported file to a ``.ckpt`` of ``arch`` (None: from the shapes); a ``Report``."""
    output_path = Path(output_path)
    if output_path.suffix != '.ckpt':
        raise UserError(f'output {output_path} must end with .ckpt')
    check_writable_file(output_path, 'output', 'model.ckpt')
    folder = regular_target(output_path).parent
    if folder.is_dir():
        remove_partial_files(folder)  # of writers that were killed (a conversion, an export)
    src = read_source(input_path, ema=ema)
    label = f'input {src.path}'
    if arch and src.card.arch and arch != src.card.arch:
        raise UserError(f'{label} was trained as {src.card.arch}, --arch asks for {arch}: drop --arch (the file '
                        f'records it), or convert a file of {arch}')
    arch = resolve_arch(src.tensors, arch or src.card.arch, label)
    num_classes = resolve_num_classes(src.tensors, num_classes, label)

    def build(deploy):
        return create_model(arch, num_classes=num_classes, deploy=deploy)

    conversion = convert_tensors(src.tensors, build, src.form, deploy, source=label)
    card = replace(src.card, arch=arch, num_classes=num_classes, deploy=conversion.deploy)
    diff = save_checkpoint(conversion.params, output_path, card.entries(),
                           verify=lambda written: verify_written(written, build, conversion, src.tensors,
                                                                 src.form, output_path))
    return Report(src, arch, num_classes, output_path, conversion, diff, deploy)
