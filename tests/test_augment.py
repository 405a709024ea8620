"""src/augment: policy strings, op magnitudes, AugMix mixing, random erasing, Mixup / CutMix."""
import math
import random

import numpy as np
import pytest
from PIL import Image, ImageOps

from src.augment import (
    AugmentOp,
    AugMix,
    AutoAugment,
    Mixup,
    OpParams,
    RandAugment,
    RandomErasing,
    cutmix_box,
    parse_policy,
    policy_from_string,
    smoothed_one_hot,
)
from src.augment import auto_augment as aa
from src.tools.base.cli import UserError


@pytest.fixture(name='image')
def fixture_image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (30, 42, 3), dtype=np.uint8))


# ----------------------------------------------------------------------------- policy strings
def test_rand_policy_string():
    assert parse_policy('rand-m9-mstd0.5-inc1') == ('rand', {'m': 9.0, 'mstd': 0.5, 'inc': 1.0})
    policy = policy_from_string('rand-m9-mstd0.5-inc1', interpolation='bicubic')
    assert isinstance(policy, RandAugment) and policy.num_layers == 2 and policy.weights is None
    assert [op.name for op in policy.ops] == list(aa.RAND_INCREASING_OPS)
    op = policy.ops[0]
    assert (op.prob, op.magnitude, op.params.magnitude_std, op.params.magnitude_max) == (0.5, 9.0, 0.5, 10.0)
    assert op.params.fill == (124, 116, 104) and op.params.resample == Image.BICUBIC
    plain = policy_from_string('rand-m7-n3-p0.8-mmax12-mstd101')
    assert [op.name for op in plain.ops] == list(aa.RAND_OPS) and plain.num_layers == 3
    assert (plain.ops[0].prob, plain.ops[0].params.magnitude_std, plain.ops[0].params.magnitude_max) == \
        (0.8, math.inf, 12.0)
    assert [op.name for op in policy_from_string('rand-m9-inc0').ops] == list(aa.RAND_OPS)


def test_weighted_rand_never_picks_zero_weight_ops(image):
    policy = policy_from_string('rand-m9-w0-n2')
    names = [op.name for op in policy.ops]
    assert policy.weights[names.index('Posterize')] == 0 and policy.weights[names.index('Invert')] == 0
    assert policy.weights.sum() == pytest.approx(1.0)
    picked = []
    policy.ops = [lambda img, name=name: picked.append(name) or img for name in names]
    np.random.seed(0)
    for _ in range(300):
        assert policy(image) is image
    assert len(picked) == 600 and 'Posterize' not in picked and 'Invert' not in picked
    assert picked.count('Rotate') > picked.count('Color')  # weight 0.3 against 0.025


def test_augmix_and_autoaugment_strings():
    augmix = policy_from_string('augmix-m5-w4-d2')
    assert isinstance(augmix, AugMix) and (augmix.width, augmix.depth, augmix.alpha) == (4, 2, 1.0)
    assert augmix.ops[0].magnitude == 5 and augmix.ops[0].params.magnitude_std == math.inf  # uniform
    assert [op.name for op in augmix.ops] == list(aa.AUGMIX_OPS) and augmix.ops[0].prob == 1.0
    assert policy_from_string('augmix-m3-mstd0.5-b1-a0.5').blended
    for name in ('v0', 'v0r', 'original', 'originalr'):
        policy = policy_from_string(name)
        assert isinstance(policy, AutoAugment) and len(policy.sub_policies) == 25
        assert all(len(sub) == 2 for sub in policy.sub_policies)
    names = {op.name for sub in policy_from_string('v0r').sub_policies for op in sub}
    assert 'PosterizeIncreasing' in names and 'Posterize' not in names
    names = {op.name for sub in policy_from_string('original').sub_policies for op in sub}
    assert 'PosterizeOriginal' in names and 'TranslateYRel' not in names
    first = policy_from_string('original-mstd0.5').sub_policies[0]
    assert [(op.name, op.prob, op.magnitude) for op in first] == [('PosterizeOriginal', 0.4, 8),
                                                                   ('Rotate', 0.6, 9)]
    assert first[0].params.magnitude_std == 0.5


