"""src/tools/deployment/quantize.py and export.py --quantize int8: an INT8 ONNX file, checked before it
is kept, that runs wherever an ONNX file runs; and QARepVGG through the same commands (train, resume,
convert, export, quantize).

The session's QARepVGG-A0 run on a tiny folder (``qa_run`` in conftest.py: cat, dog and fox, 24x24,
one epoch of train.py) feeds every test, through export.py; a copy of it is resumed for a second epoch.
Scripts run in this process where they can (each MindSpore process start costs seconds).
"""
import collections
import json
import shutil
import subprocess

import mindspore as ms
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from src.config import make_config
from src.dataset import Preprocessing
from src.tools.base.cli import UserError
from src.tools.base.numerics import relative_difference
from src.tools.deployment.evaluation import parse_results
from src.tools.deployment.model_files import load_deploy_network, load_onnx
from src.tools.deployment.openvino_engine import load_openvino
from src.tools.deployment.quantize import (
    AGREEMENT_THRESHOLD,
    MIN_CALIBRATION_IMAGES,
    ImageBatches,
    calibration_files,
    export_int8,
    load_images,
    pick_evenly,
    quantize_onnx,
)
from src.tools.image_folders import tinted_folder
from tests.helpers import assert_one_line_error, call_main, run_main
from tests.train_helpers import REPO, environment

ARCH, CLASSES, SIZE = 'QARepVGG-A0', 3, 24


@pytest.fixture(scope='module')
def run(qa_run, tmp_path_factory):
    """The session's QARepVGG-A0 run (conftest.py: one epoch of train.py), a folder for this
    module's outputs, the eval settings, and a calibration folder of the same classes (3 x 11 images:
    the 24 training images are too few)."""
    root = tmp_path_factory.mktemp('quantize')
    calibration = root / 'more'
    tinted_folder(calibration, [11] * CLASSES, SIZE, names=qa_run['classes'], seed=2)
    config = ['--config', REPO / 'src/configs/RepVGG.yaml', '--arch', ARCH, '--num_classes', CLASSES,
              '--image_size', SIZE, '--device_target', 'CPU', '--data_url', qa_run['data'], '--num_parallel_workers', 1,
              '--batch_size', 4]
    return dict(qa_run, root=root, config=config, calibration=calibration)


@pytest.fixture(scope='module')
def exported(run):
    """export.py of the run's last checkpoint: fp32 ONNX (with the run's settings), and INT8 ONNX calibrated
    on 32 of the 33 images of the calibration folder (without a config: the checkpoint says what it is);
    {name: path}, plus the INT8 printout."""
    files = {}
    int8 = ('--device_target', 'CPU', '--quantize', 'int8', '--calibration_path', run['calibration'],
            '--calibration_images', 32)
    for name, flags in (('fp32', run['config']), ('int8', int8)):
        status, out, err = call_main('export.py', *flags, '--pretrained', run['checkpoint'], '--file_format', 'ONNX',
                                     '--export_path', run['root'] / name)
        assert status == 0 and out.rstrip().endswith('=> export success'), out + err
        files[name] = run['root'] / f'{name}.onnx'
        files[f'{name}_out'] = out
    return files


def val_images(run):
    paths = sorted((run['data'] / 'val').glob('*/*.png'))
    return load_images(paths, Preprocessing(SIZE)), np.array([run['classes'].index(p.parent.name) for p in paths])


# ----------------------------------------------------------------------------- QARepVGG end to end
def test_qarepvgg_trains_and_converts(run, tmp_path, capsys):
    assert 'train success' in run['output']
    checkpoint = ms.load_checkpoint(str(run['checkpoint']))
    assert checkpoint['arch'] == ARCH and int(checkpoint['epoch_num'].asnumpy()) == 1
    assert {'stage1.0.bn.gamma', 'stage2.1.rbr_1x1.weight'} <= set(checkpoint)
    assert not any('rbr_1x1.bn' in name or 'rbr_identity' in name for name in checkpoint)
    status, out, err = run_main(capsys, 'convert.py', '--input', run['checkpoint'], '--output',
                                tmp_path / 'deploy.ckpt', '--deploy')
    assert status == 0, err
    assert f'wrote {tmp_path / "deploy.ckpt"}: {ARCH}, deploy form' in out
    error = float(out.split('train vs deploy logits relative error ')[1].split()[0])
    assert error < 1e-5


