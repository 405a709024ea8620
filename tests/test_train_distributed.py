"""Data parallel on CPU: scripts/run_distribute_train_msrun.sh with 2 workers for a few steps.

Both ranks must end with identical weights (gradient mean, BN statistics averaged) and must have
trained on disjoint shards (fingerprints of every training image each rank saw, log_samples)."""
import re
import shutil
import subprocess
from collections import defaultdict

import mindspore as ms
import numpy as np
import pytest

from tests.train_helpers import REPO, environment, free_port, make_image_folder

ARCH = 'RepVGG-A0'


@pytest.mark.skipif(shutil.which('msrun') is None, reason='msrun (MindSpore) not on PATH')
def test_two_cpu_workers_end_identical_after_disjoint_shards(tmp_path):
    data = make_image_folder(tmp_path / 'data', classes=2, train_per_class=8, val_per_class=3)
    config = tmp_path / 'tiny.yaml'
    config.write_text(
        f'train_url: {tmp_path / "runs"}\narch: {ARCH}\nnum_classes: 2\nimage_size: 16\nepochs: 2\n'
        'batch_size: 4\ndevice_target: CPU\naug_type: none\nnum_parallel_workers: 1\nprefetch: 2\n'
        'base_lr: 0.01\nweight_decay: 0.0001\nsave_every: 2\nkeep_checkpoint_max: 1\n'
        'keep_best_checkpoints_max: 1\nlog_samples: 1\nbrief: dp\n', encoding='utf-8')
    env = environment()
    env['MASTER_PORT'] = str(free_port())
    done = subprocess.run(['bash', str(REPO / 'scripts/run_distribute_train_msrun.sh'), str(config), str(data), '2',
                           'CPU'], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    logs = {rank: (tmp_path / 'msrun_log' / f'worker_{rank}.log').read_text(errors='replace') for rank in (0, 1)}
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:] + logs[0][-3000:] + logs[1][-3000:]
    for rank in (0, 1):
        assert f'=> rank {rank} of 2' in logs[rank] and 'train success' in logs[rank]

    folders = list((tmp_path / 'runs').iterdir())
    assert len(folders) == 1, folders  # one run folder, named by rank 0's clock
    folder = folders[0]

    # Identical models: every network tensor (BN statistics included) and the optimizer state.
    final = [ms.load_checkpoint(str(folder / f'{ARCH}_{rank}-2_2.ckpt')) for rank in (0, 1)]
    names = [name for name in final[0] if name.split('.')[0].startswith(('stage', 'linear', 'moments'))]
    assert any(name.endswith('moving_variance') for name in names) and len(names) > 300
    for name in names:
        np.testing.assert_array_equal(final[0][name].asnumpy(), final[1][name].asnumpy(), err_msg=name)
    assert int(final[0]['global_step'].asnumpy()[0]) == 4
    assert np.abs(final[0]['moments.linear.weight'].asnumpy()).max() > 0  # it really trained

    # Disjoint shards covering the training set, in every epoch.
    seen = defaultdict(list)
    for rank in (0, 1):
        for line in (folder / f'samples_rank{rank}.txt').read_text().splitlines():
            epoch, _, fingerprint = line.split()
            seen[(int(epoch), rank)].append(fingerprint)
    for epoch in (1, 2):
        first, second = set(seen[(epoch, 0)]), set(seen[(epoch, 1)])
        assert len(seen[(epoch, 0)]) == len(first) == 8 and len(second) == 8
        assert not first & second
        assert len(first | second) == 16

    # Validation summed over ranks: both print the same metrics, over the 6 images.
    results = [re.findall(r'Result metrics epoch 2: (.*)', logs[rank]) for rank in (0, 1)]
    assert results[0] == results[1] and len(results[0]) == 1
    acc = float(re.search(r"'acc': ([0-9.]+)", results[0][0]).group(1))
    assert round(acc * 6, 6) == round(acc * 6)
