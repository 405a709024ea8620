"""AutoAugment, RandAugment and AugMix on PIL images, configured by timm-style policy strings.

The grammar, ops, magnitude scales and ImageNet policies are timm's, so a recipe written for timm
(and the MindSpore model zoo) means the same here; the differences are in docs/data.md. Runs in the
data-loading workers, drawing from ``random`` and ``numpy.random``, which MindSpore seeds per worker.
"""
import functools
import math
import random
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from src.tools.base.cli import UserError

LEVEL_DENOM = 10.0  # magnitudes are on a 0..10 scale (can go above with mmax)
IMAGENET_FILL = (124, 116, 104)  # round(255 * ImageNet mean): what geometric ops fill with
_PIL_INTERPOLATION = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}


@dataclass(frozen=True)
class OpParams:
    """How every op of one policy draws its arguments."""
    fill: tuple = IMAGENET_FILL
    translate_pct: float = 0.45      # largest shift, fraction of the image side (0.45 * size)
    interpolation: str = 'bilinear'  # for rotate / shear / translate
    magnitude_std: float = 0.0       # > 0: gaussian noise on the magnitude; inf: uniform(0, m)
    magnitude_max: float = LEVEL_DENOM

    @property
    def resample(self):
        return _PIL_INTERPOLATION[self.interpolation]


# ----------------------------------------------------------------------------- image ops
def _affine(img, matrix, params):
    return img.transform(img.size, Image.AFFINE, matrix, resample=params.resample, fillcolor=params.fill)


def rotate(img, degrees, params):
    return img.rotate(degrees, resample=params.resample, fillcolor=params.fill)


def _shear(img, factor, params, axis):
    return _affine(img, (1, factor, 0, 0, 1, 0) if axis == 0 else (1, 0, 0, factor, 1, 0), params)


def _translate(img, fraction, params, axis):
    shift = fraction * img.size[axis]
    return _affine(img, (1, 0, shift, 0, 1, 0) if axis == 0 else (1, 0, 0, 0, 1, shift), params)


def _plain(img, _params, op):
    return op(img)


shear_x, shear_y = (functools.partial(_shear, axis=axis) for axis in (0, 1))
translate_x, translate_y = (functools.partial(_translate, axis=axis) for axis in (0, 1))
auto_contrast, equalize, invert = (functools.partial(_plain, op=op) for op in (
    ImageOps.autocontrast, ImageOps.equalize, ImageOps.invert))


def posterize(img, bits, _params):
    """Keep the ``bits`` high bits of every value; 0 bits gives black (Pillow 13's own posterize
    refuses 0, which the v0 policy asks for at magnitude 2)."""
    bits = min(max(int(bits), 0), 8)
    if bits == 8:
        return img
    mask = (0xFF << (8 - bits)) & 0xFF
    return img.point([value & mask for value in range(256)] * len(img.getbands()))


def solarize(img, threshold, _params):
    """Invert every value >= threshold (256: nothing, 0: everything)."""
    return ImageOps.solarize(img, threshold)


def solarize_add(img, amount, _params, threshold=128):
    """Add ``amount`` to values below ``threshold`` (saturating)."""
    table = [min(255, value + amount) if value < threshold else value for value in range(256)]
    return img.point(table * len(img.getbands()))


def _enhance(img, factor, _params, kind):
    return kind(img).enhance(factor)


color, contrast, brightness, sharpness = (functools.partial(_enhance, kind=kind) for kind in (
    ImageEnhance.Color, ImageEnhance.Contrast, ImageEnhance.Brightness, ImageEnhance.Sharpness))


# ----------------------------------------------------------------------------- magnitude -> argument
def _random_sign(value):
    return -value if random.random() < 0.5 else value


def _signed(level, _params, top):
    """[-top, top], the size growing with the level."""
    return _random_sign(level / LEVEL_DENOM * top)


def _whole(level, _params, top, offset=0, increasing=False):
    """0..top (+ offset) with the level, or top..0 when ``increasing`` (the op grows stronger)."""
    value = int(level / LEVEL_DENOM * top)
    return top - value if increasing else value + offset


def translate_arg(level, params):        # [-0.45, 0.45] of the side
    return _random_sign(level / LEVEL_DENOM * params.translate_pct)


