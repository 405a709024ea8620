"""convert.py, src/tools/conversion/: official PyTorch and timm weights.

The PyTorch side is a small re-implementation of the official RepVGG (module names are what
the converter relies on), benchmarks/torch_repvgg.py; its checkpoints are written with the real
``torch.save`` and ``safetensors``, and the converted MindSpore networks must reproduce its
logits. torch is a test-only dependency (requirements-test.txt).
"""
import argparse
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
import torch
from safetensors.torch import save_file as save_safetensors

from benchmarks.torch_repvgg import TorchRepVGG, randomize_torch_bn
from src.repvgg import ARCH_NAMES, ARCH_SPECS, QA_ARCH_NAMES, RepVGG, create_model, switch_net_to_deploy
from src.tools.base.cli import UserError
from src.tools.base.numerics import relative_difference
from src.tools.checkpoints.format import load_weights, save_checkpoint
from src.tools.conversion.convert import (
    check_input,
    convert_file,
    convert_tensors,
    read_source,
    resolve_arch,
    to_mindspore_names,
)
from src.tools.conversion.torch_pickle import UnsafeCheckpointError, read_pth, read_safetensors
from src.tools.training.resume import starting_point
from tests.helpers import assert_one_line_error, randomize_bn, run_main, slow_except

REPO = Path(__file__).resolve().parents[1]
ARCH, CLASSES = 'RepVGG-A0', 10
BN_LEAVES = {'weight': 'gamma', 'bias': 'beta', 'running_mean': 'moving_mean', 'running_var': 'moving_variance'}


pytestmark = pytest.mark.usefixtures('pynative')  # one forward pass per check: no graph compilation


def randomized_torch_model(depths, multipliers, groups=1, use_se=False, num_classes=CLASSES, seed=0):
    torch.manual_seed(seed)
    model = randomize_torch_bn(TorchRepVGG(depths, multipliers, groups, use_se, num_classes))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.num_batches_tracked.fill_(1234)  # a counter the converter must drop
    return model.eval()


def torch_logits(model, images):
    with torch.no_grad():
        return model(torch.from_numpy(images)).numpy()


def timm_name(name):
    """timm's name of an official-layout tensor (timm's byobnet names), written in the forward direction."""
    name = re.sub(r'^stage0\.', 'stem.', name)
    name = re.sub(r'^stage([1-4])\.(\d+)\.', lambda m: f'stages.{int(m[1]) - 1}.{m[2]}.', name)
    for official, timm in (('rbr_dense.', 'conv_kxk.'), ('rbr_1x1.', 'conv_1x1.'), ('rbr_identity.', 'identity.'),
                           ('rbr_reparam.', 'reparam_conv.'), ('se.down.', 'attn.fc1.'), ('se.up.', 'attn.fc2.')):
        name = name.replace(official, timm)
    return re.sub(r'^linear\.', 'head.fc.', name)


def mindspore_name(name):
    """This project's name of an official-layout tensor; None for BN step counters."""
    if name.endswith('num_batches_tracked'):
        return None
    head, leaf = name.rsplit('.', 1)
    is_bn = head.endswith(('.bn', 'rbr_identity'))
    return f'{head}.{BN_LEAVES[leaf]}' if is_bn else name


@pytest.fixture(scope='module')
def a0():
    """The randomized A0 (10 classes), its train and deploy state dicts, its logits on the check input."""
    depths, multipliers, _, _ = ARCH_SPECS[ARCH]
    model = randomized_torch_model(depths, multipliers)
    images = check_input()
    return dict(model=model, train=OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items()),
                deploy=model.deploy_state_dict(), logits=torch_logits(model, images), images=images)


def write_source(state, path, layout, wrapper='raw'):
    """Save ``state`` (official names) as the given layout, container and wrapping."""
    if layout == 'timm':
        state = OrderedDict((timm_name(k), v) for k, v in state.items())
    if path.suffix == '.safetensors':
        save_safetensors({k: v.contiguous() for k, v in state.items()}, str(path))
        return path
    if wrapper == 'state_dict+module':
        obj = {'epoch': 120, 'best_acc1': torch.tensor(72.4),
               'state_dict': OrderedDict(('module.' + k, v) for k, v in state.items())}
    elif wrapper == 'model':
        obj = {'model': state, 'optimizer': {'param_groups': [{'lr': 0.1}]}}
    else:
        obj = state
    torch.save(obj, str(path))
    return path