@pytest.mark.parametrize('policy, token', [
    ('rand-m9-x3', "'x3'"), ('rand-mfoo', "'mfoo'"), ('randy-m9', "'randy'"), ('augmix-inc1', "'inc1'"),
    ('v0-m9', "'m9'"), ('rand-m9-', "''"), ('rand-m-9', "'m'"), ('', "''"), ('rand-w1', "w0"),
    ('rand-inc2', "'inc'"), ('rand-m9-m8', "'m' given twice"), ('rand-p1.5', "'p'"), ('augmix-w2.5', "'w'"),
    ('rand-n0', "'n'"),
])
def test_policy_errors_name_the_bad_token(policy, token):
    with pytest.raises(UserError) as error:
        policy_from_string(policy)
    assert token in str(error.value) and repr(policy) in str(error.value)


# ----------------------------------------------------------------------------- ops and magnitudes
IDENTITY_AT_ZERO = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel', 'SolarizeAdd',
                    'SolarizeIncreasing', 'ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing',
                    'SharpnessIncreasing')


@pytest.mark.parametrize('name', IDENTITY_AT_ZERO)
@pytest.mark.parametrize('interpolation', ['bilinear', 'bicubic'])
def test_magnitude_zero_is_identity(name, interpolation, image):
    op = AugmentOp(name, prob=1.0, magnitude=0.0, params=OpParams(interpolation=interpolation))
    random.seed(0)
    for _ in range(4):  # both random signs
        assert np.array_equal(np.asarray(op(image)), np.asarray(image))


def test_ops_without_identity_at_zero_take_their_documented_arguments(image):
    pixels = np.asarray(image)
    at = lambda name, level: AugmentOp(name, 1.0, level).apply(image, level)  # noqa: E731
    assert np.array_equal(np.asarray(at('Solarize', 0)), 255 - pixels)            # threshold 0: all
    assert np.array_equal(np.asarray(at('Solarize', 10)), pixels)                 # threshold 256: none
    assert np.array_equal(np.asarray(at('SolarizeIncreasing', 10)), 255 - pixels)
    assert not np.asarray(at('Posterize', 0)).any()                               # 0 bits kept
    assert np.array_equal(np.asarray(at('PosterizeIncreasing', 0)), pixels & 0xF0)
    assert np.array_equal(np.asarray(at('PosterizeOriginal', 0)), pixels & 0xF0)
    assert np.array_equal(np.asarray(at('PosterizeOriginal', 10)), pixels)         # 8 bits kept
    assert not np.asarray(at('PosterizeIncreasing', 10)).any()
    assert np.abs(np.asarray(at('Brightness', 0), float) - 0.1 * pixels).max() <= 1
    assert np.array_equal(np.asarray(at('Invert', 3)), 255 - pixels)
    added = np.asarray(at('SolarizeAdd', 10)).astype(int)
    assert np.array_equal(added, np.where(pixels < 128, np.minimum(pixels.astype(int) + 110, 255), pixels))
    assert np.array_equal(np.asarray(at('Equalize', 0)), np.asarray(ImageOps.equalize(image)))


def test_level_to_argument_ranges():
    params = OpParams()
    random.seed(1)
    assert {abs(aa.rotate_arg(10, params)) for _ in range(20)} == {30.0}
    assert {aa.shear_arg(10, params) for _ in range(40)} == {0.3, -0.3}
    assert {aa.translate_arg(10, params) for _ in range(40)} == {0.45, -0.45}
    assert aa.enhance_arg(0, params) == pytest.approx(0.1) and aa.enhance_arg(10, params) == pytest.approx(1.9)
    assert {round(aa.enhance_increasing_arg(10, params), 6) for _ in range(40)} == {0.1, 1.9}
    assert aa.solarize_add_arg(10, params) == 110 and aa.posterize_original_arg(10, params) == 8


def test_translate_fills_with_the_imagenet_mean(image):
    op = AugmentOp('TranslateXRel', prob=1.0, magnitude=10.0)
    random.seed(3)
    shifted = np.asarray(op(image))
    filled = np.all(shifted == (124, 116, 104), axis=2)
    columns = filled.all(axis=0)
    assert columns.sum() == round(0.45 * image.size[0])  # 0.45 of the side, all rows, at one edge
    assert columns[0] or columns[-1]


def test_magnitude_noise_and_clipping():
    random.seed(0)
    uniform = AugmentOp('Rotate', 1.0, 8.0, OpParams(magnitude_std=math.inf))
    draws = np.array([uniform.draw_magnitude() for _ in range(4000)])
    assert draws.min() >= 0 and draws.max() <= 8 and abs(draws.mean() - 4) < 0.2
    gauss = AugmentOp('Rotate', 1.0, 5.0, OpParams(magnitude_std=0.5))
    draws = np.array([gauss.draw_magnitude() for _ in range(4000)])
    assert abs(draws.std() - 0.5) < 0.05 and abs(draws.mean() - 5) < 0.05
    clipped = AugmentOp('Rotate', 1.0, 9.5, OpParams(magnitude_std=2.0))
    assert max(clipped.draw_magnitude() for _ in range(2000)) == 10.0
    assert AugmentOp('Rotate', 1.0, 7.0).draw_magnitude() == 7.0


