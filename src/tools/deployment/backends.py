"""What runs a model file in eval.py, infer.py, eval_onnx.py and infer_onnx.py: ``--backend`` (which
engine runs which file, and ``--precision`` / ``--threads`` of OpenVINO: docs/deployment.md). Every
run prints the model, the engine with its precision and, on CPU, the instruction sets (``announce``).
"""
import tempfile
from pathlib import Path

from src.config import PRECISIONS
from src.tools.base.cli import UserError, at_least
from src.tools.checkpoints.model_card import given, settle
from src.tools.deployment.model_files import (
    load_deploy_network,
    load_mindir,
    load_onnx,
    network_predictor,
    onnxruntime_cuda_works,
)
from src.tools.deployment.openvino_engine import check_precision, cpu_features, import_openvino, load_openvino

MODEL_SUFFIXES = ('.ckpt', '.mindir', '.onnx')
ONNX_BACKENDS = ('auto', 'onnxruntime', 'openvino')  # eval_onnx.py / infer_onnx.py
ENGINE_NAMES = {'mindspore': 'MindSpore', 'onnxruntime': 'ONNX Runtime', 'openvino': 'OpenVINO'}


def choose_engine(backend, suffix, device_target):
    """The engine for a ``suffix`` file: ``backend``, or auto's; a UserError for a pair that cannot run."""
    if suffix == '.mindir':
        if backend not in ('auto', 'mindspore'):
            raise UserError(f'a .mindir file runs only in mindspore; drop --backend {backend}, or pass the .ckpt '
                            f'or .onnx it was exported from')
        return 'mindspore'
    if backend == 'auto':
        if device_target == 'CPU':
            return 'openvino'
        return 'mindspore' if suffix == '.ckpt' else 'onnxruntime'
    if suffix == '.onnx' and backend == 'mindspore':
        raise UserError('an .onnx file runs in openvino or onnxruntime; drop --backend mindspore, or pass the '
                        '.ckpt it was exported from')
    if backend == 'openvino' and device_target != 'CPU':
        raise UserError(f'--backend openvino runs on CPU only; this run targets {device_target}: drop --backend '
                        f"(MindSpore, or ONNX Runtime's CUDA provider for an .onnx), or run on CPU")
    return backend


def resolve_engine(backend, suffix, device_target, precision, threads):
    """The engine for a ``suffix`` file, checked before any work: the pair can run, OpenVINO is
    installed where it runs, bf16 is asked only of a CPU that computes it, --threads only of OpenVINO."""
    engine = choose_engine(backend, suffix, device_target)
    if engine == 'openvino':
        import_openvino()
        check_precision(precision, False, cpu_features(), 'the model')
    elif precision == 'bf16':
        raise UserError(f'--precision bf16 runs in the openvino back-end (CPU) only, and this run uses {engine}: '
                        f'drop --precision, or pass --backend openvino')
    elif threads:
        raise UserError(f'--threads sets the threads of the openvino back-end, and this run uses {engine}: drop '
                        f'--threads, or pass --backend openvino')
    return engine


def load_onnx_file(path, engine, device_target, batch_size, image_size, precision, threads=0):
    """A Predictor running an ONNX file in ``engine`` (openvino or onnxruntime)."""
    if engine == 'openvino':
        return load_openvino(path, batch_size, image_size, precision, threads)
    return load_onnx(path, device_target, batch_size, image_size)


def settled(predictor, config, path):
    """``predictor`` of an ONNX or MINDIR file, its card settled with ``config`` (model_card.settle)."""
    predictor.card = settle(predictor.card, config, path, predictor.image_size, predictor.num_classes)
    return predictor


