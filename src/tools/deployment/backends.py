"""What runs a model file in eval.py and infer.py: the one ``--backend`` option.

- ``auto`` (default): a ``.ckpt`` runs through oneDNN's direct kernels on CPU (src/tools/deployment/
  onednn, checked against MindSpore first; MindSpore's own convolutions with a note where the kernel
  cannot be built) and in MindSpore on GPU; a ``.mindir`` runs in MindSpore, an ``.onnx`` in ONNX
  Runtime.
- ``mindspore``, ``onednn``, ``onnxruntime``: that back-end for a ``.ckpt`` (``onnxruntime`` exports
  the deploy network on the fly and checks the export first). A ``.mindir`` only runs in MindSpore
  and an ``.onnx`` only in ONNX Runtime; asking otherwise is an error.

``--fast 1`` and ``--cpu_kernels onednn|mindspore`` are the older names of ``--backend onnxruntime``
and ``--backend onednn|mindspore``; they keep working, and a command that mixes names asking for
different back-ends is refused instead of one silently winning.
"""
import tempfile
from pathlib import Path

from src.tools.base.cli import UserError
from src.tools.deployment.export import export_network, finite_outputs
from src.tools.deployment.model_files import load_deploy_network, load_mindir, load_onnx, network_predictor
from src.tools.deployment.onednn.kernel import OneDNNCheckFailed, OneDNNUnavailable, use_onednn_convs_checked

MODEL_SUFFIXES = ('.ckpt', '.mindir', '.onnx')
_FILE_BACKEND = {'.mindir': 'mindspore', '.onnx': 'onnxruntime'}


def requested_backend(config):
    """The back-end asked for by ``--backend`` or its older names (``--fast``, ``--cpu_kernels``)."""
    asked = {}
    if config.backend != 'auto':
        asked[f'--backend {config.backend}'] = config.backend
    if config.fast:
        asked['--fast 1'] = 'onnxruntime'
    if config.cpu_kernels:
        asked[f'--cpu_kernels {config.cpu_kernels}'] = config.cpu_kernels
    if len(set(asked.values())) > 1:
        raise UserError(f'{" and ".join(asked)} ask for different back-ends: pass only --backend '
                        f'(--fast 1 and --cpu_kernels are its older names)')
    return next(iter(asked.values()), 'auto')


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
    backend = requested_backend(config)
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
    if backend == 'onednn' and config.device_target != 'CPU':
        raise UserError(f'--backend onednn runs on CPU only; this run targets {config.device_target}: '
                        f'use --backend mindspore (or --device_target CPU)')
    net, description, class_names = load_deploy_network(path, config.arch, config.num_classes, ema=config.ema)
    if backend == 'onnxruntime':
        return onnx_runtime_predictor(net, config, description, class_names)
    if backend == 'onednn' or (backend == 'auto' and config.device_target == 'CPU'):
        description += onednn_kernels(net, config.image_size, required=backend == 'onednn', model=path)
    return network_predictor(net, config.image_size, config.num_classes, config.batch_size, description,
                             class_names)


def onednn_kernels(net, image_size, required=False, model='the model'):
    """Run ``net``'s convolutions through oneDNN's direct kernels, checked against MindSpore's own on
    a random batch; returns the words for the description. When the kernel cannot be built here,
    says so and leaves ``net`` as it is, or stops when it was asked for by name (``required``).
    A network whose own outputs are not finite is named (``model``) before the kernel is blamed."""
    finite_outputs(net, min(image_size, 64), model, num_images=1)  # the kernel check's probe
    try:
        difference = use_onednn_convs_checked(net, min(image_size, 64))
    except OneDNNUnavailable as error:
        if required:
            raise UserError(f'--backend onednn: the oneDNN kernel is not available here ({error}); '
                            f'use --backend mindspore') from None
        print(f"note: the oneDNN kernel is not available ({error}); using MindSpore's own convolutions. "
              f'--backend mindspore skips this attempt.')
        return ''
    except OneDNNCheckFailed as error:
        raise UserError(f'{error}; run with --backend mindspore, and please report this') from None
    return f', convolutions by oneDNN (checked: {difference:.1e} relative)'


def onnx_runtime_predictor(net, config, description, class_names=None):
    """The deploy network run by ONNX Runtime (on CPU about as fast as the oneDNN kernel, with less
    memory). The ONNX file lives only while the session is created; the export checks it first."""
    with tempfile.TemporaryDirectory() as folder:
        path, difference, _ = export_network(net, config.image_size, 'ONNX', Path(folder) / 'model', class_names,
                                             model=config.pretrained)
        predictor = load_onnx(path, config.device_target, config.batch_size, config.image_size)
    predictor.description = f'{description}, run by ONNX Runtime (export checked: {difference:.1e} relative)'
    return predictor
