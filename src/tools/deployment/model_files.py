"""Model files behind one interface, the Predictor: float32 logits for a batch of preprocessed images.

A ``.ckpt`` runs re-parameterized, a ``.mindir`` as a GraphCell, an ``.onnx`` in ONNX Runtime or OpenVINO
(openvino_engine.py). Which engine runs which file, and the order of imports: docs/deployment.md.
"""
import contextlib
import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from src.tools.base.cli import UserError
from src.tools.checkpoints.format import EMA_PREFIX, is_deploy_form, load_weights, read_checkpoint
from src.tools.checkpoints.model_card import ModelCard, settle


@dataclass(eq=False)
class Predictor:
    """Logits (N, C) for images (N, 3, S, S), in chunks of at most ``batch_size``. ``static_batch``: the file
    takes exactly that many images (short chunks padded with zeros); ``pad_to_seen``: pad a short last chunk
    once a full one has run, so that a GRAPH_MODE network compiles no second graph."""
    run: object
    image_size: int
    num_classes: int
    batch_size: int
    static_batch: int = None
    pad_to_seen: bool = False
    description: str = ''
    card: ModelCard = None
    engine: str = ''
    precision: str = 'fp32'

    def __post_init__(self):
        if self.batch_size < 1:
            raise UserError(f'batch_size must be at least 1, got {self.batch_size}')
        self.card = self.card or ModelCard()
        if self.card.class_names is not None and len(self.card.class_names) != self.num_classes:
            raise UserError(f'the model records {len(self.card.class_names)} class names for its {self.num_classes} '
                            f'outputs; export it again from its checkpoint')
        self.batch_size = self.static_batch or self.batch_size
        self._seen_full = False

    @property
    def class_names(self):
        return list(self.card.class_names) if self.card.class_names is not None else None

    def __call__(self, images):
        images = np.ascontiguousarray(images, dtype=np.float32)
        expected = (3, self.image_size, self.image_size)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f'expected images of shape (N, {", ".join(map(str, expected))}), got {images.shape}')
        outputs = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            count = len(chunk)
            pad = self.static_batch is not None or (self.pad_to_seen and self._seen_full)
            if pad and count < self.batch_size:
                chunk = np.concatenate([chunk, np.zeros((self.batch_size - count, *expected), np.float32)])
            self._seen_full |= len(chunk) == self.batch_size
            outputs.append(np.asarray(self.run(chunk), dtype=np.float32)[:count])
        if not outputs:
            return np.zeros((0, self.num_classes), np.float32)
        return np.concatenate(outputs)


def check_image_size(path, file_size, requested):
    """A UserError when a model file's input size differs from the one asked for."""
    if requested is not None and requested != file_size:
        raise UserError(f'{path} takes {file_size}x{file_size} images, but image_size is {requested}: '
                        f'set --image_size {file_size}, or leave it out (the file says it)')