def test_op_probability():
    calls = []
    op = AugmentOp('Invert', prob=0.3)
    op.image_op = lambda img, params: calls.append(1) or img
    random.seed(0)
    for _ in range(2000):
        op('image')
    assert abs(len(calls) / 2000 - 0.3) < 0.04


def test_policies_keep_size_and_mode(image):
    random.seed(0)
    np.random.seed(0)
    for text in ('rand-m9-mstd0.5-inc1', 'rand-m10-n4-w0', 'augmix-m5-w4-d2', 'augmix-m3-b1', 'v0', 'original'):
        policy = policy_from_string(text)
        for _ in range(5):
            out = policy(image)
            assert out.size == image.size and out.mode == 'RGB', text


def _recorded_chains(monkeypatch, augmix):
    """Make chain k return a solid image of grey level 40 * (k + 1), in call order."""
    counter = iter(range(1000))
    monkeypatch.setattr(augmix, '_chain',
                        lambda img: Image.new('RGB', img.size, (40 * (next(counter) % 3 + 1),) * 3))


@pytest.mark.parametrize('blended', [False, True])
def test_augmix_mixes_chains_with_dirichlet_weights_then_blends(monkeypatch, image, blended):
    augmix = AugMix(magnitude=3, width=3, alpha=1.0, blended=blended)
    _recorded_chains(monkeypatch, augmix)
    np.random.seed(5)
    weights = np.random.dirichlet([1.0] * 3)
    keep = float(np.random.beta(1.0, 1.0))
    np.random.seed(5)
    out = np.asarray(augmix(image), float)
    chains = sum(w * 40 * (k + 1) for k, w in enumerate(weights))
    expected = (1 - keep) * np.asarray(image, float) + keep * chains
    # every 8-bit step truncates: basic = cast + one blend, blended = one blend per chain
    assert np.abs(out - expected).max() <= (3.0 if blended else 2.0)


def test_augmix_non_square():
    img = Image.new('RGB', (40, 24), (10, 200, 30))
    np.random.seed(0)
    assert AugMix(magnitude=3, width=3)(img).size == (40, 24)


