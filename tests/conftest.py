"""Shared fixtures: every test runs on the CPU, in GRAPH mode (as the scripts do) unless it asks
for ``pynative``, with the user's cache folder in a temporary folder; ``digits_run`` is a RepVGG-A0
trained once per session on the digits demo set."""
import subprocess

import mindspore as ms
import pytest

from tests.helpers import ROOT
from tests.train_helpers import command, environment

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