def enhance_arg(level, _params):         # factor 0.1 .. 1.9, grows with level (1.0 at level 5)
    return level / LEVEL_DENOM * 1.8 + 0.1


def enhance_increasing_arg(level, _params):  # 1.0 at level 0, away from 1 with level
    return max(0.1, 1.0 + _random_sign(level / LEVEL_DENOM * 0.9))


rotate_arg = functools.partial(_signed, top=30.0)                             # degrees
shear_arg = functools.partial(_signed, top=0.3)
posterize_arg = functools.partial(_whole, top=4)                              # TPU EfficientNet: keep 0..4 bits
posterize_increasing_arg = functools.partial(_whole, top=4, increasing=True)  # keep 4..0 bits
posterize_original_arg = functools.partial(_whole, top=4, offset=4)           # AutoAugment paper: keep 4..8 bits
solarize_arg = functools.partial(_whole, top=256)                             # threshold: weaker with level
solarize_increasing_arg = functools.partial(_whole, top=256, increasing=True)
solarize_add_arg = functools.partial(_whole, top=110)                         # add 0..110

# name -> (image op, level -> argument or None for ops without a magnitude)
OPS = {
    'AutoContrast': (auto_contrast, None),
    'Equalize': (equalize, None),
    'Invert': (invert, None),
    'Rotate': (rotate, rotate_arg),
    'Posterize': (posterize, posterize_arg),
    'PosterizeIncreasing': (posterize, posterize_increasing_arg),
    'PosterizeOriginal': (posterize, posterize_original_arg),
    'Solarize': (solarize, solarize_arg),
    'SolarizeIncreasing': (solarize, solarize_increasing_arg),
    'SolarizeAdd': (solarize_add, solarize_add_arg),
    'Color': (color, enhance_arg),
    'ColorIncreasing': (color, enhance_increasing_arg),
    'Contrast': (contrast, enhance_arg),
    'ContrastIncreasing': (contrast, enhance_increasing_arg),
    'Brightness': (brightness, enhance_arg),
    'BrightnessIncreasing': (brightness, enhance_increasing_arg),
    'Sharpness': (sharpness, enhance_arg),
    'SharpnessIncreasing': (sharpness, enhance_increasing_arg),
    'ShearX': (shear_x, shear_arg),
    'ShearY': (shear_y, shear_arg),
    'TranslateXRel': (translate_x, translate_arg),
    'TranslateYRel': (translate_y, translate_arg),
}


class AugmentOp:
    """One named op, applied with probability ``prob`` at ``magnitude`` (0..10, with noise)."""

    def __init__(self, name, prob=0.5, magnitude=10.0, params=OpParams()):
        if name not in OPS:
            raise ValueError(f'unknown augmentation op {name!r}')
        self.name, self.prob, self.magnitude, self.params = name, prob, magnitude, params
        self.image_op, self.level_to_arg = OPS[name]

    def draw_magnitude(self):
        magnitude, std = self.magnitude, self.params.magnitude_std
        if std == math.inf:
            magnitude = random.uniform(0.0, magnitude)
        elif std > 0:
            magnitude = random.gauss(magnitude, std)
        return min(max(magnitude, 0.0), self.params.magnitude_max)

    def apply(self, img, magnitude):
        """The op at a given magnitude, without the probability draw."""
        if self.level_to_arg is None:
            return self.image_op(img, self.params)
        return self.image_op(img, self.level_to_arg(magnitude, self.params), self.params)

    def __call__(self, img):
        if self.prob < 1.0 and random.random() >= self.prob:
            return img
        return self.apply(img, self.draw_magnitude())

    def __repr__(self):
        return f'{self.name}(p={self.prob}, m={self.magnitude})'


