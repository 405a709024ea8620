"""src/tools/checkpoints/model_card.py: a model file says what it is and how its images are
preprocessed, so eval.py, infer.py, export.py, eval_onnx.py and infer_onnx.py need no config.
(The INT8 export without a config, and the card it copies: tests/test_quantize.py; what train.py's
checkpoints record: tests/test_bad_input.py; convert.py's: tests/test_convert.py.)

The model is a RepVGG-A0 with 3 named classes and random BN statistics, saved as train.py saves
one, with a card whose preprocessing is none of the defaults (24x24, bicubic, its own mean and
std, crop 0.75): every result is compared with that preprocessing done by hand, and the test checks
that the defaults would have given other numbers. Scripts run in this process, without --config.
"""
import json
from dataclasses import replace

import mindspore as ms
import numpy as np
import onnx
import pytest
from mindspore import Tensor

from src.dataset import Preprocessing
from src.repvgg import create_model, switch_net_to_deploy
from src.tools.checkpoints.format import save_checkpoint
from src.tools.checkpoints.model_card import ModelCard
from src.tools.deployment.evaluation import parse_results, reference_results, score
from src.tools.deployment.export import FORMAT_SUFFIXES
from src.tools.deployment.model_files import mindir_user_info
from src.tools.image_folders import tinted_folder
from tests.helpers import ROOT, assert_one_line_error, load_script, randomize_bn, run_main

ARCH, CLASSES, SIZE = 'RepVGG-A0', ('ant', 'bee', 'cow'), 24
PREPROCESSING = Preprocessing(SIZE, 'bicubic', (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), 0.75)
CARD = ModelCard.of(ARCH, len(CLASSES), False, CLASSES, PREPROCESSING)
CPU = ('--device_target', 'CPU')


def network_entries(net):
    return [{'name': p.name, 'data': p.data} for p in net.get_parameters()]


def reference(net, files, labels, preprocessing=PREPROCESSING):
    """The eval.py results and the top-1 classes of ``net`` on ``files`` preprocessed by hand."""
    logits = net(Tensor(np.stack([preprocessing.image(path) for path in files]))).asnumpy()
    return reference_results(score(lambda images: logits, [(None, labels)], len(CLASSES), show_progress=False)), \
        logits.argmax(axis=1)


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    """The checkpoint (train form, with its card), a validation folder and the deploy network."""
    ms.set_device('CPU')  # before the first kernel runs (the autouse fixture comes after module fixtures)
    ms.set_context(mode=ms.GRAPH_MODE)
    root = tmp_path_factory.mktemp('model_card')
    tinted_folder(root / 'val', [3] * len(CLASSES), (52, 40), names=CLASSES, seed=4)
    files = sorted((root / 'val').glob('*/*.png'))
    labels = np.array([CLASSES.index(path.parent.name) for path in files])
    net = randomize_bn(create_model(ARCH, num_classes=len(CLASSES)), seed=3)
    net.set_train(False)
    logits = net(Tensor(np.stack([PREPROCESSING.image(path) for path in files]))).asnumpy()
    net.linear.bias.set_data(Tensor(net.linear.bias.asnumpy() - logits.mean(axis=0)))  # varied top-1 classes
    ckpt = save_checkpoint(network_entries(net), root / 'model.ckpt', CARD.entries())
    switch_net_to_deploy(net)
    results, classes = reference(net, files, labels)
    return dict(root=root, val=root / 'val', ckpt=ckpt, net=net, files=files, labels=labels, results=results,
                classes=classes)


@pytest.fixture(scope='module')
def exported(model):
    """export.py --file_format ONNX and MINDIR of the checkpoint, without --config."""
    files = {}
    for fmt in ('ONNX', 'MINDIR'):
        load_script('export.py').main([str(arg) for arg in ('--pretrained', model['ckpt'], '--file_format', fmt,
                                                             '--export_path', model['root'] / 'model', *CPU)])
        files[fmt] = model['root'] / f'model{FORMAT_SUFFIXES[fmt]}'
    return files


