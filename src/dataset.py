"""ImageNet-folder data pipeline on ``mindspore.dataset``: split/<class>/<image>, labels by sorted class name.

What each pipeline does, why the eval resize is PIL's, bad images, several devices and seeds:
docs/data.md; start-up at ImageNet size: docs/scale-out.md; resume: docs/training.md. Transforms and data sets take
their settings as arguments; ``get_dataset`` is the one place that reads them from the config.
"""
import functools
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image

from src.image_check import check_split
from src.tools.base.cli import UserError

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
EVAL_CROP_PCT = 224 / 256  # the centre crop's share of the resized shorter side (timm's crop_pct)
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
_PIL_INTERPOLATION = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}
_MINDSPORE_DEFAULT_SEED = 5489  # MindSpore treats this seed as 'unset' and does not reseed workers


def _warn(message):
    print(f'warning: {message}', file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- files and classes
def _image_names(folder):
    """Sorted names of the image files directly in ``folder`` (one directory read, no stat per file)."""
    with os.scandir(folder) as entries:
        return sorted(entry.name for entry in entries
                      if entry.name.lower().endswith(IMAGE_SUFFIXES) and not entry.is_dir())


def list_images(folder):
    """The image files (.png/.jpg/.jpeg, any case) directly in the folder ``folder``, sorted by name."""
    return [Path(folder) / name for name in _image_names(folder)]


def scan_split(folder):
    """(class names, {class: image names}), sorted, of a split folder; a UserError that says what to fix."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f'data folder {folder} does not exist; it must hold one sub-folder of images per '
                        f'class ({folder}/<class>/*.jpg); --data_url must hold train/ and val/ folders')
    with os.scandir(folder) as entries:
        folders = [entry.name for entry in entries if entry.is_dir()]
    names = sorted(name for name in folders if not name.startswith('.'))
    if not names:
        raise UserError(f'{folder} has no class sub-folders; put the images of each class in '
                        f'{folder}/<class name>/ (png or jpg)')
    images = {name: _image_names(folder / name) for name in names}
    for name in names:
        if not images[name]:
            raise UserError(f'class folder {folder / name} has no images ({", ".join(IMAGE_SUFFIXES)}); '
                            f'add images or remove the folder')
    for name in folders:  # MindSpore's ImageFolderDataset would count these files as a class
        if name.startswith('.') and _image_names(folder / name):
            raise UserError(f'hidden folder {folder / name} holds images; move or remove it')
    return names, images


def class_names(folder):
    """Sorted class folder names of a split folder; a UserError that says what to fix otherwise."""
    return scan_split(folder)[0]


# ----------------------------------------------------------------------------- reading images
def read_image_rgb(path):
    """RGB as MindSpore's Decode gives it (16-bit scaled to 8-bit, alpha dropped); a UserError if unreadable."""
    try:
        with Image.open(path) as opened:
            opened.load()
            img = opened
            if img.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
                img = Image.fromarray(np.clip(np.asarray(img).astype(np.int64) >> 8, 0, 255).astype(np.uint8))
            elif img.mode == 'P' and 'transparency' in img.info:
                img = img.convert('RGBA')
            return img if img.mode == 'RGB' else img.convert('RGB')
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(f'cannot read image {path}: {error}; fix or remove the file') from None


# ----------------------------------------------------------------------------- transforms
def eval_resize_size(image_size, crop_pct=EVAL_CROP_PCT):
    """Shorter side before the centre crop: int(size / crop_pct) (256 for 224 at 0.875)."""
    return int(image_size / crop_pct)


def resize_center_crop(image, resize_to, crop, interpolation='bilinear'):
    """HWC uint8 array or PIL image -> HWC uint8 array: PIL resize of the shorter side to ``resize_to``,
    centre crop ``crop`` x ``crop``, sizes and offsets rounded as torchvision does."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    width, height = img.size
    if width <= height:
        size = (resize_to, int(resize_to * height / width))
    else:
        size = (int(resize_to * width / height), resize_to)
    if size != img.size:
        img = img.resize(size, _PIL_INTERPOLATION[interpolation])
    top = round((size[1] - crop) / 2.0)
    left = round((size[0] - crop) / 2.0)
    return np.asarray(img.crop((left, top, left + crop, top + crop)))


@functools.lru_cache(maxsize=8)
def _normalized(mean, std):
    """(x - mean) / std in float32 for every uint8 value x of each channel: a (3, 256) table."""
    return ((np.arange(256, dtype=np.float32) - (np.array(mean, np.float32) * 255)[:, None])
            / (np.array(std, np.float32) * 255)[:, None])


def normalize_chw(image, mean=MEAN, std=STD):
    """HWC uint8 -> CHW float32 normalised with ``mean`` and ``std`` (on [0, 1]), looked up in a table:
    the same numbers as computing them per pixel, in less time (docs/performance.md)."""
    image = np.asarray(image)
    table = _normalized(tuple(mean), tuple(std))
    return np.stack([table[channel][image[..., channel]] for channel in range(3)])


@dataclass(frozen=True)
class Preprocessing:
    """The eval transform; model files record it (model_card.py), so inference preprocesses as training did."""
    image_size: int
    interpolation: str = 'bilinear'
    mean: tuple = MEAN
    std: tuple = STD
    crop_pct: float = EVAL_CROP_PCT

    def image(self, path):
        """One image file -> float32 (3, S, S), as the eval pipeline produces it."""
        crop = resize_center_crop(read_image_rgb(path), eval_resize_size(self.image_size, self.crop_pct),
                                  self.image_size, self.interpolation)
        return normalize_chw(crop, self.mean, self.std)

    def stages(self):
        """The same transform as pipeline stages, raw file bytes -> CHW float32."""
        from mindspore.dataset import vision
        resize = ResizeCenterCrop(eval_resize_size(self.image_size, self.crop_pct), self.image_size, self.interpolation)
        return [Stage([vision.Decode(), resize, *_normalize_ops(self.mean, self.std)])]

    def describe(self):
        return f'eval transform, {self.image_size}x{self.image_size}, {self.interpolation}'


def eval_batches(paths, preprocessing, batch_size, workers=None, skip_unreadable=False):
    """(paths, float32 (B, 3, S, S)) batches of ``paths`` through ``preprocessing``, in order, prepared
    two batches ahead by ``workers`` threads (at most one per CPU) while the caller's model runs (PIL
    and numpy release the GIL). ``skip_unreadable``: leave out a file that fails to decode, with a warning."""
    cpus = len(os.sched_getaffinity(0))
    workers = max(1, min(workers or cpus, cpus))

    def load(path):
        try:
            return preprocessing.image(path)
        except UserError as error:
            if not skip_unreadable:
                raise
            _warn(f'{error}; skipped')
            return None

    def finished(chunk, images):
        kept = [(path, image.result()) for path, image in zip(chunk, images, strict=True)]
        kept = [(path, image) for path, image in kept if image is not None]
        if kept:
            yield [path for path, _ in kept], np.stack([image for _, image in kept])

    pool = ThreadPoolExecutor(workers)
    try:
        ahead = deque()
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            ahead.append((chunk, [pool.submit(load, path) for path in chunk]))
            if len(ahead) > 2:
                yield from finished(*ahead.popleft())
        while ahead:
            yield from finished(*ahead.popleft())
    finally:  # also when the caller stops early: images not started yet are dropped
        pool.shutdown(cancel_futures=True)


class ResizeCenterCrop:
    """``resize_center_crop`` as a pipeline op (picklable for worker processes)."""

    def __init__(self, resize_to, crop, interpolation='bilinear'):
        self.resize_to, self.crop, self.interpolation = resize_to, crop, interpolation

    def __call__(self, image):
        return resize_center_crop(image, self.resize_to, self.crop, self.interpolation)


class OnPIL:
    """Run a PIL-image transform (an augmentation policy) on an HWC uint8 array."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return np.asarray(self.transform(Image.fromarray(np.asarray(image))))


