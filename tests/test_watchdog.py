"""src/tools/training/watchdog.py with two real processes (no MindSpore): a rank killed with
kill -9, or stopping on an error, stops the other within seconds with a line naming it; a clean
end is quiet; a checkpoint being written is completed first."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import slow_except
from tests.train_helpers import REPO, free_port

RANK = f'''
import sys, time
sys.path.insert(0, {str(REPO)!r})
from src.tools.training.watchdog import Watchdog
rank, port, action = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
watchdog = Watchdog(rank, 2, '127.0.0.1', port, timeout=30).start()
watchdog.position = 'epoch 1 step 3'
watchdog.resume_hint = 'Resume with continues runs/x'
with watchdog:
    print('ready', flush=True)
    if action == 'wait':
        time.sleep(60)
    elif action == 'write':
        with watchdog.holding():
            time.sleep(2)
            print('checkpoint written', flush=True)
        time.sleep(60)
    else:  # 'error' or 'finish', once both are connected (in a run, the collectives see to that)
        time.sleep(1)
        if action == 'error':
            raise RuntimeError('out of memory')
print('clean end', flush=True)
'''


def start(rank, port, action):
    return subprocess.Popen([sys.executable, '-c', RANK, str(rank), str(port), action], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def pair(actions):
    port = free_port()
    ranks = [start(0, port, actions[0])]
    time.sleep(0.3)  # rank 0 listens first (the others would retry anyway)
    ranks.append(start(1, port, actions[1]))
    for process in ranks:
        assert process.stdout.readline().strip() == 'ready'
    return ranks


def finish(process, within):
    began = time.time()
    try:
        out, err = process.communicate(timeout=within)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, out, err, time.time() - began


@pytest.mark.parametrize('killed', slow_except([0, 1], 0))
def test_a_killed_rank_stops_the_other_at_once_naming_it(killed):
    ranks = pair(['wait', 'wait'])
    ranks[killed].send_signal(signal.SIGKILL)
    status, out, err, seconds = finish(ranks[1 - killed], within=20)
    assert status == 1 and seconds < 5 and 'clean end' not in out
    assert err.strip() == (f'error: rank {killed} of 2 was lost (its connection closed: the process ended) at epoch 1 '
                           f'step 3; stopping rank {1 - killed}. Resume with continues runs/x (docs/scale-out.md)')
    ranks[killed].wait()


@pytest.mark.parametrize('failing', slow_except([0, 1], 0))
def test_an_error_on_one_rank_is_named_by_the_other(failing):
    ranks = pair(['error' if rank == failing else 'wait' for rank in (0, 1)])
    status, _, err, _ = finish(ranks[1 - failing], within=20)
    assert status == 1
    assert err.startswith(f'error: rank {failing} of 2 was lost (it stopped on an error: RuntimeError: out of memory) '
                          f'at epoch 1 step 3; stopping rank {1 - failing}.')
    status, _, err, _ = finish(ranks[failing], within=20)
    assert status == 1 and 'RuntimeError: out of memory' in err  # its own traceback, as usual


@pytest.mark.slow
def test_a_clean_end_is_quiet_and_a_checkpoint_being_written_is_completed():
    ranks = pair(['finish', 'finish'])
    for process in ranks:
        status, out, err, _ = finish(process, within=20)
        assert (status, out.strip(), err) == (0, 'clean end', '')
    ranks = pair(['write', 'wait'])
    time.sleep(0.5)  # rank 0 is inside holding(): writing
    ranks[1].send_signal(signal.SIGKILL)
    status, out, err, seconds = finish(ranks[0], within=20)
    assert status == 1 and out.strip() == 'checkpoint written' and 'rank 1 of 2 was lost' in err
    assert 1 < seconds < 5  # waited for the write (2 s from its start), then stopped
    ranks[1].wait()


LAUNCHED = f'''
import sys, time
sys.path.insert(0, {str(REPO)!r})
from src.tools.training.watchdog import Watchdog
watchdog = Watchdog.for_launcher(int(sys.argv[1]), 2, timeout=30)
with watchdog:
    print('port', watchdog.port, flush=True)
    time.sleep(1)  # both connected (in a run, the collectives see to that)
print('clean end', flush=True)
'''


def test_the_default_port_is_valid_when_master_port_is_the_last_one():
    """msrun's MASTER_PORT 65535: the watchdog cannot use 65536; both ranks meet on 65534."""
    env = {**os.environ, 'MS_SCHED_HOST': '127.0.0.1', 'MS_SCHED_PORT': '65535'}
    ranks = [subprocess.Popen([sys.executable, '-c', LAUNCHED, str(rank)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for rank in (0, 1)]
    for process in ranks:
        status, out, err, _ = finish(process, within=20)
        assert (status, out.split('\n')[:2], err) == (0, ['port 65534', 'clean end'], '')
