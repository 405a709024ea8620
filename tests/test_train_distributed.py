"""Data parallel on CPU: scripts/run_distribute_train_msrun.sh with 2 workers for a few steps.

Both ranks must end with identical weights (gradient mean, BN statistics averaged) and must have
trained on disjoint shards (fingerprints of every training image each rank saw, log_samples)."""
import os
import re
import shutil
import signal
import subprocess
import time
from collections import defaultdict

import mindspore as ms
import numpy as np
import pytest

from tests.train_helpers import (
    REPO,
    alive,
    environment,
    free_port,
    make_image_folder,
    periodic,
    samples_by_step,
    worker_pid,
)

ARCH = 'RepVGG-A0'


@pytest.mark.skipif(shutil.which('msrun') is None, reason='msrun (MindSpore) not on PATH')
@pytest.mark.slow
def test_two_cpu_workers_end_identical_after_disjoint_shards(tmp_path):
    data = make_image_folder(tmp_path / 'data', classes=2, train_per_class=8, val_per_class=3)
    config = tmp_path / 'tiny.yaml'
    config.write_text(
        f'train_url: {tmp_path / "runs"}\narch: {ARCH}\nnum_classes: 2\nimage_size: 16\nepochs: 2\n'
        'batch_size: 4\ndevice_target: CPU\naug_type: none\nnum_parallel_workers: 1\nprefetch: 2\n'
        'base_lr: 0.001\nweight_decay: 0.0001\nsave_every: 2\nkeep_checkpoint_max: 1\n'
        'keep_best_checkpoints_max: 1\nlog_samples: 1\nbrief: dp\n', encoding='utf-8')
    env = environment()
    env['MASTER_PORT'] = str(free_port())
    done = subprocess.run(['bash', str(REPO / 'scripts/run_distribute_train_msrun.sh'), str(config), str(data), '2',
                           'CPU'], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
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


# ----------------------------------------------------------------------------- two machines, a lost rank
def launch(machine, node_rank, config, data, port, **env):
    """scripts/run_distribute_train_msrun.sh on 'machine' ``node_rank`` of 2 (one CPU worker, its own
    folder standing for its own disk), in the background."""
    environ = environment()
    environ.update(NODE_NUM='2', NODE_RANK=str(node_rank), MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), **env)
    log = (machine / f'launcher_{port}.out').open('w')
    process = subprocess.Popen(['bash', str(REPO / 'scripts/run_distribute_train_msrun.sh'), str(config), str(data),
                                '1', 'CPU'], cwd=machine, env=environ, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return process


def positions(folder, rank):
    return set(periodic(folder, ARCH, rank))


def stop_all(processes):
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(30)


@pytest.mark.skipif(shutil.which('msrun') is None, reason='msrun (MindSpore) not on PATH')
@pytest.mark.slow
def test_two_machines_on_one_host_lose_a_rank_and_continue(tmp_path):
    """Two launches of the script (NODE_NUM=2, NODE_RANK 0 and 1) through 127.0.0.1, each 'machine'
    with its own run folder (train_url is relative to where it was started). Rank 1 is killed with
    kill -9 in epoch 2: rank 0 stops at once, naming it. Both machines then continue the run: they
    agree on the newest position both completed; the finished run has identical weights on both
    ranks, disjoint shards that cover each epoch exactly once across the kill, the same metrics."""
    data = make_image_folder(tmp_path / 'data', classes=2, train_per_class=8, val_per_class=3)
    config = tmp_path / 'two.yaml'
    config.write_text(
        f'train_url: runs\narch: {ARCH}\nnum_classes: 2\nimage_size: 24\nepochs: 2\nbatch_size: 2\n'
        'device_target: CPU\naug_type: none\nnum_parallel_workers: 1\nprefetch: 2\nbase_lr: 0.001\n'
        'save_every: 1\nkeep_checkpoint_max: 2\nkeep_best_checkpoints_max: 1\nlog_samples: 1\nbrief: two\n',
        encoding='utf-8')
    machines = [tmp_path / 'machine0', tmp_path / 'machine1']
    for machine in machines:
        machine.mkdir()
    steps = 4  # 16 images, 2 ranks, batch 2

    first_port = free_port()
    first = [launch(machine, node, config, data, first_port) for node, machine in enumerate(machines)]
    try:
        deadline = time.time() + 240
        folders = []
        while time.time() < deadline and all(process.poll() is None for process in first):
            folders = [next((machine / 'runs').glob(f'*_{ARCH}_two'), None) for machine in machines]
            if all(folders) and all(any(epoch == 2 and 0 < step < steps for epoch, step in positions(folder, rank))
                                    for rank, folder in enumerate(folders)):
                break
            time.sleep(0.05)
        pids = [worker_pid(rank, machine) for rank, machine in enumerate(machines)]
        assert None not in pids, (pids, [process.poll() for process in first])
        os.kill(pids[1], signal.SIGKILL)
        killed = time.time()
        while alive(pids[0]) and time.time() < killed + 60:
            time.sleep(0.05)
        stopped_after = time.time() - killed
        first[1].wait(60)  # machine 1's msrun ends with its worker; machine 0's waits about 30 s for its
        # scheduler to time the lost node out: the second run starts meanwhile, on another port
        logs = [(machine / 'msrun_log' / f'worker_{rank}.log').read_text(errors='replace')
                for rank, machine in enumerate(machines)]
    except BaseException:
        stop_all(first)
        raise
    lost = re.findall(r'error: rank 1 of 2 was lost \(its connection closed: the process ended\) at epoch 2 step \d+; '
                      r'stopping rank 0\. Resume with continues (\S+)', logs[0])
    assert len(lost) == 1 and stopped_after < 10, (stopped_after, logs[0][-2000:])
    assert 'train success' not in logs[0]
    names = [folder.name for folder in folders]
    assert names[0] == names[1]  # rank 0's clock named both
    for rank, folder in enumerate(folders):  # whatever the moment of the kill, every checkpoint loads
        for position in positions(folder, rank):
            ms.load_checkpoint(str(folder / f'{ARCH}_{rank}-{position[0]}_{position[1]}.ckpt'))
    common = max(positions(folders[0], 0) & positions(folders[1], 1))
    assert common[0] == 2
    assert sorted(path.name for path in folders[1].iterdir() if not path.name.startswith('.')) == sorted(
        [f'{ARCH}_1-{epoch}_{step}.ckpt' for epoch, step in positions(folders[1], 1)] + ['samples_rank1.txt'])

    second_port = free_port()
    second = [launch(machine, node, config, data, second_port, CONTINUES=f'runs/{names[0]}')
              for node, machine in enumerate(machines)]
    try:
        codes = [process.wait(300) for process in second]
        assert first[0].wait(120) != 0
    finally:
        stop_all(first + second)
    logs = [(machine / 'msrun_log' / f'worker_{rank}.log').read_text(errors='replace')
            for rank, machine in enumerate(machines)]
    assert codes == [0, 0], [log[-3000:] for log in logs]
    for rank, log in enumerate(logs):
        started = re.findall(rf'=> starting from checkpoint \S+/{ARCH}_(\d)-(\d+)_(\d+)\.ckpt', log)
        assert started == [(str(rank), str(common[0]), str(common[1]))], started
        assert 'train success' in log
    assert not [path for folder in folders for path in folder.iterdir() if path.name.startswith('.')]

    # Identical models on both machines.
    final = [ms.load_checkpoint(str(folder / f'{ARCH}_{rank}-2_{steps}.ckpt')) for rank, folder in enumerate(folders)]
    names = [name for name in final[0] if name.split('.')[0].startswith(('stage', 'linear', 'moments'))]
    assert len(names) > 300
    for name in names:
        np.testing.assert_array_equal(final[0][name].asnumpy(), final[1][name].asnumpy(), err_msg=name)
    assert int(final[0]['global_step'].asnumpy()[0]) == 2 * steps

    # Shards: per epoch each rank saw 8 distinct images, the two ranks disjoint, all 16 covered;
    # for the interrupted epoch, the first run's steps up to the resumed position plus the second
    # run's steps (a step logged twice keeps its last record, the resumed one).
    for epoch in (1, 2):
        seen = []
        for rank, folder in enumerate(folders):
            by_step = {step: fingerprints for (logged_epoch, step), fingerprints
                       in samples_by_step(folder / f'samples_rank{rank}.txt').items() if logged_epoch == epoch}
            assert sorted(by_step) == list(range(1, steps + 1)), (epoch, rank, sorted(by_step))
            images = [fingerprint for step in by_step for fingerprint in by_step[step][-2:]]
            assert len(images) == len(set(images)) == 8, (epoch, rank)
            seen.append(set(images))
        assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 16, epoch

    # Rank 0's machine holds the run's record; both ranks report the same metrics.
    results = [re.findall(r'Result metrics epoch 2: (.*)', log) for log in logs]
    assert results[0] == results[1] and len(results[0]) == 1
    rows = (folders[0] / 'metrics.csv').read_text().splitlines()[1:]
    assert [row.split(',')[0] for row in rows] == ['1', '2']
    assert not (folders[1] / 'metrics.csv').exists() and not (folders[1] / 'config.yaml').exists()


# ----------------------------------------------------------------------------- the launch commands
def dry_run(script, *args, **env):
    environ = environment()
    for name in ('NODE_NUM', 'NODE_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'HOSTFILE', 'CONTINUES'):
        environ.pop(name, None)
    environ.update(DRY_RUN='1', **env)
    done = subprocess.run(['bash', str(REPO / 'scripts' / script), *map(str, args)], env=environ,
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    return done.returncode, done.stdout.strip(), done.stderr.strip()


def test_msrun_launcher_one_machine_as_before_several_from_the_environment(tmp_path):
    config = REPO / 'src/configs/RepVGG.yaml'
    train = (f'python {REPO}/train.py --config {config} --data_url {tmp_path}')
    assert dry_run('run_distribute_train_msrun.sh', config, tmp_path, 2, 'CPU') == (0, (
        f'msrun --worker_num=2 --local_worker_num=2 --master_port=8118 --log_dir={REPO}/msrun_log --join=True '
        f'{train} --device_num 2 --device_target CPU'), '')
    (tmp_path / 'runs' / 'r1').mkdir(parents=True)
    assert dry_run('run_distribute_train_msrun.sh', config, tmp_path, 8, NODE_NUM='2', NODE_RANK='1',
                   MASTER_ADDR='10.0.0.1', MASTER_PORT='9000', CONTINUES=str(tmp_path / 'runs' / 'r1')) == (0, (
        f'msrun --worker_num=16 --local_worker_num=8 --node_rank=1 --master_addr=10.0.0.1 --master_port=9000 '
        f'--log_dir={REPO}/msrun_log --join=True {train} --device_num 16 --continues {tmp_path}/runs/r1'), '')
    for env, message in ((dict(NODE_NUM='2', NODE_RANK='2'), 'error: NODE_RANK must be below NODE_NUM (2), got 2'),
                         (dict(NODE_NUM='0'), 'error: NODE_NUM must be a positive number, got 0'),
                         (dict(CONTINUES='nowhere'), f'error: run folder (CONTINUES) {REPO}/nowhere does not exist'),
                         *((dict(NODE_NUM='2', NODE_RANK=rank), 'error: NODE_NUM is 2: set MASTER_ADDR to the address '
                            'of machine 0 that every machine can reach (the same on every machine)') for rank in '01'),
                         *((dict(MASTER_PORT=port), f'error: MASTER_PORT must be a port from 1 to 65535, got {port}')
                           for port in ('0', '65536', '123456', '80a'))):
        assert dry_run('run_distribute_train_msrun.sh', config, tmp_path, 2, **env) == (1, '', message)


def test_mpirun_launcher_one_machine_as_before_several_from_a_host_file(tmp_path):
    """Not run on GPUs here (mpirun + MindSpore needs them): the command it would run, and that it
    runs it (a stand-in mpirun that records its arguments)."""
    config = REPO / 'src/configs/RepVGG.yaml'
    train = f'python {REPO}/train.py --config {config} --data_url {tmp_path}'
    assert dry_run('run_distribute_train_gpu.sh', config, tmp_path, 8) == (0, (
        f'mpirun --allow-run-as-root -n 8 --output-filename log_output --merge-stderr-to-stdout {train} '
        f'--device_num 8 --device_target GPU'), '')
    hosts = tmp_path / 'hosts'
    hosts.write_text('gpu-a slots=8\n# spare: gpu-c slots=8\n\ngpu-b slots=8\n')
    status, command_line, _ = dry_run('run_distribute_train_gpu.sh', config, tmp_path, 8, HOSTFILE=str(hosts),
                                      LD_LIBRARY_PATH='/opt/lib')
    assert status == 0 and command_line.startswith(f'mpirun --allow-run-as-root --hostfile {hosts} --map-by ppr:8:node '
                                                   f'-x PATH -x LD_LIBRARY_PATH')
    assert command_line.endswith(f'-n 16 --output-filename log_output --merge-stderr-to-stdout {train} '
                                 f'--device_num 16 --device_target GPU')
    hosts.write_text('# nothing\n')
    assert dry_run('run_distribute_train_gpu.sh', config, tmp_path, 8, HOSTFILE=str(hosts)) == (
        1, '', f"error: host file {hosts} names no machine; write one 'host slots=8' line per machine")

    # A stand-in mpirun that records its arguments, prints the start line of STARTED ranks, then
    # fails with an error line (FAIL) or goes on running.
    fake = tmp_path / 'bin'
    fake.mkdir()
    (fake / 'mpirun').write_text(
        '#!/usr/bin/env bash\necho "mpirun $*"\n'
        'for ((i = 0; i < STARTED; i++)); do echo "=> run folder runs/x: 4 steps per epoch, epochs 1-2"; done\n'
        'if [ -n "${FAIL:-}" ]; then echo "[ERROR] a line of its own"; echo "error: $FAIL"; exit 2; fi\n'
        'exec sleep 120\n')
    (fake / 'mpirun').chmod(0o755)
    environ = environment()
    environ.pop('DRY_RUN', None)
    environ['PATH'] = f'{fake}:{environ["PATH"]}'

    def launch(**env):
        return subprocess.run(['bash', str(REPO / 'scripts/run_distribute_train_gpu.sh'), str(config), str(tmp_path),
                               '2'], env={**environ, **env}, capture_output=True, text=True, timeout=60, cwd=tmp_path,
                              check=False)

    done = launch(STARTED='2')
    pid = int(re.search(r'\(pid (\d+)\)', done.stdout).group(1))
    try:
        assert done.returncode == 0 and 'training on 2 GPUs in the background' in done.stdout, done.stderr
        assert alive(pid)
    finally:
        os.kill(pid, signal.SIGKILL)
    log = tmp_path / 'dist_train.log'
    assert log.read_text().splitlines()[0] == (
        f'mpirun --allow-run-as-root -n 2 --output-filename log_output --merge-stderr-to-stdout {train} '
        f'--device_num 2 --device_target GPU')
    # One rank started, the other failed its start-up checks: its error line and a non-zero status.
    done = launch(STARTED='1', FAIL='data folder /data/train does not exist')
    assert (done.returncode, done.stdout, done.stderr) == (2, '', 'error: data folder /data/train does not exist\n')