@pytest.mark.slow
def test_a_qarepvgg_run_continues_with_a_longer_schedule(run, tmp_path, capsys):
    folder = shutil.copytree(run['folder'], tmp_path / run['folder'].name)  # the shared run stays as it is
    status, out, err = run_main(capsys, 'train.py', *run['flags'], '--continues', folder, '--epochs', 2,
                                '--allow_schedule_change', 1)
    assert status == 0, err
    assert f'=> starting from checkpoint {folder / f"{ARCH}_0-1_6.ckpt"}: epoch ' in out and 'train success' in out
    last = ms.load_checkpoint(str(folder / f'{ARCH}_0-2_6.ckpt'))
    assert last['arch'] == ARCH and int(last['epoch_num'].asnumpy()) == 2


# ----------------------------------------------------------------------------- the INT8 file
def test_int8_export_prints_its_check_and_keeps_the_batch_dynamic(run, exported):
    out = exported['int8_out']
    assert 'ONNX INT8: QDQ, per-channel int8 weights, uint8 activations' in out and '3 class names' in out
    assert f'calibrated on 32 images of {run["calibration"]}' in out and 'note' not in out
    agreement = float(out.split('top-1 agreement with the fp32 network on the calibration images: ')[1].split('%')[0])
    assert AGREEMENT_THRESHOLD * 100 <= agreement <= 100
    assert sorted(p.name for p in run['root'].iterdir() if p.name.startswith(('.int8', 'int8'))) == ['int8.onnx']
    model = onnx.load(str(exported['int8']))
    assert next(entry.version for entry in model.opset_import if entry.domain in ('', 'ai.onnx')) == 13
    ops = collections.Counter(node.op_type for node in model.graph.node)
    assert ops['Conv'] == 22 and ops['QuantizeLinear'] >= 22 and ops['DequantizeLinear'] >= 44
    weight_scales = [node for node in model.graph.node if node.op_type == 'DequantizeLinear'
                     and any(attribute.name == 'axis' for attribute in node.attribute)]
    assert len(weight_scales) >= 22  # per-channel weights
    dims = [[d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            for value in (model.graph.input[0], model.graph.output[0])]
    assert dims == [['batch', 3, SIZE, SIZE], ['batch', CLASSES]]
    assert exported['int8'].stat().st_size < 0.35 * exported['fp32'].stat().st_size
    assert load_onnx(exported['int8']).class_names == ['cat', 'dog', 'fox']  # as the fp32 export
    card = {'arch': ARCH, 'num_classes': str(CLASSES), 'form': 'deploy', 'quantization_friendly': 'true',
            'class_names': '["cat", "dog", "fox"]', 'image_size': str(SIZE), 'interpolation': 'bilinear',
            'mean': '[0.485, 0.456, 0.406]', 'std': '[0.229, 0.224, 0.225]', 'crop_pct': '0.875'}
    assert card.items() <= {prop.key: prop.value for prop in model.metadata_props}.items()  # the checkpoint's card


def test_int8_logits_follow_the_fp32_network(run, exported):
    images, _ = val_images(run)
    fp32 = load_onnx(exported['fp32'], batch_size=4)(images)
    int8 = load_onnx(exported['int8'], batch_size=4)(images)  # chunks of 4 and 2: the batch is dynamic
    assert 1e-4 < relative_difference(int8, fp32) < 0.15  # quantized, and close: measured 0.050
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(run['root'] / 'optimized.onnx')
    ort.InferenceSession(str(exported['int8']), options, providers=['CPUExecutionProvider'])
    fused = collections.Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)
    assert fused['QLinearConv'] == 22 and fused['Conv'] == 0  # ONNX Runtime runs integer convolutions