# ----------------------------------------------------------------------------- policies
# ImageNet policies as (op, probability, magnitude) pairs. 'v0' is the TPU EfficientNet policy,
# 'original' the one of the AutoAugment paper; the 'r' variants use the posterize scale of the
# Google research code (more bits removed as the magnitude grows).
_POLICY_V0 = (
    (('Equalize', 0.8, 1), ('ShearY', 0.8, 4)), (('Color', 0.4, 9), ('Equalize', 0.6, 3)),
    (('Color', 0.4, 1), ('Rotate', 0.6, 8)), (('Solarize', 0.8, 3), ('Equalize', 0.4, 7)),
    (('Solarize', 0.4, 2), ('Solarize', 0.6, 2)), (('Color', 0.2, 0), ('Equalize', 0.8, 8)),
    (('Equalize', 0.4, 8), ('SolarizeAdd', 0.8, 3)), (('ShearX', 0.2, 9), ('Rotate', 0.6, 8)),
    (('Color', 0.6, 1), ('Equalize', 1.0, 2)), (('Invert', 0.4, 9), ('Rotate', 0.6, 0)),
    (('Equalize', 1.0, 9), ('ShearY', 0.6, 3)), (('Color', 0.4, 7), ('Equalize', 0.6, 0)),
    (('Posterize', 0.4, 6), ('AutoContrast', 0.4, 7)), (('Solarize', 0.6, 8), ('Color', 0.6, 9)),
    (('Solarize', 0.2, 4), ('Rotate', 0.8, 9)), (('Rotate', 1.0, 7), ('TranslateYRel', 0.8, 9)),
    (('ShearX', 0.0, 0), ('Solarize', 0.8, 4)), (('ShearY', 0.8, 0), ('Color', 0.6, 4)),
    (('Color', 1.0, 0), ('Rotate', 0.6, 2)), (('Equalize', 0.8, 4), ('Equalize', 0.0, 8)),
    (('Equalize', 1.0, 4), ('AutoContrast', 0.6, 2)), (('ShearY', 0.4, 7), ('SolarizeAdd', 0.6, 7)),
    (('Posterize', 0.8, 2), ('Solarize', 0.6, 10)), (('Solarize', 0.6, 8), ('Equalize', 0.6, 1)),
    (('Color', 0.8, 6), ('Rotate', 0.4, 5)),
)
_POLICY_ORIGINAL = (
    (('PosterizeOriginal', 0.4, 8), ('Rotate', 0.6, 9)), (('Solarize', 0.6, 5), ('AutoContrast', 0.6, 5)),
    (('Equalize', 0.8, 8), ('Equalize', 0.6, 3)),
    (('PosterizeOriginal', 0.6, 7), ('PosterizeOriginal', 0.6, 6)),
    (('Equalize', 0.4, 7), ('Solarize', 0.2, 4)), (('Equalize', 0.4, 4), ('Rotate', 0.8, 8)),
    (('Solarize', 0.6, 3), ('Equalize', 0.6, 7)), (('PosterizeOriginal', 0.8, 5), ('Equalize', 1.0, 2)),
    (('Rotate', 0.2, 3), ('Solarize', 0.6, 8)), (('Equalize', 0.6, 8), ('PosterizeOriginal', 0.4, 6)),
    (('Rotate', 0.8, 8), ('Color', 0.4, 0)), (('Rotate', 0.4, 9), ('Equalize', 0.6, 2)),
    (('Equalize', 0.0, 7), ('Equalize', 0.8, 8)), (('Invert', 0.6, 4), ('Equalize', 1.0, 8)),
    (('Color', 0.6, 4), ('Contrast', 1.0, 8)), (('Rotate', 0.8, 8), ('Color', 1.0, 2)),
    (('Color', 0.8, 8), ('Solarize', 0.8, 7)), (('Sharpness', 0.4, 7), ('Invert', 0.6, 8)),
    (('ShearX', 0.6, 5), ('Equalize', 1.0, 9)), (('Color', 0.4, 0), ('Equalize', 0.6, 3)),
    (('Equalize', 0.4, 7), ('Solarize', 0.2, 4)), (('Solarize', 0.6, 5), ('AutoContrast', 0.6, 5)),
    (('Invert', 0.6, 4), ('Equalize', 1.0, 8)), (('Color', 0.6, 4), ('Contrast', 1.0, 8)),
    (('Equalize', 0.8, 8), ('Equalize', 0.6, 3)),
)


def _with_posterize(policy, name):
    return tuple(tuple((name if op.startswith('Posterize') else op, p, m) for op, p, m in sub)
                 for sub in policy)


