"""What bad input and faults get, through the public commands: one line, a non-zero status, and
nothing half-written or wrong left behind (issue 12, items 1-8; the run-folder items are in
tests/test_train_resume.py).

Most cases feed the session's tiny trained run (``qa_run`` in conftest.py: QARepVGG-A0 on cat, dog and
fox), or its data, something wrong. The scripts run in this process (train.py too), in the test's
temporary folder; the few cases that need a process of their own (a GPU asked for, Ctrl+C) start one.
"""
import errno
import json
import os
import shutil
import signal
import subprocess

import mindspore as ms
import numpy as np
import onnx
import pytest
from PIL import Image

from src.tools.base.cli import UserError
from src.tools.checkpoints.format import save_checkpoint
from src.tools.deployment.evaluation import parse_results
from src.tools.image_folders import tinted_folder
from tests.helpers import ROOT, assert_ends_with_error, assert_one_line_error, run_main, run_process
from tests.train_helpers import command, environment

ARCH, SIZE = 'RepVGG-A0', 24  # of the runs the tests start themselves
CLASSES = ['cat', 'dog', 'fox']  # the classes of qa_run


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Run in the test's folder: whatever a script leaves in its working folder is seen there."""
    monkeypatch.chdir(tmp_path)


def corrupt_pixels(path):
    """Damage a PNG inside its compressed data: header and end marker intact, so the cheap
    pre-check passes and only decoding fails."""
    content = bytearray(path.read_bytes())
    content[60:70] = bytes(10)
    path.write_bytes(bytes(content))


def flags(data, runs, **overrides):
    values = dict(config=ROOT / 'src/configs/RepVGG.yaml', arch=ARCH, num_classes=len(CLASSES), image_size=SIZE,
                  batch_size=6, epochs=1, device_target='CPU', data_url=data, train_url=runs, aug_type='none',
                  num_parallel_workers=1, prefetch=2, base_lr=0.001, save_every=2, keep_checkpoint_max=1,
                  keep_best_checkpoints_max=1, brief='bad')
    values.update(overrides)
    return [item for key, value in values.items() for item in (f'--{key}', str(value))]


def train(capsys, tmp_path, data, **overrides):
    """train.py in this process on ``data`` (24 training images: 4 steps an epoch), runs in tmp_path/runs."""
    runs = tmp_path / 'runs'
    status, out, err = run_main(capsys, 'train.py', *flags(data, runs, **overrides))
    return status, out, err, runs


@pytest.fixture(scope='module', name='trained')
def fixture_trained(qa_run, tmp_path_factory):
    """The session's run (read-only), a config for eval/export/infer, and its best checkpoint's
    weights saved as an older checkpoint would be: without class names."""
    root = tmp_path_factory.mktemp('bad_input')
    config = root / 'eval.yaml'
    config.write_text(f'arch: {qa_run["arch"]}\nnum_classes: {len(CLASSES)}\nimage_size: {qa_run["size"]}\n'
                      'batch_size: 4\ndevice_target: CPU\nnum_parallel_workers: 1\n')
    unnamed = root / 'unnamed.ckpt'
    weights = {name: value for name, value in ms.load_checkpoint(str(qa_run['best'])).items()
               if name.startswith(('stage', 'linear'))}
    ms.save_checkpoint([{'name': name, 'data': value} for name, value in weights.items()], str(unnamed))
    return dict(qa_run, config=config, unnamed=unnamed)


def common(trained):
    return ['--config', trained['config'], '--pretrained', trained['best']]


# ----------------------------------------------------------------------------- 1. class names
def test_the_training_classes_are_in_every_checkpoint_and_the_run_folder(trained):
    folder = trained['folder']
    assert json.loads((folder / 'class_names.json').read_text()) == CLASSES
    paths = list(folder.glob('*.ckpt'))
    assert any('_epoch=' in path.name for path in paths) and any('_0-' in path.name for path in paths)
    for path in paths:  # periodic and best: each says what the model is and how its images are preprocessed
        card = {key: value for key, value in ms.load_checkpoint(str(path)).items()
                if isinstance(value, str) and key != 'epoch_metrics'}
        assert card == {'arch': 'QARepVGG-A0', 'num_classes': '3', 'form': 'train', 'quantization_friendly': 'true',
                        'class_names': json.dumps(CLASSES), 'image_size': '24', 'interpolation': 'bilinear',
                        'mean': '[0.485, 0.456, 0.406]', 'std': '[0.229, 0.224, 0.225]', 'crop_pct': '0.875'}, path


