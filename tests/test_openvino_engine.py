"""src/tools/deployment/openvino_engine.py through eval_onnx.py, infer_onnx.py, eval.py and infer.py:
the CPU report, threads, precision (the bf16 check made to fail on purpose), telemetry, bad input,
and the accuracy of bf16 and INT8 against fp32 on the digits demo set.

Most cases use tiny hand-made ONNX classifiers (channel means, or a 3x3 convolution, then a dense
layer) and a few small PNGs; the accuracy cases use the session's trained RepVGG-A0 (conftest.py).
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from src.tools.deployment import openvino_engine
from src.tools.deployment.evaluation import parse_results
from src.tools.deployment.openvino_engine import OPENVINO_REQUIREMENT, cpu_features, default_threads
from src.tools.image_folders import tinted_folder
from tests.helpers import ROOT, assert_one_line_error, load_script, run_main

SIZE = 8
NATIVE_BF16 = cpu_features().native_bf16
needs_bf16 = pytest.mark.skipif(not NATIVE_BF16, reason='this CPU has neither AMX nor AVX512_BF16 (no native bf16)')

# /proc/cpuinfo of three CPUs, cut to the first processor's name and flags.
CPUINFO = {
    'amx_xeon': ('Intel(R) Xeon(R) Platinum 8480+',
                 'fpu sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 avx_vnni amx_bf16 amx_tile '
                 'amx_int8'),
    'epyc': ('AMD EPYC 9654 96-Core Processor', 'fpu sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16'),
    'avx2_only': ('Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz', 'fpu sse4_2 avx avx2 fma'),
}
CPU_LINES = {
    'amx_xeon': 'CPU: Intel(R) Xeon(R) Platinum 8480+ with AMX, AVX512_BF16, AVX512_VNNI, AVX_VNNI, AVX2',
    'epyc': 'CPU: AMD EPYC 9654 96-Core Processor with AVX512_BF16, AVX512_VNNI, AVX2',
    'avx2_only': 'CPU: Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz with AVX2',
}


# ----------------------------------------------------------------------------- helpers
def write_cpuinfo(folder, cpu):
    name, flags = CPUINFO[cpu]
    path = folder / f'cpuinfo_{cpu}'
    path.write_text(''.join(f'processor\t: {index}\nmodel name\t: {name}\nflags\t\t: {flags}\n\n'
                            for index in range(2)))
    return path


def save_model(path, nodes, initializers, classes, class_names=None):
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, 'tiny', [value('image', TensorProto.FLOAT, ['batch', 3, SIZE, SIZE])],
                              [value('logits', TensorProto.FLOAT, ['batch', classes])],
                              [numpy_helper.from_array(np.asarray(array, np.float32), name)
                               for name, array in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)])
    model.ir_version = 7
    if class_names:
        helper.set_model_props(model, {'class_names': json.dumps(class_names)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def conv_model(path, classes=2, seed=0):
    """A 3x3 convolution (16 channels), ReLU, mean over the image, dense layer: a RepVGG in small."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node('Conv', ['image', 'w', 'b'], ['c'], pads=[1, 1, 1, 1]),
             helper.make_node('Relu', ['c'], ['r']),
             helper.make_node('ReduceMean', ['r'], ['m'], axes=[2, 3], keepdims=0),
             helper.make_node('Gemm', ['m', 'fc', 'fc_b'], ['logits'], transB=1)]
    weights = {'w': rng.normal(0, 0.3, (16, 3, 3, 3)), 'b': rng.normal(0, 0.1, 16),
               'fc': rng.normal(0, 1, (classes, 16)), 'fc_b': np.zeros(classes)}
    return save_model(path, nodes, weights, classes, [f'class_{label}' for label in range(classes)])


def close_logits_model(path):
    """Two classes whose logits are the sum of the channel means plus 30, times 1 and times 1 + 2^-9.

    In fp32 class 1 wins every image. bf16 keeps 8 significant bits, so 1 + 2^-9 becomes 1 and the
    two logits tie: the top-1 class turns to 0 (the first of equals), for every image.
    """
    nodes = [helper.make_node('ReduceMean', ['image'], ['m'], axes=[2, 3], keepdims=0),
             helper.make_node('Add', ['m', 'shift'], ['p']),
             helper.make_node('Gemm', ['p', 'fc', 'fc_b'], ['logits'], transB=1)]
    weights = {'shift': [10.0], 'fc': [[1.0] * 3, [1.0 + 2.0 ** -9] * 3], 'fc_b': [0.0, 0.0]}
    return save_model(path, nodes, weights, 2)


