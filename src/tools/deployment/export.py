"""Export of the deploy-form network to MINDIR or ONNX (AIR needs Ascend), checked after writing.

The file is written in a temporary folder beside the target, loaded back and run on random
images against the network; only a file that agrees (BACKEND_TOLERANCE) is renamed into place.
"""
import errno
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import mindspore as ms
import numpy as np
import onnx
from mindspore import Tensor
from mindspore.onnx import export as export_onnx

from src.tools.base.cli import UserError
from src.tools.base.files import (
    check_writable_file,
    give_usual_permissions,
    make_folder,
    partial_name,
    reason,
    regular_target,
    remove_partial_files,
)
from src.tools.base.numerics import BACKEND_TOLERANCE, relative_difference
from src.tools.checkpoints.model_card import ModelCard
from src.tools.deployment.evaluation import check_finite_logits
from src.tools.deployment.model_files import load_mindir, load_onnx, set_mindir_user_info

FORMAT_SUFFIXES = {'MINDIR': '.mindir', 'ONNX': '.onnx', 'AIR': '.air'}
# Operators that work on each sample alone: a graph of only these means the same at any batch size.
PER_SAMPLE_OPS = frozenset({'Conv', 'Relu', 'ReduceMean', 'Gemm', 'MatMul', 'Add', 'Mul', 'Sigmoid',
                            'Identity'})


def export_file_path(export_path, file_format):
    """``export_path`` with the format's suffix (added unless already there, as MindSpore does)."""
    path = Path(export_path)
    suffix = FORMAT_SUFFIXES[file_format]
    return path if path.suffix.lower() == suffix else path.with_name(path.name + suffix)


def make_onnx_batch_dynamic(model):
    """Mark the batch of an ONNX model's input and output as symbolic ('batch') when every operator works
    per sample (MindSpore exports fixed shapes only); whether it did."""
    ops = {node.op_type for node in model.graph.node}
    axes_ok = all(0 not in attribute.ints for node in model.graph.node if node.op_type == 'ReduceMean'
                  for attribute in node.attribute if attribute.name == 'axes')
    if not ops <= PER_SAMPLE_OPS or not axes_ok:
        return False
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = 'batch'
    del model.graph.value_info[:]  # intermediate shapes recorded with batch 1
    return True


def _export_raw(net, image_size, file_format, stem, card):
    """Write ``stem``+suffix with a dynamic batch and the model card in its metadata."""
    shape = (3, image_size, image_size)
    path = stem.with_suffix(FORMAT_SUFFIXES[file_format])
    entries = card.entries()
    if file_format == 'MINDIR':
        def add_card(model):
            for key, value in entries.items():
                set_mindir_user_info(model, key, value)
        ms.export(net, Tensor(shape=[None, *shape], dtype=ms.float32), file_name=str(stem), file_format='MINDIR',
                  custom_func=add_card)
        give_usual_permissions(path)  # MindSpore leaves the file readable by its owner only
    else:
        # mindspore.onnx.export's dynamic_axes marks the input only (the output keeps batch 1),
        # whatever the graph does; make_onnx_batch_dynamic checks the operators first.
        export_onnx(net, Tensor(np.zeros((1, *shape), np.float32)), file_name=str(stem),
                    input_names=['image'], output_names=['logits'])
        if not path.is_file():  # its writer logs a failed write (a full disk) and returns
            raise FileNotFoundError(errno.ENOENT, 'MindSpore did not write the file (its log line says why)')
        model = onnx.load(str(path))
        if make_onnx_batch_dynamic(model):
            onnx.checker.check_model(model)
        onnx.helper.set_model_props(model, entries)
        onnx.save(model, str(path))
    return path


def exported_difference(path, net, image_size, model='the network'):
    """(max relative difference to ``net`` on two random images, Predictor) of the file at ``path``; a
    UserError naming ``model`` when the network's own outputs are not finite (no fault of the file)."""
    images = np.random.default_rng(0).normal(size=(2, 3, image_size, image_size)).astype(np.float32)
    expected = net(Tensor(images)).asnumpy()
    check_finite_logits(expected, model, 'a random test batch')
    predictor = (load_onnx if path.suffix == '.onnx' else load_mindir)(path, batch_size=2, image_size=image_size)
    return relative_difference(predictor(images), expected), predictor


def check_export_target(export_path, file_format):
    """The file export_path names, checked before any work; killed writers' leftovers there removed."""
    target = check_writable_file(export_file_path(export_path, file_format), 'export path', 'model')
    folder = regular_target(target).parent
    if folder.is_dir():
        remove_partial_files(folder)
    return target


def export_network(net, image_size, file_format, export_path, card=None, model='the network'):
    """Export the deploy-form, eval-mode ``net`` with ``card`` in its metadata, renamed into place once checked;
    (path, max relative difference, 'batch' or the fixed batch)."""
    card = replace(card or ModelCard(), image_size=image_size, deploy=True)
    target = check_export_target(export_path, file_format)
    folder = make_folder(regular_target(target).parent)  # beside the file a link leads to
    try:
        workdir = Path(tempfile.mkdtemp(dir=folder, prefix=partial_name(target, '-').name))
    except OSError as error:
        raise UserError(f'could not write {target}: {reason(error)}') from None
    needed = sum(param.nbytes for param in net.get_parameters())  # the file holds at least the weights
    try:
        written = _export_raw(net, image_size, file_format, workdir / 'model', card)
        difference, predictor = exported_difference(written, net, image_size, model=model)
        if not difference <= BACKEND_TOLERANCE:
            raise UserError(f'the exported {file_format} file differs from the network by {difference:.3g} '
                            f'(relative); nothing was written. Please report this')
        if predictor.card != card:
            raise UserError(f'the exported {file_format} file does not carry the model card; nothing was written')
        batch = 'batch' if predictor.static_batch is None else str(predictor.static_batch)
        os.replace(written, regular_target(target))
    except (OSError, RuntimeError) as error:
        raise UserError(f'could not write {target}: {_write_failure(error, workdir, needed)}') from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return target, difference, batch


def _write_failure(error, folder, needed):
    """Why writing ``needed`` bytes into ``folder`` failed. MindSpore's ONNX writer deletes a failed
    file, so a full disk shows only as a missing one: then the free space is compared with ``needed``."""
    if isinstance(error, OSError) and error.errno not in (None, errno.ENOENT):
        return reason(error)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < needed + (1 << 20):  # and a margin for the graph and metadata
        return (f'no space left on the device (the file needs at least {needed / 2**20:.1f} MB, '
                f'{free / 2**20:.1f} MB are free)')
    if isinstance(error, OSError):
        return reason(error)
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