@dataclass
class Stage:
    """Ops that run in one map. ``processes``: in worker processes, for random Python ops, so that
    each has its own seeded random stream (threads would share one in a nondeterministic order)."""
    ops: list = field(default_factory=list)
    processes: bool = False


def _normalize_ops(mean=MEAN, std=STD):
    from mindspore.dataset import vision
    return [vision.Normalize(mean=[m * 255 for m in mean], std=[s * 255 for s in std]), vision.HWC2CHW()]


@dataclass(frozen=True)
class TrainTransform:
    """The per-image train transform from its settings alone, as torchvision's ClassificationPresetTrain."""
    image_size: int
    interpolation: str = 'bilinear'
    aug_type: str = 'weak'
    auto_augment: str = None
    re_prob: float = 0.0
    re_mode: str = 'pixel'
    re_count: int = 1

    def stages(self):
        """Raw file bytes -> CHW float32, as pipeline stages; a UserError for settings that cannot work."""
        from mindspore.dataset import vision
        size, interpolation = self.image_size, self.interpolation
        if self.re_prob > 0 and self.aug_type != 'auto':
            _warn(f're_prob {self.re_prob} has no effect with aug_type {self.aug_type}: random erasing is part '
                  f'of aug_type auto')
        if self.aug_type == 'none':
            return [Stage([vision.Decode(), ResizeCenterCrop(size, size, interpolation), *_normalize_ops()])]
        crop_flip = [vision.RandomCropDecodeResize(size, scale=CROP_SCALE, ratio=CROP_RATIO,
                                                   interpolation=getattr(vision.Inter, interpolation.upper())),
                     vision.RandomHorizontalFlip(0.5)]
        if self.aug_type == 'weak':
            return [Stage(crop_flip + _normalize_ops())]
        if not self.auto_augment:
            raise UserError('aug_type auto needs a policy: set auto_augment, e.g. rand-m9-mstd0.5-inc1')
        from src.augment import RandomErasing, policy_from_string
        policy = policy_from_string(self.auto_augment, interpolation=interpolation)
        # the policy and random erasing draw from one random stream, so they share one map: in two, their
        # threads would take turns in it in no fixed order, and one seed would not give one run
        erasing = [RandomErasing(self.re_prob, self.re_mode, self.re_count)] if self.re_prob > 0 else []
        return [Stage(crop_flip), Stage([OnPIL(policy), *_normalize_ops(), *erasing], processes=True)]

    def describe(self):
        text = f'aug_type {self.aug_type}, {self.image_size}x{self.image_size}, {self.interpolation}'
        if self.aug_type == 'auto':
            text += f', policy {self.auto_augment}'
            if self.re_prob > 0:
                text += f', random erasing p={self.re_prob} {self.re_mode} x{self.re_count}'
        return text


