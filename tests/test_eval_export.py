"""eval.py, export.py, eval_onnx.py, infer.py, infer_onnx.py and src/tools/deployment/: a checkpoint,
its MINDIR and its ONNX export give the same results, whatever runs them.

The "small trained model" is RepVGG-A0 with 10 classes whose BN statistics and affine parameters
are randomised (so predictions vary from image to image); the data set is 10 class folders of
small PNG/JPEG images. Most runs call the scripts' main() in-process (each MindSpore process start
costs seconds); a few run as real processes.
"""
import collections
import json
import re
import shutil
import subprocess
from pathlib import Path

import mindspore as ms
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from mindspore import Tensor
from PIL import Image

from src.dataset import Preprocessing
from src.repvgg import create_model, switch_net_to_deploy
from src.tools.base.cli import UserError
from src.tools.base.numerics import relative_difference
from src.tools.checkpoints.format import save_checkpoint
from src.tools.checkpoints.model_card import ModelCard
from src.tools.deployment import backends
from src.tools.deployment.backends import ENGINE_NAMES, onnx_device
from src.tools.deployment.evaluation import ClassificationMetrics, parse_results, reference_results, score
from src.tools.deployment.export import make_onnx_batch_dynamic
from src.tools.deployment.model_files import Predictor, load_mindir, load_onnx, onnxruntime_cuda_works
from src.tools.image_folders import tinted_folder
from tests.helpers import assert_one_line_error, load_script, randomize_bn, run_main, run_process

ROOT = Path(__file__).resolve().parents[1]
ARCH, NUM_CLASSES, SIZE = 'RepVGG-A0', 10, 32
A0_BLOCKS = 1 + 2 + 4 + 14 + 1


# ----------------------------------------------------------------------------- helpers
def engine_of(out):
    """The engine a script's printout says ran the model: openvino, onnxruntime or mindspore."""
    line = next(line for line in out.splitlines() if line.startswith('=> ') and '; CPU: ' in line)
    return next(engine for engine, name in ENGINE_NAMES.items() if line.startswith(f'=> {name} '))


def deploy_twin(train_net):
    """A copy of ``train_net`` converted to deploy form (the reference for every file's logits)."""
    net = create_model(ARCH, num_classes=NUM_CLASSES)
    ms.load_param_into_net(net, {p.name: ms.Parameter(p.data.copy(), name=p.name)
                                 for p in train_net.get_parameters()}, strict_load=True)
    net.set_train(False)
    return switch_net_to_deploy(net)


def center_logits(net, files):
    """Shift the classifier bias so that the mean logits over ``files`` are zero.

    Random BN statistics alone leave one class winning for every image; centred logits make the
    prediction depend on the image, so agreement between formats is tested on varied answers.
    """
    net.set_train(False)
    logits = net(Tensor(np.stack([Preprocessing(SIZE).image(path) for path in files]))).asnumpy()
    net.linear.bias.set_data(Tensor(net.linear.bias.asnumpy() - logits.mean(axis=0)))


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def work(tmp_path_factory):
    """Checkpoints (train form, deploy form, with EMA), exported MINDIR and ONNX, data, config."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device('CPU')
    root = tmp_path_factory.mktemp('eval_export')
    net = randomize_bn(create_model(ARCH, num_classes=NUM_CLASSES), seed=1)
    ema_net = randomize_bn(create_model(ARCH, num_classes=NUM_CLASSES), seed=2)
    paths = dict(root=root, train=root / 'train_form.ckpt', deploy=root / 'deploy_form.ckpt',
                 ema=root / 'with_ema.ckpt', val=root / 'val', config=root / 'a0.yaml')
    # 10 class folders of 2 images (a PNG, a JPEG), non-square so that resize and crop matter
    names = [f'class_{label:02d}' for label in range(NUM_CLASSES)]
    tinted_folder(paths['val'], [2] * NUM_CLASSES, (48, 40), names=names, suffixes=('.png', '.jpg'))
    center_logits(net, sorted(paths['val'].glob('*/*')))
    ms.save_checkpoint(net, str(paths['train']))
    deploy = deploy_twin(net)
    ms.save_checkpoint(deploy, str(paths['deploy']))
    # A training checkpoint: network tensors, their EMA copy, and optimizer state to be ignored.
    entries = [{'name': p.name, 'data': p.data} for p in net.get_parameters()]
    entries += [{'name': 'ema.' + p.name, 'data': p.data} for p in ema_net.get_parameters()]
    entries += [{'name': 'moments.linear.weight', 'data': Tensor(np.ones((NUM_CLASSES, 1280), np.float32))},
                {'name': 'global_step', 'data': Tensor(np.array([7], np.int32))}]
    ms.save_checkpoint(entries, str(paths['ema']), append_dict={'arch': ARCH, 'num_classes': NUM_CLASSES})
    paths['config'].write_text(f'arch: {ARCH}\nnum_classes: {NUM_CLASSES}\nimage_size: {SIZE}\n'
                               f'batch_size: 8\ndevice_target: CPU\nnum_parallel_workers: 1\n')
    return dict(paths=paths, net=deploy, ema_net=deploy_twin(ema_net))


@pytest.fixture(scope='module')
def exported(work):
    """The train-form checkpoint exported by export.py as ONNX and MINDIR."""
    paths = work['paths']
    files = {}
    for name, fmt in (('onnx', 'ONNX'), ('mindir', 'MINDIR')):
        load_script('export.py').main(['--config', str(paths['config']), '--pretrained', str(paths['train']),
                                       '--file_format', fmt, '--export_path', str(paths['root'] / name)])
        files[name] = paths['root'] / f'{name}.{fmt.lower()}'
    return files


@pytest.fixture(scope='module')
def images(work):
    """The data set's images, preprocessed by the shared eval transform, and their labels."""
    files = sorted(work['paths']['val'].glob('*/*'))
    batch = np.stack([Preprocessing(SIZE).image(path) for path in files])
    labels = np.array([int(path.parent.name.split('_')[1]) for path in files])
    return batch, labels