def load_predictor(config, default_precision='fp32'):
    """The Predictor of ``config.pretrained`` (eval.py, infer.py), its card settled with the config;
    ``default_precision``: the script's. MindSpore's device is set once the engine is known to hold."""
    path = config.pretrained
    if path is None:
        raise UserError('pass --pretrained with a .ckpt, .mindir or .onnx file: without trained weights '
                        'the results would be those of a random network')
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise UserError(f'--pretrained {path}: expected a {", ".join(MODEL_SUFFIXES)} file')
    precision = config.precision or default_precision
    engine = resolve_engine(config.backend, suffix, config.device_target, precision, config.threads)
    if suffix != '.onnx':  # MindSpore reads the file; an .onnx in another engine starts without loading it
        from src.tools.base.device import set_device
        set_device(config.device_target, config.device_id)
    if suffix != '.ckpt':
        if config.ema:
            raise UserError(f'--ema selects the EMA weights of a .ckpt file; {path} has only one set of weights')
        if suffix == '.mindir':
            return settled(load_mindir(path, config.batch_size, given(config, 'image_size')), config, path)
        return settled(load_onnx_file(path, engine, config.device_target, config.batch_size,
                                      given(config, 'image_size'), precision, config.threads), config, path)
    net, description, card = load_deploy_network(path, config)
    if engine == 'mindspore':
        return network_predictor(net, card, config.batch_size, description)
    from src.tools.deployment.export import export_network
    with tempfile.TemporaryDirectory() as folder:  # the ONNX file lives while the engine loads it
        onnx_path, difference, _ = export_network(net, card.image_size, 'ONNX', Path(folder) / 'model', card,
                                                  model=path)
        predictor = load_onnx_file(onnx_path, engine, config.device_target, config.batch_size, card.image_size,
                                   precision, config.threads)
    predictor.card = card
    predictor.description = f'{description}, run by {ENGINE_NAMES[engine]} (export checked: {difference:.1e} relative)'
    return predictor


def add_onnx_arguments(parser, default_precision):
    """The model and engine options of eval_onnx.py and infer_onnx.py (``--backend`` etc. as eval.py's)."""
    parser.add_argument('-c', '--onnx_path', type=Path, required=True, help='ONNX model file')
    parser.add_argument('--image_size', type=int, default=None, help="image size (default: the model's input size)")
    parser.add_argument('-m', '--device_target', choices=('auto', 'CPU', 'GPU'), default='auto',
                        help="auto (default): GPU where ONNX Runtime's CUDA provider starts, else CPU; CPU; or GPU "
                             "(ONNX Runtime's CUDA provider, needs onnxruntime-gpu)")
    parser.add_argument('--backend', choices=ONNX_BACKENDS, default='auto',
                        help="what runs the model: auto (OpenVINO on CPU, ONNX Runtime's CUDA provider on GPU), "
                             'onnxruntime, or openvino (CPU)')
    parser.add_argument('--precision', choices=PRECISIONS, default=default_precision,
                        help='openvino only: fp32; bf16 (CPUs with AMX or AVX512_BF16); or auto: bf16 where the CPU '
                             'has it and the first batch keeps its fp32 top-1 classes in bf16, else fp32. An INT8 '
                             f'model runs in int8 (default: {default_precision})')
    parser.add_argument('--threads', type=at_least(0), default=0,
                        help='openvino only: inference threads; 0: the CPUs this process may use (default: 0)')


def onnx_device(device_target, backend):
    """The device of eval_onnx.py / infer_onnx.py. ``auto`` (their default; the model zoo ran them on
    GPU): GPU where ONNX Runtime's CUDA provider starts, else CPU, saying so; OpenVINO is CPU only."""
    if device_target != 'auto':
        return device_target
    if backend == 'openvino':
        return 'CPU'
    if onnxruntime_cuda_works():
        return 'GPU'
    print("=> note: device auto: ONNX Runtime's CUDA provider does not start on this machine (no GPU, or not "
          'the CUDA and cuDNN libraries of onnxruntime-gpu: requirements.txt); running on CPU', flush=True)
    return 'CPU'


def load_onnx_engine(args, config):
    """The Predictor of eval_onnx.py / infer_onnx.py, its card settled with ``config`` (their flags)."""
    engine = resolve_engine(args.backend, '.onnx', args.device_target, args.precision, args.threads)
    predictor = load_onnx_file(args.onnx_path, engine, args.device_target, args.batch_size, args.image_size,
                               args.precision, args.threads)
    return settled(predictor, config, args.onnx_path)


def announce(predictor, device_target):
    """Print the model, the engine with its precision and settings, and the CPU's instruction sets."""
    print(f'=> {predictor.description}')
    where = f'CPU: {cpu_features()}' if device_target == 'CPU' else f'on {device_target}'
    print(f'=> {predictor.engine}; {where}')
