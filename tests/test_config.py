"""src/config.py: defaults < YAML < command line, strict keys, one-line errors."""
import re
from pathlib import Path

import pytest
import yaml

from src.config import OPTIONS, SCRIPT_OPTIONS, make_config, parse_config, read_yaml
from src.tools.base.cli import UserError
from tests.helpers import assert_one_line_error, run_main, run_process

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / 'src' / 'configs'
REFERENCE_BLOCK = ROOT / 'tests' / 'data' / 'reference_parameters.yaml'
REFERENCE_KEYS = [
    'train_url', 'data_url', 'exclude_epoch_state', 'pretrained', 'continues', 'keep_checkpoint_max', 'save_every',
    'keep_best_checkpoints_max', 'arch', 'num_classes', 'image_size', 'deploy', 'epochs', 'batch_size',
    'start_epoch', 'start_step', 'optimizer', 'warmup_length', 'warmup_lr', 'base_lr', 'min_lr', 'momentum', 'beta',
    'lr_scheduler', 'lr_adjust', 'lr_gamma', 'weight_decay', 'eps', 'loss_scale', 'is_dynamic_loss_scale',
    'with_ema', 'ema_decay', 'amp_level', 'device_target', 'device_num', 'device_id', 'num_parallel_workers',
    'prefetch', 'cache_session_id', 'use_data_sink', 'aug_type', 'auto_augment', 'interpolation', 're_prob',
    're_mode', 're_count', 'mixup_prob', 'mix_up', 'cutmix', 'switch_prob', 'mixup_mode', 'label_smoothing',
    'brief', 'seed',
]
CLI_ONLY = ['config', 'file_format', 'export_path', 'pred_output', 'dataset_path']


def write(tmp_path, text):
    path = tmp_path / 'c.yaml'
    path.write_text(text)
    return path


def test_every_reference_key_is_declared():
    names = {option.name for option in OPTIONS}
    assert set(REFERENCE_KEYS) | set(CLI_ONLY) <= names
    assert all(not option.yaml for option in OPTIONS if option.name in CLI_ONLY)


def test_precedence_defaults_yaml_cli(tmp_path):
    path = write(tmp_path, 'epochs: 7\nbase_lr: 1e-3\nlr_gamma: 0.5\n')
    config = parse_config(['--config', str(path), '--base_lr', '0.2'])
    assert config.epochs == 7            # YAML over default
    assert config.base_lr == 0.2         # CLI over YAML
    assert config.lr_gamma == 0.5 and isinstance(config.lr_gamma, float)
    assert config.momentum == 0.9        # default
    config = parse_config(['--config', str(path), '--epochs', '120'])
    assert config.epochs == 120          # a flag equal to the default still wins over YAML


def test_types_paths_flags_lists(tmp_path):
    path = write(tmp_path, "deploy: 1\nwith_ema: true\ndata_url: ~/imagenet\npretrained: ''\n"
                           'beta: [0.8, 0.99]\nweight_decay: 1e-4\n')
    config = parse_config(['--config', str(path), '--pred_output', 'out/p.json', '-a', 'RepVGG-A0', '--wd', '0.5'])
    assert config.deploy is True and config.with_ema is True
    assert config.data_url == Path('~/imagenet').expanduser()
    assert config.pretrained is None and config.pred_output == Path('out/p.json')
    assert config.beta == [0.8, 0.99] and config.arch == 'RepVGG-A0' and config.weight_decay == 0.5


