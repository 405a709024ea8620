"""Shared test utilities (not fixtures): deterministic random BN statistics, running the top-level
scripts in this process or as processes, the one-line error every bad input must get, and a small
data config for the data tests. (Image folders: src/tools/image_folders.py.)"""
import contextlib
import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mindspore import Tensor

from src.config import make_config

ROOT = Path(__file__).resolve().parents[1]


def slow_except(values, *fast):
    """``values`` for parametrize (a tuple: the values of several names), each marked slow but those in
    ``fast``: the representative cases that the inner loop (-m "not slow") runs."""
    return [value if value in fast else pytest.param(*value if isinstance(value, tuple) else (value,),
                                                     marks=pytest.mark.slow) for value in values]


def randomize_bn(net, seed=0):
    """Give every BN random moving statistics and affine parameters.

    Default statistics (mean 0, var 1, gamma 1, beta 0) would make an equivalence test prove
    little; these keep activations in a sane range over 30-50 layers.
    """
    rng = np.random.default_rng(seed)
    for name, param in net.parameters_and_names():
        leaf = name.rsplit('.', 1)[-1]
        if leaf in ('moving_mean', 'beta'):
            value = rng.normal(0.0, 0.1, param.shape)
        elif leaf in ('moving_variance', 'gamma'):
            value = rng.uniform(0.5, 1.5, param.shape)
        else:
            continue
        param.set_data(Tensor(value.astype(np.float32)))
    return net


def load_script(name):
    """A top-level script (eval.py, ...) as a module, so that its main(argv) runs in this process."""
    spec = importlib.util.spec_from_file_location(f'script_{name[:-3]}', ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(capsys, name, *argv):
    """(exit status, stdout, stderr) of script ``name``'s main(argv), run in this process."""
    try:
        load_script(name).main([str(arg) for arg in argv])
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def call_main(name, *argv):
    """run_main without capsys (for fixtures wider than a test): stdout and stderr kept apart."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            load_script(name).main([str(arg) for arg in argv])
            status = 0
        except SystemExit as exit_:
            status = exit_.code
    return status, out.getvalue(), err.getvalue()


def run_process(*argv, cwd=ROOT, timeout=300):
    """(exit status, stdout, stderr) of ``python *argv`` run as a process."""
    result = subprocess.run([sys.executable, *map(str, argv)], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, check=False)
    return result.returncode, result.stdout, result.stderr


def assert_one_line_error(status, err, *fragments):
    """Exit status 2 and one line 'error: ...' on stderr, as a terminal shows it (a progress bar
    that had started is overwritten through carriage returns, on the same line)."""
    lines = [line.rsplit('\r', 1)[-1] for line in err.split('\n')]
    lines = [line for line in lines if line.strip()]
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    assert 'Traceback' not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_ends_with_error(status, err, *fragments):
    """Exit status 2 and, as the last line, one 'error: ...' line (after warnings that other
    libraries print, e.g. the image decoder naming the files it could not decode)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert lines and lines[-1].startswith('error: ') and 'Traceback' not in err, err
    assert sum(line.startswith('error: ') for line in lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]




def data_config(data_url=None, **overrides):
    """A CPU config for the data tests: tiny images, one worker unless overridden."""
    values = dict(data_url=data_url, image_size=16, batch_size=4, num_classes=10, num_parallel_workers=1,
                  prefetch=2, device_target='CPU', seed=1)
    values.update(overrides)
    return make_config(**values)


def batches(dataset):
    """All batches of one epoch as numpy dicts."""
    return list(dataset.create_dict_iterator(output_numpy=True, num_epochs=1))
