"""train.py end to end on a tiny image folder: a run killed mid-epoch resumes at the right epoch,
step and learning rate; bad inputs end in one line that says what to do."""
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from src.config import parse_config
from src.ema.train_one_step_with_ema import TrainOneStepWithEMA
from src.repvgg import create_model
from src.tools.checkpoints.format import save_checkpoint, train_state
from src.tools.checkpoints.model_card import ModelCard
from src.tools.training.amp import loss_scale_cell
from src.tools.training.criterion import CrossEntropy, NetWithLoss
from src.tools.training.optimizer import get_optimizer
from src.tools.training.run_folder import save_config
from src.tools.training.schedulers import lr_schedule
from tests.helpers import assert_ends_with_error, assert_one_line_error, run_main
from tests.train_helpers import command, environment, make_image_folder, periodic, samples_by_step, train_args

ARCH = 'RepVGG-A0'
STEPS = 12  # 3 classes x 8 train images / batch 2


@pytest.fixture(autouse=True)
def in_test_folder(tmp_path, monkeypatch):
    """train.py runs in this process with the test's folder as its working folder: whatever
    MindSpore leaves there stays out of the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'))


@pytest.mark.slow
def test_a_run_killed_mid_epoch_continues_at_its_epoch_step_and_lr(data, tmp_path, capsys):
    runs = tmp_path / 'runs'
    flags = train_args(data, runs, epochs=3, save_every=3, log_samples=1)
    log = (tmp_path / 'first.log').open('w')
    first = subprocess.Popen(command(*flags), stdout=log, stderr=subprocess.STDOUT, env=environment(), cwd=tmp_path)
    deadline = time.time() + 240
    try:  # kill it as soon as a mid-epoch checkpoint of epoch 2 exists
        while time.time() < deadline and first.poll() is None:
            folders = list(runs.glob(f'*_{ARCH}_test'))
            if folders and any(epoch == 2 and step < STEPS for epoch, step in periodic(folders[0], ARCH)):
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
    saved = periodic(folder, ARCH)
    newest = max(saved)
    assert newest[0] == 2 and 0 < newest[1] < STEPS, saved
    for path in saved.values():  # whatever the moment of the kill, every checkpoint loads
        ms.load_checkpoint(str(path))

    status, out, err = train_here(capsys, [*flags, '--continues', folder])
    assert status == 0, out[-3000:] + err[-3000:]
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
    # Every epoch saw each of the 24 training images once, the interrupted one too: its steps up to
    # the checkpoint from the first run, the rest from the second (a step logged twice: the last).
    by_step = samples_by_step(folder / 'samples_rank0.txt')
    for epoch in (1, 2, 3):
        images = [fingerprint for step in range(1, STEPS + 1) for fingerprint in by_step[(epoch, step)][-2:]]
        assert len(images) == len(set(images)) == 24, epoch
    resumed = [line for line in out.splitlines() if line.startswith('epoch: 2 step:')]
    assert resumed and int(resumed[0].split()[3].rstrip(',')) > step_num  # the done steps were not re-run


def train_here(capsys, argv):
    """(status, stdout, stderr) of train.py run in this process."""
    return run_main(capsys, 'train.py', *argv)


def refusal(argv, capsys):
    """The error line that train.py, run in this process, ends with (status 2)."""
    status, _, err = train_here(capsys, argv)
    assert_ends_with_error(status, err)
    return err.strip().splitlines()[-1]


def test_unset_data_url_is_one_line_before_anything_is_written(tmp_path, capsys):
    flags = train_args(tmp_path, tmp_path / 'runs')
    at = flags.index('--data_url')
    del flags[at:at + 2]  # the config's data_url: '' (not set)
    status, _, err = train_here(capsys, flags)
    assert_one_line_error(status, err, 'set data_url (a folder with train/ and val/ class folders), e.g. --data_url ')
    assert list(tmp_path.iterdir()) == []


def test_missing_data_folder_is_one_line(tmp_path, capsys):
    line = refusal(train_args(tmp_path / 'nowhere', tmp_path / 'runs'), capsys)
    assert 'nowhere/train does not exist' in line and '--data_url' in line


def test_empty_class_folder_is_one_line(tmp_path, capsys):
    broken = make_image_folder(tmp_path / 'broken', classes=2)
    (broken / 'train' / 'class9').mkdir()
    line = refusal(train_args(broken, tmp_path / 'runs'), capsys)
    assert 'class9 has no images' in line and 'add images or remove the folder' in line


def test_checkpoint_of_another_arch_is_one_line(data, tmp_path, capsys):
    foreign = tmp_path / 'a1.ckpt'
    ms.save_checkpoint(create_model('RepVGG-A1', num_classes=3), str(foreign))
    line = refusal(train_args(data, tmp_path / 'runs', pretrained=foreign), capsys)
    assert 'has tensors of other shapes than the network' in line and line.endswith('check arch')


def test_eval_ema_without_ema_is_one_line(data, tmp_path, capsys):
    line = refusal(train_args(data, tmp_path / 'runs', eval_ema=1), capsys)
    assert line == 'error: eval_ema needs the EMA: set with_ema: 1'


@pytest.mark.slow
def test_ema_run_validates_and_saves_the_ema_weights(data, tmp_path, capsys):
    """with_ema + eval_ema, AdamW, label smoothing: the best checkpoint holds the EMA weights.

    (fp32: at 16x16 with batch 2 the last BN normalises 2 values and float16 gradients overflow.)"""
    flags = train_args(data, tmp_path / 'runs', epochs=1, with_ema=1, eval_ema=1, ema_decay=0.5,
                       optimizer='adamw', base_lr=0.001, label_smoothing=0.1)
    status, out, err = train_here(capsys, flags)
    assert status == 0, out[-3000:] + err[-3000:]
    folder = next((tmp_path / 'runs').glob(f'*_{ARCH}_test'))
    best = ms.load_checkpoint(str(next(folder.glob(f'{ARCH}_epoch=1_acc=*.ckpt'))))
    last = ms.load_checkpoint(str(folder / f'{ARCH}_0-1_{STEPS}.ckpt'))
    name = 'stage1.0.rbr_dense.conv.weight'
    np.testing.assert_array_equal(best[name].asnumpy(), last['ema.' + name].asnumpy())
    assert not np.array_equal(last[name].asnumpy(), last['ema.' + name].asnumpy())
    assert any(key.startswith('adam_m.') for key in last)


# ----------------------------------------------------------------------------- nothing written into the data
def tree(folder):
    """{path: (size, mtime_ns, mode)} of everything under ``folder``, the folder itself included."""
    return {str(path): (path.lstat().st_size, path.lstat().st_mtime_ns, path.lstat().st_mode)
            for path in [Path(folder), *Path(folder).rglob('*')]}


@pytest.mark.slow
def test_training_writes_nothing_into_the_data_and_keeps_its_check_in_the_user_cache(tmp_path, capsys, monkeypatch):
    """Two starts on one data folder: the image-check manifest goes to $XDG_CACHE_HOME keyed by
    the data path, the second start reuses it; each start prints one short line per split and keeps
    the details in its run folder's startup.log; the data folder and the working folder stay as
    they were."""
    data = make_image_folder(tmp_path / 'data', size=24)
    before = tree(data)
    cache = tmp_path / 'cache'
    flags = train_args(data, tmp_path / 'runs', epochs=1, image_size=24)
    monkeypatch.setenv('XDG_CACHE_HOME', str(cache))
    for checked in ('24 images checked', '24 unchanged since checked'):
        status, out, err = train_here(capsys, flags)
        assert status == 0, out[-3000:] + err[-3000:]
        lines = [line for line in out.splitlines() if ' data ' in line and line.startswith('=> ')]
        assert len(lines) == 2 and all(len(line) - len(str(data)) < 90 for line in lines), lines
        assert re.fullmatch(rf'=> train data {re.escape(str(data))}/train: 24 images, 3 classes; start-up \d+\.\d s '
                            rf'\({checked}\)', lines[0]), lines
        assert re.fullmatch(rf'=> eval data {re.escape(str(data))}/val: 6 images, 3 classes; start-up \d+\.\d s '
                            rf'\({checked.replace("24", "6")}\)', lines[1]), lines
        folder = re.search(r'=> run folder (\S+):', out).group(1)
        details = (Path(folder) / 'startup.log').read_text().splitlines()
        unchanged, fresh = (0, 24) if 'images checked' in checked else (24, 0)
        assert len(details) == 2 and re.match(r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d train data ', details[0]), details
        assert (f'train data {data.resolve()}/train: 24 images, 3 classes, rank 0 of 1, batch 2, aug_type none, 24x24, '
                f'bilinear; start-up: class scan ') in details[0]
        assert (f'(cached: 24 files on this rank, {unchanged} unchanged since checked, {fresh} checked; manifest '
                f'{cache}/repvgg/image_check/train-') in details[0]
        assert f'eval data {data.resolve()}/val: 6 images' in details[1]
    manifests = sorted(cache.glob('repvgg/image_check/*/rank0of1.tsv'))
    assert [path.parent.name.split('-')[0] for path in manifests] == ['train', 'val']
    assert len(manifests[0].read_text().splitlines()) == 1 + 24  # the header, then every training image
    assert tree(data) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ['cache', 'data', 'runs']  # no image dumped here


READ_ONLY = ('mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && ! touch "$0/probe" 2>/dev/null '
             '&& exec "$@"')


@pytest.mark.slow
def test_training_on_a_read_only_mount_of_the_data(tmp_path):
    """As root, chmod does not stop a write: the data is a read-only bind mount in a mount namespace
    of the run's own (gone with it); skipped where such a mount is not permitted."""
    data = make_image_folder(tmp_path / 'data', size=24)
    read_only = ['unshare', '--mount', 'sh', '-c', READ_ONLY, str(data)]
    probe = subprocess.run([*read_only, 'true'], capture_output=True, check=False) if shutil.which('unshare') else None
    if probe is None or probe.returncode != 0:
        pytest.skip('a read-only bind mount is not permitted here')
    before = tree(data)
    done = subprocess.run([*read_only, *command(*train_args(data, tmp_path / 'runs', epochs=1, image_size=24))],
                          capture_output=True, text=True, env=environment(), cwd=tmp_path, timeout=300, check=False)
    assert done.returncode == 0 and 'train success' in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    assert tree(data) == before


