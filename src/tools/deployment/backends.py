"""What runs a model file in eval.py and infer.py: the one ``--backend`` option.

- ``auto`` (default): a ``.ckpt`` or ``.mindir`` runs in MindSpore, an ``.onnx`` in ONNX Runtime.
- ``mindspore``, ``onnxruntime``: that back-end for a ``.ckpt`` (``onnxruntime`` exports the deploy
  network on the fly and checks the export first). A ``.mindir`` only runs in MindSpore and an
  ``.onnx`` only in ONNX Runtime; asking otherwise is an error.
"""
import tempfile
from pathlib import Path

from src.tools.base.cli import UserError
from src.tools.deployment.export import export_network
from src.tools.deployment.model_files import load_deploy_network, load_mindir, load_onnx, network_predictor

MODEL_SUFFIXES = ('.ckpt', '.mindir', '.onnx')
_FILE_BACKEND = {'.mindir': 'mindspore', '.onnx': 'onnxruntime'}


def load_predictor(config):
    """The Predictor for ``config.pretrained`` (eval.py, infer.py); refuses to run without weights."""
    path = config.pretrained
    if path is None:
        raise UserError('pass --pretrained with a .ckpt, .mindir or .onnx file: without trained weights '
                        'the results would be those of a random network')
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise UserError(f'--pretrained {path}: expected a {", ".join(MODEL_SUFFIXES)} file')
    backend = config.backend
    if suffix != '.ckpt':
        runs_in = _FILE_BACKEND[suffix]
        if backend not in ('auto', runs_in):
            raise UserError(f'a {suffix} file runs only in {runs_in}; drop --backend {backend}, or pass the '
                            f'.ckpt it was exported from')
        if config.ema:
            raise UserError(f'--ema selects the EMA weights of a .ckpt file; {path} has only one set of weights')
        if suffix == '.mindir':
            return load_mindir(path, config.batch_size, config.image_size)
        return load_onnx(path, config.device_target, config.batch_size, config.image_size)
    net, description, class_names = load_deploy_network(path, config.arch, config.num_classes, ema=config.ema)
    if backend == 'onnxruntime':
        return onnx_runtime_predictor(net, config, description, class_names)
    return network_predictor(net, config.image_size, config.num_classes, config.batch_size, description,
                             class_names)


def onnx_runtime_predictor(net, config, description, class_names=None):
    """The deploy network run by ONNX Runtime. The ONNX file lives only while the session is created; the export checks it first."""
    with tempfile.TemporaryDirectory() as folder:
        path, difference, _ = export_network(net, config.image_size, 'ONNX', Path(folder) / 'model', class_names)
        predictor = load_onnx(path, config.device_target, config.batch_size, config.image_size)
    predictor.description = f'{description}, run by ONNX Runtime (export checked: {difference:.1e} relative)'
    return predictor