@pytest.mark.slow
def test_int8_file_runs_in_eval_infer_and_their_onnx_scripts(run, exported, tmp_path, capsys):
    val = run['data'] / 'val'
    results = {}
    for name, script, argv in (
            ('eval.py', 'eval.py', [*run['config'], '--dataset_path', val, '--pretrained', exported['int8']]),
            ('eval_onnx.py', 'eval_onnx.py', [val, '-c', exported['int8'], '-b', 4, '-j', 1, '--prefetch', 2]),
            ('onnxruntime', 'eval_onnx.py', [val, '-c', exported['int8'], '-j', 1, '--backend', 'onnxruntime'])):
        status, out, err = run_main(capsys, script, *argv)
        assert status == 0, err
        assert f'ONNX {exported["int8"]} (input batchx3x{SIZE}x{SIZE}, {CLASSES} classes' in out
        engine = 'ONNX Runtime' if name == 'onnxruntime' else 'OpenVINO'  # on CPU, OpenVINO unless asked
        assert any(line.startswith(f'=> {engine} ') and ', int8' in line for line in out.splitlines()), out
        results[name] = parse_results(out)
    assert results['eval.py']['Top1-Acc'] == results['eval_onnx.py']['Top1-Acc']
    images, labels = val_images(run)
    for name, load in (('eval_onnx.py', load_openvino), ('onnxruntime', load_onnx)):
        predictor = load(exported['int8'])
        assert results[name]['Top1-Acc'] == pytest.approx(np.mean(predictor(images).argmax(axis=1) == labels))
    predictions = {}
    for script, argv in (('infer.py', [*run['config'], '--dataset_path', val / 'cat', '--pretrained',
                                       exported['int8'], '--pred_output', tmp_path / 'infer.json']),
                         ('infer_onnx.py', [val / 'cat', '-c', exported['int8'], '-o', tmp_path / 'onnx.json'])):
        status, out, err = run_main(capsys, script, *argv)
        assert status == 0, err
        assert '===== Load directory =====' in out
    for name in ('infer', 'onnx'):
        predictions[name] = json.loads((tmp_path / f'{name}.json').read_text())
    assert predictions['infer'] == predictions['onnx'] and len(predictions['onnx']) == 2
    for script, args in (('run_eval_onnx.sh', [exported['int8'], val]),
                         ('run_infer_onnx.sh', [exported['int8'], val / 'cat', tmp_path / 'script.json'])):
        result = subprocess.run(['bash', REPO / 'scripts' / script, *map(str, args)], cwd=tmp_path,
                                capture_output=True, text=True, env=environment(), timeout=300, check=False)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert parse_results((tmp_path / 'eval_onnx.log').read_text())['Top1-Acc'] == results['eval_onnx.py']['Top1-Acc']
    assert json.loads((tmp_path / 'script.json').read_text()) == predictions['onnx']


# ----------------------------------------------------------------------------- refusals
@pytest.mark.slow
def test_an_int8_model_below_the_agreement_threshold_is_refused_and_nothing_is_written(run, tmp_path):
    net, _, card = load_deploy_network(run['checkpoint'], make_config())
    files = calibration_files(run['calibration'], MIN_CALIBRATION_IMAGES)
    with pytest.raises(UserError, match=r'predicts the fp32 top-1 class on only [\d.]+% of the 32 calibration images '
                                        r'\(at least 101% required\); nothing was written'):
        export_int8(net, card, tmp_path / 'refused', files, threshold=1.01)
    assert not list(tmp_path.iterdir())


