"""OpenVINO, the CPU engine: runs the ONNX files export.py writes, fp32 and INT8 alike, as a Predictor
(model_files.py). Its precision, threads and why nothing reaches the network: docs/deployment.md.
"""
import contextlib
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from src.tools.base.cli import UserError
from src.tools.checkpoints.model_card import ENTRY_NAMES, ModelCard
from src.tools.deployment.model_files import Predictor, batch_and_size, check_image_size, check_model_file

OPENVINO_REQUIREMENT = 'openvino==2026.4.1'  # as pinned in requirements.txt (tests/test_openvino_engine.py)
CPUINFO = Path('/proc/cpuinfo')
CGROUP_ROOT = Path('/sys/fs/cgroup')
CGROUP_MEMBERSHIP = Path('/proc/self/cgroup')
# The instruction sets that decide how a deploy RepVGG runs on an x86 CPU, by their /proc/cpuinfo flag:
# AMX and AVX512_BF16 compute bf16 natively, the VNNI sets int8 dot products, AVX2 is the fp32 floor.
INSTRUCTION_SETS = (('AMX', 'amx_bf16'), ('AVX512_BF16', 'avx512_bf16'), ('AVX512_VNNI', 'avx512_vnni'),
                    ('AVX_VNNI', 'avx_vnni'), ('AVX2', 'avx2'))
NATIVE_BF16 = ('AMX', 'AVX512_BF16')
# OpenVINO's names of the precision a layer runs in, and the layers whose precision is reported.
_PRECISION_NAMES = {'f32': 'fp32', 'bf16': 'bf16', 'f16': 'fp16', 'u8': 'int8', 'i8': 'int8'}
_COMPUTE_LAYERS = ('Convolution', 'FullyConnected')


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's model name and which of INSTRUCTION_SETS it has, in that order."""
    name: str
    sets: tuple

    @property
    def native_bf16(self):
        return any(name in self.sets for name in NATIVE_BF16)

    def __str__(self):
        if not self.sets:
            return f'{self.name}, none of {", ".join(name for name, _ in INSTRUCTION_SETS)}'
        return f'{self.name} with {", ".join(self.sets)}'


def cpu_features():
    """The CPU's name and instruction sets, read from CPUINFO (tests point it at other CPUs' files)."""
    try:
        text = CPUINFO.read_text(encoding='utf-8', errors='replace')
    except OSError:
        text = ''
    fields = {}
    for line in text.splitlines():  # the first processor's entries
        key, _, value = line.partition(':')
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get('flags', '').split())
    name = fields.get('model name') or platform.processor() or 'unknown CPU'
    return CpuFeatures(name, tuple(label for label, flag in INSTRUCTION_SETS if flag in flags))


