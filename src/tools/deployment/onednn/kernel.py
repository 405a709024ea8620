"""CPU convolutions through oneDNN's direct kernels, for MindSpore inference.

MindSpore 2.8's CPU ``Conv2D`` gives oneDNN plain NCHW tensors, and oneDNN then runs im2col +
GEMM; that is why a RepVGG forward on CPU spends ~85 % of its time in 3x3 convolutions and the
deploy form barely beats the train form there. ``onednn_conv.cc`` asks the same oneDNN library
(the ``libdnnl.so.2`` inside the MindSpore wheel) for a convolution in the layout of its choice,
which selects its direct kernels (brgconv on channels-last tensors with AVX-512) and fuses bias
and ReLU. It is compiled once per machine with the system C++ compiler and cached.

Inference only: the op has no gradient and is a MindSpore custom op, so a network using it can be
evaluated but neither trained nor exported (export.py works on the plain network).
"""
import contextlib
import ctypes
import hashlib
import itertools
import os
import shutil
import subprocess
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from src.tools.base.device import invalidate_compiled_graphs
from src.tools.base.cli import UserError
from src.tools.base.files import atomic_path, write_text_atomic
from src.tools.base.numerics import BACKEND_TOLERANCE, relative_difference

SOURCE = Path(__file__).with_name('onednn_conv.cc')
FUNCTION = 'RepVGGOneDNNConv'
_built = set()
_weights_ids = itertools.count(1)  # never reused in a process: the kernel keys packed weights on it


class OneDNNUnavailable(RuntimeError):
    """The oneDNN kernel cannot be built or loaded here; the message says why."""


class OneDNNCheckFailed(RuntimeError):
    """The network with the oneDNN kernel failed, or does not compute what it computed before."""


def mindspore_onednn_library():
    """Path of the oneDNN 2.x library bundled with MindSpore; OneDNNUnavailable otherwise."""
    library = Path(ms.__file__).parent / 'lib' / 'libdnnl.so.2'
    if not library.is_file():
        raise OneDNNUnavailable(f'this MindSpore ({ms.__version__}) ships no {library.name}')
    version = _onednn_version(library)
    if version[0] != 2:
        raise OneDNNUnavailable(f'{library} is oneDNN {".".join(map(str, version))}; '
                                f'the kernel is written against the oneDNN 2.x C API')
    return library


def _onednn_version(library):
    class Version(ctypes.Structure):  # dnnl_version_t
        _fields_ = [('major', ctypes.c_int), ('minor', ctypes.c_int), ('patch', ctypes.c_int),
                    ('hash', ctypes.c_char_p), ('cpu_runtime', ctypes.c_uint), ('gpu_runtime', ctypes.c_uint)]
    dnnl = ctypes.CDLL(str(library))
    dnnl.dnnl_version.restype = ctypes.POINTER(Version)
    version = dnnl.dnnl_version().contents
    return version.major, version.minor, version.patch


def cache_dir():
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'repvgg-mindspore'