def engine_line(out):
    return next(line for line in out.splitlines() if line.startswith('=> OpenVINO '))


@pytest.fixture(scope='module', name='digits_files')
def fixture_digits_files(digits_run, tmp_path_factory):
    """The session's trained digits RepVGG-A0 exported by export.py as fp32 ONNX and as INT8 ONNX
    (calibrated on 300 training images), with its data and config."""
    root = tmp_path_factory.mktemp('digits_files')
    files = dict(digits_run)
    for name, flags in (('fp32', ()), ('int8', ('--quantize', 'int8'))):
        load_script('export.py').main([str(arg) for arg in (
            '--config', digits_run['config'], '--pretrained', digits_run['checkpoint'], '--data_url',
            digits_run['data'], '--file_format', 'ONNX', '--export_path', root / name, *flags)])
        files[name] = root / f'{name}.onnx'
    return files


@pytest.fixture(name='tiny')
def fixture_tiny(tmp_path):
    tinted_folder(tmp_path / 'val', [3, 3], 12)
    return {'model': conv_model(tmp_path / 'tiny.onnx'), 'val': tmp_path / 'val',
            'out': tmp_path / 'predictions.json', 'root': tmp_path}


# ----------------------------------------------------------------------------- the machine
@pytest.mark.parametrize('cpu', sorted(CPUINFO))
def test_every_run_names_engine_precision_threads_and_the_cpus_instruction_sets(tiny, capsys, monkeypatch, cpu):
    monkeypatch.setattr(openvino_engine, 'CPUINFO', write_cpuinfo(tiny['root'], cpu))
    status, out, err = run_main(capsys, 'eval_onnx.py', tiny['val'], '-c', tiny['model'], '-j', 1, '--threads', 1)
    assert status == 0, err
    version = openvino_engine.import_openvino().get_version().split('-')[0]
    assert engine_line(out) == f'=> OpenVINO {version}, fp32, 1 thread; {CPU_LINES[cpu]}'
    assert parse_results(out)['Top1-Acc'] >= 0
    status, out, err = run_main(capsys, 'infer_onnx.py', tiny['val'] / 'class_0', '-c', tiny['model'],
                                '-o', tiny['out'])
    assert status == 0, err
    if cpu == 'avx2_only':  # auto: fp32, said why
        assert engine_line(out).startswith(f'=> OpenVINO {version}, fp32 (no native bf16 on this CPU), ')
    elif NATIVE_BF16:
        assert 'bf16 if it keeps the fp32 top-1 class of every image of the first batch' in engine_line(out)
        assert '=> bf16 checked: every image of the first batch (3) keeps its fp32 top-1 class' in out
    assert len(json.loads(tiny['out'].read_text())) == 3


def test_the_cpu_report_reads_the_first_processor_and_survives_a_missing_file(tmp_path, monkeypatch):
    monkeypatch.setattr(openvino_engine, 'CPUINFO', write_cpuinfo(tmp_path, 'epyc'))
    features = cpu_features()
    assert features.sets == ('AVX512_BF16', 'AVX512_VNNI', 'AVX2') and features.native_bf16
    monkeypatch.setattr(openvino_engine, 'CPUINFO', write_cpuinfo(tmp_path, 'avx2_only'))
    assert not cpu_features().native_bf16
    monkeypatch.setattr(openvino_engine, 'CPUINFO', tmp_path / 'absent')
    assert cpu_features().sets == () and 'none of AMX, AVX512_BF16' in str(cpu_features())