def cgroup_cpu_limit():
    """The whole CPUs (at least 1) that the cgroup v2 cpu.max quotas of this process's cgroup and its
    parents allow, or None: a container started with --cpus 2 sees all the host's CPUs, gets two."""
    try:
        lines = CGROUP_MEMBERSHIP.read_text(encoding='utf-8').splitlines()
    except OSError:
        return None
    member = next((line[3:] for line in lines if line.startswith('0::')), None)
    if member is None:
        return None
    folder = CGROUP_ROOT / member.strip().lstrip('/')
    limits = []
    for level in (folder, *folder.parents):
        if level != CGROUP_ROOT and CGROUP_ROOT not in level.parents:
            break
        with contextlib.suppress(OSError, ValueError):
            quota, period = (level / 'cpu.max').read_text(encoding='utf-8').split()[:2]
            if quota != 'max':
                limits.append(max(1, int(quota) // int(period)))
    return min(limits) if limits else None


def default_threads():
    """The CPUs this process may use: its affinity (taskset, cpuset), bounded by a cgroup v2 quota."""
    cpus = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit()
    return min(cpus, limit) if limit else cpus


def import_openvino():
    """The openvino module without its model converter, whose import sends a usage event and writes a
    client id under ~/intel (docs/deployment.md, "Telemetry"); a UserError naming pip where it is missing."""
    keep_out = 'openvino.tools.ovc' not in sys.modules
    if keep_out:
        sys.modules['openvino.tools.ovc'] = None  # openvino/__init__.py skips it on ImportError
    try:
        import openvino
    except ImportError:
        raise UserError(f'the openvino package is not installed (it runs models on CPU): pip install '
                        f'{OPENVINO_REQUIREMENT}, or pass --backend onnxruntime') from None
    finally:
        if keep_out:
            sys.modules.pop('openvino.tools.ovc', None)
    return openvino


def read_onnx(ov, path):
    """The ov.Model of ONNX file ``path``. Read by the ONNX front end alone: ov.Core.read_model
    would try every front end on a damaged file, and TensorFlow's logs its failure on stderr."""
    front_end = ov.frontend.FrontEndManager().load_by_framework('onnx')
    try:
        return front_end.convert(front_end.load(str(path)))
    except Exception as error:  # OpenVINO's own error types
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(error).__name__
        raise UserError(f'{path} cannot be read by OpenVINO ({reason}): a damaged or truncated file? '
                        f'export it again with export.py') from None


def _dims(partial_shape):
    return [dim.get_length() if dim.is_static else None for dim in partial_shape]


def _card(model, path):
    """The model card in the file's metadata_props, as OpenVINO's ONNX front end read them (reading
    them with onnx instead would import it, and parse the file, a second time)."""
    entries = {key: model.get_rt_info(['framework', key]).astype(str) for key in ENTRY_NAMES
               if model.has_rt_info(['framework', key])}
    return ModelCard.read(entries, path)


def runtime_precision(compiled):
    """The precision the compiled model runs its convolutions and dense layers in: fp32, bf16, int8."""
    found = set()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info['layerType'].astype(str) in _COMPUTE_LAYERS:
            name = info['runtimePrecision'].astype(str)
            found.add(_PRECISION_NAMES.get(name, name))
    return '+'.join(sorted(found)) or 'fp32'


def compile_settings(precision, threads):
    """OpenVINO's CPU settings: one request at a time on ``threads`` threads, not pinned (processes that
    each pin crowd the same cores), in bf16 or fp32 (an INT8 model's convolutions stay int8)."""
    return {'INFERENCE_PRECISION_HINT': 'bf16' if precision == 'bf16' else 'f32', 'PERFORMANCE_HINT': 'LATENCY',
            'INFERENCE_NUM_THREADS': threads, 'ENABLE_CPU_PINNING': False}


def _compile(ov, model, precision, threads):
    return ov.Core().compile_model(model, 'CPU', compile_settings(precision, threads))


def _runner(compiled):
    """images -> logits through one infer request of ``compiled``."""
    request = compiled.create_infer_request()
    return lambda images: request.infer({0: images}, share_inputs=True)[0]


def check_precision(precision, int8, cpu, path):
    """A UserError for a precision that cannot run: bf16 for an INT8 file or on a CPU without it."""
    if precision != 'bf16':
        return
    if int8:
        raise UserError(f'{path} is an INT8 model (export.py --quantize int8): its convolutions run in int8, '
                        f'not bf16; drop --precision bf16')
    if not cpu.native_bf16:
        raise UserError(f'--precision bf16: this CPU ({cpu.name}) has neither AMX nor AVX512_BF16, so it '
                        f'cannot compute bf16 natively (OpenVINO would run fp32); use --precision fp32 or auto')


def load_openvino(path, batch_size=32, image_size=None, precision='fp32', threads=0):
    """A Predictor running ONNX file ``path`` in OpenVINO on the CPU; its ``precision`` says what ran
    ('auto' until the first batch decided, then bf16 or fp32; int8 for an INT8 file)."""
    path = check_model_file(path, 'ONNX file', '.onnx')
    ov = import_openvino()
    model = read_onnx(ov, path)
    static_batch, size, num_classes = _signature(model, path)
    check_image_size(path, size, image_size)
    int8 = any(op.get_type_name() == 'FakeQuantize' for op in model.get_ops())  # how QDQ pairs arrive
    cpu = cpu_features()
    check_precision(precision, int8, cpu, path)
    bf16 = not int8 and cpu.native_bf16 and precision != 'fp32'
    compiled = _compile(ov, model, 'bf16' if bf16 else 'fp32', threads or default_threads())
    ran = runtime_precision(compiled)
    if precision == 'bf16' and ran != 'bf16':
        raise UserError(f'OpenVINO compiled {path} for {ran}, not bf16, on this CPU; use --precision fp32')
    threads = compiled.get_property('INFERENCE_NUM_THREADS')
    prefix = f'OpenVINO {ov.get_version().split("-")[0]}, '
    suffix = f', {threads} thread{"s" if threads != 1 else ""}'
    run, words = _runner(compiled), ran
    if precision == 'auto' and ran == 'bf16':
        run = Bf16Check(run, _runner(_compile(ov, model, 'fp32', threads)), prefix, suffix)
        words, ran = 'bf16 if it keeps the fp32 top-1 class of every image of the first batch, else fp32', 'auto'
    elif precision == 'auto' and not int8 and not cpu.native_bf16:
        words = 'fp32 (no native bf16 on this CPU)'
    batch = 'batch' if static_batch is None else str(static_batch)
    predictor = Predictor(run, size, num_classes, batch_size, static_batch=static_batch,
                          card=_card(model, path), engine=prefix + words + suffix, precision=ran,
                          description=f'ONNX {path} (input {batch}x3x{size}x{size}, {num_classes} classes'
                                      f'{", INT8" if int8 else ""})')
    if isinstance(run, Bf16Check):
        run.predictor = predictor
    return predictor


def _signature(model, path):
    """(batch or None when dynamic, image size, classes) of a model taking Nx3xSxS images."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UserError(f'{path} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; '
                        f'expected one of each')
    static_batch, size = batch_and_size(_dims(model.inputs[0].get_partial_shape()), path)
    num_classes = _dims(model.outputs[0].get_partial_shape())[-1]
    if num_classes is None:
        raise UserError(f'{path}: the number of classes of its output is not fixed')
    return static_batch, size, num_classes


class Bf16Check:
    """``auto``: the first batch runs in bf16 and in fp32; bf16 stays when every image keeps its fp32
    top-1 class. The outcome is printed and goes into the predictor's ``precision`` and ``engine``."""

    def __init__(self, bf16, fp32, prefix, suffix):
        self.bf16, self.fp32, self.prefix, self.suffix = bf16, fp32, prefix, suffix
        self.chosen = None
        self.predictor = None

    def __call__(self, images):
        if self.chosen is not None:
            return self.chosen(images)
        fast, exact = self.bf16(images), self.fp32(images)
        changed = int((fast.argmax(axis=1) != exact.argmax(axis=1)).sum())
        count = len(images)
        if changed:
            self.chosen, precision = self.fp32, 'fp32'
            words = f'fp32 (bf16 changed the top-1 class of {changed} of {count} images of the first batch)'
            tqdm.write(f'=> note: in bf16 the top-1 class of {changed} of the {count} images of the first batch '
                  f'differs from fp32: running fp32')
        else:
            self.chosen, precision, words = self.bf16, 'bf16', 'bf16 (checked on the first batch)'
            tqdm.write(f'=> bf16 checked: every image of the first batch ({count}) keeps its fp32 top-1 class: '
                  f'running bf16')
        self.predictor.precision = precision
        self.predictor.engine = self.prefix + words + self.suffix
        return exact if changed else fast