# ----------------------------------------------------------------------------- pure pieces
def test_metrics_by_hand():
    logits = np.array([[5, 1, 0, 0, 0, 0], [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5], [2, 2, 2, 2, 2, 2]], float)
    labels = np.array([0, 0, 1, 3])  # rank 0 (top-1), rank 5 (outside top-5), rank 4, a tie (rank 0)
    batches = [(logits[:2], labels[:2]), (logits[2:], labels[2:])]
    result = reference_results(score(lambda images: images, batches, 6))
    expected_loss = np.mean([np.log(np.exp(row).sum()) - row[label] for row, label in zip(logits, labels, strict=True)])
    assert result['Top1-Acc'] == 2 / 4 and result['Top5-Acc'] == 3 / 4
    assert abs(result['Loss'] - expected_loss) < 1e-12
    # the sums that training adds over ranks
    metrics = ClassificationMetrics(6)
    for batch_logits, batch_labels in batches:
        metrics.update(batch_logits, batch_labels)
    assert metrics.sums()[1:] == [2, 3, 4] and abs(metrics.sums()[0] - 4 * expected_loss) < 1e-12
    twice = score(lambda images: images, batches, 6, reduce=lambda sums: 2 * np.asarray(sums))
    assert twice['count'] == 8 and twice['top1'] == result['Top1-Acc']
    three = score(lambda images: images, [(np.array([[0.0, 1.0, 2.0]]), np.array([0]))], 3)
    assert reference_results(three, with_loss=False) == {'Top1-Acc': 0.0, 'Top5-Acc': 1.0}  # top-5 is top-3
    with pytest.raises(UserError, match='outside the 6 classes'):
        ClassificationMetrics(6).update(np.zeros((1, 6)), np.array([6]))
    with pytest.raises(UserError, match='no image of the data could be scored'):
        score(lambda images: images, [], 6)


def test_a_non_finite_logit_is_never_a_hit_and_never_scored():
    logits = np.array([[np.nan] * 3, [0.0, np.inf, 1.0], [2.0, 1.0, 0.0]])
    labels = np.array([0, 1, 0])
    metrics = ClassificationMetrics(3)
    metrics.update(logits, labels)  # no class is larger than a NaN, yet the NaN row is no hit
    assert metrics.sums()[1:] == [1, 1, 3]
    with pytest.raises(UserError) as refused:
        score(lambda images: images, [(logits[2:], labels[2:]), (logits, labels)], 3, source='val', model='m.onnx')
    assert str(refused.value).startswith('m.onnx gives non-finite logits (NaN/inf) for 2 of the 3 images of '
                                         'batch 2 of val: its weights are broken')


def test_predictor_chunks_pads_and_drops_padding():
    calls = []

    def run(images):
        calls.append(len(images))
        return images.mean(axis=(2, 3))[:, :2] + np.arange(len(images))[:, None] * 0

    images = np.random.default_rng(0).normal(size=(10, 3, 4, 4)).astype(np.float32)
    expected = images.mean(axis=(2, 3))[:, :2]
    fixed = Predictor(run, 4, 2, batch_size=32, static_batch=4)
    assert np.allclose(fixed(images), expected) and calls == [4, 4, 4]  # last chunk: 2 real + 2 padding
    calls.clear()
    graph = Predictor(run, 4, 2, batch_size=4, pad_to_seen=True)
    assert np.allclose(graph(images[:3]), expected[:3]) and calls == [3]  # no full batch compiled yet
    assert np.allclose(graph(images), expected) and calls == [3, 4, 4, 4]
    with pytest.raises(ValueError, match='shape'):
        graph(images[:, :, :2])


