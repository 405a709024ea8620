"""The one configuration object: argparse defaults < YAML file < flags given on the command line.

Every option is declared once in ``OPTIONS``, from which the parser, the YAML validation, the types
and the defaults (the reference's parameter block, src/configs/RepVGG.yaml) come; docs/models.md.
"""
import argparse
import difflib
import operator
from dataclasses import dataclass
from pathlib import Path

import yaml

from src.tools.base.cli import OneLineParser, UserError
from src.variants import ARCH_NAMES

# What runs a model file in eval.py / infer.py (src/tools/deployment/backends.py), and the arithmetic
# OpenVINO runs it in (src/tools/deployment/openvino_engine.py); eval_onnx.py / infer_onnx.py offer the same.
BACKENDS = ('auto', 'mindspore', 'onnxruntime', 'openvino')
PRECISIONS = ('auto', 'fp32', 'bf16')


# ----------------------------------------------------------------------------- value types
def to_int(value):
    """An integer; '8', 8 and 8.0 pass, 8.5, True and 'eight' do not."""
    if isinstance(value, bool):
        raise ValueError('expected an integer, got a boolean')
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f'expected an integer, got {value!r}') from None


def to_float(value):
    """A real number; YAML's '1e-4' (read as a string by PyYAML) passes."""
    if isinstance(value, bool):
        raise ValueError('expected a number, got a boolean')
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f'expected a number, got {value!r}') from None


def to_flag(value):
    """A switch written 0/1 (as in the reference) or true/false."""
    text = str(value).strip().lower()
    if text in ('1', 'true', 'yes', 'on'):
        return True
    if text in ('0', 'false', 'no', 'off'):
        return False
    raise ValueError(f'expected 0/1 or true/false, got {value!r}')


def to_path(value):
    """A filesystem path ('' and null, 'not set', are Option.convert's)."""
    return Path(str(value)).expanduser()


def to_str(value):
    if isinstance(value, (dict, list)):
        raise ValueError(f'expected a string, got {type(value).__name__}')
    return str(value)


_LIMITS = (('at_least', operator.ge, 'at least'), ('above', operator.gt, 'above'),
           ('at_most', operator.le, 'at most'), ('below', operator.lt, 'below'))