@pytest.mark.parametrize('text, message', [
    ('epochz: 3\n', "unknown key 'epochz'; did you mean 'epochs'?"),
    ('epochs: 3.5\n', "key 'epochs': expected an integer, got 3.5"),
    ('base_lr: fast\n', "key 'base_lr': expected a number, got 'fast'"),
    ('deploy: maybe\n', "key 'deploy': expected 0/1 or true/false"),
    ('optimizer: sgd\n', "key 'optimizer': got 'sgd'"),
    ('arch: RepVGG-B00\n', "did you mean 'RepVGG-B0'?"),
    ('beta: 0.9\n', "key 'beta': expected a list of 2 values"),
    ('export_path: x\n', "'export_path' is a command-line option"),
    ('arch: [\n', 'line 2'),
    ('- a\n- b\n', 'must be a mapping'),
])
def test_bad_yaml_is_a_user_error(tmp_path, text, message):
    with pytest.raises(UserError) as error:
        read_yaml(write(tmp_path, text))
    assert message in str(error.value)


def test_bad_command_line_is_a_user_error(tmp_path):
    path = write(tmp_path, 'epochs: 1\n')
    for argv, message in ((['--config', str(path), '--epoch', '3'], '--epoch -> --epochs'),
                          (['--config', str(path), '--epochs', 'x'], "expected an integer, got 'x'"),
                          (['--epochs', '3'], 'required: --config'),
                          (['--config', str(tmp_path / 'missing.yaml')], 'does not exist')):
        with pytest.raises(UserError) as error:
            parse_config(argv)
        assert message in str(error.value)


def test_make_config_validates_overrides():
    assert make_config(epochs='3').epochs == 3
    with pytest.raises(UserError, match="did you mean 'num_classes'"):
        make_config(num_class=3)


def test_shipped_configs_hold_the_reference_recipe():
    b0 = make_config(CONFIGS / 'RepVGG-B0_experiment.yaml')
    assert (b0.arch, b0.epochs, b0.batch_size, b0.device_num, b0.base_lr, b0.min_lr) == \
        ('RepVGG-B0', 120, 32, 8, 0.1, 0.0)
    assert (b0.lr_scheduler, b0.momentum, b0.weight_decay, b0.aug_type, b0.optimizer) == \
        ('cosine_lr', 0.9, 1e-4, 'weak', 'momentum')
    finetune = make_config(CONFIGS / 'RepVGG-B0_finetune.yaml')
    assert (finetune.epochs, finetune.base_lr, finetune.exclude_epoch_state) == (50, 5e-4, True)
    for path in CONFIGS.glob('*.yaml'):
        read_yaml(path)  # every shipped config is valid


def test_command_line_error_is_one_line(tmp_path):
    path = write(tmp_path, 'epochz: 3\n')
    status, _, err = run_process('-m', 'src.config', '--config', path)
    assert status == 2
    assert err.strip().splitlines() == [f"error: config file {path}: unknown key 'epochz'; did you mean 'epochs'?"]
    assert 'Traceback' not in err


def _resolved(config):
    values = vars(config).copy()
    values.pop('config', None)
    values.pop('given', None)  # which keys the YAML set, not a value
    return values


def test_defaults_template_and_reference_block_are_one_configuration():
    reference = yaml.safe_load(REFERENCE_BLOCK.read_text())
    assert yaml.safe_load((CONFIGS / 'RepVGG.yaml').read_text()) == reference  # same keys, same values
    assert list(yaml.safe_load((CONFIGS / 'RepVGG.yaml').read_text())) == list(reference)  # same order
    defaults = _resolved(make_config())
    assert _resolved(make_config(REFERENCE_BLOCK)) == defaults
    assert _resolved(make_config(CONFIGS / 'RepVGG.yaml')) == defaults
    for key, value in reference.items():  # and each default is the documented value, converted
        option = next(option for option in OPTIONS if option.name == key)
        assert defaults[key] == option.convert(value), key


def test_a_yaml_with_one_key_gets_the_reference_values_for_the_rest(tmp_path):
    config = make_config(write(tmp_path, 'arch: RepVGG-A0\n'))
    reference = make_config(REFERENCE_BLOCK)
    assert config.arch == 'RepVGG-A0'
    assert {**_resolved(config), 'arch': reference.arch} == _resolved(reference)
    assert (config.weight_decay, config.min_lr, config.warmup_lr, config.save_every, config.keep_checkpoint_max,
            config.prefetch, config.auto_augment, config.device_num) == (1e-4, 0.0, 7e-8, 1000, 20, 15, None, 8)