AUTO_AUGMENT_POLICIES = {
    'v0': _POLICY_V0,
    'v0r': _with_posterize(_POLICY_V0, 'PosterizeIncreasing'),
    'original': _POLICY_ORIGINAL,
    'originalr': _with_posterize(_POLICY_ORIGINAL, 'PosterizeIncreasing'),
}

RAND_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd',
            'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY',
            'TranslateXRel', 'TranslateYRel')
RAND_INCREASING_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
                       'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing',
                       'BrightnessIncreasing', 'SharpnessIncreasing', 'ShearX', 'ShearY',
                       'TranslateXRel', 'TranslateYRel')
# 'w0': op choice favouring geometry (as timm's experimental weight set 0); posterize, invert never.
RAND_WEIGHTS_0 = {'Rotate': 0.3, 'ShearX': 0.2, 'ShearY': 0.2, 'TranslateXRel': 0.1, 'TranslateYRel': 0.1,
                  'Color': 0.025, 'Sharpness': 0.025, 'AutoContrast': 0.025, 'Solarize': 0.005,
                  'SolarizeAdd': 0.005, 'Contrast': 0.005, 'Brightness': 0.005, 'Equalize': 0.005,
                  'Posterize': 0.0, 'Invert': 0.0}
AUGMIX_OPS = ('AutoContrast', 'ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing',
              'SharpnessIncreasing', 'Equalize', 'Rotate', 'PosterizeIncreasing', 'SolarizeIncreasing',
              'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')


class AutoAugment:
    """Pick one sub-policy per image and apply its ops in order."""

    def __init__(self, policy, params=OpParams()):
        self.sub_policies = [[AugmentOp(name, prob, magnitude, params) for name, prob, magnitude in sub]
                             for sub in policy]

    def __call__(self, img):
        for op in random.choice(self.sub_policies):
            img = op(img)
        return img


class RandAugment:
    """Apply ``num_layers`` ops drawn from ``ops`` (with replacement, or weighted without)."""

    def __init__(self, op_names, magnitude=LEVEL_DENOM, num_layers=2, prob=0.5, weights=None,
                 params=OpParams()):
        self.ops = [AugmentOp(name, prob, magnitude, params) for name in op_names]
        self.num_layers = num_layers
        self.weights = None if weights is None else np.asarray(weights, float) / sum(weights)

    def __call__(self, img):
        if self.weights is None:
            chosen = random.choices(self.ops, k=self.num_layers)
        else:
            chosen = [self.ops[i] for i in np.random.choice(len(self.ops), self.num_layers, replace=False,
                                                           p=self.weights)]
        for op in chosen:
            img = op(img)
        return img


class AugMix:
    """AugMix (Hendrycks et al. 2020): ``width`` op chains mixed with Dirichlet weights, then blended
    with the original image by a Beta(alpha, alpha) factor. ``blended`` does the same mix as a
    sequence of PIL blends (cheaper, equal up to 8-bit rounding)."""

    def __init__(self, magnitude=3.0, width=3, depth=0, alpha=1.0, blended=False, params=OpParams()):
        self.ops = [AugmentOp(name, 1.0, magnitude, params) for name in AUGMIX_OPS]
        self.width, self.depth, self.alpha, self.blended = width, depth, alpha, blended

    def _chain(self, img):
        depth = self.depth if self.depth > 0 else np.random.randint(1, 4)
        for index in np.random.randint(0, len(self.ops), size=depth):
            img = self.ops[index](img)
        return img

    def __call__(self, img):
        chain_weights = np.random.dirichlet([self.alpha] * self.width)
        keep = float(np.random.beta(self.alpha, self.alpha))  # share of the augmented mix
        if self.blended:
            # result = (1 - keep) * img + keep * sum_i w_i chain_i, built as successive blends:
            # blend k must give chain k the weight keep * w_k out of what later blends leave over.
            mixed, remaining = img, 1.0
            alphas = []
            for weight in chain_weights[::-1]:
                alpha = keep * weight / remaining
                alphas.append(alpha)
                remaining *= 1.0 - alpha
            for alpha in alphas[::-1]:
                mixed = Image.blend(mixed, self._chain(img), float(alpha))
            return mixed
        mixed = np.zeros((img.size[1], img.size[0], len(img.getbands())), np.float32)
        for weight in chain_weights:
            mixed += np.float32(weight) * np.asarray(self._chain(img), np.float32)
        mixed = Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8))
        return Image.blend(img, mixed, keep)