@dataclass(frozen=True)
class Option:
    """One configuration key; ``nullable`` allows YAML null / unset."""
    name: str
    type: callable
    default: object
    help: str
    choices: tuple = None
    nargs: int = None
    aliases: tuple = ()
    nullable: bool = False
    yaml: bool = True  # False: command line only
    at_least: float = None  # range of a number, checked before any work
    above: float = None
    at_most: float = None
    below: float = None

    def convert(self, value):
        if self.type is to_path and value in (None, ''):
            return self.default  # not set, which for train_url means its default
        if value is None:
            if self.nullable or self.default is None:
                return None
            raise ValueError('must not be null')
        if self.nargs:
            if not isinstance(value, (list, tuple)) or len(value) != self.nargs:
                raise ValueError(f'expected a list of {self.nargs} values, got {value!r}')
            return [self.type(item) for item in value]
        converted = self.type(value)
        for key, holds, words in _LIMITS:
            limit = getattr(self, key)
            if limit is not None and not holds(converted, limit):
                raise ValueError(f'must be {words} {limit:g}, got {converted!r}')
        if self.choices is not None and converted not in self.choices:
            close = difflib.get_close_matches(str(converted), self.choices, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ''
            raise ValueError(f"got {value!r}{hint}; choose one of: {', '.join(map(str, self.choices))}")
        return converted


OPTIONS = (
    # main
    Option('config', to_path, None, 'YAML config file (see src/configs).', yaml=False),
    Option('train_url', to_path, Path('.'), "Folder for training runs (one sub-folder per run); '' is the "
           'current folder.'),
    Option('data_url', to_path, None, 'ImageNet-style data folder with train/ and val/.'),
    # continue training or model inference
    Option('exclude_epoch_state', to_flag, False, 'Ignore epoch/step/lr/optimizer state of pretrained.'),
    Option('pretrained', to_path, None, 'Checkpoint to start from (weights, and state unless excluded); '
           'eval/export/infer: the model file.'),
    Option('continues', to_path, None, 'Run folder of an interrupted run to resume.'),
    Option('allow_schedule_change', to_flag, False, 'continues: accept settings that change the learning-rate '
           'schedule mid-run (epochs, batch size, lr keys, steps per epoch) instead of refusing them.'),
    # checkpoints
    Option('keep_checkpoint_max', to_int, 20, 'Keep the N latest periodic checkpoints (per rank).', at_least=1),
    Option('save_every', to_int, 1000, 'Steps between periodic checkpoints and loss log lines.', at_least=1),
    Option('keep_best_checkpoints_max', to_int, 5, 'Keep the N best checkpoints by validation top-1.', at_least=0),
    # model
    Option('arch', to_str, 'RepVGG-B0', 'Architecture name.', choices=ARCH_NAMES, aliases=('-a',)),
    Option('num_classes', to_int, 1000, 'Number of classes.', at_least=1),
    Option('image_size', to_int, 224, 'Input image size (size x size).', at_least=1),
    Option('deploy', to_flag, False, 'Build the network directly in deploy (re-parameterized) form.'),
    # training duration
    Option('epochs', to_int, 120, 'Number of epochs.', at_least=1),
    Option('batch_size', to_int, 32, 'Batch size per device.', at_least=1),
    Option('start_epoch', to_int, 0, 'Epoch to start from (restarts).', at_least=0),
    Option('start_step', to_int, 0, 'Step of the start epoch to start from (restarts).', at_least=0),
    # optimizer and schedule
    Option('optimizer', to_str, 'momentum', 'Optimizer.', choices=('momentum', 'adamw')),
    Option('warmup_length', to_float, 0.0, 'Linear warm-up length in epochs.', at_least=0),
    Option('warmup_lr', to_float, 7e-8, 'Learning rate at the start of warm-up.', at_least=0),
    Option('base_lr', to_float, 0.1, 'Learning rate after warm-up.', above=0),
    Option('min_lr', to_float, 0.0, 'Lower bound of the learning rate.', at_least=0),
    Option('momentum', to_float, 0.9, 'Momentum of the momentum optimizer.', at_least=0, below=1),
    Option('beta', to_float, [0.9, 0.999], 'AdamW betas.', nargs=2),
    Option('lr_scheduler', to_str, 'cosine_lr', 'Learning-rate schedule.',
           choices=('constant_lr', 'cosine_lr', 'multistep_lr', 'exp_lr')),
    Option('lr_adjust', to_float, 30.0, 'Epochs per decay step (multistep_lr).', above=0),
    Option('lr_gamma', to_float, 0.97, 'Decay factor (multistep_lr, exp_lr).', above=0),
    Option('weight_decay', to_float, 0.0001, 'Weight decay of conv and dense kernels (not BN, not biases).',
           aliases=('--wd',), at_least=0),
    Option('eps', to_float, 1e-8, 'AdamW epsilon.', above=0),
    # train one step (loss scale, EMA)
    Option('loss_scale', to_float, 1024.0, 'Fixed loss scale (dynamic scaling starts at 2^24; O0 uses 1).', above=0),
    Option('is_dynamic_loss_scale', to_flag, True, 'Adapt the loss scale to overflows.'),
    Option('with_ema', to_flag, False, 'Keep an exponential moving average of the weights.'),
    Option('ema_decay', to_float, 0.9999, 'EMA decay.', at_least=0, at_most=1),
    Option('eval_ema', to_flag, False, 'Validate with the EMA weights and store them in the best checkpoints.'),
    Option('amp_level', to_str, 'O0', 'Mixed-precision level (BN stays fp32).', choices=('O0', 'O1', 'O2', 'O3')),
    # hardware
    Option('device_target', to_str, 'GPU', 'Device to run on.', choices=('GPU', 'CPU')),
    Option('device_num', to_int, 8, 'Number of devices (the launchers start that many processes).', at_least=1),
    Option('device_id', to_int, 0, 'Device id (standalone runs).', at_least=0),
    Option('watchdog_timeout', to_float, 60.0, 'Data parallel under msrun: seconds without a sign of life after '
           'which a rank counts as lost and the others stop (a killed process is seen at once); 0: no watchdog.',
           at_least=0),
    Option('watchdog_port', to_int, 0, "Port of rank 0's watchdog (0: msrun's MASTER_PORT + 1, or 65534 when "
           'that is 65535).', at_least=0, at_most=65535),
    # data loading
    Option('num_parallel_workers', to_int, 4, 'Data loading workers.', aliases=('-j',), at_least=1),
    Option('prefetch', to_int, 15, 'Queue size between data pipeline stages (batches).', at_least=1),
    Option('cache_session_id', to_int, None, 'Session id of a running MindSpore cache server.'),
    Option('use_data_sink', to_flag, False, 'Accepted for the reference; batches are always fed from the host.'),
    Option('image_check', to_str, 'cached', 'Check before training that every image decodes: cached (once per '
           'file, remembered in a manifest by size and mtime), full (every file at every start) or off.',
           choices=('cached', 'full', 'off')),
    Option('image_check_cache', to_path, None, 'Folder for the image-check manifests, one per data folder (default: '
           '$XDG_CACHE_HOME/repvgg/image_check, or ~/.cache/repvgg/image_check; never the data folder).'),
    # augmentation
    Option('aug_type', to_str, 'weak', 'Train augmentation.', choices=('none', 'weak', 'auto')),
    Option('auto_augment', to_str, None, 'Policy string for aug_type auto, e.g. rand-m9-mstd0.5-inc1.', nullable=True),
    Option('interpolation', to_str, 'bilinear', 'Resize interpolation (random crop, resizes, policy ops).',
           choices=('bilinear', 'bicubic')),
    Option('re_prob', to_float, 0.0, 'Random erasing probability (aug_type auto).', at_least=0, at_most=1),
    Option('re_mode', to_str, 'pixel', 'Random erasing fill.', choices=('pixel', 'rand', 'const')),
    Option('re_count', to_int, 1, 'Random erasing regions per image.', at_least=1),
    Option('mixup_prob', to_float, 0.0, 'Probability of applying mixup or cutmix.', at_least=0, at_most=1),
    Option('mix_up', to_float, 0.0, 'Mixup alpha (active when > 0).', at_least=0),
    Option('cutmix', to_float, 0.0, 'CutMix alpha (active when > 0).', at_least=0),
    Option('switch_prob', to_float, 0.0, 'Probability of CutMix instead of mixup when both are active.',
           at_least=0, at_most=1),
    Option('mixup_mode', to_str, 'batch', 'Mixup parameters per batch, pair or element.',
           choices=('batch', 'pair', 'elem')),
    Option('label_smoothing', to_float, 0.0, 'Label smoothing.', at_least=0, below=1),
    # other
    Option('brief', to_str, 'epochs-120_bs-32x8_lr-0.1-0.0', 'Suffix of the run folder name.', nullable=True),
    Option('seed', to_int, 0, 'Random seed.', at_least=0),
    Option('demo_data', to_flag, False, 'Build the scikit-learn digits demo set at data_url if it is missing.'),
    Option('log_samples', to_flag, False, 'Debug: write a fingerprint of every training image per rank '
           'to the run folder (checks data-parallel sharding).'),
    Option('file_format', to_str, 'MINDIR', 'Export format.', choices=('AIR', 'MINDIR', 'ONNX'), yaml=False),
    Option('export_path', to_path, Path('model'), 'Exported file (suffix added by the format).', yaml=False),
    Option('quantize', to_str, 'none', 'export.py --file_format ONNX: int8 writes a statically quantized model '
           '(QDQ, per-channel int8 weights, uint8 activations) run by ONNX Runtime.', choices=('none', 'int8'),
           yaml=False),
    Option('calibration_path', to_path, None, 'INT8 calibration images, one sub-folder per class (default: '
           'data_url/train).', yaml=False),
    Option('calibration_images', to_int, 300, 'Calibration images drawn evenly over the class folders of '
           'calibration_path (the minimum is checked by export.py: MIN_CALIBRATION_IMAGES).', yaml=False),
    Option('pred_output', to_path, Path('predictions.json'), 'Predictions JSON file.', yaml=False),
    Option('dataset_path', to_path, None, 'Data folder (eval) or image / folder of images (infer).', yaml=False),
    Option('ema', to_flag, False, 'Evaluate / export / infer with the EMA weights (ema.*) of the checkpoint.',
           yaml=False),
    Option('with_index', to_flag, False, "infer.py: each prediction as {'class': name, 'index': i} instead of the "
           'class name alone.', yaml=False),
    Option('report_dir', to_path, None, 'eval.py: also write per_class_top1.csv and confusion_matrix.png there.',
           yaml=False),
    Option('backend', to_str, 'auto', 'eval.py / infer.py: what runs the model. auto: OpenVINO on CPU (a .ckpt is '
           "exported to ONNX on the fly and checked first); on GPU a .ckpt in MindSpore and an .onnx in ONNX Runtime's "
           'CUDA provider; a .mindir always in MindSpore. Or force mindspore, onnxruntime or openvino (CPU).',
           choices=BACKENDS, yaml=False),
    Option('precision', to_str, None, 'eval.py / infer.py, openvino only: fp32; bf16 (CPUs with AMX or AVX512_BF16); '
           'or auto: bf16 where the CPU has it and the first batch keeps its fp32 top-1 classes in bf16, else fp32. '
           'An INT8 model runs in int8. (default: fp32 for eval.py, auto for infer.py)', choices=PRECISIONS,
           nullable=True, yaml=False),
    Option('threads', to_int, 0, 'eval.py / infer.py, openvino only: inference threads; 0: the CPUs this process may '
           'use (its affinity, bounded by a cgroup v2 cpu.max quota).', at_least=0, yaml=False),
)
OPTION_BY_NAME = {option.name: option for option in OPTIONS}

# What each script reads: its --help lists these, and a flag of another script is accepted with a
# note. A YAML file may hold any key (a training config serves eval.py, export.py and infer.py too).
_MODEL_FILE = ('config', 'pretrained', 'ema', 'arch', 'num_classes', 'image_size', 'interpolation', 'device_target',
               'device_id')
_ENGINE = ('batch_size', 'backend', 'precision', 'threads')
SCRIPT_OPTIONS = {
    'train.py': ('config', *(option.name for option in OPTIONS if option.yaml)),
    'eval.py': (*_MODEL_FILE, *_ENGINE, 'dataset_path', 'data_url', 'report_dir', 'num_parallel_workers', 'prefetch',
                'cache_session_id', 'image_check', 'image_check_cache'),
    'infer.py': (*_MODEL_FILE, *_ENGINE, 'dataset_path', 'pred_output', 'with_index'),
    'export.py': (*_MODEL_FILE, 'file_format', 'export_path', 'quantize', 'calibration_path', 'calibration_images',
                  'data_url'),
    'vis_img_preprocessing.py': ('config', 'data_url', 'image_size', 'interpolation', 'aug_type', 'auto_augment',
                                 're_prob', 're_mode', 're_count', 'seed'),
    'src.config': tuple(OPTION_BY_NAME),
}
CONFIG_REQUIRED = ('train.py', 'src.config')
# Keys whose value a model file records (src/tools/checkpoints/model_card.py): in these scripts the
# option's default applies only to files that do not.
RECORDED_KEYS = ('arch', 'num_classes', 'image_size', 'interpolation')
READS_MODEL_FILES = ('eval.py', 'infer.py', 'export.py')
# The reference's flags that are gone, with what to pass instead: {flag: (scripts, message)}.
RETIRED_FLAGS = {'onnx_path': (('eval.py', 'infer.py'), '{script} takes an .onnx file as --pretrained: pass '
                               '--pretrained {value} (eval_onnx.py and infer_onnx.py take it as -c/--onnx_path)')}


# ----------------------------------------------------------------------------- parsing
def _argparse_type(option):
    def convert(text):
        try:
            return option.type(text) if option.nargs else option.convert(text)
        except (TypeError, ValueError) as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return convert


def _help_with_default(option, script):
    if option.name == 'config' or '(default:' in option.help:
        return option.help.replace('%', '%%')
    default = option.default
    shown = "''" if isinstance(default, Path) and str(default) == '.' else default
    if option.name in RECORDED_KEYS and script in READS_MODEL_FILES:
        shown = f"the model file's; {shown} for a file that records none"
    return f'{option.help} (default: {shown})'.replace('%', '%%')


class _Retired(argparse.Action):
    """A retired flag of the reference (RETIRED_FLAGS): a UserError that says what to pass instead."""

    def __call__(self, parser, _namespace, values, option_string=None):
        message = RETIRED_FLAGS[self.dest][1].format(script=parser.prog, value=values or 'MODEL.onnx')
        raise UserError(f'{option_string} is gone: {message}')


def build_parser(script='train.py', description='RepVGG'):
    """``script``'s parser: it accepts every option, its help lists those it reads; its namespace holds
    only the flags given (the defaults are the config's)."""
    reads = SCRIPT_OPTIONS[script]
    parser = OneLineParser(prog=script if script.endswith('.py') else None, description=description,
                           allow_abbrev=False, argument_default=argparse.SUPPRESS)
    for option in OPTIONS:
        kwargs = dict(dest=option.name, type=_argparse_type(option),
                      help=_help_with_default(option, script) if option.name in reads else argparse.SUPPRESS)
        if option.nargs:
            kwargs['nargs'] = option.nargs
        if option.name == 'config':
            kwargs['required'] = script in CONFIG_REQUIRED
        parser.add_argument(f'--{option.name}', *option.aliases, **kwargs)
    for flag, (scripts, _) in RETIRED_FLAGS.items():
        if script in scripts:
            parser.add_argument(f'--{flag}', nargs='?', action=_Retired, help=argparse.SUPPRESS)
    return parser


def read_yaml(path):
    """The YAML file as a validated dict of converted values."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f'config file {path} does not exist; pass --config with a YAML file '
                        f'such as src/configs/RepVGG.yaml')
    try:
        loaded = yaml.safe_load(path.read_text(encoding='utf-8'))
    except yaml.YAMLError as error:
        mark = getattr(error, 'problem_mark', None)
        where = f' line {mark.line + 1}' if mark else ''
        problem = getattr(error, 'problem', None) or 'invalid YAML'
        raise UserError(f'config file {path}{where}: {problem}') from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f'config file {path} must be a mapping of key: value lines')
    values = {}
    for key, value in loaded.items():
        if key in OPTION_BY_NAME and not OPTION_BY_NAME[key].yaml:
            raise UserError(f"config file {path}: '{key}' is a command-line option; "
                            f"remove it from the file and pass --{key}")
        values[key] = _convert(key, value, f'config file {path}: ')
    return values


def _convert(key, value, where):
    """``value`` converted as option ``key`` says; a UserError starting with ``where`` otherwise."""
    option = OPTION_BY_NAME.get(key)
    if option is None:
        close = difflib.get_close_matches(str(key), OPTION_BY_NAME, n=1, cutoff=0.5)
        raise UserError(f"{where}unknown key '{key}'" + (f"; did you mean '{close[0]}'?" if close else ''))
    try:
        return option.convert(value)
    except (TypeError, ValueError) as error:
        raise UserError(f"{where}key '{key}': {error}") from None


def parse_config(argv=None, script='train.py', description='RepVGG'):
    """``argv`` (default: sys.argv) for ``script`` as the config Namespace: defaults < YAML < CLI. ``given``
    names the keys the YAML file or the command line set: a model file's own values yield only to those
    (model_card.py). Flags ``script`` does not read are accepted, with one note naming them."""
    explicit = vars(build_parser(script, description).parse_args(argv))
    config = make_config(explicit.pop('config', None), **explicit)
    ignored = [f'--{name}' for name in explicit if name not in SCRIPT_OPTIONS[script]]
    if ignored:
        print(f"=> note: {script} does not read {', '.join(ignored)} (options of other scripts); ignored")
    return config


def make_config(yaml_path=None, **overrides):
    """The config for programmatic use and tests: defaults < ``yaml_path`` < ``overrides``."""
    config = argparse.Namespace(**{option.name: option.default for option in OPTIONS})
    from_yaml = {}
    if yaml_path is not None:
        config.config = Path(yaml_path)
        from_yaml = read_yaml(yaml_path)
        vars(config).update(from_yaml)
    config.given = frozenset(from_yaml) | frozenset(overrides)
    vars(config).update({key: _convert(key, value, 'config: ') for key, value in overrides.items()})
    return config


def config_to_dict(config):
    """Plain YAML-serialisable values of the options (paths as strings) for logs and run folders."""
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(config).items()
            if key in OPTION_BY_NAME}


def _main():
    """``python -m src.config --config FILE [--key value ...]``: print the resolved config."""
    config = parse_config(script='src.config', description='Print the configuration that a run would use.')
    print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end='')


if __name__ == '__main__':
    from src.tools.base.cli import user_entry_point
    user_entry_point(_main)()