# ----------------------------------------------------------------------------- continues: schedule, damaged files
def interrupted_run(data, runs, positions, **settings):
    """A run folder as train.py leaves it after a kill: its config copy and rank 0's periodic
    checkpoints of a RepVGG-A0 (3 classes) at ``positions``."""
    folder = runs / f'20250101-000000_{ARCH}_test'
    args = parse_config(train_args(data, runs, **settings))
    save_config(folder, args)
    net = create_model(ARCH, num_classes=3)
    cell = TrainOneStepWithEMA(NetWithLoss(net, CrossEntropy()), get_optimizer(args, net, lr_schedule(args, STEPS)),
                               loss_scale_cell('O0', 1.0, True), None)
    for epoch, step in positions:
        entries, append = train_state(cell, epoch, step, STEPS, ModelCard(ARCH, 3))
        save_checkpoint(entries, folder / f'{ARCH}_0-{epoch}_{step}.ckpt', append)
    return folder


@pytest.mark.parametrize('change, named', [
    (dict(epochs=3), 'epochs 2 -> 3'),
    (dict(batch_size=4, base_lr=0.02), 'batch_size 2 -> 4, base_lr 0.001 -> 0.02, steps per epoch 12 -> 6'),
])
def test_continues_refuses_a_changed_schedule_and_names_it(data, tmp_path, capsys, change, named):
    folder = interrupted_run(data, tmp_path / 'runs', [(1, 6)], epochs=2)
    before = sorted(path.name for path in folder.iterdir())
    line = refusal(train_args(data, tmp_path / 'runs', **{'epochs': 2, **change}, continues=folder), capsys)
    assert line == (f'error: continues: the learning-rate schedule of {folder} would change mid-run ({named}); '
                    f'resume with the settings of its config.yaml, or set allow_schedule_change: 1 to go on with '
                    f"the new schedule from the checkpoint's step")
    assert sorted(path.name for path in folder.iterdir()) == before  # nothing written


