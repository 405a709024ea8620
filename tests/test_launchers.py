"""scripts/run_standalone_train_gpu.sh (issue 18, item 10): the launcher that trains in the background
returns only once the run has passed its start-up checks, with a non-zero status and the run's error
line when it failed them. (The mpirun and msrun launchers: tests/test_train_distributed.py.)"""
import contextlib
import os
import re
import signal
import subprocess

import mindspore as ms
import pytest

from tests.train_helpers import REPO, alive, environment, make_image_folder

LAUNCHER = REPO / 'scripts/run_standalone_train_gpu.sh'


@pytest.fixture(name='config')
def fixture_config(tmp_path):
    config = tmp_path / 'tiny.yaml'
    config.write_text(f'train_url: {tmp_path / "runs"}\narch: RepVGG-A0\nnum_classes: 3\nimage_size: 16\nepochs: 500\n'
                      'batch_size: 2\naug_type: none\nnum_parallel_workers: 1\nprefetch: 2\nbase_lr: 0.001\n'
                      'save_every: 1000\nbrief: bg\n', encoding='utf-8')
    return config


@pytest.fixture(name='launch')
def fixture_launch():
    """launch(config, data, cwd, **env) -> (status, stdout, stderr) of the launcher, run in a session
    of its own; whatever it left running (the training and its children) is killed afterwards."""
    groups = []

    def launch(config, data, cwd, **env):
        process = subprocess.Popen(['bash', str(LAUNCHER), str(config), str(data), '0'], env={**environment(), **env},
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                                   start_new_session=True)
        groups.append(process.pid)
        out, err = process.communicate(timeout=600)
        return process.returncode, out, err

    yield launch
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


def test_a_run_that_fails_its_start_up_checks_is_reported_by_the_launcher(launch, config, tmp_path):
    data = tmp_path / 'data'
    (data / 'val').mkdir(parents=True)  # no train/: the launcher's own check passes, train.py's does not
    status, out, err = launch(config, data, tmp_path, DEVICE_TARGET='CPU')
    assert status == 2 and out == '', out + err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'error: data folder {data}/train does not exist'), err
    assert not (tmp_path / 'runs').exists()


@pytest.mark.skipif(ms.hal.is_available('GPU'), reason='this machine has a GPU for MindSpore')
@pytest.mark.slow
def test_a_gpu_run_on_a_machine_without_one_is_reported_by_the_launcher(launch, config, tmp_path):
    data = make_image_folder(tmp_path / 'data', train_per_class=2, val_per_class=1)
    status, out, err = launch(config, data, tmp_path, DEVICE_TARGET='GPU')
    assert status == 2 and out == '' and len(err.splitlines()) == 1, out + err
    assert err.startswith('error: MindSpore cannot use a GPU on this machine') and 'run with --device_target CPU' in err


@pytest.mark.slow
def test_a_run_that_started_goes_on_in_the_background(launch, config, tmp_path):
    data = make_image_folder(tmp_path / 'data', train_per_class=2, val_per_class=1)
    log = tmp_path / 'standalone_train.log'
    log.write_text('=> run folder of an older run\n')  # must not count as this run's start
    status, out, err = launch(config, data, tmp_path, DEVICE_TARGET='CPU')
    text = log.read_text()
    assert status == 0 and err == '', out + err + text
    pid = int(re.fullmatch(rf'training in the background \(pid (\d+)\); log: {log}\n', out).group(1))
    assert alive(pid), text  # 500 epochs: still training
    assert text.count('=> run folder ') == 1 and 'older run' not in text
    assert len(list((tmp_path / 'runs').iterdir())) == 1
