"""Where and how MindSpore runs: device, execution mode, seeds, data-parallel process group."""
import contextlib
import logging
import os
import random

import mindspore as ms
import numpy as np
from mindspore.communication import get_group_size, get_rank, init

from src.tools.base.cli import UserError, quiet_logger


def set_device(device_target, device_id=0, graph_mode=True, cpu_threads=None):
    """Select the device and the mode (GRAPH; PYNATIVE for debugging); ``cpu_threads``: benchmarks'."""
    ms.set_context(mode=ms.GRAPH_MODE if graph_mode else ms.PYNATIVE_MODE)
    if device_target != 'CPU':
        check_device_available(device_target)
        ms.set_device(device_target, device_id)
        return
    ms.set_device('CPU')
    if cpu_threads:
        with contextlib.suppress(RuntimeError):  # MindSpore accepts it once per process; the first setting stays
            ms.device_context.cpu.op_tuning.threads_num(cpu_threads)


def check_device_available(device_target):
    """A one-line UserError, not MindSpore's logs, when it cannot run on ``device_target`` here."""
    try:
        logger = ms.log._get_logger()  # no public handle on it
    except AttributeError:
        logger = logging.getLogger('mindspore')
    with quiet_logger(logger, logging.CRITICAL + 1):  # its plugin loaders log errors before raising their own
        try:
            available = ms.hal.is_available(device_target)
        except (RuntimeError, ValueError):
            available = False
    if not available:
        raise UserError(f'MindSpore cannot use a {device_target} on this machine (no device, or no CUDA 11 / GPU '
                        f'plugin it can load): run with --device_target CPU (the scripts take CPU as their '
                        f'optional DEVICE_TARGET argument)')


def set_seed(seed):
    """Seed MindSpore, numpy and Python's random (data augmentation uses all three)."""
    ms.set_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def launcher_local_rank():
    """This process's device index on its node when msrun or mpirun started it, else None."""
    if os.environ.get('MS_ROLE') == 'MS_WORKER':
        return int(os.environ.get('DEVICE_ID', '0'))
    if int(os.environ.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
        return int(os.environ.get('OMPI_COMM_WORLD_LOCAL_RANK', '0'))
    return None


def init_device(device_target, device_id=0, graph_mode=True):
    """Select the device and, under msrun/mpirun, join the data-parallel group; (rank, group size)."""
    if os.environ.get('MS_ROLE') == 'MS_SCHED':
        # msrun also runs the script as its scheduler process: init() serves the cluster; never train.
        # msrun starts one on every machine that owns MASTER_ADDR, so on both 'machines' of a run
        # tried on one host; scripts/run_distribute_train_msrun.sh says which machine this is, and
        # only machine 0's serves (the other would fail on the taken port, failing its msrun).
        if os.environ.get('MSRUN_NODE_RANK', '0') == '0':
            init()
        raise SystemExit(0)
    local_rank = launcher_local_rank()
    set_device(device_target, device_id if local_rank is None else local_rank, graph_mode)
    if local_rank is None:
        return 0, 1
    init('nccl' if device_target == 'GPU' else None)
    rank, group_size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=group_size)
    return rank, group_size