def same_results(out, expected):
    got = parse_results(out)
    assert got['Top1-Acc'] == expected['Top1-Acc'] and got['Top5-Acc'] == expected['Top5-Acc'], (got, expected)
    if 'Loss' in got:
        assert abs(got['Loss'] - expected['Loss']) <= 1e-4 * expected['Loss'], (got, expected)


# ----------------------------------------------------------------------------- what the files record
def test_exports_record_the_card_in_their_metadata(model, exported):
    deploy = {**CARD.entries(), 'form': 'deploy'}
    assert deploy == {'arch': ARCH, 'num_classes': '3', 'form': 'deploy', 'quantization_friendly': 'false',
                      'class_names': '["ant", "bee", "cow"]', 'image_size': '24', 'interpolation': 'bicubic',
                      'mean': '[0.5, 0.4, 0.3]', 'std': '[0.2, 0.25, 0.3]', 'crop_pct': '0.75'}
    assert {prop.key: prop.value for prop in onnx.load(str(exported['ONNX'])).metadata_props} == deploy
    from mindspore.train import mind_ir_pb2
    mindir = mind_ir_pb2.ModelProto()
    mindir.ParseFromString(exported['MINDIR'].read_bytes())
    assert mindir_user_info(mindir) == deploy
    recorded = ms.load_checkpoint(str(model['ckpt']))
    assert {key: recorded[key] for key in CARD.entries()} == CARD.entries()


# ----------------------------------------------------------------------------- every script, no config
def test_eval_and_eval_onnx_take_the_preprocessing_from_the_file(model, exported, capsys):
    # the defaults (224 / 256 crop, bilinear, ImageNet mean and std) would give other inputs and another loss
    default, _ = reference(model['net'], model['files'], model['labels'], Preprocessing(SIZE))
    assert abs(default['Loss'] - model['results']['Loss']) > 1e-3 * model['results']['Loss']
    runs = (('eval.py', '--pretrained', model['ckpt'], '--dataset_path', model['val'], *CPU),
            ('eval.py', '--pretrained', model['ckpt'], '--dataset_path', model['val'], '--backend', 'mindspore', *CPU),
            ('eval.py', '--pretrained', exported['MINDIR'], '--dataset_path', model['val'], *CPU),
            ('eval.py', '--pretrained', exported['ONNX'], '--dataset_path', model['val'], '--backend', 'onnxruntime',
             *CPU),
            ('eval_onnx.py', model['val'], '-c', exported['ONNX'], '-j', 1, '-m', 'CPU'))
    for script, *argv in runs:
        status, out, err = run_main(capsys, script, *argv)
        assert status == 0, err
        assert 'note' not in out and out.rstrip().endswith('=> eval success'), out
        same_results(out, model['results'])


def test_infer_and_infer_onnx_take_the_preprocessing_and_names_from_the_file(model, exported, capsys, tmp_path):
    folder = model['val'] / 'bee'
    runs = (('infer.py', '--pretrained', model['ckpt'], '--backend', 'mindspore', '--dataset_path', folder, *CPU,
             '--pred_output'),
            ('infer.py', '--pretrained', exported['MINDIR'], '--dataset_path', folder, *CPU, '--pred_output'),
            ('infer_onnx.py', folder, '-c', exported['ONNX'], '--precision', 'fp32', '-m', 'CPU', '-o'))
    expected = {str(path): CLASSES[index] for path, index in zip(model['files'], model['classes'], strict=True)
                if path.parent == folder}
    for number, (script, *argv) in enumerate(runs):
        output = tmp_path / f'{number}.json'
        status, out, err = run_main(capsys, script, *argv, output)
        assert status == 0, err
        assert json.loads(output.read_text()) == expected, script
        assert 'note' not in out