@pytest.mark.slow
def test_continues_passes_over_an_unreadable_newest_checkpoint(data, tmp_path, capsys):
    """The newest periodic checkpoint is truncated (a disk filled up, a copy cut short): the run
    resumes from the one before it, says so, and with allow_schedule_change a new epoch count is
    accepted with a note."""
    folder = interrupted_run(data, tmp_path / 'runs', [(1, 3), (1, 6)], epochs=1)
    newest = folder / f'{ARCH}_0-1_6.ckpt'
    newest.write_bytes(newest.read_bytes()[:100_000])
    flags = train_args(data, tmp_path / 'runs', epochs=2, allow_schedule_change=1, continues=folder)
    status, out, err = train_here(capsys, flags)
    assert status == 0, out[-3000:] + err[-3000:]
    assert (f'=> note: checkpoint {newest} cannot be read (corrupt or not a checkpoint): Failed to read the '
            f'checkpoint file') in out and 'falling back to the one before it' in out
    assert '=> note: the learning-rate schedule changes from here on (epochs 1 -> 2; allow_schedule_change)' in out
    assert re.search(rf'=> starting from checkpoint \S+{ARCH}_0-1_3\.ckpt: epoch 1, step 3 \(global step 3\)', out)
    assert re.findall(r'Result metrics epoch (\d+):', out) == ['1', '2'] and 'train success' in out
    assert int(ms.load_checkpoint(str(folder / f'{ARCH}_0-2_{STEPS}.ckpt'))['global_step'].asnumpy()[0]) == 2 * STEPS