def check_model_file(path, kind, suffix=None):
    """``path`` as a Path; a UserError when it is not a file, or not one with ``suffix``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f'{kind} {path} does not exist')
    if suffix and path.suffix.lower() != suffix:
        raise UserError(f'{path} is not an {suffix} file; export one with export.py --file_format ONNX')
    return path


def batch_and_size(dims, path):
    """(batch or None when dynamic, image size) from an NCHW input shape; a UserError otherwise."""
    dims = [d if isinstance(d, int) and d > 0 else None for d in dims]
    if len(dims) != 4 or dims[1] != 3 or dims[2] is None or dims[2] != dims[3]:
        raise UserError(f'{path} does not take Nx3xSxS images (its input is {dims}); '
                        f'export it with export.py')
    return dims[0], dims[2]


def load_deploy_network(path, config):
    """(net, description, card): checkpoint ``path`` loaded strictly, in eval mode and deploy form; its
    card settled with ``config``, whose ``ema`` takes the ``ema.*`` copy of a run with ``with_ema: 1``."""
    from src.repvgg import count_params, create_model, switch_net_to_deploy
    checkpoint = read_checkpoint(path)
    ema = config.ema
    prefix = EMA_PREFIX if ema else ''
    if ema and not any(name.startswith(prefix) for name in checkpoint):
        raise UserError(f'checkpoint {path} has no EMA weights (no ema.* entries): drop --ema, or use '
                        f'a checkpoint of a run with with_ema: 1')
    source = f'checkpoint {path}'
    deploy = is_deploy_form(checkpoint, prefix)
    card = replace(settle(ModelCard.read(checkpoint, source, 're-save it with this project'), config, source),
                   deploy=deploy)
    arch = card.arch  # a known arch: the card and the config accept no other
    net = create_model(arch, num_classes=card.num_classes, deploy=deploy)
    load_weights(net, checkpoint, prefix=prefix, source=source)
    net.set_train(False)
    params_before = count_params(net)
    switch_net_to_deploy(net)
    weights = 'EMA weights' if ema else 'weights'
    if deploy:
        form = f'deploy form, {params_before:,} parameters'
    else:
        form = (f'train form, {params_before:,} parameters, re-parameterized to deploy form, '
                f'{count_params(net):,} parameters')
    return net, f'{arch} {weights} from {path} ({form})', card


def network_predictor(net, card, batch_size, description=''):
    """A Predictor running a MindSpore network (already in eval mode) described by a settled ``card``."""
    import mindspore as ms
    return Predictor(lambda images: net(ms.Tensor(images)).asnumpy(), card.image_size, card.num_classes, batch_size,
                     pad_to_seen=True, description=description, card=card, engine=f'MindSpore {ms.__version__}, fp32')


def mindir_user_info(model):
    """A MINDIR ModelProto's user_info as a dict: a map in MindSpore's schema, which newer protobuf
    runtimes expose as a list of key/value entries."""
    try:
        return dict(model.user_info)
    except TypeError:
        return {entry.key: entry.value for entry in model.user_info}


def set_mindir_user_info(model, key, value):
    """Set ``key`` in a MINDIR ModelProto's user_info (map or list of entries, see mindir_user_info)."""
    try:
        model.user_info[key] = value
    except TypeError:
        entry = model.user_info.add()
        entry.key, entry.value = key, value


def read_mindir_signature(path):
    """(input dims, output dims (-1: dynamic), model card) of a MINDIR file, parsed with MindSpore's
    schema first: a corrupt file is then one line (mindspore.load would also print a C++ log)."""
    from mindspore.train import mind_ir_pb2  # MindSpore's MINDIR schema
    model = mind_ir_pb2.ModelProto()
    try:
        model.ParseFromString(Path(path).read_bytes())
    except (DecodeError, RuntimeError, ValueError):
        model = None
    graph = model.graph if model is not None else None
    if (graph is None or len(graph.input) != 1 or len(graph.output) != 1
            or not graph.input[0].tensor or not graph.output[0].tensor):
        raise UserError(f'{path} is not a MINDIR model with one input and one output '
                        f'(corrupt, or not written by export.py)')
    card = ModelCard.read(mindir_user_info(model), path)
    return list(graph.input[0].tensor[0].dims), list(graph.output[0].tensor[0].dims), card


def load_mindir(path, batch_size, image_size=None):
    """A Predictor running a MINDIR file (exported by export.py, or any NCHW classifier)."""
    import mindspore as ms
    from mindspore import Tensor, nn
    path = check_model_file(path, 'MINDIR file')
    input_dims, output_dims, card = read_mindir_signature(path)
    static_batch, size = batch_and_size(input_dims, path)
    check_image_size(path, size, image_size)
    try:
        cell = nn.GraphCell(ms.load(str(path)))
    except (RuntimeError, ValueError) as error:
        raise UserError(f'{path} cannot be loaded as MINDIR: {str(error).strip().splitlines()[0]}') from None
    batch = 'batch' if static_batch is None else str(static_batch)
    return Predictor(lambda images: cell(Tensor(images)).asnumpy(), size, int(output_dims[-1]), batch_size,
                     static_batch=static_batch, card=card, engine=f'MindSpore {ms.__version__}, fp32',
                     description=f'MINDIR {path} (input {batch}x3x{size}x{size}, {output_dims[-1]} classes)')


