"""Shared test utilities (not fixtures): deterministic random BN statistics."""
import numpy as np
from mindspore import Tensor


def randomize_bn(net, seed=0):
    """Give every BN random moving statistics and affine parameters.

    Default statistics (mean 0, var 1, gamma 1, beta 0) would make an equivalence test prove
    little; these keep activations in a sane range over 30-50 layers.
    """
    rng = np.random.default_rng(seed)
    for name, param in net.parameters_and_names():
        leaf = name.rsplit('.', 1)[-1]
        if leaf in ('moving_mean', 'beta'):
            value = rng.normal(0.0, 0.1, param.shape)
        elif leaf in ('moving_variance', 'gamma'):
            value = rng.uniform(0.5, 1.5, param.shape)
        else:
            continue
        param.set_data(Tensor(value.astype(np.float32)))
    return net
