"""What a model file says it is: the ``ModelCard``, written into every checkpoint and export and read back.

Its entries (all strings) and how ``settle`` completes a card with the config for older files:
docs/deployment.md, "Model files". A model file is evaluated, exported or served without its config.
"""
import json
from dataclasses import dataclass, replace

from src.config import OPTION_BY_NAME
from src.dataset import EVAL_CROP_PCT, MEAN, STD, Preprocessing
from src.tools.base.cli import UserError
from src.variants import ARCH_NAMES, QA_ARCH_NAMES


def _parser(convert, valid):
    """``convert`` an entry's text, refusing (ValueError) what ``valid`` says no to."""
    def parse(text):
        value = convert(text)
        if not valid(value):
            raise ValueError(text)
        return value
    return parse


def _json_list(text):
    value = json.loads(text)
    if not isinstance(value, list):
        raise ValueError(text)
    return tuple(value)


_POSITIVE = _parser(int, lambda value: value >= 1)
_TRIPLE = _parser(_json_list, lambda value: len(value) == 3 and all(type(v) in (int, float) for v in value))
# entry -> (field, parser, what a valid value is)
_ENTRIES = {
    'arch': ('arch', _parser(str, lambda value: value in ARCH_NAMES), 'an arch name'),
    'num_classes': ('num_classes', _POSITIVE, 'a positive integer'),
    'form': ('deploy', {'train': False, 'deploy': True}.__getitem__, 'train or deploy'),
    'class_names': ('class_names', _parser(_json_list, lambda value: all(isinstance(v, str) for v in value)),
                    'a list of names'),
    'image_size': ('image_size', _POSITIVE, 'a positive integer'),
    'interpolation': ('interpolation', _parser(str, lambda value: value in OPTION_BY_NAME['interpolation'].choices),
                      'bilinear or bicubic'),
    'mean': ('mean', _TRIPLE, 'a list of 3 numbers'),
    'std': ('std', _TRIPLE, 'a list of 3 numbers'),
    'crop_pct': ('crop_pct', _parser(float, lambda value: 0 < value <= 1), 'a number in (0, 1]'),
}
ENTRY_NAMES = (*_ENTRIES, 'quantization_friendly')


@dataclass(frozen=True)
class ModelCard:
    """What a model is and how its images are preprocessed; a field a file does not record is None."""
    arch: str = None
    num_classes: int = None
    deploy: bool = None
    class_names: tuple = None
    image_size: int = None
    interpolation: str = None
    mean: tuple = None
    std: tuple = None
    crop_pct: float = None

    def __post_init__(self):  # lists compare equal to what a file reads back
        for field in ('class_names', 'mean', 'std'):
            if getattr(self, field) is not None:
                object.__setattr__(self, field, tuple(getattr(self, field)))

    @classmethod
    def of(cls, arch, num_classes, deploy, class_names=None, preprocessing=None):
        """The card of a network: its arch, classes and form, and ``preprocessing`` (a Preprocessing)."""
        fields = dict(arch=arch, num_classes=int(num_classes), deploy=bool(deploy), class_names=class_names or None)
        if preprocessing is not None:
            fields.update(image_size=preprocessing.image_size, interpolation=preprocessing.interpolation,
                          mean=preprocessing.mean, std=preprocessing.std, crop_pct=preprocessing.crop_pct)
        return cls(**fields)

    @classmethod
    def read(cls, entries, source, remedy='export it again from its checkpoint'):
        """The card recorded in ``entries``; a UserError naming ``source`` and an entry that is not valid."""
        fields = {}
        for key, (field, parse, valid) in _ENTRIES.items():
            if key in entries:
                value = entries[key]  # checkpoints of earlier versions stored num_classes as a number
                text = str(value.asnumpy().item()) if hasattr(value, 'asnumpy') else str(value)
                try:
                    fields[field] = parse(text)
                except (ValueError, TypeError, KeyError):
                    raise UserError(f'{source}: its {key} entry {text[:40]!r} is not {valid}; {remedy}') from None
        return cls(**fields)

    def entries(self):
        """The recorded fields as {entry: string}, for a checkpoint's append_dict or a file's metadata."""
        def text(value):
            return json.dumps(list(value), ensure_ascii=False) if isinstance(value, tuple) else str(value)
        values = {key: getattr(self, field) for key, (field, _, _) in _ENTRIES.items()}
        values['form'] = None if self.deploy is None else ('deploy' if self.deploy else 'train')
        if self.arch is not None:
            values['quantization_friendly'] = str(self.arch in QA_ARCH_NAMES).lower()
        return {key: text(value) for key, value in values.items() if value is not None}

    @property
    def preprocessing(self):
        """The eval transform of a settled card."""
        return Preprocessing(self.image_size, self.interpolation, self.mean, self.std, self.crop_pct)


def given(config, key):
    """The value of ``key`` when the config file or the command line set it, else None."""
    return getattr(config, key) if key in getattr(config, 'given', ()) else None


def settle(card, config, source, image_size=None, num_classes=None):
    """The card a run uses: the file's, the config's values for what an older file does not record,
    ImageNet's mean, std and crop where neither says; ``image_size``, ``num_classes``: what an ONNX or
    MINDIR graph takes and gives, which win. A config may override image_size and interpolation (with
    a note), not arch or num_classes."""
    recorded = replace(card, **{key: value for key, value in (('image_size', image_size),
                                                                ('num_classes', num_classes)) if value is not None})
    if recorded.arch is not None and given(config, 'arch') not in (None, recorded.arch):
        raise UserError(f'{source} was trained as {recorded.arch}, the config asks for {config.arch}: drop arch '
                        f'(the file records it), or use a model of {config.arch}')
    if recorded.num_classes is not None and given(config, 'num_classes') not in (None, recorded.num_classes):
        raise UserError(f'{source} has {recorded.num_classes} classes, the config asks for {config.num_classes}: '
                        f'drop num_classes (the file records it), or use a model of {config.num_classes} classes')
    values = {}
    for key in ('image_size', 'interpolation'):
        asked, kept = given(config, key), getattr(recorded, key)
        if key == 'image_size' and image_size is not None:
            asked = None
        if asked is not None and kept is not None and asked != kept:
            print(f'=> note: {key} {asked} (set in the config or flags) overrides the {kept} that {source} records')
        values[key] = asked or kept or getattr(config, key)
    return replace(recorded, arch=recorded.arch or config.arch, num_classes=recorded.num_classes or config.num_classes,
                   mean=recorded.mean or MEAN, std=recorded.std or STD, crop_pct=recorded.crop_pct or EVAL_CROP_PCT,
                   **values)


# The official and timm weights' preprocessing: 224, bilinear, ImageNet mean and std, crop 0.875.
IMAGENET_CARD = ModelCard(image_size=224, interpolation='bilinear', mean=MEAN, std=STD, crop_pct=EVAL_CROP_PCT)
