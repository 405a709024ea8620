"""src/configs/official/: the official RepVGG recipes parse to the published settings and each
trains a step through train.py (on ten classes of the digits demo set, at 24x24)."""
import numpy as np
import pytest
import yaml

from src.config import make_config
from src.tools.demo_data import digit_folder, digit_images, split_indices
from src.tools.image_folders import write_folder
from tests.helpers import ROOT, run_main

RECIPES = ROOT / 'src' / 'configs' / 'official'
# Per recipe: (its default arch, epochs, warm-up epochs, aug_type, policy, label smoothing, mixup alpha)
PUBLISHED = {
    'RepVGG_120e.yaml': ('RepVGG-A0', 120, 0.0, 'weak', None, 0.0, 0.0),
    'RepVGG_200e.yaml': ('RepVGG-B3', 200, 5.0, 'auto', 'original', 0.1, 0.2),
}


def test_the_recipes_folder_holds_the_two_official_recipes():
    assert sorted(path.name for path in RECIPES.glob('*.yaml')) == sorted(PUBLISHED)


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_a_recipe_parses_to_the_official_settings(name):
    config = make_config(RECIPES / name)
    arch, epochs, warmup, aug_type, policy, smoothing, alpha = PUBLISHED[name]
    assert (config.arch, config.epochs, config.warmup_length, config.aug_type, config.auto_augment,
            config.label_smoothing, config.mix_up) == (arch, epochs, warmup, aug_type, policy, smoothing, alpha)
    assert config.batch_size * config.device_num == 256 and config.base_lr == 0.1  # the official global batch
    assert (config.optimizer, config.momentum, config.lr_scheduler) == ('momentum', 0.9, 'cosine_lr')
    assert config.min_lr == 0.0
    assert config.weight_decay == 1e-4 and config.cutmix == 0.0 and config.re_prob == 0.0
    assert config.mixup_prob == (1.0 if alpha else 0.0)


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    """Two training and one validation image of each digit, as the demo set writes them (32x32)."""
    root = tmp_path_factory.mktemp('digits')
    images, labels = digit_images()
    splits = split_indices(labels)
    for split, count in (('train', 2), ('val', 1)):
        chosen = np.concatenate([splits[split][labels[splits[split]] == digit][:count] for digit in range(10)])
        write_folder(root / split, digit_folder(images, labels, chosen))
    return root


@pytest.mark.parametrize('name', sorted(PUBLISHED))
@pytest.mark.slow
def test_a_recipe_trains_one_step(name, digits, tmp_path, capsys):
    """One epoch of one step (20 images, batch 20) on CPU with A0 (the recipe's arch only sets the size)."""
    status, out, err = run_main(capsys, 'train.py', '--config', RECIPES / name, '--data_url', digits,
                                '--train_url', tmp_path / 'runs', '--arch', 'RepVGG-A0', '--num_classes', 10,
                                '--image_size', 24, '--batch_size', 20, '--device_num', 1, '--device_target', 'CPU',
                                '--epochs', 1, '--num_parallel_workers', 1, '--prefetch', 2)
    assert status == 0, err[-3000:]
    recipe = make_config(RECIPES / name)
    (folder,) = (tmp_path / 'runs').iterdir()
    assert folder.name.endswith(f'_RepVGG-A0_{recipe.brief}')
    assert '1 steps per epoch' in out and f'aug_type {recipe.aug_type}' in (folder / 'startup.log').read_text()
    used = yaml.safe_load((folder / 'config.yaml').read_text())  # the run used the recipe's settings
    for key in ('aug_type', 'auto_augment', 'label_smoothing', 'mix_up', 'mixup_prob', 'warmup_length',
                'weight_decay', 'base_lr'):
        assert used[key] == getattr(recipe, key), key
    assert (folder / 'RepVGG-A0_0-1_1.ckpt').is_file()
    rows = (folder / 'metrics.csv').read_text().splitlines()
    assert len(rows) == 2 and np.isfinite(float(rows[1].split(',')[2]))  # header, epoch 1 with a finite loss
