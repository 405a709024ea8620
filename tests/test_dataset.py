"""src/dataset.py and src/tools/demo_data.py: pipelines, sharding, eval transform, odd and bad images."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src import dataset as data
from src import image_check
from src.tools import demo_data
from src.augment import Mixup
from src.tools.base.device import set_seed
from src.tools.base.cli import UserError
from tests.helpers import assert_one_line_error, run_main
from tests.image_folders import (batches, colour_index, data_config, solid_colour, solid_folder, textured,
                                 textured_folder)

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
ROOT = Path(__file__).resolve().parents[1]


def _normalised(rgb):
    return (np.asarray(rgb, np.float64) / 255 - MEAN) / STD


def _ids(dataset_batches):
    return [colour_index(image) for batch in dataset_batches for image in batch['image']]


# ----------------------------------------------------------------------------- shapes and values
@pytest.mark.parametrize('aug_type', ['weak', 'none', 'auto'])
def test_train_pipeline_shapes_dtypes_normalisation(tmp_path, aug_type):
    by_class = solid_folder(tmp_path / 'train', [6, 5])
    config = data_config(tmp_path, aug_type=aug_type, auto_augment='rand-m0-n1-inc1', batch_size=4,
                         num_classes=3)
    got = batches(data.get_dataset(config, training=True))
    assert len(got) == 11 // 4  # drop_remainder
    labels = {index: label for label, indices in enumerate(by_class) for index in indices}
    for batch in got:
        assert batch['image'].shape == (4, 3, 16, 16) and batch['image'].dtype == np.float32
        assert batch['label'].shape == (4,) and batch['label'].dtype == np.int32
        for image, label in zip(batch['image'], batch['label']):
            index = colour_index(image)  # solid colours survive crops, flips, the m0 policy
            assert labels[index] == label
            expected = _normalised(solid_colour(index))[:, None, None]
            assert np.abs(image - expected).max() < 1e-4


def test_eval_pipeline_keeps_the_last_batch(tmp_path):
    solid_folder(tmp_path / 'val', [4, 3])
    got = batches(data.get_dataset(data_config(tmp_path, batch_size=3), training=False))
    assert [len(batch['label']) for batch in got] == [3, 3, 1]
    assert sorted(_ids(got)) == list(range(7))
    assert all(batch['image'].dtype == np.float32 and batch['label'].dtype == np.int32 for batch in got)


def _direct_pil_eval(path, size, interpolation):
    """Resize the shorter side to int(size * 256 / 224), centre crop, normalise: plain PIL + numpy."""
    img = Image.open(path).convert('RGB')
    short = int(size * 256 / 224)
    width, height = img.size
    new = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
    img = img.resize(new, {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}[interpolation])
    left, top = round((new[0] - size) / 2), round((new[1] - size) / 2)
    crop = np.asarray(img, np.float64)[top:top + size, left:left + size]
    return ((crop / 255 - MEAN) / STD).transpose(2, 0, 1)


@pytest.mark.parametrize('interpolation', ['bilinear', 'bicubic'])
def test_eval_transform_matches_direct_pil(tmp_path, interpolation):
    rng = np.random.default_rng(1)
    folder = tmp_path / 'val'
    sizes = [(50, 38), (38, 50), (120, 90), (17, 23), (64, 64)]  # landscape, portrait, 5x reduction, upscale
    paths = []
    for i, (width, height) in enumerate(sizes):
        for suffix in ('.jpg', '.png'):
            path = folder / 'only' / f'{i}{suffix}'
            path.parent.mkdir(parents=True, exist_ok=True)
            textured(rng, height, width).save(path)
            paths.append(path)
    config = data_config(tmp_path, interpolation=interpolation, batch_size=4, image_size=16)
    images = np.concatenate([batch['image'] for batch in batches(data.get_dataset(config, training=False))])
    assert len(images) == len(paths)
    for path, image in zip(sorted(paths), images):  # sequential eval: file-name order
        direct = _direct_pil_eval(path, 16, interpolation)
        assert np.abs(image - direct).max() < 1e-5, path  # float rounding only
        assert np.abs(data.Preprocessing(16, interpolation).image(path) - image).max() < 1e-5, path


# ----------------------------------------------------------------------------- sharding and seeds
@pytest.mark.parametrize('group_size', [2, 3])
def test_sharded_train_epochs_cover_each_image_once(tmp_path, group_size):
    solid_folder(tmp_path / 'train', [6, 6])  # 12 images, batch 2: no shard drops a remainder
    epochs = [[], []]
    for rank in range(group_size):
        dataset = data.get_dataset(data_config(tmp_path, batch_size=2, num_classes=2), True, rank, group_size)
        iterator = dataset.create_dict_iterator(output_numpy=True, num_epochs=2)
        for epoch in epochs:
            epoch += _ids(list(iterator))  # one pass of the iterator = one epoch
    for ids in epochs:
        assert sorted(ids) == list(range(12))  # every image once, none twice
    assert epochs[0] != epochs[1]  # reshuffled between epochs


@pytest.mark.parametrize('group_size', [1, 2, 3])
def test_distributed_eval_scores_each_image_exactly_once(tmp_path, group_size):
    solid_folder(tmp_path / 'val', [5, 3, 3])  # 11 images: uneven for 2 and 3 ranks
    ids, counts = [], []
    for rank in range(group_size):
        got = batches(data.get_dataset(data_config(tmp_path, batch_size=2), False, rank, group_size))
        counts.append(sum(len(batch['label']) for batch in got))
        ids += _ids(got)
    assert sorted(ids) == list(range(11))
    assert max(counts) - min(counts) <= 1


@pytest.mark.parametrize('aug_type', ['none', 'weak'])
def test_a_resumed_epoch_reads_only_the_images_it_had_not_reached(tmp_path, monkeypatch, aug_type):
    """resume_batches at epoch 2, step 2 of 3 (2 ranks, batch 2): exactly the rest of the
    uninterrupted sequence (same images, same order, also with random crops), and only the images
    it yields are decoded (counted in the Python resize of aug_type none)."""
    solid_folder(tmp_path / 'train', [6, 6])
    decoded = []
    resize = data.ResizeCenterCrop.__call__
    monkeypatch.setattr(data.ResizeCenterCrop, '__call__', lambda self, image: decoded.append(1) or resize(self, image))
    config = data_config(tmp_path, batch_size=2, num_classes=2, aug_type=aug_type)

    def run(rank, start_epoch, start_step):
        decoded.clear()
        dataset = data.get_dataset(config, True, rank, 2)
        iterator = data.resume_batches(dataset, 3, start_epoch, start_step)
        epochs = [[colour_index(image) for images, _ in iterator for image in images.asnumpy()]
                  for _ in range(start_epoch, 3)]
        return epochs, len(decoded)

    for rank in (0, 1):
        whole, whole_decoded = run(rank, 0, 0)
        assert [len(epoch) for epoch in whole] == [6, 6, 6]
        resumed, resumed_decoded = run(rank, 1, 2)
        assert [len(epoch) for epoch in resumed] == [2, 6]
        assert resumed == [whole[1][4:], whole[2]]  # the images of steps 3.. of epoch 2, then epoch 3
        if aug_type == 'none':
            assert (whole_decoded, resumed_decoded) == (18, 8)  # the 10 skipped images were not decoded


def test_same_seed_same_data_different_seed_different(tmp_path):
    textured_folder(tmp_path / 'train', [4, 4])

    def run(seed):
        config = data_config(tmp_path, seed=seed, aug_type='auto', auto_augment='rand-m9-mstd0.5',
                             re_prob=0.5, num_parallel_workers=2, batch_size=2, mixup_prob=1.0, mix_up=0.5)
        return np.concatenate([batch['image'] for batch in batches(data.get_dataset(config, True))])

    first = run(3)
    assert np.array_equal(first, run(3))
    assert not np.allclose(first, run(4))


# ----------------------------------------------------------------------------- mixup in the pipeline
def test_mixup_pipeline_gives_soft_targets(tmp_path):
    solid_folder(tmp_path / 'train', [4, 4])
    config = data_config(tmp_path, mixup_prob=1.0, mix_up=0.8, cutmix=1.0, switch_prob=0.5,
                         label_smoothing=0.1, num_classes=5)
    assert data.mixup_active(config)
    assert not data.mixup_active(data_config(tmp_path, mix_up=0.8))  # mixup_prob 0
    for batch in batches(data.get_dataset(config, True)):
        assert batch['label'].shape == (4, 5) and batch['label'].dtype == np.float32
        assert np.allclose(batch['label'].sum(axis=1), 1.0, atol=1e-6)
        assert np.allclose(batch['label'][:, 2:], 0.1 / 5)  # classes absent from the batch: off value


# ----------------------------------------------------------------------------- odd and bad images
def _odd_images(folder):
    """Grey, palette (with transparency), CMYK, RGBA, LA and 16-bit files of one picture."""
    folder.mkdir(parents=True, exist_ok=True)
    picture = textured(np.random.default_rng(2), 30, 40)
    picture.convert('L').save(folder / 'grey.png')
    picture.convert('L').save(folder / 'grey.jpg')
    picture.convert('P').save(folder / 'palette.png')
    picture.convert('P').save(folder / 'palette_alpha.png', transparency=0)
    picture.convert('CMYK').save(folder / 'cmyk.jpg')
    picture.convert('RGBA').save(folder / 'rgba.png')
    picture.convert('LA').save(folder / 'la.png')
    Image.fromarray((np.asarray(picture.convert('L')).astype(np.uint16) * 257)).save(folder / 'grey16.png')
    picture.save(folder / 'png_named.jpg', format='PNG')
    return picture


def test_odd_images_become_rgb_and_agree_with_the_pipeline(tmp_path):
    picture = _odd_images(tmp_path / 'val' / 'odd')
    grey = np.asarray(picture.convert('L'))
    for name in ('grey.png', 'grey16.png'):
        img = data.read_image_rgb(tmp_path / 'val' / 'odd' / name)
        assert img.mode == 'RGB' and np.array_equal(np.asarray(img)[..., 1], grey), name
    assert np.array_equal(np.asarray(data.read_image_rgb(tmp_path / 'val' / 'odd' / 'rgba.png')),
                          np.asarray(picture))  # alpha dropped
    files = data.list_images(tmp_path / 'val' / 'odd')
    images = np.concatenate([b['image'] for b in batches(data.get_dataset(data_config(tmp_path), False))])
    assert len(images) == len(files) == 9
    for path, image in zip(files, images):
        assert np.abs(data.Preprocessing(16).image(path) - image).max() < 1e-5, path.name


def _bad_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / 'good.jpg'
    textured(np.random.default_rng(3), 30, 40).save(good)
    content = good.read_bytes()
    (folder / 'empty.jpg').write_bytes(b'')
    (folder / 'text.png').write_bytes(b'hello, not a picture' * 20)
    (folder / 'truncated.jpg').write_bytes(content[:len(content) // 2])
    png = folder / 'trunc.png'
    Image.open(good).save(png)
    png.write_bytes(png.read_bytes()[:-200])
    Image.open(good).save(folder / 'animation.png', format='GIF')
    os.symlink(folder / 'missing.jpg', folder / 'broken_link.jpg')
    return ['empty.jpg', 'text.png', 'truncated.jpg', 'trunc.png', 'animation.png', 'broken_link.jpg']


def test_unreadable_images_are_refused_before_training_with_their_paths(tmp_path, capsys):
    bad = _bad_files(tmp_path / 'train' / 'c0')
    with pytest.raises(UserError) as error:
        data.get_dataset(data_config(tmp_path), True)
    message = str(error.value)
    assert message.startswith('6 unreadable image(s)') and 'and 3 more' in message and '\n' not in message
    listed = capsys.readouterr().err
    for name in bad:
        assert str(tmp_path / 'train' / 'c0' / name) in listed
    assert 'good.jpg' not in listed
    assert [image_check.inspect_image(tmp_path / 'train' / 'c0' / name)[0] is None for name in bad] == [False] * 6
    for name in bad:
        if name == 'animation.png':  # GIF data: PIL (inference) reads it, MindSpore's decoder does not
            assert data.read_image_rgb(tmp_path / 'train' / 'c0' / name).mode == 'RGB'
            continue
        with pytest.raises(UserError, match=name):
            data.read_image_rgb(tmp_path / 'train' / 'c0' / name)


def test_corruption_found_only_when_decoding_is_skipped_with_its_path(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MindSpore may dump the failing image into the working folder
    solid_folder(tmp_path / 'val', [3, 2])
    broken = tmp_path / 'val' / 'class_0' / 'crc.png'
    Image.new('RGB', (30, 20), (9, 9, 9)).save(broken)
    content = bytearray(broken.read_bytes())
    content[60:70] = bytes(10)  # inside the pixel data: header and end marker intact
    broken.write_bytes(bytes(content))
    assert image_check.inspect_image(broken)[0] is None  # the cheap check cannot see it
    got = batches(data.get_dataset(data_config(tmp_path), False))
    assert sorted(_ids(got)) == list(range(5))  # the other images all arrive
    assert str(broken) in capfd.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == ['val']  # no image dumped, no manifest beside the data


# ----------------------------------------------------------------------------- folders and classes
def test_class_and_file_listing(tmp_path):
    solid_folder(tmp_path / 'split', [1, 1])
    (tmp_path / 'split' / 'b_extra').mkdir()
    for name in ('Z.JPG', 'a.Jpeg', 'm.png', 'notes.txt'):
        (tmp_path / 'split' / 'b_extra' / name).write_bytes(b'x')
    (tmp_path / 'split' / 'b_extra' / 'sub.jpg').mkdir()
    assert [p.name for p in data.list_images(tmp_path / 'split' / 'b_extra')] == ['Z.JPG', 'a.Jpeg', 'm.png']
    assert data.class_names(tmp_path / 'split') == ['b_extra', 'class_0', 'class_1']
    assert data.IMAGE_SUFFIXES == ('.png', '.jpg', '.jpeg')


@pytest.mark.parametrize('layout, expected', [
    ('missing', 'does not exist'), ('no_classes', 'no class sub-folders'), ('empty_class', 'has no images'),
    ('hidden_images', 'hidden folder'),
])
def test_class_folder_errors(tmp_path, layout, expected):
    split = tmp_path / 'split'
    if layout != 'missing':
        split.mkdir()
    if layout == 'no_classes':
        (split / 'loose.jpg').write_bytes(b'x')
    if layout == 'empty_class':
        solid_folder(split, [1])
        (split / 'empty').mkdir()
    if layout == 'hidden_images':
        solid_folder(split, [1])
        (split / '.ipynb_checkpoints').mkdir()
        Image.new('RGB', (4, 4)).save(split / '.ipynb_checkpoints' / 'copy.png')
    with pytest.raises(UserError, match=expected):
        data.class_names(split)


def test_config_errors(tmp_path, capsys):
    solid_folder(tmp_path / 'train', [2, 2, 2])
    with pytest.raises(UserError, match='num_classes: 3'):
        data.get_dataset(data_config(tmp_path, num_classes=2), True)
    config = tmp_path / 'no_data.yaml'
    config.write_text(f'device_target: CPU\ntrain_url: {tmp_path / "runs"}\n')
    status, _, err = run_main(capsys, 'train.py', '--config', config)  # train.py checks data_url first
    assert_one_line_error(status, err, 'set data_url')
    assert not (tmp_path / 'runs').exists()
    with pytest.raises(UserError, match="'q7'"):
        data.get_dataset(data_config(tmp_path, aug_type='auto', auto_augment='rand-q7'), True)
    with pytest.raises(UserError, match='less than one batch of 8 per device'):
        data.get_dataset(data_config(tmp_path, batch_size=8, num_classes=3), True, 0, 2)
    with pytest.raises(UserError, match='needs a policy'):
        data.get_dataset(data_config(tmp_path, aug_type='auto', auto_augment=None), True)


def test_workers_clamped_and_cache_settings(tmp_path):
    solid_folder(tmp_path / 'val', [2])
    config = data_config(tmp_path, num_parallel_workers=512)
    assert sorted(_ids(batches(data.get_dataset(config, False)))) == [0, 1]
    assert data.dataset_cache(config.cache_session_id, config.prefetch) is None
    cache = data.dataset_cache(1234, 7)
    assert type(cache).__name__ == 'DatasetCache' and cache.session_id == 1234 and cache.prefetch_size == 7


def test_the_data_sets_take_explicit_settings_and_the_config_only_names_them(tmp_path):
    """create_dataset_imagenet and the transforms need no config; get_dataset, which reads them
    from one, gives the same batches (random crops and mixing included) for the same settings."""
    textured_folder(tmp_path / 'train', [4, 4])
    config = data_config(tmp_path, batch_size=2, num_classes=2, aug_type='auto', auto_augment='rand-m9-mstd0.5',
                         re_prob=0.5, interpolation='bicubic', mixup_prob=1.0, cutmix=1.0, seed=3)
    transform = data.TrainTransform(16, 'bicubic', 'auto', 'rand-m9-mstd0.5', re_prob=0.5)
    assert data.train_transform(config) == transform
    mixup = Mixup(2, cutmix_alpha=1.0, prob=1.0, switch_prob=0.0, seed=[3, 0])
    set_seed(3)  # the policies draw from Python's random, which train.py seeds as this does
    explicit = data.create_dataset_imagenet(tmp_path / 'train', transform, 2, True, num_classes=2, seed=3,
                                            prefetch=2, mixup=mixup)
    mine = batches(explicit)  # read before the next pipeline is built: building one sets MindSpore's seed
    set_seed(3)
    theirs = batches(data.get_dataset(config, True))
    assert len(mine) == len(theirs) == 4
    for ours, its in zip(mine, theirs):
        assert np.array_equal(ours['image'], its['image']) and np.array_equal(ours['label'], its['label'])
    assert mine[0]['label'].shape == (2, 2)  # soft targets: the mixing is on


# ----------------------------------------------------------------------------- demo data
def test_demo_data_build_is_complete_stratified_and_idempotent(tmp_path):
    out = demo_data.build_demo_data(tmp_path / 'digits')
    counts = {split: {int(c.name): len(list(c.glob('*.png'))) for c in (out / split).iterdir()}
              for split in ('train', 'val')}
    assert sum(counts['train'].values()) == 1437 and sum(counts['val'].values()) == 360
    for label in range(10):
        share = counts['val'][label] / (counts['val'][label] + counts['train'][label])
        assert abs(share - 0.2) < 0.01
    sample = next((out / 'val' / '3').glob('*.png'))
    with Image.open(sample) as img:
        assert img.mode == 'RGB' and img.size == (32, 32)
        assert np.asarray(img).min() < 60 and np.asarray(img).max() > 200  # dark ink on white
    stamp = sample.stat().st_mtime_ns
    assert demo_data.build_demo_data(out) == out and sample.stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name != 'digits']  # no staging folder left
    manifest = json.loads((out / demo_data.MANIFEST).read_text())
    assert manifest['counts']['val']['3'] == counts['val'][3]
    config = data_config(out, image_size=32, batch_size=64, num_classes=10)
    val = batches(data.get_dataset(config, False))
    assert sum(len(batch['label']) for batch in val) == 360 and val[0]['image'].shape == (64, 3, 32, 32)
    ((out / 'val' / '3') / sample.name).unlink()
    assert not demo_data.is_complete(out)
    with pytest.raises(UserError, match='not a complete demo data set'):
        demo_data.build_demo_data(out)


def test_demo_data_command_line(tmp_path):
    result = subprocess.run([sys.executable, '-m', 'src.tools.demo_data', str(tmp_path / 'd')], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and '1437 train, 360 val images' in result.stdout
    result = subprocess.run([sys.executable, '-m', 'src.tools.demo_data'], cwd=ROOT, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 2 and result.stderr.startswith('error: usage')


# ----------------------------------------------------------------------------- preprocessing picture
def test_vis_img_preprocessing_writes_a_readable_png(tmp_path):
    textured_folder(tmp_path / 'train', [2, 2], size=(60, 45))
    output = tmp_path / 'grid.png'
    result = subprocess.run([sys.executable, 'vis_img_preprocessing.py', '--data_url', str(tmp_path),
                             '--image_size', '32', '--aug_type', 'auto',
                             '--auto_augment', 'rand-m9-mstd0.5-inc1',
                             '--re_prob', '0.5', '--device_target', 'CPU', '--output', str(output),
                             '--num_images', '3', '--num_draws', '4'],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    with Image.open(output) as img:
        width, height = img.size
        pixels = np.asarray(img.convert('RGB'))
    assert width > 400 and height > 250 and pixels.std() > 20  # a real picture, not blank
    assert str(output) in result.stdout