def build_kernel(directory=None):
    """Path of the compiled kernel library, building it on first use (about 2 s).

    The file name carries a hash of the source and of the oneDNN library, so an edit or a
    MindSpore upgrade builds a new one; concurrent builds (several ranks) are safe because
    each writes its own temporary file and renames it into place. A sidecar ``.sha256`` records
    the library's checksum: a damaged file in the cache (truncated by a full disk or a copy) is
    rebuilt rather than loaded, which would crash the process with a bus error.
    """
    onednn = mindspore_onednn_library().resolve()
    identity = f'{onednn}|{onednn.stat().st_size}|{ms.__version__}'.encode()
    digest = hashlib.sha256(SOURCE.read_bytes() + identity).hexdigest()[:16]
    target = Path(directory or cache_dir()) / f'onednn_conv-{digest}.so'
    checksum = target.with_name(target.name + '.sha256')
    if target in _built or _intact(target, checksum):
        _built.add(target)
        return target
    compiler = shutil.which(os.environ.get('CXX', 'g++'))
    if compiler is None:
        raise OneDNNUnavailable('no C++ compiler found (install g++ or set CXX)')
    try:
        with atomic_path(target) as temporary:
            command = [compiler, '-O2', '-std=c++17', '-shared', '-fPIC', '-pthread', '-o', str(temporary),
                       str(SOURCE), str(onednn), f'-Wl,-rpath,{onednn.parent}']
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise OneDNNUnavailable(f'compiling {SOURCE.name} failed:\n{result.stderr.strip()}')
            sha = hashlib.sha256(temporary.read_bytes()).hexdigest()
        write_text_atomic(checksum, sha + '\n')
    except (OSError, UserError) as error:  # e.g. a cache folder that cannot be written
        raise OneDNNUnavailable(f'cannot build into {target.parent}: {error}') from None
    _built.add(target)
    return target


def _intact(library, checksum):
    """Whether ``library`` exists with the checksum recorded when it was built."""
    try:
        return hashlib.sha256(library.read_bytes()).hexdigest() == checksum.read_text().strip()
    except OSError:
        return False


class OneDNNConv2d(nn.Cell):
    """Drop-in for an ``nn.Conv2d`` (+ ReLU when ``relu``) that shares its weight and bias.

    Sharing the Parameter objects keeps names: a checkpoint loads the same way, and
    ``.weight``/``.bias`` read as on the Conv2d it replaces. The kernel packs the weights into
    oneDNN's layout on first use and keeps them, so the weights must be final (as for export).
    ``x_nhwc``/``y_nhwc``: the input/output tensor is (N, H, W, C), oneDNN's own activation
    layout, which saves two reorders per layer inside a chain of these convolutions.
    """

    def __init__(self, conv, relu=False, x_nhwc=False, y_nhwc=False, library=None):
        super().__init__()
        _check_supported(conv)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = conv.kernel_size
        self.stride = conv.stride[-1]
        self.padding = _padding(conv)[0]  # symmetric: checked above
        self.group = conv.group
        self.relu, self.x_nhwc, self.y_nhwc = relu, x_nhwc, y_nhwc
        self.weight = conv.weight
        self.bias = conv.bias if conv.has_bias else Tensor(np.zeros(conv.out_channels, np.float32))
        self.library = str(library or build_kernel())
        self.weights_id = next(_weights_ids)
        self.settings = Tensor(np.array([self.stride, self.padding, self.group, relu, x_nhwc, y_nhwc,
                                         self.weights_id], np.int64))
        kernel, stride, padding = self.kernel_size[0], self.stride, self.padding

        def out_shape(x, weight, *_):
            height, width = (x[1], x[2]) if x_nhwc else (x[2], x[3])
            size = lambda n: (n + 2 * padding - kernel) // stride + 1  # noqa: E731
            if y_nhwc:
                return (x[0], size(height), size(width), weight[0])
            return (x[0], weight[0], size(height), size(width))

        self.op = ops.Custom(f'{self.library}:{FUNCTION}', out_shape=out_shape,
                             out_dtype=lambda x, *_: x, func_type='aot')
        # PyNative caches an op's output shape by its attributes and input shapes: these
        # settings change the output shape, so they must be attributes too.
        self.op.add_prim_attr('conv_settings', f'k{kernel} s{stride} p{padding} nhwc{int(x_nhwc)}{int(y_nhwc)}')

    def construct(self, x):
        return self.op(x, self.weight, self.bias, self.settings)

    def __del__(self):
        try:  # free the packed weights kept by the kernel
            ctypes.CDLL(self.library).RepVGGOneDNNRelease(ctypes.c_int64(self.weights_id))
        except (AttributeError, OSError, TypeError):  # half-built cell, or interpreter shutdown
            pass

    def extend_repr(self):
        return (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, '
                f'padding={self.padding}, group={self.group}, relu={self.relu}, x_nhwc={self.x_nhwc}, '
                f'y_nhwc={self.y_nhwc}')