def load_cuda_libraries(ort):
    """onnxruntime-gpu's CUDA 13 and cuDNN 9 come as pip packages, off the loader's path (README, set-up): load
    them before a CUDA session. What is missing shows as a CUDA provider that does not start, which the
    callers report in one line, so the list of files preload_dlls prints is not shown."""
    with contextlib.redirect_stdout(io.StringIO()):
        ort.preload_dlls(directory='')


def onnxruntime_cuda_works():
    """Whether ONNX Runtime's CUDA provider starts here: onnxruntime-gpu lists it wherever it is
    installed, so a one-node session asks for it (and falls back to CPU when it does not)."""
    import onnx
    import onnxruntime as ort
    if 'CUDAExecutionProvider' not in ort.get_available_providers():
        return False
    load_cuda_libraries(ort)
    x, y = (onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1]) for name in 'xy')
    graph = onnx.helper.make_graph([onnx.helper.make_node('Identity', ['x'], ['y'])], 'probe', [x], [y])
    probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid('', 13)], ir_version=8)
    ort.set_default_logger_severity(4)  # the failure to load the CUDA libraries is not an error here
    try:
        session = ort.InferenceSession(probe.SerializeToString(), providers=['CUDAExecutionProvider'])
    finally:
        ort.set_default_logger_severity(2)  # ONNX Runtime's default: warnings
    return 'CUDAExecutionProvider' in session.get_providers()


QUANTIZED_OPS = frozenset({'QuantizeLinear', 'DequantizeLinear', 'QLinearConv', 'QLinearMatMul', 'ConvInteger',
                           'MatMulInteger'})


def inspect_onnx(path):
    """(precision: 'int8' for a quantized file, else 'fp32'; model card) of an ONNX file."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    precision = 'int8' if any(node.op_type in QUANTIZED_OPS for node in model.graph.node) else 'fp32'
    return precision, ModelCard.read({prop.key: prop.value for prop in model.metadata_props}, path)


def load_onnx(path, device_target='CPU', batch_size=32, image_size=None):
    """A Predictor running an ONNX file in ONNX Runtime on CPU or (CUDA) GPU."""
    import onnxruntime as ort
    path = check_model_file(path, 'ONNX file', '.onnx')
    providers = ['CPUExecutionProvider']
    if device_target == 'GPU':
        if 'CUDAExecutionProvider' not in ort.get_available_providers():
            raise UserError('this onnxruntime has no CUDAExecutionProvider: install onnxruntime-gpu '
                            '(matching your CUDA), or run with device target CPU')
        providers.insert(0, 'CUDAExecutionProvider')
        load_cuda_libraries(ort)
        ort.set_default_logger_severity(4)  # a CUDA provider that cannot start is reported below, in one line
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as error:  # ONNX Runtime has its own error types
        raise UserError(f'{path} cannot be loaded by ONNX Runtime: '
                        f'{str(error).strip().splitlines()[0]}') from None
    if device_target == 'GPU' and 'CUDAExecutionProvider' not in session.get_providers():
        raise UserError('ONNX Runtime could not start its CUDA provider (check the CUDA and cuDNN '
                        'versions onnxruntime-gpu needs), or run with device target CPU')
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise UserError(f'{path} has {len(inputs)} inputs and {len(outputs)} outputs; expected one of each')
    static_batch, size = batch_and_size(inputs[0].shape, path)
    check_image_size(path, size, image_size)
    num_classes = outputs[0].shape[-1]
    if not isinstance(num_classes, int):
        raise UserError(f'{path}: the number of classes of its output {outputs[0].shape} is not fixed')
    name = inputs[0].name
    batch = 'batch' if static_batch is None else str(static_batch)
    precision, card = inspect_onnx(path)
    return Predictor(lambda images: session.run(None, {name: images})[0], size, num_classes, batch_size,
                     static_batch=static_batch, card=card, precision=precision,
                     engine=f'ONNX Runtime {ort.__version__} ({session.get_providers()[0]}), {precision}',
                     description=(f'ONNX {path} (input {batch}x3x{size}x{size}, {num_classes} classes, '
                                  f'{session.get_providers()[0]})'))