# ----------------------------------------------------------------------------- pipelines
def dataset_cache(session_id, prefetch=1):
    """A MindSpore cache client for ``session_id`` (None when unset), cached at the file reader."""
    if session_id is None:
        return None
    import mindspore.dataset as ds
    return ds.DatasetCache(session_id=int(session_id), size=0, prefetch_size=max(1, prefetch))


def class_indexing(folder, names, classes, num_classes, show=True):
    """{class folder name: label}: looked up by name in ``classes`` (the model's, in label order), so a
    folder missing some of them still scores correctly; without ``classes``, the sorted positions."""
    if classes is None:
        if num_classes is not None and len(names) > num_classes:
            raise UserError(f'{folder} has {len(names)} class folders but num_classes is {num_classes}; '
                            f'set num_classes: {len(names)}')
        return {name: label for label, name in enumerate(names)}
    unknown = [name for name in names if name not in classes]
    if unknown:
        raise UserError(f'{folder} has class folders the model was not trained on: {_listed(unknown)}; the model '
                        f'knows {len(classes)} classes ({_listed(classes)}); rename or remove those folders')
    missing = [name for name in classes if name not in names]
    if missing and show:
        print(f'=> note: {folder} has {len(names)} of the model\'s {len(classes)} classes (missing: '
              f'{_listed(missing)}); labels are matched by class name', flush=True)
    return {name: classes.index(name) for name in names}