@pytest.mark.slow
def test_eval_of_a_training_checkpoint_needs_no_config(trained, capsys):
    results = []
    for config in (['--config', trained['config']], []):
        status, out, err = run_main(capsys, 'eval.py', *config, '--pretrained', trained['best'], '--dataset_path',
                                    trained['data'] / 'val', '--device_target', 'CPU', '--backend', 'mindspore')
        assert status == 0, err
        results.append(parse_results(out))
    assert results[0]['Top1-Acc'] == results[1]['Top1-Acc'] and results[0]['Top5-Acc'] == results[1]['Top5-Acc']
    assert results[0]['Loss'] == pytest.approx(results[1]['Loss'], rel=1e-6)  # batches of 4 (the config) and of 32


@pytest.mark.parametrize('val_classes, train_classes, fragments', [
    (['cat', 'dog', 'wolf'], CLASSES, ("class folders the model was not trained on: 'wolf'",)),
    (['cat', 'dog', 'fox', 'owl'], CLASSES, ("not trained on: 'owl'",)),
    (CLASSES, ['cat', 'dog'], ('train has 2 class folders but num_classes is 3', 'set num_classes: 2')),
])
def test_class_folders_that_do_not_match_stop_training_before_anything_is_written(
        tmp_path, capsys, val_classes, train_classes, fragments):
    tinted_folder(tmp_path / 'data' / 'train', [2] * len(train_classes), SIZE, names=train_classes)
    tinted_folder(tmp_path / 'data' / 'val', [1] * len(val_classes), SIZE, names=val_classes)
    status, _, err, runs = train(capsys, tmp_path, tmp_path / 'data')
    assert_one_line_error(status, err, *fragments)
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.slow
def test_eval_matches_class_folders_by_name(trained, tmp_path, capsys):
    full = trained['data'] / 'val'
    status, out, err = run_main(capsys, 'eval.py', *common(trained), '--dataset_path', full,
                                '--report_dir', tmp_path / 'full')
    assert status == 0, err
    table = (tmp_path / 'full' / 'per_class_top1.csv').read_text().splitlines()
    rows = {line.split(',')[1]: line for line in table[1:]}
    assert sorted(rows) == CLASSES and (tmp_path / 'full' / 'confusion_matrix.png').stat().st_size > 1000
    # A folder with two of the three classes: a note, and labels by name (the same per-class rows).
    subset = tmp_path / 'subset'
    for name in ('dog', 'fox'):
        shutil.copytree(full / name, subset / name)
    status, out, err = run_main(capsys, 'eval.py', *common(trained), '--dataset_path', subset,
                                '--report_dir', tmp_path / 'subset_report')
    assert status == 0, err
    assert "has 2 of the model's 3 classes (missing: 'cat'); labels are matched by class name" in out
    subset_rows = (tmp_path / 'subset_report' / 'per_class_top1.csv').read_text().splitlines()[1:]
    assert subset_rows == [rows['dog'], rows['fox']]
    # A renamed class: one line naming it.
    renamed = tmp_path / 'renamed'
    shutil.copytree(full, renamed)
    (renamed / 'fox').rename(renamed / 'vixen')
    status, _, err = run_main(capsys, 'eval.py', *common(trained), '--dataset_path', renamed)
    assert_one_line_error(status, err, "not trained on: 'vixen'")


@pytest.mark.slow
def test_class_names_travel_into_exports_and_predictions(trained, tmp_path, capsys):
    root = tmp_path
    for fmt in ('ONNX', 'MINDIR'):
        status, out, err = run_main(capsys, 'export.py', *common(trained), '--file_format', fmt,
                                    '--export_path', root / 'model')
        assert status == 0 and '3 class names' in out, err
    onnx_model = onnx.load(str(root / 'model.onnx'))
    assert json.loads({p.key: p.value for p in onnx_model.metadata_props}['class_names']) == CLASSES
    images = trained['data'] / 'val' / 'dog'
    outputs = {}
    for name, model in (('ckpt', trained['best']), ('mindir', root / 'model.mindir'), ('onnx', root / 'model.onnx')):
        status, out, err = run_main(capsys, 'infer.py', '--config', trained['config'], '--pretrained', model,
                                    '--dataset_path', images, '--pred_output', root / f'{name}.json')
        assert status == 0, err
        outputs[name] = json.loads((root / f'{name}.json').read_text())
        assert set(outputs[name].values()) <= set(CLASSES), outputs[name]
        assert f'(class: {outputs[name][str(images / "000.png")]})' in out
    assert outputs['ckpt'] == outputs['mindir'] == outputs['onnx']
    status, out, err = run_main(capsys, 'infer_onnx.py', images, '-c', root / 'model.onnx', '-o', root / 'i.json',
                                '--with_index')
    assert status == 0, err
    indexed = json.loads((root / 'i.json').read_text())
    assert all(value == {'class': CLASSES[value['index']], 'index': value['index']} for value in indexed.values())
    assert {path: value['class'] for path, value in indexed.items()} == outputs['onnx']