def read_ckpt(path):
    """The tensors of a checkpoint (its model card, a set of strings, is left out)."""
    return {name: param.asnumpy() for name, param in ms.load_checkpoint(str(path)).items()
            if not isinstance(param, str)}


def recorded_card(path):
    return {name: value for name, value in ms.load_checkpoint(str(path)).items() if isinstance(value, str)}


IMAGENET_ENTRIES = {'image_size': '224', 'interpolation': 'bilinear', 'mean': '[0.485, 0.456, 0.406]',
                    'std': '[0.229, 0.224, 0.225]', 'crop_pct': '0.875'}


def network_shapes(deploy, num_classes=CLASSES):
    return {p.name: tuple(p.shape) for p in create_model(ARCH, num_classes=num_classes, deploy=deploy).get_parameters()}


# ----------------------------------------------------------------------------- conversions
CASES = [  # layout, container, source form, wrapper
    ('official', '.pth', 'train', 'state_dict+module'),
    ('official', '.pth', 'deploy', 'raw'),
    ('official', '.safetensors', 'train', 'raw'),
    ('timm', '.safetensors', 'train', 'raw'),
    ('timm', '.safetensors', 'deploy', 'raw'),
    ('timm', '.pth', 'train', 'model'),
]


@pytest.mark.parametrize('layout,suffix,form,wrapper', slow_except(CASES, CASES[0]))
def test_convert_matches_pytorch(a0, tmp_path, layout, suffix, form, wrapper):
    source = write_source(a0[form], tmp_path / f'src{suffix}', layout, wrapper)
    for deploy in (False, True):
        out = tmp_path / f'out_{deploy}.ckpt'
        report = convert_file(source, out, arch=ARCH, deploy=deploy)
        assert (report.source.layout, report.source.form, report.source.container) == (layout, form, suffix[1:])
        assert report.arch == ARCH and report.num_classes == CLASSES
        out_deploy = deploy or form == 'deploy'
        written = read_ckpt(out)
        # exactly the network's names and shapes, nothing else
        assert {k: v.shape for k, v in written.items()} == network_shapes(out_deploy)
        if out_deploy == (form == 'deploy'):  # copied, not fused: every value exactly the source's
            for name, value in a0[form].items():
                if mindspore_name(name) is not None:
                    np.testing.assert_array_equal(written[mindspore_name(name)], value.float().numpy(), err_msg=name)
        else:  # fused here: every fused tensor close to the PyTorch-side float64 fusion
            for name, value in a0['deploy'].items():
                expected = value.double().numpy()
                assert relative_difference(written[name], expected) < 1e-6, name
            assert report.conversion.relative_error < 1e-5
            assert any('train vs deploy logits relative error' in line for line in report.lines())
        # what the file says it is: arch, classes, form and the ImageNet preprocessing of the official weights
        assert recorded_card(out) == {'arch': ARCH, 'num_classes': str(CLASSES), 'quantization_friendly': 'false',
                                      'form': 'deploy' if out_deploy else 'train', **IMAGENET_ENTRIES}
        # the written file alone, in a fresh network, gives PyTorch's logits
        net = create_model(ARCH, num_classes=CLASSES, deploy=out_deploy)
        load_weights(net, out)
        net.set_train(False)
        logits = net(ms.Tensor(a0['images'])).asnumpy()
        assert relative_difference(logits, a0['logits']) < 1e-5
        assert report.reload_diff == 0.0
        note = any(line.startswith('note: the source is in deploy form') for line in report.lines())
        assert note == (form == 'deploy' and not deploy)


def test_dropped_and_unwrapped_entries_are_reported(a0, tmp_path):
    source = write_source(a0['train'], tmp_path / 'w.pth', 'official', 'state_dict+module')
    report = convert_file(source, tmp_path / 'out.ckpt', arch=ARCH)
    counters = sum(name.endswith('num_batches_tracked') for name in a0['train'])
    assert report.source.read_count == len(a0['train'])
    assert len(report.source.tensors) == len(a0['train']) - counters
    notes = ' '.join(report.source.notes)
    assert "took 'state_dict' (left out best_acc1, epoch)" in notes
    assert "removed the 'module.' prefix" in notes and f'dropped {counters} BN num_batches_tracked' in notes
    assert report.lines()[0].startswith(f'read {source}: official layout, train form, pth, {len(a0["train"])} entries')