def test_default_threads_are_the_allowed_cpus_bounded_by_a_cgroup_quota(tmp_path, monkeypatch, tiny, capsys):
    root = tmp_path / 'cgroup'
    (root / 'jobs' / 'one').mkdir(parents=True)
    membership = tmp_path / 'membership'
    membership.write_text('0::/jobs/one\n')
    monkeypatch.setattr(openvino_engine, 'CGROUP_ROOT', root)
    monkeypatch.setattr(openvino_engine, 'CGROUP_MEMBERSHIP', membership)
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1, 2, 3, 4, 5})
    assert default_threads() == 6  # no cpu.max anywhere
    (root / 'jobs' / 'one' / 'cpu.max').write_text('max 100000\n')
    assert default_threads() == 6
    (root / 'jobs' / 'cpu.max').write_text('250000 100000\n')  # a parent's quota of 2.5 CPUs
    assert default_threads() == 2
    (root / 'jobs' / 'one' / 'cpu.max').write_text('50000 100000\n')  # half a CPU still gets one thread
    assert default_threads() == 1
    membership.write_text('4:memory:/jobs/one\n')  # cgroup v1 only: no quota read
    assert default_threads() == 6
    membership.write_text('0::/jobs/one\n')
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0})
    (root / 'jobs' / 'one' / 'cpu.max').write_text('max 100000\n')
    status, out, err = run_main(capsys, 'eval_onnx.py', tiny['val'], '-c', tiny['model'], '-j', 1)
    assert status == 0, err
    assert ', 1 thread; CPU: ' in engine_line(out)


def test_openvino_threads_are_not_pinned_to_cores(tiny):
    """Several processes inferring at once must share the CPUs through the OS: OpenVINO 2026.4 pins
    its threads to cores by default, and processes that each pin from the first core would crowd it."""
    ov = openvino_engine.import_openvino()
    model = openvino_engine.read_onnx(ov, tiny['model'])
    compiled = ov.Core().compile_model(model, 'CPU', openvino_engine.compile_settings('fp32', 1))
    assert compiled.get_property('ENABLE_CPU_PINNING') is False
    assert compiled.get_property('NUM_STREAMS') == 1 and compiled.get_property('INFERENCE_NUM_THREADS') == 1


# ----------------------------------------------------------------------------- precision
@needs_bf16
def test_auto_precision_falls_back_to_fp32_when_bf16_changes_a_top1_class(tmp_path, capsys):
    model = close_logits_model(tmp_path / 'close.onnx')
    folder = tmp_path / 'bright'
    folder.mkdir()
    for index in range(4):
        Image.new('RGB', (12, 12), (200 + 10 * index, 220, 240)).save(folder / f'{index}.png')
    outputs = {precision: tmp_path / f'{precision}.json' for precision in ('bf16', 'fp32', 'auto')}
    printed = {}
    for precision, output in outputs.items():
        status, printed[precision], err = run_main(capsys, 'infer_onnx.py', folder, '-c', model, '-o', output,
                                                   '--precision', precision)
        assert status == 0, err
    predictions = {precision: set(json.loads(path.read_text()).values()) for precision, path in outputs.items()}
    assert predictions == {'bf16': {0}, 'fp32': {1}, 'auto': {1}}  # bf16 really swaps; auto keeps fp32's
    assert ('=> note: in bf16 the top-1 class of 4 of the 4 images of the first batch differs from fp32: '
            'running fp32') in printed['auto']
    assert 'running bf16' not in printed['auto']


@needs_bf16
@pytest.mark.slow
def test_auto_precision_keeps_bf16_for_a_model_it_does_not_change(digits_files, tmp_path, capsys):
    folder = digits_files['data'] / 'val' / '3'
    status, out, err = run_main(capsys, 'infer_onnx.py', folder, '-c', digits_files['fp32'], '-o', tmp_path / 'p.json')
    assert status == 0, err
    assert '=> bf16 checked: every image of the first batch (32) keeps its fp32 top-1 class: running bf16' in out
    status, _, err = run_main(capsys, 'infer_onnx.py', folder, '-c', digits_files['fp32'],
                              '-o', tmp_path / 'fp32.json', '--precision', 'fp32')
    assert status == 0, err
    bf16, fp32 = (json.loads((tmp_path / name).read_text()) for name in ('p.json', 'fp32.json'))
    assert list(bf16) == list(fp32) and len(fp32) > 32
    assert all(bf16[path] == fp32[path] for path in list(fp32)[:32])  # what the check compared


# ----------------------------------------------------------------------------- accuracy (issue 19 item 5)
def eval_top1(capsys, digits_files, model, *flags):
    status, out, err = run_main(capsys, 'eval_onnx.py', digits_files['data'] / 'val', '-c', model, '-j', 1, *flags)
    assert status == 0, err
    return parse_results(out)['Top1-Acc'], engine_line(out)