# ----------------------------------------------------------------------------- random erasing
def test_random_erasing_modes_and_areas():
    random.seed(0)
    np.random.seed(0)
    image = np.full((3, 40, 50), 7.0, np.float32)
    assert np.array_equal(RandomErasing(probability=0.0)(image), image)
    for _ in range(50):
        out = RandomErasing(probability=1.0, mode='const')(image)
        erased = (out == 0).all(axis=0)
        assert 0.02 * 0.5 < erased.mean() < 1 / 3 * 1.2  # one box, 2 % .. 33 % of the image (rounded)
        rows, cols = np.nonzero(erased)
        assert erased[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a rectangle
    assert (image == 7.0).all()  # the input is not modified
    rand = RandomErasing(probability=1.0, mode='rand')(image)
    region = rand[:, (rand != 7.0).any(axis=0)]
    assert np.allclose(region, region[:, :1])  # one value per channel
    pixel = RandomErasing(probability=1.0, mode='pixel')(image)
    region = pixel[:, (pixel != 7.0).any(axis=0)]
    assert region.std() > 0.5 and abs(region.mean()) < 0.5  # standard normal noise


def test_random_erasing_count():
    random.seed(0)
    eraser = RandomErasing(probability=1.0, count=3)
    counts = {len(eraser.boxes(64, 64)) for _ in range(300)}
    assert counts == {1, 2, 3}
    with pytest.raises(ValueError, match='mode'):
        RandomErasing(mode='zeros')


# ----------------------------------------------------------------------------- mixup / cutmix
def test_smoothed_one_hot():
    targets = smoothed_one_hot([2, 0], 5, smoothing=0.1)
    assert targets.dtype == np.float32 and np.allclose(targets.sum(1), 1)
    assert targets[0, 2] == pytest.approx(1 - 0.1 + 0.02) and targets[0, 0] == pytest.approx(0.02)
    with pytest.raises(ValueError, match='labels'):
        smoothed_one_hot([5], 5)


def _batch(size=6, classes=10, height=8, width=10):
    images = np.stack([np.full((3, height, width), float(i), np.float32) for i in range(size)])
    return images, np.arange(size) % classes


def _lam_from_targets(targets, labels, smoothing, classes):
    """The image's own share: target at its label is lam * on + (1 - lam) * off (partner differs)."""
    off = smoothing / classes
    on = 1 - smoothing + off
    return (targets[np.arange(len(labels)), labels] - off) / (on - off)


@pytest.mark.parametrize('mode', ['batch', 'pair', 'elem'])
def test_mixup_targets_and_pixels(mode):
    images, labels = _batch()
    mix = Mixup(10, mixup_alpha=0.8, prob=1.0, mode=mode, label_smoothing=0.1, seed=3)
    mixed, targets = mix(images, labels)
    assert targets.shape == (6, 10) and targets.dtype == np.float32 and np.allclose(targets.sum(1), 1)
    lam = _lam_from_targets(targets, labels, 0.1, 10)
    partner = np.arange(6)[::-1]
    assert np.allclose(targets[np.arange(6), labels[partner]], (1 - lam) * 0.91 + lam * 0.01, atol=1e-6)
    untouched = np.ones((6, 10), bool)
    untouched[np.arange(6), labels] = untouched[np.arange(6), labels[partner]] = False
    assert np.allclose(targets[untouched], 0.01)  # off value s / C
    expected = lam * np.arange(6) + (1 - lam) * partner
    assert np.allclose(mixed.mean(axis=(1, 2, 3)), expected, atol=1e-5)
    assert np.allclose(mixed.std(axis=(1, 2, 3)), 0, atol=1e-5)  # a blend, not a box
    if mode == 'batch':
        assert np.allclose(lam, lam[0])
    if mode == 'pair':
        assert np.allclose(lam, lam[::-1])
    if mode == 'elem':
        assert len(np.unique(np.round(lam, 6))) > 1


@pytest.mark.parametrize('mode', ['batch', 'pair', 'elem'])
def test_cutmix_lambda_is_the_area_left(mode):
    images, labels = _batch(height=12, width=16)
    mix = Mixup(10, cutmix_alpha=1.0, prob=1.0, mode=mode, label_smoothing=0.0, seed=7)
    for _ in range(5):
        mixed, targets = mix(images, labels)
        lam = _lam_from_targets(targets, labels, 0.0, 10)
        own = (mixed == np.arange(6)[:, None, None, None]).mean(axis=(1, 2, 3))
        assert np.allclose(own, lam, atol=1e-6)  # the target share equals the pixel share
        assert np.allclose(targets.sum(1), 1)


def test_cutmix_box_correction():
    rng = np.random.default_rng(0)
    for lam in (0.2, 0.5, 0.9):
        for _ in range(50):
            (top, bottom, left, right), corrected = cutmix_box(20, 30, lam, rng)
            assert 0 <= top <= bottom <= 20 and 0 <= left <= right <= 30
            assert corrected == pytest.approx(1 - (bottom - top) * (right - left) / 600)
            assert corrected >= lam - 1e-9  # clipping and rounding only shrink the box


def test_switch_prob_and_inactive_mixup():
    images, labels = _batch()
    always_cut = Mixup(10, mixup_alpha=1.0, cutmix_alpha=1.0, prob=1.0, switch_prob=1.0, seed=0)
    assert all(always_cut.draw(1)[1][0] for _ in range(20))
    never_cut = Mixup(10, mixup_alpha=1.0, cutmix_alpha=1.0, prob=1.0, switch_prob=0.0, seed=0)
    assert not any(never_cut.draw(1)[1][0] for _ in range(20))
    off = Mixup(10, mixup_alpha=1.0, prob=0.0, label_smoothing=0.1)
    mixed, targets = off(images, labels)
    assert np.array_equal(mixed, images) and np.allclose(targets, smoothed_one_hot(labels, 10, 0.1))
    sometimes = Mixup(10, mixup_alpha=1.0, prob=0.3, mode='elem', seed=1)
    lam, _ = sometimes.draw(4000)
    assert abs((lam < 1).mean() - 0.3) < 0.03


def test_pair_mode_odd_batch_leaves_middle():
    images, labels = _batch(size=5)
    mixed, targets = Mixup(10, mixup_alpha=1.0, prob=1.0, mode='pair', seed=2)(images, labels)
    assert np.array_equal(mixed[2], images[2]) and targets[2, labels[2]] == pytest.approx(1.0)