@pytest.mark.parametrize('layout', slow_except(['official', 'timm'], 'official'))
def test_se_and_grouped_blocks(tmp_path, layout):
    """D2se's SE (se.down/up = attn.fc1/fc2) and grouped identity kernels, on a small custom net."""
    # layers 4 and 6 (stage2.2, stage3.1) are grouped and have an identity branch
    depths, multipliers, groups = (1, 3, 2, 1), (0.5, 0.5, 0.5, 0.5), 2
    model = randomized_torch_model(depths, multipliers, groups=groups, use_se=True, seed=1)
    state = model.state_dict()
    path = write_source(state, tmp_path / 'se.safetensors', layout)
    tensors, dropped = to_mindspore_names(read_safetensors(path), layout, 'test')
    assert any('.se.down.' in n for n in tensors)
    assert len(dropped) == sum(k.endswith('num_batches_tracked') for k in state)

    def build(deploy):
        return RepVGG(depths, num_classes=CLASSES, width_multiplier=multipliers,
                      override_groups_map={2: groups, 4: groups, 6: groups}, deploy=deploy, use_se=True)

    images = check_input(seed=3, image_size=32)
    conversion = convert_tensors(tensors, build, 'train', deploy=True, images=images)
    assert conversion.relative_error < 1e-5
    assert relative_difference(conversion.logits, torch_logits(model, images)) < 1e-5
    for name, value in model.deploy_state_dict().items():
        assert relative_difference(conversion.params[name], value.numpy()) < 1e-6, name


@pytest.mark.slow
def test_mindspore_training_checkpoint_to_deploy(tmp_path):
    """A train-form .ckpt of this project with optimizer state, counters and an EMA copy."""
    net = randomize_bn(create_model(ARCH, num_classes=CLASSES), seed=1)
    ema = randomize_bn(create_model(ARCH, num_classes=CLASSES), seed=2)
    entries = [{'name': p.name, 'data': p} for p in net.get_parameters()]
    entries += [{'name': 'ema.' + p.name, 'data': p} for p in ema.get_parameters()]
    entries += [{'name': 'moments.' + p.name, 'data': ms.Tensor(np.ones(p.shape, np.float32))}
                for p in net.trainable_params()[:3]]
    path = tmp_path / 'train.ckpt'
    ms.save_checkpoint(entries, str(path), append_dict={'epoch_num': 7, 'step_num': 700})

    for use_ema, reference in ((False, net), (True, ema)):
        out = tmp_path / f'deploy_{use_ema}.ckpt'
        report = convert_file(path, out, deploy=True, ema=use_ema)  # arch detected
        assert report.arch == ARCH and report.source.layout == 'mindspore'
        notes = ' '.join(report.source.notes)
        assert 'left out' in notes and ('ema' in notes if not use_ema else 'used the ema.* copy' in notes)
        reference.set_train(False)
        expected = {p.name: p.asnumpy() for p in switch_net_to_deploy(reference).get_parameters()}
        written = read_ckpt(out)
        assert written.keys() == expected.keys()
        for name, value in expected.items():
            np.testing.assert_allclose(written[name], value, rtol=0, atol=1e-6, err_msg=name)
        # a checkpoint that records no preprocessing gets none made up (readers take the config's)
        assert recorded_card(out) == {'arch': ARCH, 'num_classes': str(CLASSES), 'form': 'deploy',
                                      'quantization_friendly': 'false'}


@pytest.mark.slow
def test_converted_file_works_as_pretrained(a0, tmp_path):
    """train.py's pretrained path: weights load strictly, a head of another class count is dropped."""
    out = tmp_path / 'a0.ckpt'
    convert_file(write_source(a0['train'], tmp_path / 'w.pth', 'official'), out, arch=ARCH)
    args = argparse.Namespace(continues=None, pretrained=out, arch=ARCH, num_classes=5, exclude_epoch_state=False,
                              start_epoch=0, start_step=0, epochs=10)
    net = create_model(ARCH, num_classes=5)
    start = starting_point(args, net, steps_per_epoch=100)
    assert (start.epoch, start.step, start.checkpoint) == (0, 0, None)
    expected = read_ckpt(out)
    for param in net.get_parameters():
        if not param.name.startswith('linear.'):
            np.testing.assert_array_equal(param.asnumpy(), expected[param.name], err_msg=param.name)


@pytest.mark.parametrize('timm_model,arch', slow_except([('repvgg_a0', 'RepVGG-A0'), ('repvgg_d2se', 'RepVGG-D2se')],
                                                          ('repvgg_a0', 'RepVGG-A0')))
