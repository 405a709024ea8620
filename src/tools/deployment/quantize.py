"""INT8 export: the deploy network's ONNX file, statically quantized with ONNX Runtime's tooling (QDQ,
per-channel int8 weights, MinMax-calibrated on images drawn evenly over the class folders), kept only
when its top-1 class agrees with the fp32 export's on those images (docs/quantization.md).
"""
import logging
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

# MindSpore before onnx: importing it selects protobuf's Python implementation, which MindSpore's own
# .proto modules need; onnx loaded first would fix the C++ one (benchmarks import this module first).
import mindspore  # noqa: F401  imported for its side effect (above)
import numpy as np
import onnx
from onnx import version_converter
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from src.dataset import scan_split
from src.tools.base.cli import UserError, listed, quiet_logger
from src.tools.base.files import atomic_path, make_folder, partial_name
from src.tools.deployment.export import check_export_target, export_network
from src.tools.deployment.model_files import load_onnx

QUANTIZE_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (the 'axis' attribute) need opset >= 13
# uint8 activations (ReLU outputs: zero point 0) without reduce_range (7-bit weights, for CPUs without
# VNNI): measured as fast as the other choices (docs/quantization.md, "INT8 export").
ACTIVATION_TYPES = {'uint8': QuantType.QUInt8, 'int8': QuantType.QInt8}
ACTIVATION_TYPE = 'uint8'
REDUCE_RANGE = False
INT8_SCHEME = f'QDQ, per-channel int8 weights, {ACTIVATION_TYPE} activations'
# Top-1 agreement with fp32 on the calibration images below which the INT8 file is refused (the digits
# models reach 100 %; the paper's ImageNet A0, 20 points of top-1 lost, would not), and the fewest images
# on which it means something (on fewer, one flip moves it by more than 3 points): docs/quantization.md.
AGREEMENT_THRESHOLD = 0.95
MIN_CALIBRATION_IMAGES = 32
CALIBRATION_BATCH = 16


