"""benchmarks/speed.py runs end to end on a tiny case (no timing is asserted: speed belongs to the
benchmark's own output), and its --help needs neither torch nor timm."""
import re

import pytest

from tests.helpers import run_process

ROWS = ('openvino-fp32', 'onnxruntime-fp32')


@pytest.mark.slow
def test_one_tiny_case_end_to_end():
    status, out, err = run_process('benchmarks/speed.py', '--archs', 'RepVGG-A0', '--batches', '2',
                                   '--image_size', '32', '--repeats', '1', '--min_iters', '1', '--min_seconds', '0',
                                   '--train_batch', '0', '--rows', ','.join(ROWS), timeout=600)
    assert status == 0, err
    header = out.splitlines()[0]
    assert header.startswith('# ') and 'CPUs' in header and 'openvino' in header and 'onnxruntime' in header
    rows = {}
    for line in out.splitlines():
        match = re.match(r'RepVGG-A0\s+2\s+(\S+)(?: \[(\w+)\])?\s+([\d.]+)\s+([\d.]+)x\s+(\d+)$', line)
        if match:
            rows[match[1]] = match.groups()[1:]
    assert set(rows) == set(ROWS), out
    assert rows['openvino-fp32'][0] == 'fp32'  # what the engine ran
    assert float(rows['onnxruntime-fp32'][2]) == 1.0  # the baseline of the ratios
    assert all(float(speed) > 0 and int(memory) > 0 for _, speed, _, memory in rows.values())
    assert 'skipped' not in out


def test_help_without_torch():
    code = ("import runpy, sys; sys.modules['torch'] = sys.modules['timm'] = None; "
            "sys.argv = ['speed.py', '--help']; runpy.run_path('benchmarks/speed.py', run_name='__main__')")
    status, out, err = run_process('-c', code)
    assert status == 0, err
    assert out.startswith('usage: speed.py') and '--rows' in out and 'torch-bf16' in out