def test_real_timm_names_map_onto_the_network(timm_model, arch):
    """Names and shapes read from timm itself (tests/data), both forms, map exactly onto ours."""
    recorded = json.loads((REPO / 'tests' / 'data' / 'timm_repvgg_shapes.json').read_text())[timm_model]
    for form in ('train', 'deploy'):
        state = {name: np.broadcast_to(np.float32(0), tuple(shape)) for name, shape in recorded[form]}
        tensors, dropped = to_mindspore_names(state, 'timm', timm_model)
        assert all(name.endswith('num_batches_tracked') for name in dropped)
        assert resolve_arch(tensors, None, 'x') == arch
        net = create_model(arch, deploy=form == 'deploy')
        assert {k: v.shape for k, v in tensors.items()} == {p.name: tuple(p.shape) for p in net.get_parameters()}


# ----------------------------------------------------------------------------- arch detection
def _meta_state(arch):
    depths, multipliers, groups, use_se = ARCH_SPECS[arch]
    with torch.device('meta'):
        model = TorchRepVGG(depths, multipliers, groups, use_se, 1000)
    return {name: np.broadcast_to(np.float32(0), tuple(v.shape)) for name, v in model.state_dict().items()}


def test_every_arch_is_recognised_from_its_shapes():
    for arch in (arch for arch in ARCH_NAMES if arch not in QA_ARCH_NAMES):  # QARepVGG: no torch layout
        state = _meta_state(arch)
        tensors, _ = to_mindspore_names(state, 'official', arch)
        assert resolve_arch(tensors, None, 'x') == arch
        timm_tensors, _ = to_mindspore_names({timm_name(k): v for k, v in state.items()}, 'timm', arch)
        assert resolve_arch(timm_tensors, None, 'x') == arch


@pytest.mark.slow
def test_qarepvgg_is_recognised_from_its_names_and_shapes():
    """Train form: QARepVGG, never the RepVGG of the same shapes; deploy form: either is accepted."""
    for arch in QA_ARCH_NAMES:
        train = {p.name: np.broadcast_to(np.float32(0), p.shape) for p in create_model(arch).get_parameters()}
        assert resolve_arch(train, None, 'x') == arch
        with pytest.raises(UserError, match=f'looks like {arch}, not {arch[2:]}'):
            resolve_arch(train, arch[2:], 'x')
    deploy = {p.name: np.broadcast_to(np.float32(0), p.shape)
              for p in create_model('QARepVGG-B1g4', deploy=True).get_parameters()}
    assert resolve_arch(deploy, None, 'x') == 'RepVGG-B1g4'
    assert resolve_arch(deploy, 'QARepVGG-B1g4', 'x') == 'QARepVGG-B1g4'


@pytest.mark.slow
def test_qarepvgg_training_checkpoint_to_deploy(tmp_path):
    net = randomize_bn(create_model('QARepVGG-A0', num_classes=CLASSES), seed=3)
    path = tmp_path / 'qa.ckpt'
    ms.save_checkpoint(net, str(path), append_dict={'arch': 'QARepVGG-A0', 'num_classes': CLASSES})
    out = tmp_path / 'qa_deploy.ckpt'
    report = convert_file(path, out, deploy=True)  # arch detected
    assert report.arch == 'QARepVGG-A0' and report.conversion.relative_error < 1e-5
    net.set_train(False)
    expected = {p.name: p.asnumpy() for p in switch_net_to_deploy(net).get_parameters()}
    written = read_ckpt(out)
    assert written.keys() == expected.keys() and 'stage1.0.rbr_reparam.weight' in written
    for name, value in expected.items():
        np.testing.assert_allclose(written[name], value, rtol=0, atol=1e-6, err_msg=name)


def test_wrong_arch_is_named(a0, tmp_path):
    tensors, _ = to_mindspore_names(dict(_meta_state('RepVGG-B1g2')), 'official', 'x')
    with pytest.raises(UserError, match='looks like RepVGG-B1g2, not RepVGG-B1g4: use --arch RepVGG-B1g2'):
        resolve_arch(tensors, 'RepVGG-B1g4', 'x')
    out = tmp_path / 'out.ckpt'
    with pytest.raises(UserError, match='looks like RepVGG-A0, not RepVGG-A1'):
        convert_file(write_source(a0['train'], tmp_path / 'w.pth', 'official'), out, arch='RepVGG-A1')
    assert not out.exists()


