"""Shared fixtures: every test runs on the CPU, in GRAPH mode (as the scripts do) unless it asks
for ``pynative``, with the user's cache folder in a temporary folder. Two trained runs, each trained
once per session and shared (read-only: a test copies what it changes): ``qa_run``, a tiny
QARepVGG-A0 on three named classes (seconds), and ``digits_run``, a RepVGG-A0 on the digits demo set
that is a real classifier (minutes; its tests are marked slow)."""
import os
import subprocess

# MindSpore reads GLOG_v as it loads: warnings stay at their default level whatever the shell sets
# (test_dataset.py reads the warning that names a corrupt image; pytest keeps the rest out of sight).
os.environ['GLOG_v'] = '2'  # noqa: SIM112 (MindSpore's spelling)

import mindspore as ms
import pytest

from src.tools.image_folders import tinted_folder
from tests.helpers import ROOT, call_main
from tests.train_helpers import command, environment, train_args

# The quick start's recipe (src/configs/RepVGG-A0_digits.yaml) cut to DIGITS_EPOCHS epochs: the
# cheapest run whose model is a real classifier (about 95 % top-1 on the 360 validation digits).
DIGITS_EPOCHS = 4


@pytest.fixture(scope='session', autouse=True)
def user_cache_folder(tmp_path_factory):
    """$XDG_CACHE_HOME of this session and the processes it starts: the image-check manifests of the
    tests' data folders go there, not into the user's ~/.cache (session fixtures start after it)."""
    folder = tmp_path_factory.mktemp('user_cache')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('XDG_CACHE_HOME', str(folder))
        yield folder


@pytest.fixture(autouse=True)
def cpu_graph_mode():
    ms.set_device('CPU')
    ms.set_context(mode=ms.GRAPH_MODE)


@pytest.fixture
def pynative():
    """This test runs in PyNative mode; GRAPH mode comes back after it."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.GRAPH_MODE)


@pytest.fixture(scope='session')
def digits_run(tmp_path_factory):
    """RepVGG-A0 trained by train.py on the scikit-learn digits demo set (built in a temporary
    folder) at 32x32: {'data', 'run', 'checkpoint' (the best), 'config' (the recipe's YAML)}.
    Shared by every test that needs a trained model; trains once per session."""
    root = tmp_path_factory.mktemp('digits')
    config = ROOT / 'src/configs/RepVGG-A0_digits.yaml'
    done = subprocess.run(command('--config', str(config), '--data_url', str(root / 'demo_data'), '--train_url',
                                  str(root / 'runs'), '--epochs', str(DIGITS_EPOCHS)),
                          cwd=root, env=environment(), capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run = next((root / 'runs').iterdir())
    checkpoint = max(run.glob('*_acc=*.ckpt'), key=lambda path: float(path.stem.rsplit('=', 1)[1]))
    return {'data': root / 'demo_data', 'run': run, 'checkpoint': checkpoint, 'config': config}


@pytest.fixture(scope='session')
def qa_run(tmp_path_factory):
    """QARepVGG-A0 trained by train.py (in this process) for one epoch on tinted noise in three named
    classes, 24x24: 8 training and 2 validation images a class, batch 4, so 6 steps. {'arch', 'classes',
    'size', 'data', 'folder' (the run folder), 'output' (the run's stdout), 'checkpoint' (the periodic one
    at the end of the epoch), 'best', 'flags' (train.py's)}."""
    root = tmp_path_factory.mktemp('qa_run')
    arch, classes, size = 'QARepVGG-A0', ('cat', 'dog', 'fox'), 24
    data, runs = root / 'data', root / 'runs'
    tinted_folder(data / 'train', [8] * len(classes), size, names=classes)
    tinted_folder(data / 'val', [2] * len(classes), size, names=classes, seed=1)
    flags = train_args(data, runs, arch=arch, num_classes=len(classes), image_size=size, epochs=1, batch_size=4,
                       brief='qa')
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # whatever MindSpore leaves in the working folder stays here
        status, out, err = call_main('train.py', *flags)
    assert status == 0, out[-3000:] + err[-3000:]
    folder = next(runs.iterdir())
    return dict(arch=arch, classes=classes, size=size, data=data, folder=folder, output=out, flags=flags,
                checkpoint=folder / f'{arch}_0-1_6.ckpt', best=next(folder.glob(f'{arch}_epoch=1_acc=*.ckpt')))