@pytest.mark.slow
def test_a_model_without_class_names_keeps_working_with_indices_and_says_so(trained, tmp_path, capsys):
    status, out, err = run_main(capsys, 'infer.py', '--config', trained['config'], '--pretrained', trained['unnamed'],
                                '--dataset_path', trained['data'] / 'val' / 'cat', '--pred_output', tmp_path / 'p.json')
    assert status == 0, err
    assert out.count('the model records no class names') == 1
    assert all(isinstance(value, int) for value in json.loads((tmp_path / 'p.json').read_text()).values())
    status, out, err = run_main(capsys, 'eval.py', '--config', trained['config'], '--pretrained', trained['unnamed'],
                                '--dataset_path', trained['data'] / 'val')
    assert status == 0 and out.count('the model records no class names') == 1, err


def test_convert_carries_the_class_names(trained, tmp_path, capsys):
    output = tmp_path / 'deploy.ckpt'
    status, out, err = run_main(capsys, 'convert.py', '--input', trained['best'], '--output', output, '--deploy')
    assert status == 0, err
    assert 'carried its 3 class names' in out
    assert json.loads(ms.load_checkpoint(str(output))['class_names']) == CLASSES


# ----------------------------------------------------------------------------- 2. nothing scored, nothing trained
@pytest.mark.parametrize('flag, value, fragment', [
    ('image_size', 0, 'argument --image_size: must be at least 1, got 0'),
    ('base_lr', -0.1, 'argument --base_lr: must be above 0, got -0.1'),
    ('epochs', -1, 'argument --epochs: must be at least 1, got -1'),
    ('batch_size', 0, 'argument --batch_size: must be at least 1, got 0'),
])
def test_ranges_are_checked_before_any_work(trained, tmp_path, capsys, flag, value, fragment):
    status, out, err, runs = train(capsys, tmp_path, trained['data'], **{flag: value})
    assert_one_line_error(status, err, fragment)
    assert not out and not runs.exists()  # refused while reading the options: no line of a started run


@pytest.mark.slow
def test_a_validation_set_that_cannot_be_scored_stops_the_run_without_a_best_checkpoint(trained, tmp_path, capsys):
    data = tmp_path / 'data'
    shutil.copytree(trained['data'], data)
    for path in (data / 'val').glob('*/*.png'):
        corrupt_pixels(path)
    status, _, err, runs = train(capsys, tmp_path, data)
    assert_ends_with_error(status, err, 'no image of the validation set could be scored')
    assert not list(runs.glob(f'*/{ARCH}_epoch=*.ckpt'))


@pytest.mark.slow
def test_every_step_overflowing_is_an_error_not_a_loss_of_zero(trained, tmp_path, capsys):
    status, out, err, runs = train(capsys, tmp_path, trained['data'], amp_level='O2', is_dynamic_loss_scale=0,
                                   loss_scale=1e30)
    assert_one_line_error(status, err, 'epoch 1: none of its 4 steps updated the weights', 'amp_level O0')
    assert 'Over Flow' in out and 'Result metrics' not in out
    assert not list(runs.glob(f'*/{ARCH}_epoch=*.ckpt'))


@pytest.mark.slow
def test_eval_says_how_many_images_it_scored(trained, tmp_path, capsys):
    val = tmp_path / 'val'
    shutil.copytree(trained['data'] / 'val', val)
    for name in CLASSES:
        corrupt_pixels(val / name / '000.png')
    status, out, err = run_main(capsys, 'eval.py', *common(trained), '--dataset_path', val)
    assert status == 0, err
    assert f'=> scored 3 of 6 images of {val}; 3 could not be decoded' in out


