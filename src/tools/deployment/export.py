"""Export of the deploy-form network to MINDIR or ONNX (AIR needs Ascend), checked after writing.

The file is written in a temporary folder beside the target, loaded back and run on random
images against the network; only a file that agrees (BACKEND_TOLERANCE) is renamed into place.
"""
import os
import shutil
import tempfile
from pathlib import Path

import mindspore as ms
import numpy as np
import onnx
from mindspore import Tensor
from mindspore.onnx import export as export_onnx

from src.tools.base.cli import UserError
from src.tools.base.numerics import BACKEND_TOLERANCE, relative_difference
from src.tools.deployment.model_files import load_mindir, load_onnx

FORMAT_SUFFIXES = {'MINDIR': '.mindir', 'ONNX': '.onnx', 'AIR': '.air'}
# Operators that work on each sample independently: a graph of only these keeps its meaning
# with any batch size.
PER_SAMPLE_OPS = frozenset({'Conv', 'Relu', 'ReduceMean', 'Gemm', 'MatMul', 'Add', 'Mul', 'Sigmoid',
                            'Identity'})


def check_export_format(file_format, device_target):
    """A UserError for formats this device cannot write (AIR is written only on Ascend)."""
    if file_format not in FORMAT_SUFFIXES:
        raise UserError(f"unknown file_format '{file_format}'; choose MINDIR or ONNX")
    if file_format == 'AIR':
        raise UserError(f'MindSpore writes AIR files only on Ascend devices and this run targets '
                        f'{device_target}: use --file_format MINDIR or ONNX (AIR is for the Ascend toolchain)')


def export_file_path(export_path, file_format):
    """``export_path`` with the format's suffix (added unless already there, as MindSpore does)."""
    path = Path(export_path)
    suffix = FORMAT_SUFFIXES[file_format]
    return path if path.suffix.lower() == suffix else path.with_name(path.name + suffix)


def make_onnx_batch_dynamic(model):
    """Mark the batch dimension of an ONNX model's input and output as symbolic ('batch').

    MindSpore exports ONNX only with fixed shapes ('not support dynamic shape mode'). When every
    operator works per sample the graph is valid for any batch, so only the declared shapes change;
    otherwise the model is left as exported. Returns whether the batch became dynamic.
    """
    ops = {node.op_type for node in model.graph.node}
    axes_ok = all(0 not in attribute.ints for node in model.graph.node if node.op_type == 'ReduceMean'
                  for attribute in node.attribute if attribute.name == 'axes')
    if not ops <= PER_SAMPLE_OPS or not axes_ok:
        return False
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = 'batch'
    del model.graph.value_info[:]  # intermediate shapes recorded with batch 1
    return True


def _export_raw(net, image_size, file_format, stem):
    """Write ``stem``+suffix; MINDIR gets a dynamic batch, ONNX batch 1 made dynamic afterwards."""
    shape = (3, image_size, image_size)
    path = stem.with_suffix(FORMAT_SUFFIXES[file_format])
    if file_format == 'MINDIR':
        ms.export(net, Tensor(shape=[None, *shape], dtype=ms.float32), file_name=str(stem), file_format='MINDIR')
        # MindSpore makes the file read-only for its owner; give it a normal file's permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(path, 0o666 & ~umask)
    else:
        # mindspore.onnx.export's dynamic_axes marks the input only (the output keeps batch 1),
        # whatever the graph does; make_onnx_batch_dynamic checks the operators first.
        export_onnx(net, Tensor(np.zeros((1, *shape), np.float32)), file_name=str(stem),
                    input_names=['image'], output_names=['logits'])
        model = onnx.load(str(path))
        if make_onnx_batch_dynamic(model):
            onnx.checker.check_model(model)
            onnx.save(model, str(path))
    return path


def exported_difference(path, net, image_size, num_images=2, seed=0):
    """(max relative difference to ``net`` on random images, Predictor) of the file at ``path``."""
    images = np.random.default_rng(seed).normal(size=(num_images, 3, image_size, image_size)).astype(np.float32)
    expected = net(Tensor(images)).asnumpy()
    load = load_onnx if path.suffix == '.onnx' else load_mindir
    predictor = load(path, batch_size=num_images, image_size=image_size)
    return relative_difference(predictor(images), expected), predictor


def export_network(net, image_size, file_format, export_path):
    """Export the deploy-form, eval-mode ``net`` (fp32, input Nx3xSxS) and check the file.

    Returns (path written, max relative difference to the network, 'batch' or the fixed batch).
    """
    target = export_file_path(export_path, file_format)
    if target.is_dir():
        raise UserError(f'export path {target} is a folder; pass a file name such as {target / "model"}')
    target.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(dir=target.parent, prefix=f'.{target.name}.'))
    try:
        written = _export_raw(net, image_size, file_format, workdir / 'model')
        difference, predictor = exported_difference(written, net, image_size)
        if not difference <= BACKEND_TOLERANCE:
            raise RuntimeError(f'the exported {file_format} file differs from the network by {difference:.3g} '
                               f'(relative); nothing was written')
        batch = 'batch' if predictor.static_batch is None else str(predictor.static_batch)
        os.replace(written, target)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return target, difference, batch

