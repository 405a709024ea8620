"""Optimizers (momentum, adamw) with weight decay on conv and dense kernels only: BN scales and shifts
and biases are 1-D, and decaying them only shrinks the network's affine freedom.
"""
from mindspore import Tensor, nn


def decays(param):
    """Whether weight decay applies: conv/dense kernels (ndim >= 2), not BN gamma/beta or biases."""
    return len(param.shape) >= 2


def param_groups(net, weight_decay):
    """MindSpore group parameters: decayed kernels, undecayed rest, original order."""
    params = net.trainable_params()
    return [
        {'params': [p for p in params if decays(p)], 'weight_decay': weight_decay},
        {'params': [p for p in params if not decays(p)], 'weight_decay': 0.0},
        {'order_params': params},
    ]


def get_optimizer(args, net, lr_values):
    """``args.optimizer`` over ``net``; ``lr_values`` has one rate per global step (see schedulers)."""
    groups = param_groups(net, args.weight_decay)
    learning_rate = Tensor(lr_values)
    if args.optimizer == 'momentum':
        return nn.Momentum(groups, learning_rate=learning_rate, momentum=args.momentum)
    return nn.AdamWeightDecay(groups, learning_rate=learning_rate, beta1=args.beta[0], beta2=args.beta[1],
                              eps=args.eps)  # adamw: the config allows no other
