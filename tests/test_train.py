"""train.py end to end on a tiny image folder: a run killed mid-epoch resumes at the right epoch,
step and learning rate; bad inputs end in one line that says what to do."""
import re
import signal
import subprocess
import sys
import time

import mindspore as ms
import numpy as np
import pytest

from src.config import parse_config
from src.tools.base.cli import user_entry_point
from src.tools.training.schedulers import lr_schedule
from tests.train_helpers import REPO, command, environment, make_image_folder, train_args

sys.path.insert(0, str(REPO))
import train  # noqa: E402  pylint: disable=wrong-import-position

ARCH = 'RepVGG-A0'
STEPS = 12  # 3 classes x 8 train images / batch 2


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'))


def periodic(folder):
    """{(epoch_num, step_num): path} of rank 0's periodic checkpoints."""
    found = {}
    for path in folder.glob(f'{ARCH}_0-*.ckpt'):
        epoch, step = re.match(rf'{ARCH}_0-(\d+)_(\d+)\.ckpt', path.name).groups()
        found[(int(epoch), int(step))] = path
    return found


def test_a_run_killed_mid_epoch_continues_at_its_epoch_step_and_lr(data, tmp_path):
    runs = tmp_path / 'runs'
    flags = train_args(data, runs, epochs=3, save_every=3)
    log = (tmp_path / 'first.log').open('w')
    first = subprocess.Popen(command(*flags), stdout=log, stderr=subprocess.STDOUT, env=environment(), cwd=tmp_path)
    deadline = time.time() + 240
    try:  # kill it as soon as a mid-epoch checkpoint of epoch 2 exists
        while time.time() < deadline and first.poll() is None:
            folders = list(runs.glob(f'*_{ARCH}_test'))
            if folders and any(epoch == 2 and step < STEPS for epoch, step in periodic(folders[0])):
                break
            time.sleep(0.05)
        assert first.poll() is None, 'the first run ended before it could be killed'
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    folder = folders[0]
    saved = periodic(folder)
    newest = max(saved)
    assert newest[0] == 2 and 0 < newest[1] < STEPS, saved
    for path in saved.values():  # whatever the moment of the kill, every checkpoint loads
        ms.load_checkpoint(str(path))

    second = subprocess.run(command(*flags, '--continues', str(folder)), capture_output=True, text=True,
                            env=environment(), cwd=tmp_path, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    out = second.stdout
    epoch_num, step_num = newest
    global_step = (epoch_num - 1) * STEPS + step_num
    lr = lr_schedule(parse_config(flags), STEPS)
    started = re.search(r'=> starting from checkpoint (\S+): epoch (\d+), step (\d+) \(global step (\d+)\), lr (\S+)',
                        out)
    assert started, out
    assert started.group(1).endswith(saved[newest].name)
    assert (int(started.group(2)), int(started.group(3)), int(started.group(4))) == (2, step_num, global_step)
    assert float(started.group(5)) == pytest.approx(float(lr[global_step]), rel=1e-5)
    # The resumed run validates epochs 2 and 3 only, and trains exactly the missing steps.
    assert re.findall(r'Result metrics epoch (\d+):', out) == ['2', '3'] and 'train success' in out
    final = ms.load_checkpoint(str(folder / f'{ARCH}_0-3_{STEPS}.ckpt'))
    assert int(final['global_step'].asnumpy()[0]) == 3 * STEPS
    rows = (folder / 'metrics.csv').read_text().splitlines()[1:]
    assert [row.split(',')[0] for row in rows] == ['1', '2', '3']
    assert float(rows[2].split(',')[1]) == pytest.approx(float(lr[3 * STEPS - 1]), rel=1e-4)
    assert (folder / 'curves.png').is_file() and len(list(folder.glob(f'{ARCH}_epoch=*_acc=*.ckpt'))) == 1


def run_main(argv, capsys, monkeypatch):
    monkeypatch.setattr(sys, 'argv', ['train.py', *argv])
    with pytest.raises(SystemExit) as stopped:
        user_entry_point(train.main)()
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith('error:')]
    assert len(errors) == 1, err
    return errors[0]


def test_missing_data_folder_is_one_line(tmp_path, capsys, monkeypatch):
    line = run_main(train_args(tmp_path / 'nowhere', tmp_path / 'runs'), capsys, monkeypatch)
    assert 'nowhere/train does not exist' in line and '--data_url' in line


def test_empty_class_folder_is_one_line(data, tmp_path, capsys, monkeypatch):
    broken = make_image_folder(tmp_path / 'broken', classes=2)
    (broken / 'train' / 'class9').mkdir()
    line = run_main(train_args(broken, tmp_path / 'runs'), capsys, monkeypatch)
    assert 'class9 has no images' in line and 'add images or remove the folder' in line


def test_checkpoint_of_another_arch_is_one_line(data, tmp_path, capsys, monkeypatch):
    from src.repvgg import create_model  # pylint: disable=import-outside-toplevel
    foreign = tmp_path / 'a1.ckpt'
    ms.save_checkpoint(create_model('RepVGG-A1', num_classes=3), str(foreign))
    line = run_main(train_args(data, tmp_path / 'runs', pretrained=foreign), capsys, monkeypatch)
    assert 'has tensors of other shapes than the network' in line and line.endswith('check arch')


def test_eval_ema_without_ema_is_one_line(data, tmp_path, capsys, monkeypatch):
    line = run_main(train_args(data, tmp_path / 'runs', eval_ema=1), capsys, monkeypatch)
    assert line == 'error: eval_ema needs the EMA: set with_ema: 1'


def test_ema_run_validates_and_saves_the_ema_weights(data, tmp_path):
    """with_ema + eval_ema, AdamW, label smoothing: the best checkpoint holds the EMA weights.

    (fp32: at 16x16 with batch 2 the last BN normalises 2 values and float16 gradients overflow.)"""
    flags = train_args(data, tmp_path / 'runs', epochs=1, with_ema=1, eval_ema=1, ema_decay=0.5,
                       optimizer='adamw', base_lr=0.001, label_smoothing=0.1)
    done = subprocess.run(command(*flags), capture_output=True, text=True, env=environment(), cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folder = next((tmp_path / 'runs').glob(f'*_{ARCH}_test'))
    best = ms.load_checkpoint(str(next(folder.glob(f'{ARCH}_epoch=1_acc=*.ckpt'))))
    last = ms.load_checkpoint(str(folder / f'{ARCH}_0-1_{STEPS}.ckpt'))
    name = 'stage1.0.rbr_dense.conv.weight'
    np.testing.assert_array_equal(best[name].asnumpy(), last['ema.' + name].asnumpy())
    assert not np.array_equal(last[name].asnumpy(), last['ema.' + name].asnumpy())
    assert any(key.startswith('adam_m.') for key in last)
