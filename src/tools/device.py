"""Where and how MindSpore runs: device, execution mode, seeds."""
import random

import mindspore as ms
import numpy as np


def set_device(device_target, device_id=0, graph_mode=True):
    """Select the device and the execution mode (GRAPH by default, PYNATIVE for debugging)."""
    ms.set_context(mode=ms.GRAPH_MODE if graph_mode else ms.PYNATIVE_MODE)
    if device_target == 'CPU':
        ms.set_device('CPU')
    else:
        ms.set_device(device_target, device_id)


def set_seed(seed):
    """Seed MindSpore, numpy and Python's random (data augmentation uses all three)."""
    ms.set_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