@pytest.mark.slow
def test_int8_in_openvino_is_within_one_point_of_fp32(digits_files, capsys):
    fp32, line = eval_top1(capsys, digits_files, digits_files['fp32'])
    assert ', fp32, ' in line
    int8, line = eval_top1(capsys, digits_files, digits_files['int8'])
    assert ', int8, ' in line
    print(f'\ndigits val top-1 in OpenVINO: fp32 {fp32:.4f}, INT8 {int8:.4f} ({100 * (int8 - fp32):+.2f} pt)')
    assert fp32 > 0.8  # a trained model: the comparison means something
    assert abs(int8 - fp32) <= 0.01


@needs_bf16
@pytest.mark.slow
def test_bf16_in_openvino_is_within_half_a_point_of_fp32(digits_files, capsys):
    fp32, _ = eval_top1(capsys, digits_files, digits_files['fp32'])
    bf16, line = eval_top1(capsys, digits_files, digits_files['fp32'], '--precision', 'bf16')
    assert ', bf16, ' in line
    print(f'\ndigits val top-1 in OpenVINO: fp32 {fp32:.4f}, bf16 {bf16:.4f} ({100 * (bf16 - fp32):+.2f} pt)')
    assert fp32 > 0.8
    assert abs(bf16 - fp32) <= 0.005


# ----------------------------------------------------------------------------- bad input
def test_openvino_on_a_gpu_run_is_one_line(tiny, capsys, tmp_path):
    status, _, err = run_main(capsys, 'infer_onnx.py', tiny['val'] / 'class_0', '-c', tiny['model'], '-o', tiny['out'],
                              '-m', 'GPU', '--backend', 'openvino')
    assert_one_line_error(status, err, '--backend openvino runs on CPU only; this run targets GPU')
    config = tmp_path / 'gpu.yaml'
    config.write_text('arch: RepVGG-A0\nnum_classes: 2\nimage_size: 8\ndevice_target: GPU\n')
    status, _, err = run_main(capsys, 'infer.py', '--config', config, '--dataset_path', tiny['val'] / 'class_0',
                              '--pretrained', tiny['model'], '--pred_output', tiny['out'], '--backend', 'openvino')
    assert_one_line_error(status, err, '--backend openvino runs on CPU only; this run targets GPU')
    assert not tiny['out'].exists()


def test_a_missing_openvino_is_one_line_naming_pip(tiny, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'openvino', None)  # what an environment without the package gets
    for backend in ('auto', 'openvino'):
        status, _, err = run_main(capsys, 'infer_onnx.py', tiny['val'] / 'class_0', '-c', tiny['model'],
                                  '-o', tiny['out'], '--backend', backend)
        assert_one_line_error(status, err, 'the openvino package is not installed',
                              f'pip install {OPENVINO_REQUIREMENT}', '--backend onnxruntime')
    assert not tiny['out'].exists()
    status, _, err = run_main(capsys, 'infer_onnx.py', tiny['val'] / 'class_0', '-c', tiny['model'], '-o', tiny['out'],
                              '--backend', 'onnxruntime')
    assert status == 0, err


def test_the_pinned_openvino_is_the_one_the_error_names():
    lines = [line.split('#')[0].strip() for line in (ROOT / 'requirements.txt').read_text().splitlines()]
    assert OPENVINO_REQUIREMENT in lines


