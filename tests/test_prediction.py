"""src/tools/deployment/prediction.py and src/dataset.eval_batches: infer.py reads the images in
threads, ahead of the model, in batches, and still predicts exactly what the one-image-at-a-time
eval transform (``Preprocessing.image``) gives, whatever the image's size, mode or format."""
import json

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor
from PIL import Image

from src.dataset import Preprocessing, eval_batches
from src.repvgg import create_model, switch_net_to_deploy
from src.tools.checkpoints.model_card import ModelCard
from src.tools.deployment.export import export_network
from src.tools.deployment.model_files import load_onnx
from src.tools.image_folders import textured, write_odd_files
from tests.helpers import assert_one_line_error, randomize_bn, run_main, run_process, slow_except

ARCH, NUM_CLASSES, SIZE, BATCH = 'RepVGG-A0', 10, 32, 4
CLASSES = [f'kind_{index}' for index in range(NUM_CLASSES)]


def write_odd_folder(folder):
    """Photo-like images of odd sizes (upscaled, 5x reduced, portrait, landscape, square) in every
    mode and format the readers meet (src/tools/image_folders.ODD_FILES): 13 files, three full
    batches of 4 and a short one."""
    rng = np.random.default_rng(5)
    sizes = [(17, 23), (120, 90), (40, 48), (64, 64), (90, 33), (33, 90), (50, 38)]
    paths = write_odd_files(folder, [textured(rng, *size) for size in sizes])
    assert len(paths) == 13 and Image.open(folder / 'grey16.png').mode == 'I;16'
    return paths


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    """RepVGG-A0 (10 classes, 32x32, random BN) whose logits are centred on the odd folder, so
    that its predictions differ from image to image; as an ONNX file (deploy form), with a config."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device('CPU')  # before the first kernel runs (the autouse fixture comes after module fixtures)
    root = tmp_path_factory.mktemp('prediction')
    paths = write_odd_folder(root / 'odd')
    net = randomize_bn(create_model(ARCH, num_classes=NUM_CLASSES), seed=3)
    net.set_train(False)
    logits = net(Tensor(np.stack([Preprocessing(SIZE).image(path) for path in paths]))).asnumpy()
    net.linear.bias.set_data(Tensor(net.linear.bias.asnumpy() - logits.mean(axis=0)))
    onnx, _, _ = export_network(switch_net_to_deploy(net), SIZE, 'ONNX', root / 'a0',
                                ModelCard(class_names=CLASSES))
    config = root / 'a0.yaml'
    config.write_text(f'arch: {ARCH}\nnum_classes: {NUM_CLASSES}\nimage_size: {SIZE}\nbatch_size: {BATCH}\n'
                      f'device_target: CPU\n')
    return {'root': root, 'folder': root / 'odd', 'paths': paths, 'onnx': onnx, 'config': config}


def test_threaded_batches_equal_the_per_image_transform(model):
    paths = model['paths']
    for workers in (1, 3):
        batches = list(eval_batches(paths, Preprocessing(SIZE), BATCH, workers=workers))
        assert [len(chunk) for chunk, _ in batches] == [4, 4, 4, 1]
        assert [path for chunk, _ in batches for path in chunk] == paths  # in order
        images = np.concatenate([images for _, images in batches])
        assert images.dtype == np.float32 and images.shape == (len(paths), 3, SIZE, SIZE)
        assert np.array_equal(images, np.stack([Preprocessing(SIZE).image(path) for path in paths]))


@pytest.mark.parametrize('backend', slow_except(['onnxruntime', 'openvino'], 'onnxruntime'))
def test_infer_json_equals_one_image_at_a_time(model, capsys, backend):
    """infer.py (batches of 4 read by threads) writes what the model gives for each image alone,
    preprocessed by Preprocessing.image."""
    predictor = load_onnx(model['onnx'], batch_size=1)
    expected = {str(path): CLASSES[int(predictor(Preprocessing(SIZE).image(path)[None]).argmax())]
                for path in model['paths']}
    assert len(set(expected.values())) >= 3  # the model tells the images apart
    output = model['root'] / f'predictions-{backend}.json'
    status, out, err = run_main(capsys, 'infer.py', '--config', model['config'], '--pretrained', model['onnx'],
                                '--dataset_path', model['folder'], '--pred_output', output, '--backend', backend,
                                *(['--precision', 'fp32'] if backend == 'openvino' else []))
    assert status == 0, err
    assert json.loads(output.read_text()) == expected
    assert [line for line in out.splitlines() if '(class: ' in line] == [
        f'{path} (class: {label})' for path, label in expected.items()]


def test_an_image_that_fails_while_predicting_stops_the_run_and_writes_nothing(model, capsys, monkeypatch):
    """A file that passed the check but cannot be decoded (here: replaced between the check and its
    turn) ends the run with one line naming it; no JSON, no partial file."""
    folder = model['root'] / 'changing'
    folder.mkdir()
    for path in model['paths'][:6]:
        (folder / path.name).write_bytes(path.read_bytes())
    victim = folder / model['paths'][5].name
    from src.tools.deployment import prediction
    checked = prediction.check_images

    def check_then_break(paths, **kwargs):
        result = checked(paths, **kwargs)
        victim.write_bytes(victim.read_bytes()[:40])  # truncated after the check
        return result
    monkeypatch.setattr(prediction, 'check_images', check_then_break)
    output = model['root'] / 'changing.json'
    status, _, err = run_main(capsys, 'infer.py', '--config', model['config'], '--pretrained', model['onnx'],
                              '--dataset_path', folder, '--pred_output', output, '--backend', 'onnxruntime')
    assert_one_line_error(status, err, f'cannot read image {victim}')
    assert sorted(path.name for path in model['root'].iterdir() if 'changing' in path.name) == ['changing']


def val_folder(model, name):
    """``name``/<class>/: the first 6 images of the odd folder in two of the model's classes."""
    folder = model['root'] / name
    for label, path in enumerate(model['paths'][:6]):
        target = folder / CLASSES[label % 2] / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    return folder