# ----------------------------------------------------------------------------- policy strings
_OPTION = re.compile(r'([a-z]+)(\d+(?:\.\d*)?|\.\d+)$')
_FAMILIES = {  # policy family -> (name in errors, its options)
    'rand': ('RandAugment', ('m', 'n', 'w', 'p', 'mstd', 'mmax', 'inc')),
    'augmix': ('AugMix', ('m', 'w', 'd', 'a', 'b', 'mstd', 'mmax')),
    'auto': ('AutoAugment', ('mstd', 'mmax')),
}
_EXAMPLES = 'rand-m9-mstd0.5-inc1, augmix-m5-w4-d2, v0, original-mstd0.5'


def parse_policy(policy):
    """``'rand-m9-mstd0.5'`` -> ``('rand', {'m': 9.0, 'mstd': 0.5})``; a bad token is a UserError."""
    text = str(policy).strip()
    head, *tokens = text.split('-')
    if head not in ('rand', 'augmix', *AUTO_AUGMENT_POLICIES):
        raise UserError(f"auto_augment {text!r}: unknown policy {head!r}; start with 'rand', 'augmix' "
                        f"or an AutoAugment policy ({', '.join(AUTO_AUGMENT_POLICIES)}), e.g. {_EXAMPLES}")
    family, allowed = _FAMILIES[head if head in ('rand', 'augmix') else 'auto']
    options = {}
    for token in tokens:
        match = _OPTION.fullmatch(token)
        if not match or match.group(1) not in allowed:
            raise UserError(f"auto_augment {text!r}: bad option {token!r} for {family}; "
                            f"options are {', '.join(allowed)}, each followed by a number (e.g. m9)")
        key = match.group(1)
        if key in options:
            raise UserError(f"auto_augment {text!r}: option {key!r} given twice")
        options[key] = float(match.group(2))
    return head, options


def _integer(text, options, key, default, low=None):
    value = options.get(key, default)
    if value != int(value) or (low is not None and value < low):
        raise UserError(f"auto_augment {text!r}: option {key!r} must be an integer"
                        + (f' >= {low}' if low is not None else '') + f', got {value:g}')
    return int(value)


def _switch(text, options, key):
    value = options.get(key, 0.0)
    if value not in (0.0, 1.0):
        raise UserError(f"auto_augment {text!r}: option {key!r} is a switch (0 or 1), got {value:g}")
    return value == 1.0


def policy_from_string(policy, interpolation='bilinear', fill=IMAGENET_FILL):
    """The PIL-image transform a timm-style policy string describes; geometric ops fill with ``fill``."""
    text = str(policy).strip()
    head, options = parse_policy(text)
    std = options.get('mstd', math.inf if head == 'augmix' else 0.0)  # AugMix: uniform draws by default
    params = OpParams(fill=tuple(fill), interpolation=interpolation,
                      magnitude_std=math.inf if std > 100 else std,
                      magnitude_max=options.get('mmax', LEVEL_DENOM))
    if head == 'rand':
        prob = options.get('p', 0.5)
        if not 0.0 <= prob <= 1.0:
            raise UserError(f"auto_augment {text!r}: option 'p' is a probability in [0, 1], got {prob:g}")
        names = RAND_INCREASING_OPS if _switch(text, options, 'inc') else RAND_OPS
        weights = None
        if 'w' in options:
            if _integer(text, options, 'w', 0) != 0:
                raise UserError(f"auto_augment {text!r}: only weight set w0 exists")
            weights = [RAND_WEIGHTS_0.get(name.replace('Increasing', ''), 0.0) for name in names]
        return RandAugment(names, magnitude=options.get('m', LEVEL_DENOM),
                           num_layers=_integer(text, options, 'n', 2, low=1), prob=prob,
                           weights=weights, params=params)
    if head == 'augmix':
        return AugMix(magnitude=options.get('m', 3.0), width=_integer(text, options, 'w', 3, low=1),
                      depth=_integer(text, options, 'd', 0), alpha=options.get('a', 1.0),
                      blended=_switch(text, options, 'b'), params=params)
    return AutoAugment(AUTO_AUGMENT_POLICIES[head], params=params)