def test_a_damaged_onnx_file_is_one_line(tiny, capsys):
    content = tiny['model'].read_bytes()
    for name, damaged in (('truncated.onnx', content[:len(content) // 2]), ('garbage.onnx', b'garbage' * 40),
                          ('empty.onnx', b'')):
        path = tiny['root'] / name
        path.write_bytes(damaged)
        status, _, err = run_main(capsys, 'infer_onnx.py', tiny['val'] / 'class_0', '-c', path, '-o', tiny['out'])
        assert_one_line_error(status, err, str(path))
        status, _, err = run_main(capsys, 'eval_onnx.py', tiny['val'], '-c', path, '--backend', 'openvino')
        assert_one_line_error(status, err, str(path))
    assert not tiny['out'].exists()


def test_bf16_on_a_cpu_without_it_is_refused(tiny, capsys, monkeypatch):
    monkeypatch.setattr(openvino_engine, 'CPUINFO', write_cpuinfo(tiny['root'], 'avx2_only'))
    status, _, err = run_main(capsys, 'infer_onnx.py', tiny['val'] / 'class_0', '-c', tiny['model'], '-o', tiny['out'],
                              '--precision', 'bf16')
    assert_one_line_error(status, err, '--precision bf16: this CPU (Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz) has '
                                       'neither AMX nor AVX512_BF16', 'use --precision fp32 or auto')
    assert not tiny['out'].exists()


@pytest.mark.slow
def test_bf16_asked_of_another_engine_or_of_an_int8_file_is_one_line(digits_files, capsys, tmp_path):
    val, out = digits_files['data'] / 'val', tmp_path / 'p.json'
    status, _, err = run_main(capsys, 'eval_onnx.py', val, '-c', digits_files['int8'], '--precision', 'bf16')
    assert_one_line_error(status, err, 'is an INT8 model (export.py --quantize int8)', 'drop --precision bf16')
    status, _, err = run_main(capsys, 'infer_onnx.py', val / '0', '-c', digits_files['fp32'], '-o', out,
                              '--backend', 'onnxruntime', '--precision', 'bf16')
    assert_one_line_error(status, err, '--precision bf16 runs in the openvino back-end (CPU) only',
                          'this run uses onnxruntime')
    status, _, err = run_main(capsys, 'infer.py', '--config', digits_files['config'], '--dataset_path', val / '0',
                              '--pretrained', digits_files['checkpoint'], '--pred_output', out,
                              '--backend', 'mindspore', '--precision', 'bf16')
    assert_one_line_error(status, err, 'this run uses mindspore')
    status, _, err = run_main(capsys, 'infer_onnx.py', val / '0', '-c', digits_files['fp32'], '-o', out,
                              '--backend', 'onnxruntime', '--threads', 2)
    assert_one_line_error(status, err, '--threads sets the threads of the openvino back-end')
    assert not out.exists()


# ----------------------------------------------------------------------------- telemetry
GUARD = textwrap.dedent('''\
    """Run a script with every network attempt refused and reported on stderr."""
    import runpy
    import sys

    def guard(event, args):
        if event in ('socket.connect', 'socket.getaddrinfo', 'socket.sendto', 'urllib.Request'):
            print(f'network attempt: {event} {args[:2]!r}', file=sys.stderr, flush=True)
            raise ConnectionRefusedError('no network in this test')

    sys.addaudithook(guard)
    sys.path.insert(0, sys.argv[1])
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name='__main__')
''')


def guarded(tmp_path, home, *argv):
    """(status, stdout, stderr) of ``argv`` run under GUARD with HOME at ``home`` and no CI variables
    (openvino_telemetry stays quiet under CI=true, as CI runs this test)."""
    guard = tmp_path / 'guard.py'
    guard.write_text(GUARD)
    env = {key: value for key, value in os.environ.items() if key not in ('CI', 'TF_BUILD', 'JENKINS_URL')}
    env.update(HOME=str(home), GLOG_v='3')
    done = subprocess.run([sys.executable, str(guard), str(ROOT), *map(str, argv)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.slow
def test_openvino_runs_send_no_telemetry(tiny, tmp_path):
    home = tmp_path / 'home'
    home.mkdir()
    status, out, err = guarded(tmp_path, home, 'infer_onnx.py', tiny['val'] / 'class_1', '-c', tiny['model'],
                               '-o', tiny['out'], '--backend', 'openvino')
    assert status == 0 and '=> OpenVINO ' in out, err
    status, out, err = guarded(tmp_path, home, 'eval_onnx.py', tiny['val'], '-c', tiny['model'], '-j', 1)
    assert status == 0 and '=> OpenVINO ' in out, err
    assert 'network attempt' not in err
    assert not (home / 'intel').exists()  # openvino_telemetry's client id and counters would be there
    # The guard sees what a plain `import openvino` does with the same home and environment: it tries
    # to send a usage event and writes a client id, so the two runs above prove something.
    control = tmp_path / 'control.py'
    control.write_text('import openvino\n')
    _, _, err = guarded(tmp_path, home, control)
    assert 'network attempt' in err
    assert (home / 'intel').is_dir()


def test_infer_json_is_the_same_in_openvino_fp32_and_onnx_runtime(tiny, capsys):
    outputs = {engine: tiny['root'] / f'{engine}.json' for engine in ('openvino', 'onnxruntime')}
    for engine, output in outputs.items():
        status, _, err = run_main(capsys, 'infer_onnx.py', tiny['val'] / 'class_1', '-c', tiny['model'], '-o', output,
                                  '--backend', engine, '--precision', 'fp32')
        assert status == 0, err
    assert outputs['openvino'].read_text() == outputs['onnxruntime'].read_text()