# ----------------------------------------------------------------------------- config against the file
def test_a_config_that_contradicts_the_file_is_one_line_naming_both(model, exported, capsys, tmp_path):
    wrong_classes = tmp_path / 'five.yaml'
    wrong_classes.write_text('num_classes: 5\n')
    data = ('--dataset_path', model['val'], *CPU)
    cases = (
        ('eval.py', ['--pretrained', model['ckpt'], *data, '--arch', 'RepVGG-B0'],
         f"error: checkpoint {model['ckpt']} was trained as RepVGG-A0, the config asks for RepVGG-B0: drop arch"),
        ('eval.py', ['--pretrained', model['ckpt'], *data, '--config', wrong_classes],
         f"error: checkpoint {model['ckpt']} has 3 classes, the config asks for 5: drop num_classes"),
        ('eval.py', ['--pretrained', exported['ONNX'], *data, '--num_classes', 5],
         f"error: {exported['ONNX']} has 3 classes, the config asks for 5"),
        ('eval.py', ['--pretrained', exported['MINDIR'], *data, '--arch', 'QARepVGG-A0'],
         f"error: {exported['MINDIR']} was trained as RepVGG-A0, the config asks for QARepVGG-A0"),
        ('eval.py', ['--pretrained', exported['ONNX'], *data, '--image_size', 32],
         f"error: {exported['ONNX']} takes 24x24 images, but image_size is 32"),
        ('export.py', ['--pretrained', model['ckpt'], '--arch', 'RepVGG-A1', '--file_format', 'ONNX',
                       '--export_path', tmp_path / 'refused', *CPU], 'was trained as RepVGG-A0, the config asks for '
                                                                     'RepVGG-A1'),
        ('infer.py', ['--pretrained', model['ckpt'], '--num_classes', 10, '--dataset_path', model['val'] / 'ant',
                      '--pred_output', tmp_path / 'refused.json', *CPU], 'has 3 classes, the config asks for 10'),
    )
    for script, argv, line in cases:
        status, out, err = run_main(capsys, script, *argv)
        assert_one_line_error(status, err, line)
        assert 'success' not in out
    assert sorted(path.name for path in tmp_path.iterdir()) == ['five.yaml']  # no export, no JSON


@pytest.mark.slow
def test_image_size_and_interpolation_override_the_file_with_a_note(model, exported, capsys, tmp_path):
    status, out, err = run_main(capsys, 'eval.py', '--pretrained', model['ckpt'], '--dataset_path', model['val'],
                                '--backend', 'mindspore', '--image_size', 32, *CPU)
    assert status == 0, err
    assert f"=> note: image_size 32 (set in the config or flags) overrides the 24 that checkpoint {model['ckpt']} " \
           f"records" in out
    at_32, _ = reference(model['net'], model['files'], model['labels'], replace(PREPROCESSING, image_size=32))
    same_results(out, at_32)

    folder = model['val'] / 'cow'
    status, out, err = run_main(capsys, 'infer_onnx.py', folder, '-c', exported['ONNX'], '--interpolation', 'bilinear',
                                '--precision', 'fp32', '-o', tmp_path / 'bilinear.json')
    assert status == 0, err
    assert f"=> note: interpolation bilinear (set in the config or flags) overrides the bicubic that " \
           f"{exported['ONNX']} records" in out
    paths = [path for path in model['files'] if path.parent == folder]
    _, classes = reference(model['net'], paths, np.zeros(len(paths), int), replace(PREPROCESSING,
                                                                                   interpolation='bilinear'))
    assert json.loads((tmp_path / 'bilinear.json').read_text()) == {
        str(path): CLASSES[index] for path, index in zip(paths, classes, strict=True)}