def _listed(names, limit=5):
    shown = ', '.join(repr(name) for name in names[:limit])
    return shown + (f' and {len(names) - limit} more' if len(names) > limit else '')


def labelled_files(folder, classes=None, num_classes=None, show=True):
    """(files 'class/image' in class and name order, {class folder: label}, seconds the scan took)."""
    began = time.perf_counter()
    names, images = scan_split(folder)
    files = [f'{name}/{image}' for name in names for image in images[name]]  # strings: 1.28 M Paths cost seconds
    seconds = time.perf_counter() - began
    return files, class_indexing(folder, names, classes, num_classes, show=show), seconds


def _start_up_line(kind, folder, files, indexing, seconds, check):
    """The one short line of what a data set's start-up found and took."""
    return (f'=> {kind} data {folder}: {len(files)} images, {len(indexing)} classes; start-up {seconds:.1f} s '
            f'({check.summary()})')


def labelled_images(dataset_dir, classes=None, num_classes=None, image_check='cached', image_check_cache=None):
    """(paths, labels) of a split folder for ``eval_batches``, checked as ``create_dataset_imagenet`` does."""
    folder = Path(dataset_dir)
    files, indexing, scan_seconds = labelled_files(folder, classes, num_classes)
    check = check_split(folder, files, image_check, cache_root=image_check_cache)
    print(_start_up_line('eval', folder, files, indexing, scan_seconds + check.seconds, check), flush=True)
    return [folder / name for name in files], [indexing[name.split('/', 1)[0]] for name in files]