def test_bad_requests_are_one_line_before_any_work(run, tmp_path, capsys):
    empty = tmp_path / 'empty'
    empty.mkdir()
    imageless = tmp_path / 'imageless'
    (imageless / 'cat').mkdir(parents=True)
    (imageless / 'cat' / 'notes.txt').write_text('no image')
    base = [*run['config'], '--pretrained', run['checkpoint'], '--export_path', tmp_path / 'refused']
    cases = (
        (['--file_format', 'MINDIR', '--quantize', 'int8'],
         ('--quantize int8 writes ONNX files', '--file_format ONNX')),
        (['--file_format', 'ONNX', '--quantize', 'int8', '--calibration_path', tmp_path / 'missing'],
         ('calibration folder', 'does not exist')),
        (['--file_format', 'ONNX', '--quantize', 'int8', '--calibration_path', empty], ('has no class sub-folders',)),
        (['--file_format', 'ONNX', '--quantize', 'int8', '--calibration_path', imageless], ('has no images',)),
        (['--file_format', 'ONNX', '--quantize', 'int8', '--calibration_images', 0], ('at least 32, got 0',)),
        (['--file_format', 'ONNX', '--quantize', 'int8', '--calibration_images', 31], ('at least 32, got 31',)),
        (['--file_format', 'ONNX', '--quantize', 'int8'],  # the default folder, data_url/train: 24 images
         (f'calibration folder {run["data"] / "train"} has 24 images, at least 32 are needed', '--calibration_path')),
        (['--file_format', 'ONNX', '--quantize', 'int4'], ("choose one of: none, int8",)),
    )
    for argv, fragments in cases:
        status, out, err = run_main(capsys, 'export.py', *base, *argv)
        assert_one_line_error(status, err, *fragments)
        assert ' weights from ' not in out  # refused before the checkpoint was read
    assert sorted(p.name for p in tmp_path.iterdir()) == ['empty', 'imageless']


@pytest.mark.slow
def test_fewer_images_than_asked_and_unrelated_classes_are_noted(run, tmp_path, capsys):
    """33 images of folders named ant, bee and cow for a model of cat, dog and fox, 100 asked for: both
    said, and the INT8 file is written from all 33."""
    unrelated = tmp_path / 'insects'
    tinted_folder(unrelated, [11] * CLASSES, SIZE, names=('ant', 'bee', 'cow'), seed=3)
    status, out, err = run_main(capsys, 'export.py', *run['config'], '--pretrained', run['checkpoint'], '--file_format',
                                'ONNX', '--quantize', 'int8', '--calibration_path', unrelated, '--calibration_images',
                                100, '--export_path', tmp_path / 'int8')
    assert status == 0, err
    assert (f'=> note: calibration folder {unrelated} has 33 images, fewer than the 100 asked for '
            f'(calibration_images): using all 33') in out
    assert ('=> note: 3 of the 3 class folders the calibration images come from are not classes of the model '
            '(ant, bee, cow)') in out
    assert f'calibrated on 33 images of {unrelated}' in out and (tmp_path / 'int8.onnx').is_file()


# ----------------------------------------------------------------------------- pieces
def test_calibration_images_are_spread_evenly_over_the_classes():
    classes = [[f'a{i}' for i in range(10)], [f'b{i}' for i in range(2)], [f'c{i}' for i in range(5)]]
    # quotas 4, 2, 3 (the class of 2 gives all it has), evenly spaced within each class
    assert pick_evenly(classes, 9) == ['a1', 'a3', 'a6', 'a8', 'b0', 'b1', 'c0', 'c2', 'c4']
    assert pick_evenly(classes, 100) == [name for names in classes for name in names]
    assert pick_evenly(classes, 3) == ['a5', 'b1', 'c2']  # the middle of each class


def test_calibration_batches_fit_a_dynamic_or_a_fixed_batch():
    images = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)

    def fed(reader):
        batches = []
        while (feed := reader.get_next()) is not None:
            batches.append(feed['image'].reshape(-1).astype(int).tolist())
        return batches

    assert fed(ImageBatches(images, 'image', batch=4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert fed(ImageBatches(images, 'image', fixed_batch=4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]
    assert fed(ImageBatches(images[:3], 'image', fixed_batch=8)) == [[0, 1, 2, 0, 1, 2, 0, 1]]


def test_int8_file_carries_all_the_fp32_metadata(exported, tmp_path):
    fp32 = onnx.load(str(exported['fp32']))
    fp32.metadata_props.add(key='training_run', value='qa, 2 epochs')
    source = tmp_path / 'fp32_meta.onnx'
    onnx.save(fp32, str(source))
    quantize_onnx(source, tmp_path / 'int8.onnx', np.zeros((2, 3, SIZE, SIZE), np.float32), tmp_path)
    props = {prop.key: prop.value for prop in onnx.load(str(tmp_path / 'int8.onnx')).metadata_props}
    assert props['training_run'] == 'qa, 2 epochs' and props['class_names'] == '["cat", "dog", "fox"]'