# ----------------------------------------------------------------------------- strictness
def _edited(state, drop=(), add=None, reshape=None):
    state = OrderedDict((k, v) for k, v in state.items() if k not in drop)
    state.update(add or {})
    for name, shape in (reshape or {}).items():
        state[name] = torch.zeros(shape)
    return state


@pytest.mark.parametrize('edit,message', [
    (dict(add={'stage1.0.rbr_dense.extra.weight': torch.zeros(3)}),
     r'map to no RepVGG tensor: stage1\.0\.rbr_dense\.extra\.weight'),
    (dict(drop=('stage2.3.rbr_1x1.bn.running_var',)),
     r'missing from it: stage2\.3\.rbr_1x1\.bn\.moving_variance'),
    (dict(reshape={'stage3.5.rbr_1x1.conv.weight': (192, 192, 3, 3)}),
     r'other shapes than the network \(stage3\.5\.rbr_1x1\.conv\.weight \(192, 192, 3, 3\) vs \(192, 192, 1, 1\)\)'),
    (dict(add={'stage1.0.rbr_reparam.weight': torch.zeros(48, 48, 3, 3)}), 'mixes train-form blocks'),
])
def test_anything_that_does_not_map_is_an_error_naming_it(a0, tmp_path, edit, message):
    source = write_source(_edited(a0['train'], **edit), tmp_path / 'w.pth', 'official')
    out = tmp_path / 'out.ckpt'
    with pytest.raises(UserError, match=message):
        convert_file(source, out, arch=ARCH, deploy=True)
    assert not out.exists() and not list(tmp_path.glob('.*tmp*'))


def test_output_appears_only_after_its_check_passed(tmp_path):
    out = tmp_path / 'out.ckpt'
    params = {'linear.weight': np.ones((2, 3), np.float32)}

    def failing_check(written):
        assert written.is_file() and written != out and not out.exists()
        raise UserError('check failed')

    with pytest.raises(UserError, match='check failed'):
        save_checkpoint(params, out, verify=failing_check)
    assert list(tmp_path.iterdir()) == []
    assert save_checkpoint(params, out, verify=lambda written: 'checked') == 'checked'
    assert [p.name for p in tmp_path.iterdir()] == ['out.ckpt']
    np.testing.assert_array_equal(read_ckpt(out)['linear.weight'], params['linear.weight'])


def test_num_classes_must_match_the_file(a0, tmp_path):
    source = write_source(a0['deploy'], tmp_path / 'w.pth', 'official')
    with pytest.raises(UserError, match='has 10 classes, --num_classes asks for 1000'):
        convert_file(source, tmp_path / 'out.ckpt', arch=ARCH, num_classes=1000)
    assert convert_file(source, tmp_path / 'out.ckpt', num_classes=CLASSES).num_classes == CLASSES


