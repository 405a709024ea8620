"""Read PyTorch ``.pth`` and ``.safetensors`` files as numpy arrays, without torch, running no code.

A ``torch.save`` file (PyTorch >= 1.6) is a zip archive: ``<name>/data.pkl`` pickles the object,
naming each tensor's raw storage ``<name>/data/<key>`` through a persistent id. ``SafeUnpickler``
resolves only the globals that rebuild tensors and containers (any other is how a crafted file runs
code). safetensors' numpy API gives bfloat16 as ml_dtypes' type, read here as float32.
"""
import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open

from src.tools.base.cli import UserError

# storage class named in the pickle -> numpy dtype of its raw bytes
_STORAGE_DTYPES = {
    'FloatStorage': np.float32,
    'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16,
    'DoubleStorage': np.float64,
    'LongStorage': np.int64,
}
_SAFETENSORS_DTYPES = {'F32', 'F16', 'BF16', 'F64', 'I64'}  # the same element types in safetensors' names
_PICKLE_MAGIC = 0x1950a86a20f9469cfc6c  # first object of the legacy (pre-zip) torch format


class UnsafeCheckpointError(UserError):
    """The file asks for a Python global that rebuilding tensors does not need."""


def _numpy_dtype(values):
    """bfloat16 as float32 (numpy's own types know no bfloat16); other arrays unchanged."""
    return values.astype(np.float32) if values.dtype == ml_dtypes.bfloat16 else values


class _StorageType:
    """Stands for ``torch.FloatStorage`` etc. in the pickle; only its name (element type) matters."""

    def __init__(self, name):
        self.name = name


def _rebuild_tensor(values, offset, size, stride, *_ignored):
    """``torch._utils._rebuild_tensor_v2``: a strided view of a storage (its decoded values), copied out."""
    if not isinstance(values, np.ndarray):  # the pickle cannot make one: numpy's globals are refused
        raise UserError('corrupt .pth file: a tensor does not refer to a storage')
    offset, size, stride = int(offset), tuple(int(n) for n in size), tuple(int(s) for s in stride)
    if 0 in size:
        return np.zeros(size, values.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if offset < 0 or min(stride, default=0) < 0 or last >= len(values):
        raise UserError('corrupt .pth file: a tensor reaches outside its storage')
    view = np.lib.stride_tricks.as_strided(values[offset:], size, [s * values.itemsize for s in stride])
    return np.array(view)


def _rebuild_parameter(data, *_ignored):
    """``torch._utils._rebuild_parameter(_with_state)``: a Parameter is its data here."""
    return data


_ALLOWED_GLOBALS = {
    ('collections', 'OrderedDict'): OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` of a torch archive, resolving only tensor-rebuilding globals."""

    def __init__(self, file, read_record, byteorder):
        super().__init__(file)
        self._read_record = read_record
        self._byteorder = byteorder
        self._storages = {}

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == 'torch' and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(
            f"refusing to load: the file's pickle asks for the Python global '{module}.{name}', and "
            f'only tensors and plain containers are allowed (unpickling can call any function a file '
            f'names). If you trust the file, load it with torch (weights_only=False) and save only its '
            f"state dict: torch.save(state_dict, 'weights.pth')")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'):
            raise UserError(f'corrupt .pth file: unknown persistent id {pid!r:.80}')
        _, storage_type, key, _location, numel = pid
        dtype = _STORAGE_DTYPES.get(getattr(storage_type, 'name', None))
        if not isinstance(storage_type, _StorageType) or dtype is None:
            raise UnsafeCheckpointError(f'refusing to load: storage of unsupported type {storage_type!r:.80}')
        key = str(key)
        if key not in self._storages:
            raw = np.frombuffer(self._read_record(key), np.dtype(dtype).newbyteorder(self._byteorder))
            values = _numpy_dtype(raw.astype(dtype))
            if len(values) < int(numel):
                raise UserError(f'corrupt .pth file: storage {key} holds {len(values)} values, not {numel}')
            self._storages[key] = values  # decoded once, shared by all its views
        return self._storages[key]


def read_pth(path):
    """The object saved in a torch zip archive at ``path``, with numpy arrays for tensors."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        if _is_legacy_torch(path):
            raise UserError(f'{path} uses the legacy PyTorch format (torch < 1.6 or '
                            f'_use_new_zipfile_serialization=False), which can only be read by '
                            f'unpickling with torch; re-save it with torch >= 1.6: '
                            f'torch.save(torch.load(f, weights_only=True), g)') from None
        raise UserError(f'{path} is not a PyTorch checkpoint (not a torch zip archive), nor a '
                        f'safetensors or MindSpore .ckpt file') from None
    with archive:
        pickles = [name for name in archive.namelist() if name.endswith('/data.pkl') or name == 'data.pkl']
        if len(pickles) != 1:
            raise UserError(f'{path} is a zip file but not a PyTorch checkpoint (no single data.pkl)')
        prefix = pickles[0][:-len('data.pkl')]
        names = set(archive.namelist())
        byteorder = '<'
        if prefix + 'byteorder' in names and archive.read(prefix + 'byteorder').strip() == b'big':
            byteorder = '>'

        def read_record(key):
            record = f'{prefix}data/{key}'
            if record not in names:
                raise UserError(f'corrupt .pth file {path}: storage {record} is missing')
            return archive.read(record)

        unpickler = SafeUnpickler(io.BytesIO(archive.read(pickles[0])), read_record, byteorder)
        try:
            return unpickler.load()
        except UserError:
            raise
        except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, TypeError, KeyError,
                IndexError, AttributeError, MemoryError) as error:
            raise UserError(f'corrupt .pth file {path}: {error}') from None


def _is_legacy_torch(path):
    # The legacy format starts with the magic number pickled with protocol 2; compare the bytes
    # rather than unpickling anything from an untrusted file.
    magic = pickle.dumps(_PICKLE_MAGIC, protocol=2)
    with open(path, 'rb') as file:
        return file.read(len(magic)) == magic


def is_safetensors(path):
    """Whether ``path`` starts like a safetensors file (header size, then a JSON object)."""
    with open(path, 'rb') as file:
        head = file.read(9)
    if len(head) < 9:
        return False
    size = struct.unpack('<Q', head[:8])[0]
    return head[8:9] == b'{' and 0 < size < Path(path).stat().st_size


def read_safetensors(path):
    """{name: numpy array} of a safetensors file (bfloat16 as float32); a UserError for a bad file."""
    try:
        with safe_open(path, framework='numpy') as file:
            names = file.keys()  # a safetensors file, not a dict: it does not iterate
            for name in names:
                dtype = file.get_slice(name).get_dtype()
                if dtype not in _SAFETENSORS_DTYPES:
                    raise UserError(f'{path}: tensor {name} has unsupported dtype {dtype}')
            return {name: _numpy_dtype(file.get_tensor(name)) for name in names}
    except SafetensorError as error:
        raise UserError(f"{path} is not a valid safetensors file ({' '.join(str(error).split())})") from None