def create_dataset_imagenet(dataset_dir, transform, batch_size, training=True, *, classes=None, num_classes=None,
                            rank=0, group_size=1, total=None, workers=1, prefetch=15, seed=0, cache=None,
                            image_check='cached', image_check_cache=None, mixup=None):
    """The batched dataset of one split folder: image float32 (B, 3, S, S) through ``transform``, label int32
    (B,) or, with a ``mixup``, float32 soft targets. ``total`` sums numbers over ranks, so that all ranks
    stop together on unreadable images; ``start_up`` holds the details for train.py's startup.log."""
    import mindspore as ms
    import mindspore.dataset as ds
    from mindspore.dataset import transforms

    if training and seed == _MINDSPORE_DEFAULT_SEED:
        _warn(f'seed {seed} is MindSpore\'s "unset" value: Python augmentation workers then share one random '
              f'stream; choose another seed')
    stages = transform.stages()  # bad settings stop the run before the files are read
    folder = Path(dataset_dir)
    files, indexing, scan_seconds = labelled_files(folder, classes, num_classes, show=rank == 0)
    if not training and len(files) < group_size:
        raise UserError(f'{folder} has {len(files)} images, fewer than the {group_size} evaluating devices')
    if training and -(-len(files) // group_size) < batch_size:
        raise UserError(f'{folder} has {len(files)} images: less than one batch of {batch_size} per '
                        f'device ({group_size} devices); lower batch_size')
    # each rank checks its own slice, so together they check every file once
    check = check_split(folder, files, image_check, rank, group_size, image_check_cache, total)
    began = time.perf_counter()
    workers = max(1, min(int(workers), os.cpu_count() or 1))  # MindSpore refuses more than the CPU count
    ds.config.set_error_samples_mode(ds.config.ErrorSamplesMode.SKIP)
    ds.config.set_fast_recovery(True)  # resume_batches: skipped samples are neither read nor decoded
    ds.config.set_prefetch_size(max(1, prefetch))
    source = dict(extensions=sorted({os.path.splitext(name)[1] for name in files}), class_indexing=indexing,
                  decode=False, num_parallel_workers=workers, cache=cache)
    if training:
        ds.config.set_seed(seed)  # same on every rank: the shards come from one shuffle
        sharded = dict(num_shards=group_size, shard_id=rank) if group_size > 1 else {}
        data = ds.ImageFolderDataset(str(folder), shuffle=True, **sharded, **source)
    elif group_size > 1:  # rank r: images r, r + R, ...; no padding, so no image is scored twice
        own_part = ds.SubsetSampler(list(range(rank, len(files), group_size)))
        data = ds.ImageFolderDataset(str(folder), sampler=own_part, **source)
    else:
        data = ds.ImageFolderDataset(str(folder), shuffle=False, **source)

    for stage in stages:
        data = data.map(stage.ops, input_columns='image', num_parallel_workers=workers,
                        python_multiprocessing=stage.processes and workers > 1)
    data = data.map(transforms.TypeCast(ms.int32), input_columns='label')
    data = data.batch(batch_size, drop_remainder=training, num_parallel_workers=workers)
    if mixup is not None:
        # one worker in this process: the mixing draws come in a fixed order from the seeded generator
        data = data.map(mixup, input_columns=['image', 'label'], output_columns=['image', 'label'],
                        num_parallel_workers=1)
    data.get_dataset_size()  # MindSpore lists the folder here (the size is kept for later calls)
    build_seconds = time.perf_counter() - began
    kind = 'train' if training else 'eval'
    if rank == 0:
        print(_start_up_line(kind, folder, files, indexing, scan_seconds + check.seconds + build_seconds, check),
              flush=True)
    data.image_count = len(files)  # the whole folder's, for "scored N of M images"
    data.start_up = (f'{kind} data {folder.resolve()}: {len(files)} images, {len(indexing)} classes, rank {rank} of '
                     f'{group_size}, batch {batch_size}, {transform.describe()}; start-up: class scan '
                     f'{scan_seconds:.1f} s, {check.describe()}, pipeline build {build_seconds:.1f} s')
    return data


def resume_batches(dataset, epochs, start_epoch=0, start_step=0):
    """The batches of epochs ``start_epoch``..``epochs - 1`` from step ``start_step`` of the first; the skipped
    steps are neither read nor decoded (``set_init_step``; docs/training.md, "Resuming")."""
    skipped = start_epoch * dataset.get_dataset_size() + start_step
    if skipped:
        dataset.set_init_step(skipped)
    return dataset.create_tuple_iterator(num_epochs=epochs)


# ----------------------------------------------------------------------------- from the config
def train_transform(config):
    """The TrainTransform of the config's keys of the same names."""
    return TrainTransform(**{setting.name: getattr(config, setting.name) for setting in fields(TrainTransform)})


def make_mixup(config, rank=0):
    """The config's batch Mixup / CutMix, seeded by (seed, rank); None when it mixes nothing."""
    from src.augment import Mixup
    mixup = Mixup(config.num_classes, mixup_alpha=config.mix_up, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
                  switch_prob=config.switch_prob, mode=config.mixup_mode, label_smoothing=config.label_smoothing,
                  seed=[config.seed, rank])
    return mixup if mixup.active else None


def mixup_active(config):
    """Whether the train set yields mixed images with soft (B, num_classes) float32 targets."""
    return make_mixup(config) is not None


def get_dataset(config, training, rank=0, group_size=1, classes=None, total=None):
    """``data_url``/train (training) or /val as train.py reads it (see create_dataset_imagenet)."""
    mixup = make_mixup(config, rank) if training else None
    if training and mixup is None and (config.mix_up > 0 or config.cutmix > 0):
        _warn('mix_up / cutmix are set but mixup_prob is 0: no mixing; set mixup_prob (e.g. 1.0)')
    transform = train_transform(config) if training else Preprocessing(config.image_size, config.interpolation)
    return create_dataset_imagenet(
        Path(config.data_url) / ('train' if training else 'val'), transform, config.batch_size, training,
        classes=classes, num_classes=config.num_classes, rank=rank, group_size=group_size, total=total,
        workers=config.num_parallel_workers, prefetch=config.prefetch, seed=config.seed,
        cache=dataset_cache(config.cache_session_id, config.prefetch), image_check=config.image_check,
        image_check_cache=config.image_check_cache, mixup=mixup)
