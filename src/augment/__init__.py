"""Training augmentations the MindSpore vision ops do not provide in the reference's form:
timm-style AutoAugment / RandAugment / AugMix, random erasing, batch Mixup / CutMix."""
from src.augment.auto_augment import (
    AugmentOp,
    AugMix,
    AutoAugment,
    OpParams,
    RandAugment,
    parse_policy,
    policy_from_string,
)
from src.augment.mixup import Mixup, cutmix_box, smoothed_one_hot
from src.augment.random_erasing import RandomErasing

__all__ = ['AugMix', 'AugmentOp', 'AutoAugment', 'Mixup', 'OpParams', 'RandAugment', 'RandomErasing',
           'cutmix_box', 'parse_policy', 'policy_from_string', 'smoothed_one_hot']