def test_train_help_lists_every_training_key_with_its_default(capsys):
    status, out, err = run_main(capsys, 'train.py', '--help')
    assert status == 0, err
    text = ' '.join(out.split())
    assert '--weight_decay WEIGHT_DECAY, --wd WEIGHT_DECAY' in text
    assert 'Weight decay of conv and dense kernels (not BN, not biases). (default: 0.0001)' in text
    assert "(default: epochs-120_bs-32x8_lr-0.1-0.0)" in text and "(default: '')" in text
    for option in OPTIONS:
        assert (f'--{option.name} ' in text) == option.yaml or option.name == 'config', option.name


def help_flags(out):
    """The flags a --help text lists as options (not the usage lines)."""
    return set(re.findall(r'^  (--[a-z_]+)', out, re.MULTILINE)) - {'--help'}


@pytest.mark.parametrize('script, has, has_not', [
    ('train.py', ['--epochs', '--mix_up', '--continues', '--pretrained'],
     ['--pred_output', '--export_path', '--backend']),
    ('eval.py', ['--dataset_path', '--report_dir', '--backend', '--image_check', '--arch'],
     ['--epochs', '--pred_output', '--export_path', '--quantize', '--seed']),
    ('infer.py', ['--pred_output', '--with_index', '--precision'], ['--epochs', '--report_dir', '--quantize']),
    ('export.py', ['--export_path', '--file_format', '--quantize', '--calibration_path'],
     ['--epochs', '--pred_output', '--backend', '--batch_size']),
    ('vis_img_preprocessing.py', ['--aug_type', '--re_prob', '--data_url'], ['--epochs', '--pretrained', '--backend']),
])
def test_each_script_help_lists_the_options_it_reads_and_no_others(capsys, script, has, has_not):
    status, out, _ = run_main(capsys, script, '--help')
    assert status == 0
    listed = help_flags(out)
    assert listed == {f'--{name}' for name in SCRIPT_OPTIONS[script]}
    assert set(has) <= listed and not set(has_not) & listed, listed
    if script in ('eval.py', 'infer.py', 'export.py'):
        assert "Architecture name. (default: the model file's; RepVGG-B0 for a file that records none)" in ' '.join(
            out.split())


def test_a_flag_of_another_script_is_accepted_with_one_note(capsys):
    config = parse_config(['--dataset_path', 'val', '--epochs', '3', '--seed', '1', '--wd', '0.1'], 'eval.py')
    out = capsys.readouterr().out
    assert out == ('=> note: eval.py does not read --epochs, --seed, --weight_decay (options of other scripts); '
                   'ignored\n')
    assert config.epochs == 3 and config.given == {'dataset_path', 'epochs', 'seed', 'weight_decay'}
    parse_config(['--config', str(CONFIGS / 'RepVGG-A0_digits.yaml'), '--dataset_path', 'val'], 'eval.py')
    assert capsys.readouterr().out == ''  # a training YAML's keys get no note


@pytest.mark.parametrize('script', ['eval.py', 'infer.py'])
def test_the_references_onnx_path_flag_says_to_pass_the_file_as_pretrained(capsys, script):
    for argv, value in ((['--onnx_path', 'model.onnx'], 'model.onnx'), (['--onnx_path'], 'MODEL.onnx')):
        status, _, err = run_main(capsys, script, '--dataset_path', 'val', *argv)
        assert_one_line_error(status, err, f'error: --onnx_path is gone: {script} takes an .onnx file as --pretrained: '
                                           f'pass --pretrained {value} (eval_onnx.py and infer_onnx.py take it as '
                                           f'-c/--onnx_path)')