@pytest.mark.slow
def test_a_training_config_still_works_for_eval_export_and_infer(model, capsys, tmp_path):
    """The digits recipe with this model's arch, classes, size and resize: every key parses, nothing is noted."""
    recipe = (ROOT / 'src/configs/RepVGG-A0_digits.yaml').read_text()
    recipe = recipe.replace('num_classes: 10 ', 'num_classes: 3 ').replace('image_size: 32 ', 'image_size: 24 ')
    recipe = recipe.replace('interpolation: bilinear', 'interpolation: bicubic')
    config = tmp_path / 'train.yaml'
    config.write_text(recipe)
    for script, argv in (('eval.py', ['--dataset_path', model['val']]),
                         ('export.py', ['--file_format', 'MINDIR', '--export_path', tmp_path / 'model']),
                         ('infer.py', ['--dataset_path', model['val'] / 'ant', '--pred_output', tmp_path / 'p.json'])):
        status, out, err = run_main(capsys, script, '--config', config, '--pretrained', model['ckpt'], *argv)
        assert status == 0, err
        assert 'note' not in out and ('success' in out or 'predictions written' in out), out
    assert (tmp_path / 'model.mindir').is_file() and len(json.loads((tmp_path / 'p.json').read_text())) == 3


@pytest.mark.slow
def test_an_older_checkpoint_without_a_card_works_from_the_config(model, capsys, tmp_path):
    """Only the weights, as a plain mindspore.save_checkpoint writes them: the config says the rest."""
    old = tmp_path / 'old.ckpt'
    net = create_model(ARCH, num_classes=len(CLASSES))
    ms.load_param_into_net(net, {name: value for name, value in ms.load_checkpoint(str(model['ckpt'])).items()
                                 if not isinstance(value, str)})
    ms.save_checkpoint(net, str(old))
    config = tmp_path / 'old.yaml'
    config.write_text(f'arch: {ARCH}\nnum_classes: 3\nimage_size: {SIZE}\ninterpolation: bicubic\n')
    status, out, err = run_main(capsys, 'eval.py', '--config', config, '--pretrained', old, '--dataset_path',
                                model['val'], '--backend', 'mindspore', *CPU)
    assert status == 0, err
    assert 'the model records no class names' in out
    defaults, _ = reference(model['net'], model['files'], model['labels'], Preprocessing(SIZE, 'bicubic'))
    same_results(out, defaults)  # the config's size and resize, ImageNet's mean, std and crop
    status, _, err = run_main(capsys, 'eval.py', '--pretrained', old, '--dataset_path', model['val'], *CPU)
    assert_one_line_error(status, err, f'checkpoint {old} has 3 classes, the config asks for 1000')  # the defaults


def test_a_damaged_card_entry_is_one_line(model, exported, capsys, tmp_path):
    edited = onnx.load(str(exported['ONNX']))
    onnx.helper.set_model_props(edited, {**CARD.entries(), 'mean': '[0.5, 0.5]'})
    onnx.save(edited, str(tmp_path / 'bad_mean.onnx'))
    status, _, err = run_main(capsys, 'eval_onnx.py', model['val'], '-c', tmp_path / 'bad_mean.onnx')
    assert_one_line_error(status, err, f"error: {tmp_path / 'bad_mean.onnx'}: its mean entry '[0.5, 0.5]' is not a "
                                       f'list of 3 numbers; export it again from its checkpoint')
    checkpoint = ms.load_checkpoint(str(model['ckpt']))
    bad = save_checkpoint([{'name': name, 'data': value} for name, value in checkpoint.items()
                           if not isinstance(value, str)], tmp_path / 'bad_crop.ckpt',
                          {**CARD.entries(), 'crop_pct': '1.5'})
    status, _, err = run_main(capsys, 'infer.py', '--pretrained', bad, '--dataset_path', model['val'] / 'ant',
                              '--pred_output', tmp_path / 'p.json', *CPU)
    assert_one_line_error(status, err, f"error: checkpoint {bad}: its crop_pct entry '1.5' is not a number in (0, 1]")
    assert not (tmp_path / 'p.json').exists()