# ----------------------------------------------------------------------------- the .pth reader
class _Evil:
    """Unpickling this runs a shell command (creates ``marker``) unless the reader refuses it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def write_evil_pth(path, marker):
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr('evil/data.pkl', pickle.dumps({'stage0.rbr_reparam.weight': _Evil(marker)}, protocol=2))
    return path


def test_reader_rebuilds_every_dtype_view_and_container(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7
    obj = OrderedDict(
        f32=torch.randn(3, 4), f16=torch.randn(5).half(), bf16=torch.randn(6).bfloat16(),
        f64=torch.randn(2, 2).double(), i64=torch.tensor([1, -2, 3]), scalar=torch.tensor(2.5),
        transposed=base.t(), row=base[2], strided=base[:, ::2], same_storage=base,
        param=torch.nn.Parameter(torch.randn(2, 3)), empty=torch.zeros(0, 3),
        plain={'epoch': 3, 'lr': 0.1, 'name': 'x', 'list': [1, (2, 3)], 'none': None})
    path = tmp_path / 'all.pth'
    torch.save(obj, str(path))
    loaded = read_pth(path)
    for name, value in obj.items():
        if name == 'plain':
            assert loaded[name] == value
            continue
        # numpy has no bfloat16: the reader widens it to float32 exactly; other dtypes are kept
        expected = (value.detach().float() if value.dtype == torch.bfloat16 else value.detach()).numpy()
        assert loaded[name].shape == expected.shape and loaded[name].dtype == expected.dtype, name
        np.testing.assert_array_equal(loaded[name], expected, err_msg=name)


def test_reader_refuses_other_globals_and_runs_nothing(tmp_path):
    marker = tmp_path / 'pwned'
    path = write_evil_pth(tmp_path / 'evil.pth', marker)
    with pytest.raises(UnsafeCheckpointError, match=r"Python global '(posix|os)\.system'"):
        read_pth(path)
    assert not marker.exists()
    # a real checkpoint that also pickles a non-tensor object (timm's saved args, for instance)
    real = tmp_path / 'with_args.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}, 'args': argparse.Namespace(lr=0.1)}, str(real))
    with pytest.raises(UnsafeCheckpointError, match=r"'argparse\.Namespace'"):
        read_source(real)


def test_legacy_and_foreign_files_are_refused_clearly(tmp_path):
    legacy = tmp_path / 'old.pth'
    torch.save({'w': torch.ones(2)}, str(legacy), _use_new_zipfile_serialization=False)
    with pytest.raises(UserError, match='legacy PyTorch format'):
        read_source(legacy)
    text = tmp_path / 'notes.pth'
    text.write_text('hello')
    with pytest.raises(UserError, match='not a PyTorch checkpoint'):
        read_source(text)


def test_safetensors_every_dtype_of_a_checkpoint(tmp_path):
    state = {'f32': torch.randn(3, 4), 'f16': torch.randn(5).half(), 'bf16': torch.randn(4, 3).bfloat16(),
             'f64': torch.randn(2, 2).double(), 'i64': torch.tensor([1, -2, 3])}
    save_safetensors(state, str(tmp_path / 'w.safetensors'))
    loaded = read_safetensors(tmp_path / 'w.safetensors')
    assert sorted(loaded) == sorted(state)
    for name, value in state.items():
        # numpy has no bfloat16: the reader widens it to float32 exactly; other dtypes are kept
        expected = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
        assert loaded[name].dtype == expected.dtype, name
        np.testing.assert_array_equal(loaded[name], expected, err_msg=name)


def test_safetensors_of_an_unsupported_dtype_is_one_line(tmp_path, capsys):
    path = tmp_path / 'model.safetensors'
    save_safetensors({'stem.weight': torch.zeros(2, 2), 'w8': torch.zeros(4).to(torch.float8_e4m3fn)}, str(path))
    status, _, err = run_main(capsys, 'convert.py', '--input', path, '--output', tmp_path / 'out.ckpt')
    assert_one_line_error(status, err)
    assert err.strip() == f'error: {path}: tensor w8 has unsupported dtype F8_E4M3'
    assert not (tmp_path / 'out.ckpt').exists()


# ----------------------------------------------------------------------------- the script
def _run_convert(args):
    """Run convert.py in a fresh interpreter where importing torch fails."""
    code = ("import runpy, sys\n"
            "sys.modules['torch'] = None  # any 'import torch' now raises ImportError\n"
            f"sys.argv = ['convert.py'] + {list(map(str, args))!r}\n"
            "runpy.run_path('convert.py', run_name='__main__')\n")
    return subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.mark.slow
def test_script_converts_pth_without_torch(a0, tmp_path):
    source = write_source(a0['train'], tmp_path / 'RepVGG-A0-train.pth', 'official', 'state_dict+module')
    out = tmp_path / 'RepVGG-A0-deploy.ckpt'
    result = _run_convert(['--arch', ARCH, '--input', source, '--output', out, '--deploy'])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f'read {source}: official layout, train form, pth')
    error = float(re.search(r'train vs deploy logits relative error (\S+)', result.stdout)[1])
    assert error < 1e-5
    net = create_model(ARCH, num_classes=CLASSES, deploy=True)
    load_weights(net, out)
    net.set_train(False)
    assert relative_difference(net(ms.Tensor(a0['images'])).asnumpy(), a0['logits']) < 1e-5
    assert recorded_card(out) == {'arch': ARCH, 'num_classes': str(CLASSES), 'form': 'deploy',
                                  'quantization_friendly': 'false', **IMAGENET_ENTRIES}


def test_script_refuses_a_malicious_pickle_in_one_line(tmp_path, capsys):
    """In this process, where torch is loaded: had anything handed the file to torch.load, the pickle
    would have run its command."""
    marker = tmp_path / 'pwned'
    path = write_evil_pth(tmp_path / 'evil.pth', marker)
    status, _, err = run_main(capsys, 'convert.py', '--input', path, '--output', tmp_path / 'out.ckpt')
    assert_one_line_error(status, err)
    assert not marker.exists()
    assert re.match(r"error: refusing to load: the file's pickle asks for the Python global '(posix|os)\.system'", err)
    assert not (tmp_path / 'out.ckpt').exists()