def test_onnx_batch_stays_fixed_unless_every_op_is_per_sample():
    def model(ops):
        nodes = [onnx.helper.make_node(op, ['x'], ['y']) for op in ops]
        value = onnx.helper.make_tensor_value_info
        graph = onnx.helper.make_graph(nodes, 'g', [value('x', onnx.TensorProto.FLOAT, [1, 3, 2, 2])],
                                       [value('y', onnx.TensorProto.FLOAT, [1, 3, 2, 2])])
        return onnx.helper.make_model(graph)

    plain = model(['Relu'])
    assert make_onnx_batch_dynamic(plain)
    assert plain.graph.input[0].type.tensor_type.shape.dim[0].dim_param == 'batch'
    assert plain.graph.output[0].type.tensor_type.shape.dim[0].dim_param == 'batch'
    reshaped = model(['Reshape'])
    assert not make_onnx_batch_dynamic(reshaped)
    assert reshaped.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


# ----------------------------------------------------------------------------- export
@pytest.mark.slow
def test_onnx_export_is_the_plain_conv_stack(exported):
    model = onnx.load(str(exported['onnx']))
    ops = collections.Counter(node.op_type for node in model.graph.node)
    assert 'BatchNormalization' not in ops and 'Add' not in ops and 'Sum' not in ops
    assert ops == {'Conv': A0_BLOCKS, 'Relu': A0_BLOCKS, 'ReduceMean': 1, 'Gemm': 1}
    initializers = {tensor.name: tuple(tensor.dims) for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == 'Conv':
            assert len(node.input) == 3 and 'rbr_reparam' in node.input[1]  # one 3x3 conv with bias
            assert initializers[node.input[1]][2:] == (3, 3)
    assert not any('bn' in name or 'rbr_1x1' in name or 'rbr_dense' in name for name in initializers)
    dims = [[d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            for value in (model.graph.input[0], model.graph.output[0])]
    assert dims == [['batch', 3, SIZE, SIZE], ['batch', NUM_CLASSES]]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.slow
def test_exported_files_match_the_network_for_any_batch(work, exported):
    rng = np.random.default_rng(3)
    images = rng.normal(size=(5, 3, SIZE, SIZE)).astype(np.float32)
    expected = work['net'](Tensor(images)).asnumpy()
    for predictor in (load_onnx(exported['onnx'], 'CPU', batch_size=5), load_mindir(exported['mindir'], 5)):
        assert predictor.static_batch is None and predictor.num_classes == NUM_CLASSES
        for count in (5, 3, 1):
            assert relative_difference(predictor(images[:count]), expected[:count]) < 1e-4


@pytest.mark.slow
def test_export_ema_weights(work, tmp_path, capsys):
    status, _, err = run_main(capsys, 'export.py', '--config', work['paths']['config'], '--pretrained',
                              work['paths']['ema'], '--file_format', 'ONNX', '--export_path', tmp_path / 'ema',
                              '--ema', 1)
    assert status == 0, err
    images = np.random.default_rng(4).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    ema_logits = load_onnx(tmp_path / 'ema.onnx', 'CPU', 2)(images)
    assert relative_difference(ema_logits, work['ema_net'](Tensor(images)).asnumpy()) < 1e-4
    assert relative_difference(ema_logits, work['net'](Tensor(images)).asnumpy()) > 1e-2


@pytest.mark.slow
def test_air_and_bad_checkpoints_are_refused(work, capsys):
    paths = work['paths']
    base = ['--config', paths['config'], '--export_path', paths['root'] / 'refused']
    corrupt = paths['root'] / 'corrupt.ckpt'
    corrupt.write_bytes(b'\x00not a checkpoint' * 10)
    cases = (
        (['--pretrained', paths['train'], '--file_format', 'AIR'], ('AIR', 'Ascend')),
        (['--pretrained', paths['root'] / 'missing.ckpt', '--file_format', 'ONNX'], ('does not exist',)),
        (['--pretrained', corrupt, '--file_format', 'ONNX'], ('cannot be read',)),
        (['--pretrained', paths['train'], '--file_format', 'ONNX', '--arch', 'RepVGG-A1'], ('check arch',)),
        (['--pretrained', paths['ema'], '--file_format', 'ONNX', '--arch', 'RepVGG-B0'],
         ('trained as RepVGG-A0', 'RepVGG-B0')),
        (['--pretrained', paths['train'], '--file_format', 'MINDIR', '--num_classes', '5'],
         ('has 10 classes', 'num_classes: 10')),
        (['--pretrained', paths['train'], '--file_format', 'ONNX', '--ema', '1'], ('no EMA weights',)),
        (['--file_format', 'ONNX'], ('--pretrained',)),
    )
    for argv, fragments in cases:
        status, _, err = run_main(capsys, 'export.py', *base, *argv)
        assert_one_line_error(status, err, *fragments)
    assert not list(paths['root'].glob('refused*')) and not list(paths['root'].glob('.refused*'))


# ----------------------------------------------------------------------------- evaluation
@pytest.mark.slow
def test_ckpt_mindir_onnx_give_the_same_results(work, exported, images, capsys):
    paths = work['paths']
    batch, labels = images
    expected = work['net'](Tensor(batch)).asnumpy()
    assert len(set(expected.argmax(axis=1))) > 1  # predictions vary across images
    reference = reference_results(score(lambda images: expected, [(batch, labels)], NUM_CLASSES))

    results = {}
    for name, model, flags, runs_in in (
            ('train ckpt', paths['train'], [], 'openvino'),  # auto on CPU
            ('deploy ckpt', paths['deploy'], [], 'openvino'),
            ('deploy ckpt, --backend mindspore', paths['deploy'], ['--backend', 'mindspore'], 'mindspore'),
            ('train ckpt, --backend onnxruntime', paths['train'], ['--backend', 'onnxruntime'], 'onnxruntime'),
            ('train ckpt, --backend openvino', paths['train'], ['--backend', 'openvino'], 'openvino'),
            ('mindir', exported['mindir'], [], 'mindspore'),
            ('onnx', exported['onnx'], [], 'openvino'),
            ('onnx, --backend onnxruntime', exported['onnx'], ['--backend', 'onnxruntime'], 'onnxruntime')):
        status, out, err = run_main(capsys, 'eval.py', '--config', paths['config'], '--dataset_path',
                                    paths['val'], '--pretrained', model, *flags)
        assert status == 0, err
        assert engine_of(out) == runs_in, name
        assert re.search(rf'^=> eval data {re.escape(str(paths["val"]))}: 20 images, 10 classes; start-up \d+\.\d s '
                         rf'\(20 (images checked|unchanged since checked)\)$', out, re.M), out
        assert (f'run by {ENGINE_NAMES[runs_in]} (export checked' in out) == ('ckpt' in name and runs_in != 'mindspore')
        assert out.rstrip().endswith('=> eval success')
        results[name] = parse_results(out)
    for backend, runs_in in (('auto', 'openvino'), ('onnxruntime', 'onnxruntime'), ('openvino', 'openvino')):
        status, out, err = run_main(capsys, 'eval_onnx.py', paths['val'], '-c', exported['onnx'], '--image_size',
                                    SIZE, '-m', 'CPU', '--prefetch', 2, '-b', 8, '-j', 1, '--backend', backend)
        assert status == 0, err
        assert engine_of(out) == runs_in, backend
        results[f'eval_onnx.py --backend {backend}'] = parse_results(out)
        assert set(results[f'eval_onnx.py --backend {backend}']) == {'Top1-Acc', 'Top5-Acc'}
    for name, result in results.items():
        assert result['Top1-Acc'] == reference['Top1-Acc'], name
        assert result['Top5-Acc'] == reference['Top5-Acc'], name
        if 'Loss' in result:
            assert abs(result['Loss'] - reference['Loss']) <= 1e-4 * reference['Loss'], name
    assert 0 < reference['Top5-Acc'] < 1  # the check is not about a trivial case


@pytest.mark.parametrize('model, flags, message', [
    ('mindir', ['--backend', 'onnxruntime'], 'a .mindir file runs only in mindspore'),
    ('mindir', ['--backend', 'openvino'], 'a .mindir file runs only in mindspore'),
    ('mindir', ['--precision', 'bf16'], '--precision bf16 runs in the openvino back-end (CPU) only'),
    ('onnx', ['--backend', 'mindspore'], 'an .onnx file runs in openvino or onnxruntime'),
    ('train', ['--backend', 'openvino', '--device_target', 'GPU'], '--backend openvino runs on CPU only'),
    ('train', ['--backend', 'onnxruntime', '--threads', '2'], '--threads sets the threads of the openvino'),
])
@pytest.mark.slow
def test_backend_choices_that_cannot_hold_are_one_line(work, exported, capsys, model, flags, message):
    path = {**work['paths'], **exported}[model]
    status, _, err = run_main(capsys, 'eval.py', '--config', work['paths']['config'], '--dataset_path',
                              work['paths']['val'], '--pretrained', path, *flags)
    assert_one_line_error(status, err, message)


@pytest.mark.slow
def test_logits_agree_across_formats(work, exported, images):
    batch, _ = images
    expected = work['net'](Tensor(batch)).asnumpy()
    for predictor in (load_onnx(exported['onnx'], 'CPU', 8), load_mindir(exported['mindir'], 8)):
        assert relative_difference(predictor(batch), expected) < 1e-4


@pytest.mark.slow
def test_eval_refuses_bad_input(work, exported, capsys):
    paths = work['paths']
    empty = paths['root'] / 'empty_val'
    empty.mkdir(exist_ok=True)
    three_classes = paths['root'] / 'three_classes'
    for label in range(3):
        shutil.copytree(paths['val'] / f'class_{label:02d}', three_classes / f'class_{label:02d}', dirs_exist_ok=True)
    bad_mindir = paths['root'] / 'bad.mindir'
    bad_mindir.write_bytes(b'garbage' * 20)
    base = ['--config', paths['config']]
    cases = (
        ([*base, '--dataset_path', paths['val']], ('--pretrained', 'random')),
        ([*base, '--dataset_path', paths['val'], '--pretrained', paths['root'] / 'gone.ckpt'], ('does not exist',)),
        ([*base, '--dataset_path', paths['val'], '--pretrained', bad_mindir], ('not a MINDIR',)),
        ([*base, '--dataset_path', paths['val'], '--pretrained', paths['root'] / 'weights.pth'],
         ('expected a .ckpt, .mindir, .onnx file',)),
        ([*base, '--dataset_path', paths['root'] / 'nowhere', '--pretrained', paths['train']], ('nowhere',)),
        ([*base, '--dataset_path', empty, '--pretrained', paths['train']], ('empty_val',)),
        ([*base, '--dataset_path', three_classes, '--pretrained', exported['mindir']],
         ('3 class folders', 'predicts 10')),
        ([*base, '--dataset_path', paths['val'], '--pretrained', exported['mindir'], '--image_size', '64'],
         ('--image_size 32',)),
    )
    for argv, fragments in cases:
        status, _, err = run_main(capsys, 'eval.py', *argv)
        assert_one_line_error(status, err, *fragments)
    status, _, err = run_main(capsys, 'eval_onnx.py', paths['val'], '-c', bad_mindir)
    assert_one_line_error(status, err, '.onnx')
    for flag in ('-b', '-j', '--prefetch'):
        status, out, err = run_main(capsys, 'eval_onnx.py', paths['val'], '-c', exported['onnx'], flag, '0')
        assert_one_line_error(status, err, f'{flag}', 'must be at least 1, got 0')
        assert not out  # refused before the model is read
    if 'CUDAExecutionProvider' not in ort.get_available_providers():  # the CPU build of onnxruntime
        status, _, err = run_main(capsys, 'eval_onnx.py', paths['val'], '-c', exported['onnx'], '-m', 'GPU')
        assert_one_line_error(status, err, 'onnxruntime-gpu')


AUTO_NOTE = "=> note: device auto: ONNX Runtime's CUDA provider does not start on this machine"


@pytest.mark.skipif(onnxruntime_cuda_works(), reason="ONNX Runtime's CUDA provider starts here: auto is GPU")
@pytest.mark.slow
def test_onnx_scripts_default_to_auto_which_is_cpu_with_a_note_without_cuda(work, exported, capsys):
    """The zoo's eval_onnx/infer_onnx defaulted to CPU and its GPU edition ran them on GPU; here the
    default is auto: GPU where ONNX Runtime's CUDA provider starts, else (this machine) CPU, said once."""
    paths = work['paths']
    status, out, err = run_main(capsys, 'eval_onnx.py', paths['val'], '-c', exported['onnx'])
    assert status == 0, err
    assert out.count(AUTO_NOTE) == 1 and engine_of(out) == 'openvino' and out.rstrip().endswith('=> eval success')
    status, out, err = run_main(capsys, 'infer_onnx.py', paths['val'] / 'class_01', '-c', exported['onnx'],
                                '-o', paths['root'] / 'auto.json', '--backend', 'onnxruntime')
    assert status == 0, err
    assert out.count(AUTO_NOTE) == 1 and engine_of(out) == 'onnxruntime' and 'CPUExecutionProvider' in out
    assert len(json.loads((paths['root'] / 'auto.json').read_text())) == 2
    status, out, err = run_main(capsys, 'eval_onnx.py', paths['val'], '-c', exported['onnx'], '-m', 'CPU')
    assert status == 0 and AUTO_NOTE not in out, err  # an explicit device is taken as it is


def test_onnx_device_auto_is_gpu_where_cuda_starts(monkeypatch, capsys):
    probes = []
    monkeypatch.setattr(backends, 'onnxruntime_cuda_works', lambda: probes.append(1) or True)
    assert onnx_device('auto', 'auto') == 'GPU' and onnx_device('auto', 'onnxruntime') == 'GPU'
    assert onnx_device('auto', 'openvino') == 'CPU'  # OpenVINO runs on CPU only: nothing to probe
    assert onnx_device('CPU', 'auto') == 'CPU' and onnx_device('GPU', 'openvino') == 'GPU'  # checked later
    assert len(probes) == 2 and capsys.readouterr().out == ''
    monkeypatch.setattr(backends, 'onnxruntime_cuda_works', lambda: False)
    assert onnx_device('auto', 'onnxruntime') == 'CPU' and AUTO_NOTE in capsys.readouterr().out


def test_both_onnx_loaders_refuse_a_file_that_is_not_an_onnx(tmp_path):
    from src.tools.deployment.openvino_engine import load_openvino
    model = tmp_path / 'model.bin'
    model.write_bytes(b'not a model')
    for load in (load_onnx, load_openvino):
        with pytest.raises(UserError, match=r'model\.bin is not an \.onnx file; export one'):
            load(model)


def test_the_cuda_probe_loads_the_pip_cuda_libraries_first_and_prints_nothing(monkeypatch, capsys):
    """onnxruntime-gpu takes CUDA 13 and cuDNN 9 from pip packages off the loader's path (README): they are
    loaded before the probe session, and preload_dlls' list of what it could not find is not shown."""
    import onnxruntime as ort
    calls = []
    real = ort.preload_dlls
    monkeypatch.setattr(ort, 'preload_dlls', lambda **kw: calls.append(kw) or real(**kw))
    works = onnxruntime_cuda_works()
    assert calls == [{'directory': ''}] or 'CUDAExecutionProvider' not in ort.get_available_providers()
    assert capsys.readouterr().out == '' and isinstance(works, bool)


# ----------------------------------------------------------------------------- inference
@pytest.mark.slow
def test_infer_ckpt_mindir_onnx_write_identical_json_in_every_engine(work, exported, capsys):
    paths = work['paths']
    folder = paths['val'] / 'class_03'
    outputs = {}
    for name, model, flags in (('ckpt in mindspore', paths['train'], ['--backend', 'mindspore']),
                               ('mindir', exported['mindir'], []),
                               ('ckpt in onnxruntime', paths['train'], ['--backend', 'onnxruntime']),
                               ('ckpt in openvino fp32', paths['train'], ['--precision', 'fp32'])):
        outputs[name] = paths['root'] / f'pred_{len(outputs)}.json'
        status, out, err = run_main(capsys, 'infer.py', '--config', paths['config'], '--dataset_path', folder,
                                    '--pretrained', model, '--pred_output', outputs[name], *flags)
        assert status == 0, err
        assert '===== Load directory =====' in out
    for engine, flags in (('onnxruntime', ['--backend', 'onnxruntime']), ('openvino', ['--precision', 'fp32'])):
        outputs[f'onnx in {engine}'] = paths['root'] / f'pred_{len(outputs)}.json'
        status, onnx_out, err = run_main(capsys, 'infer_onnx.py', folder, '-c', exported['onnx'],
                                         '--output', outputs[f'onnx in {engine}'], *flags)
        assert status == 0, err
        assert engine_of(onnx_out) == engine
    predictions = [json.loads(path.read_text()) for path in outputs.values()]
    assert all(prediction == predictions[0] for prediction in predictions), outputs
    files = sorted(folder.iterdir())
    assert list(predictions[0]) == [str(path) for path in files]
    batch = np.stack([Preprocessing(SIZE).image(path) for path in files])
    classes = work['net'](Tensor(batch)).asnumpy().argmax(axis=1)
    lines = [line for line in onnx_out.splitlines() if '(class:' in line]
    assert lines == [f'{path} (class: {label})' for path, label in zip(files, classes, strict=True)]

    single = files[0]
    status, out, err = run_main(capsys, 'infer_onnx.py', single, '-c', exported['onnx'],
                                '--output', paths['root'] / 'single.json')
    assert status == 0, err
    assert '===== Load single image =====' in out and f'{single} (class: {classes[0]})' in out
    assert json.loads((paths['root'] / 'single.json').read_text()) == {str(single): int(classes[0])}


@pytest.mark.slow
def test_infer_refuses_bad_input_and_writes_nothing(work, exported, capsys):
    paths = work['paths']
    root = paths['root'] / 'bad_inputs'
    (root / 'empty').mkdir(parents=True)
    (root / 'texts').mkdir()
    (root / 'texts' / 'notes.txt').write_text('not an image')
    (root / 'corrupt').mkdir()
    Image.new('RGB', (8, 8)).save(root / 'corrupt' / 'a.png')
    (root / 'corrupt' / 'b.png').write_bytes(b'not a png at all')
    Image.new('RGB', (8, 8)).save(root / 'picture.bmp')
    output = root / 'out.json'
    cases = (
        (root / 'empty', ('has no',)),
        (root / 'texts', ('has no', 'notes.txt')),
        (root / 'corrupt', ('b.png',)),
        (root / 'picture.bmp', ('picture.bmp',)),
        (root / 'missing.png', ('does not exist',)),
    )
    for data, fragments in cases:
        status, _, err = run_main(capsys, 'infer_onnx.py', data, '-c', exported['onnx'], '--output', output)
        assert_one_line_error(status, err, *fragments)
        assert not output.exists() and not list(root.glob('.out.json*'))
    status, _, err = run_main(capsys, 'infer.py', '--config', paths['config'], '--dataset_path', root / 'corrupt',
                              '--pretrained', paths['train'], '--pred_output', output)
    assert_one_line_error(status, err, 'b.png')
    status, _, err = run_main(capsys, 'infer.py', '--config', paths['config'], '--dataset_path',
                              paths['val'] / 'class_01', '--pred_output', output)
    assert_one_line_error(status, err, '--pretrained')
    assert not output.exists()


@pytest.mark.slow
def test_infer_notes_images_whose_exif_orientation_would_turn_them(work, exported, capsys, tmp_path):
    """A phone photo tagged 'turn 90 degrees' (and a PNG tagged 'turn 180') is predicted as stored, as
    training reads images, with one note; a tag that says 'as stored' is no reason for one."""
    photos = tmp_path / 'photos'
    photos.mkdir()
    pixels = np.random.default_rng(5).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    for name, orientation in (('a_upright.jpg', 1), ('b_plain.png', None), ('c_turned.jpg', 6), ('d_turned.png', 3)):
        exif = Image.Exif()
        if orientation is not None:
            exif[0x0112] = orientation
        Image.fromarray(pixels).save(photos / name, exif=exif.tobytes())
    note = (f'=> note: 2 of the 4 images carry an EXIF orientation that turns or mirrors them (e.g. '
            f'{photos / "c_turned.jpg"}); they are predicted as stored')
    for script, argv in (('infer_onnx.py', [photos, '-c', exported['onnx'], '-o', tmp_path / 'onnx.json']),
                         ('infer.py', ['--config', work['paths']['config'], '--dataset_path', photos, '--pretrained',
                                       work['paths']['train'], '--pred_output', tmp_path / 'ckpt.json'])):
        status, out, err = run_main(capsys, script, *argv)
        assert status == 0, err
        assert out.count('EXIF') == 1 and note in out, out
    assert json.loads((tmp_path / 'onnx.json').read_text()) == json.loads((tmp_path / 'ckpt.json').read_text())
    for name in ('c_turned.jpg', 'd_turned.png'):
        (photos / name).unlink()
    status, out, err = run_main(capsys, 'infer_onnx.py', photos, '-c', exported['onnx'], '-o',
                                tmp_path / 'upright.json')
    assert status == 0 and 'EXIF' not in out, err + out


# ----------------------------------------------------------------------------- real processes
@pytest.mark.slow
def test_scripts_as_processes(work, exported):
    paths = work['paths']
    status, out, err = run_process('eval.py', '--config', paths['config'], '--dataset_path', paths['val'],
                                   '--pretrained', exported['mindir'])
    assert status == 0, err
    assert '=> eval results:' in out and out.rstrip().endswith('=> eval success')
    status, out, err = run_process('eval.py', '--config', paths['config'], '--dataset_path', paths['val'],
                                   '--pretrained', paths['root'] / 'nothing.ckpt')
    assert_one_line_error(status, err, 'nothing.ckpt')
    log_dir = paths['root'] / 'logs'
    log_dir.mkdir()
    output = paths['root'] / 'script.json'
    result = subprocess.run(['bash', str(ROOT / 'scripts' / 'run_infer_onnx.sh'), exported['onnx'],
                             paths['val'] / 'class_01', output, 'CPU'], cwd=log_dir, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr + result.stdout
    assert len(json.loads(output.read_text())) == 2
    assert '===== Load directory =====' in (log_dir / 'infer_onnx.log').read_text()
    result = subprocess.run(['bash', str(ROOT / 'scripts' / 'run_eval_onnx.sh'), exported['onnx'], paths['val']],
                            cwd=log_dir, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr + result.stdout
    log = (log_dir / 'eval_onnx.log').read_text()
    assert log.rstrip().endswith('=> eval success')
    assert (AUTO_NOTE in log) != onnxruntime_cuda_works()  # the default device is auto
    result = subprocess.run(['bash', str(ROOT / 'scripts' / 'run_eval_onnx.sh'), exported['onnx'], paths['val'],
                             'TPU'], cwd=log_dir, capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stderr) == (1, 'error: DEVICE_TARGET must be auto, GPU or CPU, got TPU\n')
    result = subprocess.run(['bash', str(ROOT / 'scripts' / 'run_eval_gpu.sh'), paths['config']],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and 'Usage' in result.stderr


# ----------------------------------------------------------------------------- broken weights
@pytest.fixture(scope='module')
def broken(work, exported):
    """A checkpoint whose classifier weights are NaN (with class names), and the ONNX export of the
    trained network with its classifier initializer made NaN."""
    paths = work['paths']
    net = create_model(ARCH, num_classes=NUM_CLASSES)
    net.linear.weight.set_data(Tensor(np.full(net.linear.weight.shape, np.nan, np.float32)))
    ckpt = paths['root'] / 'nan_head.ckpt'
    names = sorted(path.name for path in paths['val'].iterdir())
    save_checkpoint([{'name': p.name, 'data': p.data} for p in net.get_parameters()], ckpt,
                    ModelCard(class_names=tuple(names)).entries())
    model = onnx.load(str(exported['onnx']))
    gemm = next(node for node in model.graph.node if node.op_type == 'Gemm')
    weight = next(tensor for tensor in model.graph.initializer if tensor.name == gemm.input[1])
    nan = np.full(onnx.numpy_helper.to_array(weight).shape, np.nan, np.float32)
    weight.CopyFrom(onnx.numpy_helper.from_array(nan, weight.name))
    path = paths['root'] / 'nan_head.onnx'
    onnx.save(model, str(path))
    return {'ckpt': ckpt, 'onnx': path}


@pytest.mark.slow
def test_broken_weights_never_score_never_predict_never_export(work, broken, capsys, tmp_path):
    """Every back-end: one line naming the model file and counting the images, no result, nothing written."""
    paths = work['paths']
    config = ['--config', paths['config']]
    ckpt, onnx_file = broken['ckpt'], broken['onnx']
    val, images = paths['val'], paths['val'] / 'class_03'
    first = min(images.iterdir())
    cases = (
        ('eval.py', [*config, '--dataset_path', val, '--pretrained', ckpt, '--backend', 'mindspore',
                     '--report_dir', tmp_path], ckpt, 'for 8 of the 8 images of batch 1 of ' + str(val)),
        ('eval.py', [*config, '--dataset_path', val, '--pretrained', ckpt], ckpt,
         'for 2 of the 2 images of a random test batch'),  # the CPU default (OpenVINO): the on-the-fly export's check
        ('eval.py', [*config, '--dataset_path', val, '--pretrained', onnx_file, '--backend', 'onnxruntime'],
         onnx_file, 'for 8 of the 8 images of batch 1 of ' + str(val)),
        ('eval.py', [*config, '--dataset_path', val, '--pretrained', ckpt, '--backend', 'onnxruntime'], ckpt,
         'for 2 of the 2 images of a random test batch'),  # the on-the-fly export's check
        ('eval.py', [*config, '--dataset_path', val, '--pretrained', onnx_file], onnx_file,
         'for 8 of the 8 images of batch 1 of ' + str(val)),
        ('eval_onnx.py', [val, '-c', onnx_file, '-b', 8, '-j', 1, '--report_dir', tmp_path], onnx_file,
         'for 8 of the 8 images of batch 1 of ' + str(val)),
        ('infer.py', [*config, '--dataset_path', images, '--pretrained', ckpt, '--backend', 'mindspore',
                      '--pred_output', tmp_path / 'p.json'], ckpt, f'for 2 of the 2 images of the batch from {first}'),
        ('infer.py', [*config, '--dataset_path', images, '--pretrained', ckpt, '--pred_output', tmp_path / 'p.json'],
         ckpt, 'for 2 of the 2 images of a random test batch'),
        ('infer_onnx.py', [images, '-c', onnx_file, '-o', tmp_path / 'p.json'], onnx_file,
         f'for 2 of the 2 images of the batch from {first}'),  # OpenVINO, precision auto
        ('infer_onnx.py', [images, '-c', onnx_file, '-o', tmp_path / 'p.json', '--backend', 'onnxruntime'],
         onnx_file, f'for 2 of the 2 images of the batch from {first}'),
        ('export.py', [*config, '--pretrained', ckpt, '--file_format', 'ONNX', '--export_path', tmp_path / 'm'],
         ckpt, 'for 2 of the 2 images of a random test batch'),
        ('export.py', [*config, '--pretrained', ckpt, '--file_format', 'MINDIR', '--export_path', tmp_path / 'm'],
         ckpt, 'for 2 of the 2 images of a random test batch'),
    )
    for script, argv, model, count in cases:
        status, out, err = run_main(capsys, script, *argv)
        assert_one_line_error(status, err, f'error: {model} gives non-finite logits (NaN/inf) {count}: its weights '
                                           f'are broken (a diverged run?)')
        assert 'Please report' not in err and 'eval results' not in out and 'success' not in out, (script, out)
        assert '(class:' not in out and not list(tmp_path.iterdir()), script  # no JSON, report or export file
