"""train.py stopped at any moment: a kill at each of its writes, then ``--continues``; Ctrl+C;
a train_url that cannot hold run folders. Through train.py, as a process or in this process.

The kills come from the test-only hook of src/tools/base/files.py (REPVGG_TEST_KILL_AT): the run
SIGKILLs itself at a named write, with the temporary complete but not renamed ('written') or right
after the rename ('renamed'), so each position is hit exactly, without timing.
"""
import os
import re
import signal
import subprocess

import pytest

from src.tools.base.files import KILL_POINT_VARIABLE
from tests.helpers import assert_one_line_error, run_main
from tests.train_helpers import command, environment, make_image_folder, train_args

ARCH = 'RepVGG-A0'
STEPS = 12  # 3 classes x 8 train images / batch 2
BEST_1 = f'{ARCH}_epoch=1_acc=*.ckpt'
END_1, END_2 = f'{ARCH}_0-1_{STEPS}.ckpt', f'{ARCH}_0-2_{STEPS}.ckpt'

# (file name pattern, moment): every write of epoch 1 in the order a run makes them, and one of
# epoch 2. Before epoch 1's periodic checkpoint is in place there is nothing to resume.
NOTHING_YET = [('config.yaml', 'written'), ('config.yaml', 'renamed'), ('class_names.json', 'written'),
               ('class_names.json', 'renamed'), ('startup.log', 'written'), ('startup.log', 'renamed'),
               (END_1, 'written')]
RESUMABLE = [(END_1, 'renamed'), ('metrics.csv', 'written'), ('metrics.csv', 'renamed'), ('curves.png', 'written'),
             ('curves.png', 'renamed'), (BEST_1, 'written'), (BEST_1, 'renamed'), (END_2, 'written')]


def cases():
    for point in NOTHING_YET + RESUMABLE:
        yield pytest.param(*point, point in RESUMABLE, id=f'{point[0]}:{point[1]}')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'), size=24)


def run(flags, cwd, **env):
    done = subprocess.run(command(*flags), capture_output=True, text=True, env={**environment(), **env}, cwd=cwd,
                          timeout=300, check=False)
    return done.returncode, done.stdout, done.stderr


def partial_files(folder):
    return sorted(path.name for path in folder.iterdir() if '.partial' in path.name)


@pytest.mark.slow  # a train.py process killed, then a run in this process, a case
@pytest.mark.parametrize('pattern, moment, resumable', cases())
def test_a_run_killed_at_any_write_resumes_or_says_there_is_nothing_yet(data, tmp_path, capsys, monkeypatch, pattern,
                                                                        moment, resumable):
    runs = tmp_path / 'runs'
    flags = train_args(data, runs, image_size=24, save_every=100)  # periodic checkpoints only at epoch ends
    status, first_out, err = run(flags, tmp_path, **{KILL_POINT_VARIABLE: f'{pattern}:{moment}'})
    assert status == -signal.SIGKILL, first_out[-2000:] + err[-2000:]
    folder = next(runs.iterdir())
    left = sorted(folder.iterdir())
    if moment == 'written':  # the dead process's temporary is there, the file it was for is not
        assert len(partial_files(folder)) == 1 and not list(folder.glob(pattern)), left
    else:
        assert list(folder.glob(pattern)) and not partial_files(folder), left

    monkeypatch.chdir(tmp_path)
    status, out, err = run_main(capsys, 'train.py', *flags, '--continues', folder)
    assert not partial_files(folder), 'the temporaries of the dead run are removed first'
    if not resumable:
        assert_one_line_error(status, err, f'continues: nothing to resume yet: {folder} holds no periodic checkpoint',
                              'start again without continues')
        assert sorted(folder.iterdir()) == [path for path in left if '.partial' not in path.name]
        return
    assert status == 0, out[-3000:] + err[-3000:]
    assert re.search(rf'=> starting from checkpoint \S+{re.escape(END_1)}: epoch 2, step 0 ', out), out
    assert re.findall(r'Result metrics epoch (\d+):', out) == ['2']
    assert 'train success' in out
    rows = [line.split(',') for line in (folder / 'metrics.csv').read_text().splitlines()[1:]]
    assert [row[0] for row in rows] == ['1', '2']
    # Epoch 1's row holds the numbers the killed run printed, written again from its checkpoint.
    top1 = float(re.search(r'Result metrics epoch 1: \{\'acc\': ([0-9.e-]+)', first_out).group(1))
    assert float(rows[0][4]) == pytest.approx(top1, abs=1e-6)
    assert (folder / 'curves.png').stat().st_size > 1000
    assert (folder / END_2).is_file() and len(list(folder.glob(f'{ARCH}_epoch=*_acc=*.ckpt'))) == 1
    assert sorted(path.name for path in folder.iterdir() if path.name.startswith('config')) == [
        'config.yaml', 'config_resumed_1.yaml']


@pytest.mark.slow
def test_ctrl_c_during_training_stops_with_the_line_and_continues_resumes(data, tmp_path, capsys, monkeypatch):
    """Ctrl+C right after epoch 1's validation, when MindSpore's own SIGINT handler (installed as it
    built the validation graph) turns it into SIGTERM: that used to end the run with status 143."""
    runs = tmp_path / 'runs'
    flags = train_args(data, runs, image_size=24, epochs=30, save_every=3)
    process = subprocess.Popen(command(*flags), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=environment(), cwd=tmp_path, start_new_session=True)
    try:
        printed = []
        for line in process.stdout:
            printed.append(line)
            if line.startswith('Eval epoch time:'):
                break
        assert any(line.startswith('epoch: 1 step: 3,') for line in printed), printed
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the data pipeline's workers, if any survived
            survivors = True
        except ProcessLookupError:
            survivors = False
        process.kill()
    folder = next(runs.iterdir())
    assert process.returncode == 130, ''.join(printed) + out + err
    assert err.strip().splitlines()[-1].startswith('error: interrupted (Ctrl+C'), err
    assert f'resume with --continues {folder}' in out
    assert not survivors, 'a process of the run outlived it'
    assert not partial_files(folder)

    monkeypatch.chdir(tmp_path)
    status, out, err = run_main(capsys, 'train.py', *flags, '--continues', folder, '--epochs', 1,
                                '--allow_schedule_change', 1)
    assert status == 0, out[-3000:] + err[-3000:]
    assert re.search(rf'=> starting from checkpoint \S+{ARCH}_0-1_9\.ckpt: epoch 1, step 9 ', out), out
    assert 'train success' in out and (folder / END_1).is_file()


@pytest.mark.parametrize('where, fragment', [
    ('/proc/repvgg_runs', 'cannot be written'),
    ('file', 'is a file, not a folder'),
])
def test_a_train_url_that_cannot_hold_run_folders_is_one_line(data, tmp_path, capsys, where, fragment):
    train_url = tmp_path / 'file' if where == 'file' else where
    (tmp_path / 'file').write_text('mine')
    status, _, err = run_main(capsys, 'train.py', *train_args(data, train_url))
    assert_one_line_error(status, err, f'train_url {train_url} ', fragment)
    assert not os.path.exists('/proc/repvgg_runs') and (tmp_path / 'file').read_text() == 'mine'
    assert sorted(path.name for path in tmp_path.iterdir()) == ['file']