# ----------------------------------------------------------------------------- 3. outputs
def test_outputs_that_cannot_be_written_are_refused_before_any_work(trained, tmp_path, capsys):
    blocker = tmp_path / 'a_file'
    blocker.write_text('x')
    status, _, err, _ = train(capsys, tmp_path, trained['data'], train_url=blocker / 'runs')
    assert_one_line_error(status, err, f'train_url {blocker / "runs"} cannot be written', 'is not a folder')
    for script, argv in (
            ('export.py', [*common(trained), '--file_format', 'ONNX', '--export_path', blocker / 'm']),
            ('infer.py', [*common(trained), '--dataset_path', trained['data'] / 'val' / 'cat',
                          '--pred_output', blocker / 'p.json']),
            ('vis_img_preprocessing.py', ['--config', trained['config'], '--data_url', trained['data'],
                                          '--output', blocker / 'v.png'])):
        status, _, err = run_main(capsys, script, *argv)
        assert_one_line_error(status, err, 'cannot be written', 'is not a folder')
    status, _, err = run_main(capsys, 'convert.py', '--input', trained['best'], '--output', blocker / 'c.ckpt')
    assert_one_line_error(status, err, 'cannot be written')
    status, _, err = run_main(capsys, 'eval.py', *common(trained), '--dataset_path', trained['data'] / 'val',
                              '--image_check_cache', blocker / 'cache')
    assert_one_line_error(status, err, f'image_check_cache {blocker / "cache"} cannot be written', 'image_check: full')
    assert blocker.read_text() == 'x'


def enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.slow
def test_a_full_disk_during_export_is_one_line_and_leaves_nothing(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(onnx, 'save', enospc)
    status, _, err = run_main(capsys, 'export.py', *common(trained), '--file_format', 'ONNX',
                              '--export_path', tmp_path / 'model')
    assert_one_line_error(status, err, f'could not write {tmp_path / "model.onnx"}: no space left on the device')
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def half_then_full(_entries, name, **_):
        with open(os.path.splitext(name)[0] + '.tmp', 'wb') as handle:  # MindSpore's own temporary
            handle.write(b'\0' * 100)
        enospc()

    monkeypatch.setattr(ms, 'save_checkpoint', half_then_full)
    with pytest.raises(UserError, match=r'could not write .*a\.ckpt: no space left on the device'):
        save_checkpoint({'w': np.ones(2, np.float32)}, tmp_path / 'a.ckpt')
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_leftovers_of_a_killed_export_or_conversion_are_removed_by_the_next_run(trained, tmp_path, capsys):
    dead = 2 ** 22 + 12345  # above the default pid_max: no process has it
    stale = [tmp_path / f'.model.onnx.{dead}.partial-k3j2', tmp_path / f'.out.ckpt.{dead}.partial.ckpt']
    stale[0].mkdir()
    (stale[0] / 'model.onnx').write_bytes(b'\0' * 64)
    stale[1].write_bytes(b'\0' * 64)
    live = tmp_path / f'.model.onnx.{os.getpid()}.partial-live'  # a writer that is still running
    live.mkdir()
    status, _, err = run_main(capsys, 'export.py', *common(trained), '--file_format', 'ONNX',
                              '--export_path', tmp_path / 'model')
    assert status == 0, err
    status, _, err = run_main(capsys, 'convert.py', '--input', trained['best'], '--output', tmp_path / 'out.ckpt')
    assert status == 0, err
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(['model.onnx', 'out.ckpt', live.name])


# ----------------------------------------------------------------------------- 4. GPU without a GPU
@pytest.mark.skipif(ms.hal.is_available('GPU'), reason='this machine has a GPU for MindSpore')
@pytest.mark.slow
def test_a_gpu_target_without_a_gpu_is_one_line(trained, tmp_path):
    expected = ('run with --device_target CPU', 'optional DEVICE_TARGET argument')
    status, _, err = run_process('eval.py', '--config', trained['config'], '--pretrained', trained['best'],
                                 '--dataset_path', trained['data'] / 'val', '--device_target', 'GPU')
    assert_one_line_error(status, err, *expected)
    done = subprocess.run(command(*flags(trained['data'], tmp_path / 'runs', device_target='GPU')), cwd=tmp_path,
                          env=environment(), capture_output=True, text=True, timeout=300, check=False)
    status, err = done.returncode, done.stderr
    assert_one_line_error(status, err, *expected)
    done = subprocess.run(['bash', str(ROOT / 'scripts/run_eval_gpu.sh'), trained['config'], trained['data'] / 'val',
                           trained['best']], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    lines = done.stdout.strip().splitlines()  # the script shows stderr and stdout, and logs them
    assert done.returncode != 0 and len(lines) == 1 and lines[0].startswith('error: '), done.stdout
    assert 'run with --device_target CPU' in lines[0]


# ----------------------------------------------------------------------------- 6. demo data
def test_demo_data_is_built_only_where_nothing_is_and_says_so(tmp_path, capsys):
    demo = ['--config', ROOT / 'src/configs/RepVGG-A0_digits.yaml', '--train_url', tmp_path / 'runs']
    mine = tmp_path / 'my_data'
    tinted_folder(mine / 'train', [1] * len(CLASSES), SIZE, names=CLASSES)
    status, _, err = run_main(capsys, 'train.py', *demo, '--data_url', mine)
    assert_one_line_error(status, err, f'{mine} exists and is not a complete demo data set')
    assert sorted(path.name for path in mine.iterdir()) == ['train']
    typo = tmp_path / 'my_dta'
    status, out, err = run_main(capsys, 'train.py', *demo, '--data_url', typo, '--num_classes', 3)
    assert f'the scikit-learn digits demo set was built in {typo}, which did not exist yet' in out
    assert_one_line_error(status, err, 'has 10 class folders but num_classes is 3')


# ----------------------------------------------------------------------------- 7. smaller items
def test_a_malformed_safetensors_file_is_one_line(tmp_path, capsys):
    path = tmp_path / 'model.safetensors'
    header = json.dumps({'stem.conv_kxk.conv.weight': {'dtype': 'F32', 'data_offsets': [0, 8]}}).encode()
    path.write_bytes(len(header).to_bytes(8, 'little') + header + bytes(8))
    status, _, err = run_main(capsys, 'convert.py', '--input', path, '--output', tmp_path / 'out.ckpt')
    assert_one_line_error(status, err, 'is not a valid safetensors file', 'missing field `shape`')
    assert not (tmp_path / 'out.ckpt').exists()


@pytest.mark.slow
def test_an_empty_checkpoint_and_a_gif_named_png_are_one_line(trained, tmp_path, capsys):
    empty = tmp_path / 'empty.ckpt'
    empty.write_bytes(b'')
    status, _, err = run_main(capsys, 'eval.py', '--config', trained['config'], '--pretrained', empty,
                              '--dataset_path', trained['data'] / 'val')
    assert_one_line_error(status, err, f'checkpoint {empty} is empty (0 bytes)')
    images = tmp_path / 'images'
    shutil.copytree(trained['data'] / 'val' / 'cat', images)
    Image.open(images / '000.png').save(images / 'moving.png', format='GIF')
    status, _, err = run_main(capsys, 'infer.py', *common(trained), '--dataset_path', images,
                              '--pred_output', tmp_path / 'p.json')
    assert_one_line_error(status, err, 'moving.png (GIF data, which the decoder cannot read')
    assert not (tmp_path / 'p.json').exists()


@pytest.mark.slow
def test_ctrl_c_early_in_a_run_stops_it(trained, tmp_path):
    process = subprocess.Popen(command(*flags(trained['data'], tmp_path / 'runs', epochs=3)), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=environment(), cwd=tmp_path)
    try:
        for line in process.stdout:  # the start-up is done: data checks and model building follow
            if line.startswith('=> rank 0 of 1'):
                break
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == 'error: interrupted (Ctrl+C); no file was left half-written'


# ----------------------------------------------------------------------------- 8. set-up, logs, permissions
def test_the_test_requirements_install_the_cpu_build_of_torch():
    lines = [line.split('#')[0].strip() for line in (ROOT / 'requirements-test.txt').read_text().splitlines()]
    assert '--extra-index-url https://download.pytorch.org/whl/cpu' in lines
    assert any(line.startswith('torch==') and line.endswith('+cpu') for line in lines)


def test_checkpoints_are_readable_as_other_files_are(tmp_path):
    umask = os.umask(0o022)
    try:
        path = save_checkpoint({'w': np.ones(2, np.float32)}, tmp_path / 'a.ckpt')
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.skipif(shutil.which('git') is None or not (ROOT / '.git').exists(), reason='not a git checkout')
def test_what_the_scripts_write_is_not_left_for_git_to_track():
    for name in ('eval_gpu.log', 'infer_onnx.log', 'dist_train.log', 'log_output/1/rank.0/stdout',
                 'msrun_log/worker_0.log'):
        assert subprocess.run(['git', 'check-ignore', '-q', name], cwd=ROOT, check=False).returncode == 0, name