def _padding(conv):
    """(top, bottom, left, right) padding of an nn.Conv2d."""
    if conv.pad_mode == 'valid':
        return (0,) * 4
    return conv.padding if isinstance(conv.padding, tuple) else (conv.padding,) * 4


def _check_supported(conv):
    square = conv.kernel_size[0] == conv.kernel_size[1] and conv.stride[-1] == conv.stride[-2]
    padding = _padding(conv)
    if (conv.pad_mode not in ('pad', 'valid') or len(set(padding)) != 1 or not square
            or set(conv.dilation) != {1} or conv.data_format != 'NCHW'):
        raise ValueError(f'OneDNNConv2d supports square NCHW convolutions with symmetric padding '
                         f"(pad_mode 'pad' or 'valid') and no dilation, got {conv}")


def use_onednn_convs(net, library=None):
    """Replace every ``nn.Conv2d`` of ``net`` (eval mode, CPU) by a OneDNNConv2d, in place.

    A network that describes itself as a plain chain of conv -> ReLU (``net.conv_relu_chain()``,
    e.g. a re-parameterized RepVGG classifier) gets one fused conv + bias + ReLU per link, passing
    channels-last tensors from one link to the next (NCHW in, NCHW out). Every other convolution is
    swapped one for one. Returns the number of convolutions replaced; raises OneDNNUnavailable when
    the kernel cannot be built.
    """
    library = library or build_kernel()
    replaced = 0
    chain = net.conv_relu_chain() if hasattr(net, 'conv_relu_chain') else None
    for index, (conv, install) in enumerate(chain or []):
        with _names_kept(conv):
            install(OneDNNConv2d(conv, relu=True, x_nhwc=index > 0, y_nhwc=index < len(chain) - 1, library=library))
        replaced += 1
    for _, cell in list(net.cells_and_names()):
        for name, child in list(cell.name_cells().items()):
            if isinstance(child, nn.Conv2d):
                with _names_kept(child):
                    setattr(cell, name, OneDNNConv2d(child, library=library))
                replaced += 1
    invalidate_compiled_graphs(net)
    return replaced


@contextlib.contextmanager
def _names_kept(conv):
    """Inside the block a OneDNNConv2d sharing ``conv``'s Parameters is put in its place; afterwards
    the Parameter names are what they were (MindSpore re-prefixes them on assignment)."""
    names = [(param, param.name) for param in conv.get_parameters()]
    yield
    for param, param_name in names:
        param.name = param_name


def use_onednn_convs_checked(net, image_size, tolerance=BACKEND_TOLERANCE):
    """``use_onednn_convs`` that first proves itself: the outputs for one random image before and
    after must agree to ``tolerance`` (relative to the largest), else OneDNNCheckFailed.
    Returns the relative difference. The kernel is built before ``net`` is touched, so on
    OneDNNUnavailable ``net`` is unchanged."""
    library = build_kernel()
    probe = Tensor(np.random.default_rng(0).normal(size=(1, 3, image_size, image_size)).astype(np.float32))
    before = _as_array(net(probe))
    use_onednn_convs(net, library)
    try:
        after = _as_array(net(probe))
    except RuntimeError as error:  # the kernel returned an error code (its reason is on stderr)
        raise OneDNNCheckFailed(f'the oneDNN kernel failed: {str(error).strip().splitlines()[0]}') from None
    difference = relative_difference(after, before)
    if not difference <= tolerance:
        raise OneDNNCheckFailed(f'the oneDNN kernel changed the outputs by {difference:.1e} (relative), '
                             f'more than {tolerance:.0e}')
    return difference


def _as_array(outputs):
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    return np.concatenate([output.asnumpy().ravel() for output in outputs])