def pick_evenly(files_by_class, count):
    """``count`` files spread over the classes by round-robin quotas, evenly spaced within each class."""
    quotas = [0] * len(files_by_class)
    remaining = count
    while remaining > 0 and any(quota < len(files) for quota, files in zip(quotas, files_by_class, strict=True)):
        for index, files in enumerate(files_by_class):
            if remaining > 0 and quotas[index] < len(files):
                quotas[index] += 1
                remaining -= 1
    picked = []
    for quota, files in zip(quotas, files_by_class, strict=True):
        picked += [files[(2 * i + 1) * len(files) // (2 * quota)] for i in range(quota)]
    return picked


def calibration_files(folder, count):
    """The calibration images of ``folder`` (class folders), checked before any work: at least
    MIN_CALIBRATION_IMAGES asked for and there; all of them, with a note, when fewer than ``count``."""
    if count < MIN_CALIBRATION_IMAGES:
        raise UserError(f'calibration_images must be at least {MIN_CALIBRATION_IMAGES}, got {count}: the INT8 '
                        f'model is kept only if it agrees with the fp32 one on them, and fewer images cannot show it')
    if folder is None:
        raise UserError('--quantize int8 needs calibration images: pass --calibration_path with a folder of '
                        'class folders (default: the train folder of --data_url)')
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f'calibration folder {folder} does not exist; pass --calibration_path with a folder '
                        f'of class folders (e.g. the training folder)')
    names, images = scan_split(folder)  # UserError for no class folders, or a class folder without images
    available = sum(len(images[name]) for name in names)
    if available < MIN_CALIBRATION_IMAGES:
        raise UserError(f'calibration folder {folder} has {available} images, at least {MIN_CALIBRATION_IMAGES} are '
                        f'needed to check the INT8 model: pass --calibration_path with a folder of more images of '
                        f'the classes it was trained on (e.g. its training folder)')
    if available < count:
        print(f'=> note: calibration folder {folder} has {available} images, fewer than the {count} asked for '
              f'(calibration_images): using all {available}')
    return pick_evenly([[folder / name / image for image in images[name]] for name in names], count)


def foreign_classes_note(files, class_names):
    """A note when calibration ``files`` come from class folders that are not among the model's
    ``class_names`` (images unlike its data calibrate ranges it never has), else None."""
    if not class_names:
        return None
    folders = sorted({Path(path).parent.name for path in files})
    foreign = [name for name in folders if name not in set(class_names)]
    if not foreign:
        return None
    return (f'=> note: {len(foreign)} of the {len(folders)} class folders the calibration images come from are '
            f'not classes of the model ({listed(foreign, 3)}): images unlike its training data calibrate the '
            f'wrong ranges; calibrate on its training folder (--calibration_path)')


def calibration_folder(file_format, calibration_path, data_url):
    """The calibration folder (default: data_url/train); a UserError for a format other than ONNX."""
    if file_format != 'ONNX':
        raise UserError(f'--quantize int8 writes ONNX files (ONNX Runtime runs them); {file_format} has no '
                        f'INT8 export here: use --file_format ONNX, or drop --quantize')
    return calibration_path if calibration_path is not None else (Path(data_url) / 'train' if data_url else None)


def load_images(paths, preprocessing):
    """The eval transform (a src.dataset.Preprocessing) of every file, stacked: float32 (N, 3, S, S)."""
    return np.stack([preprocessing.image(path) for path in paths])


class ImageBatches(CalibrationDataReader):
    """Feeds ``images`` to ONNX Runtime's calibrator in batches of ``batch``, or of exactly ``fixed_batch``
    (the last one filled up with the first images again: no made-up input widens the ranges)."""

    def __init__(self, images, input_name, batch=CALIBRATION_BATCH, fixed_batch=None):
        size = fixed_batch or batch
        batches = [images[start:start + size] for start in range(0, len(images), size)]
        if fixed_batch and len(batches[-1]) < fixed_batch:
            batches[-1] = np.resize(np.concatenate([batches[-1], images]), (fixed_batch, *images.shape[1:]))
        self.feeds = iter([{input_name: batch} for batch in batches])

    def get_next(self):
        return next(self.feeds, None)


def quantize_onnx(fp32_path, int8_path, images, workdir, activation_type=ACTIVATION_TYPE, reduce_range=REDUCE_RANGE):
    """Write the INT8 QDQ model of ``fp32_path``, calibrated on ``images``, with its card, to ``int8_path``."""
    fp32 = onnx.load(str(fp32_path))
    opset = next(entry.version for entry in fp32.opset_import if entry.domain in ('', 'ai.onnx'))
    converted = version_converter.convert_version(fp32, QUANTIZE_OPSET) if opset < QUANTIZE_OPSET else fp32
    source = Path(workdir) / f'opset{QUANTIZE_OPSET}.onnx'
    onnx.save(converted, str(source))
    # MinMax calibration adds ReduceMin/ReduceMax outputs to the graph and keeps only those per batch,
    # so memory stays small. (Its CalibMaxIntermediateOutputs option drops batches in ONNX Runtime 1.31.)
    batch = fp32.graph.input[0].type.tensor_type.shape.dim[0]
    reader = ImageBatches(images, fp32.graph.input[0].name,
                          fixed_batch=batch.dim_value if batch.HasField('dim_value') and batch.dim_value > 0 else None)
    with quiet_logger(logging.getLogger(), logging.ERROR):  # its advice does not apply to this plain graph
        quantize_static(str(source), str(int8_path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=ACTIVATION_TYPES[activation_type], weight_type=QuantType.QInt8,
                        reduce_range=reduce_range,
                        calibrate_method=CalibrationMethod.MinMax)
    int8 = onnx.load(str(int8_path))
    present = {prop.key for prop in int8.metadata_props}
    for prop in fp32.metadata_props:
        if prop.key not in present:
            int8.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(int8, str(int8_path))


@dataclass
class Int8Export:
    """What ``export_int8`` wrote and measured."""
    path: Path
    fp32_difference: float   # the fp32 ONNX export against the network (relative)
    batch: str               # 'batch' (dynamic) or the fixed batch
    images: int              # calibration images
    agreement: float         # top-1 agreement INT8 vs fp32 on those images


def export_int8(net, card, export_path, files, threshold=AGREEMENT_THRESHOLD, model='the network'):
    """Export the deploy-form, eval-mode ``net`` as an INT8 ONNX file calibrated on ``files``; refused (nothing
    written) when its top-1 agreement with fp32 on them is below ``threshold``."""
    target = check_export_target(export_path, 'ONNX')
    image_size = card.image_size
    images = load_images(files, card.preprocessing)
    make_folder(target.parent)
    workdir = Path(tempfile.mkdtemp(dir=target.parent, prefix=partial_name(target, '-int8-').name))
    try:
        fp32_path, difference, batch = export_network(net, image_size, 'ONNX', workdir / 'fp32', card, model=model)
        fp32_logits = load_onnx(fp32_path, batch_size=CALIBRATION_BATCH, image_size=image_size)(images)
        with atomic_path(target) as temporary:
            quantize_onnx(fp32_path, temporary, images, workdir)
            int8 = load_onnx(temporary, batch_size=CALIBRATION_BATCH, image_size=image_size)
            if int8.card != replace(card, deploy=True):
                raise UserError('the INT8 file does not carry the model card; nothing was written')
            agreement = float(np.mean(np.argmax(fp32_logits, axis=1) == np.argmax(int8(images), axis=1)))
            if agreement < threshold:
                raise UserError(f'the INT8 model predicts the fp32 top-1 class on only {agreement:.1%} of the '
                                f'{len(images)} calibration images (at least {threshold:.0%} required); nothing '
                                f'was written. RepVGG blocks quantize badly: train a QARepVGG arch, or '
                                f'calibrate on more images (--calibration_images)')
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return Int8Export(target, difference, batch, len(images), agreement)