def test_eval_skips_an_image_that_fails_to_decode_and_names_it(model, capsys):
    """eval.py reads with the same threads; a file that passes the cheap check but whose compressed
    data is damaged is skipped with a warning naming it, and the count says so."""
    folder = val_folder(model, 'damaged')
    damaged = folder / CLASSES[0] / 'grey.png'
    content = bytearray(damaged.read_bytes())
    content[60:70] = bytes(10)  # inside the compressed pixels: header and end marker intact
    damaged.write_bytes(bytes(content))
    status, out, err = run_main(capsys, 'eval.py', '--config', model['config'], '--pretrained', model['onnx'],
                                '--dataset_path', folder, '--backend', 'onnxruntime')
    assert status == 0, err
    warnings = [line for line in err.splitlines() if line.startswith('warning: ')]
    assert len(warnings) == 1 and f'cannot read image {damaged}' in warnings[0] and warnings[0].endswith('skipped')
    assert f'=> scored 5 of 6 images of {folder}; 1 could not be decoded' in out
    assert "'Top1-Acc'" in out and '=> eval success' in out


@pytest.mark.parametrize('script', slow_except(['infer.py', 'infer_onnx.py', 'eval_onnx.py'], 'infer.py'))
def test_an_onnx_model_runs_without_loading_mindspore(model, script):
    """Start-up: a script running an ONNX file in OpenVINO never imports MindSpore (it alone takes
    seconds to import); the run as a process, then a look at what it imported."""
    output = model['root'] / f'no-mindspore-{script}.json'
    argv = {'infer.py': ['--config', model['config'], '--pretrained', model['onnx'], '--dataset_path',
                         model['folder'], '--pred_output', output],
            'infer_onnx.py': [model['folder'], '-c', model['onnx'], '--output', output],
            'eval_onnx.py': [val_folder(model, 'val'), '-c', model['onnx']]}[script]
    code = ('import runpy, sys\n'
            f'sys.argv = {[script, *map(str, argv)]!r}\n'
            'try:\n'
            f'    runpy.run_path({script!r}, run_name="__main__")\n'
            'finally:\n'
            '    print("mindspore loaded:", "mindspore" in sys.modules)\n')
    status, out, err = run_process('-c', code)
    assert status == 0, err
    assert out.strip().endswith('mindspore loaded: False'), out
    assert 'OpenVINO' in out