# ----------------------------------------------------------------------------- results that would lie
@pytest.mark.slow
def test_validation_with_non_finite_logits_stops_the_run_and_saves_nothing(data, tmp_path, capsys):
    """Finite weights whose validation logits are not: the last block's BN moving means are so large
    that its two branches add up to inf in eval mode (training uses batch statistics, so the steps
    are fine and the weights stay finite)."""
    net = create_model(ARCH, num_classes=3)
    for name, param in net.parameters_and_names():
        if name.startswith('stage4') and name.endswith('moving_mean'):
            param.set_data(ms.Tensor(np.full(param.shape, -3e38, np.float32)))
    start = tmp_path / 'huge_bn_means.ckpt'
    save_checkpoint([{'name': p.name, 'data': p.data} for p in net.get_parameters()], start,
                    ModelCard(class_names=('class_0', 'class_1', 'class_2')).entries())
    runs = tmp_path / 'runs'
    flags = train_args(data, runs, epochs=1, batch_size=8, save_every=1, pretrained=start)
    status, out, err = train_here(capsys, flags)  # 3 steps: the means decay by 0.9 a step and stay huge
    assert_one_line_error(status, err, 'epoch 1: the network gives non-finite logits (NaN/inf) for 6 of the 6 images '
                                       'of batch 1 of the validation set')
    assert 'epoch: 1 step: 2' in out and 'Result metrics' not in out and 'train success' not in out
    folder = next(runs.glob(f'*_{ARCH}_test'))
    assert not list(folder.glob(f'{ARCH}_epoch=*.ckpt')) and set(periodic(folder, ARCH)) == {(1, 1), (1, 2)}


@pytest.mark.slow
def test_a_run_where_no_step_updates_the_weights_fails_and_saves_nothing(data, tmp_path, capsys):
    """amp_level O2 on the CPU: the dynamic loss scale, coming down from 2^24, overflows every one of
    the 12 steps of a one-epoch run (it is still 4096 at the end): an error, not 'train success'."""
    runs = tmp_path / 'runs'
    status, out, err = train_here(capsys, train_args(data, runs, amp_level='O2', epochs=1))
    assert_one_line_error(status, err, 'epoch 1: no step of this run updated the weights (every gradient overflowed '
                                       'while the dynamic loss scale came down from 2^24, now 4096)', 'amp_level O0')
    assert out.count('Over Flow') == STEPS and 'train success' not in out
    assert not list(runs.rglob('*.ckpt'))


@pytest.mark.slow
def test_overflows_while_the_dynamic_loss_scale_comes_down_are_a_note(data, tmp_path, capsys):
    """The same run for two epochs: epoch 1 overflows throughout (a note, nothing saved), epoch 2
    trains once the scale has come down, and only its checkpoints exist."""
    runs = tmp_path / 'runs'
    status, out, err = train_here(capsys, train_args(data, runs, amp_level='O2', epochs=2))
    assert status == 0, out[-3000:] + err[-3000:]
    assert ('=> note: no step of epoch 1 updated the weights: all 12 overflowed while the dynamic loss scale came '
            'down (now 4096)') in out and 'nothing is saved before a step updates them' in out
    assert 'train success' in out
    folder = next(runs.glob(f'*_{ARCH}_test'))
    saved = periodic(folder, ARCH)
    assert {epoch for epoch, _ in saved} == {2} and (2, STEPS) in saved  # none before the first update
    assert [path.name.split('_acc')[0] for path in folder.glob(f'{ARCH}_epoch=*.ckpt')] == [f'{ARCH}_epoch=2']
