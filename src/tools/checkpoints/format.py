"""Reading checkpoints strictly: every network tensor must come from the file, with its shape.

A checkpoint may hold more than the network (optimizer moments, step counters, EMA copies);
only the entries under the network's own top-level names (stage0..stage4, linear) count as
network tensors, so nothing the network needs or the file offers as weights is silently ignored.
"""
from pathlib import Path

import mindspore as ms

from src.tools.base.cli import UserError

HEAD_NAMES = ('linear.weight', 'linear.bias')


def read_checkpoint(path):
    """The checkpoint at ``path`` as {name: Parameter}; a UserError if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f'checkpoint {path} does not exist')
    if path.suffix != '.ckpt':
        raise UserError(f'checkpoint {path} is not a MindSpore .ckpt file; convert PyTorch/timm '
                        f'weights first with convert.py')
    try:
        return ms.load_checkpoint(str(path))
    except (ValueError, RuntimeError, TypeError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f'checkpoint {path} cannot be read (corrupt or not a checkpoint): {first_line}') from None


def _network_entries(net, checkpoint, prefix):
    roots = {name.split('.', 1)[0] for name, _ in net.parameters_and_names()}
    entries = {}
    for name, value in checkpoint.items():
        if prefix:
            if not name.startswith(prefix):
                continue
            name = name[len(prefix):]
        if name.split('.', 1)[0] in roots:
            entries[name] = value
    return entries


def _shape_of(value):
    return tuple(value.shape)


def _names(names, limit=6):
    names = sorted(names)
    shown = ', '.join(names[:limit])
    return shown + (f' and {len(names) - limit} more' if len(names) > limit else '')


def match_checkpoint(net, checkpoint, prefix='', drop_head_on_mismatch=False, source='checkpoint'):
    """The {name: value} to load into ``net``, or a UserError saying what does not match.

    With ``drop_head_on_mismatch`` a classifier of another class count is left out (transfer
    learning); the caller is told through the returned ``dropped`` list.
    """
    entries = _network_entries(net, checkpoint, prefix)
    expected = {name: tuple(param.shape) for name, param in net.parameters_and_names()}
    if not entries:
        raise UserError(f'{source} holds no tensors of this network{" under " + prefix if prefix else ""}; '
                        f'is it a RepVGG checkpoint of this project (or converted with convert.py)?')
    dropped = []
    head = {name: _shape_of(entries[name]) for name in HEAD_NAMES if name in entries and name in expected}
    if any(shape != expected[name] for name, shape in head.items()):
        ckpt_classes, net_classes = head.get('linear.bias', head.get('linear.weight'))[0], expected['linear.bias'][0]
        if not drop_head_on_mismatch:
            raise UserError(f'{source} has {ckpt_classes} classes, the config asks for {net_classes}: set '
                            f'num_classes: {ckpt_classes}, or fine-tune from it with pretrained '
                            f'(exclude_epoch_state: 1), which drops the classifier')
        dropped = [name for name in HEAD_NAMES if name in entries]
        for name in dropped:
            entries.pop(name)
    missing = set(expected) - set(entries) - set(dropped)
    unexpected = set(entries) - set(expected)
    if missing or unexpected:
        form_hint = ''
        if any('rbr_reparam' in name for name in unexpected):
            form_hint = ' The checkpoint is in deploy form: set deploy: 1.'
        elif any('rbr_reparam' in name for name in missing):
            form_hint = ' The checkpoint is in train form: set deploy: 0 (conversion happens on export/eval).'
        details = []
        if missing:
            details.append(f'missing from it: {_names(missing)}')
        if unexpected:
            details.append(f'not in the network: {_names(unexpected)}')
        raise UserError(f'{source} does not match the network ({"; ".join(details)}); '
                        f'check arch and deploy.{form_hint}')
    wrong_shape = [f'{name} {_shape_of(value)} vs {expected[name]}' for name, value in entries.items()
                   if _shape_of(value) != expected[name]]
    if wrong_shape:
        raise UserError(f'{source} has tensors of other shapes than the network '
                        f'({_names(wrong_shape, 3)}); check arch')
    return entries, dropped


def load_weights(net, path_or_dict, prefix='', drop_head_on_mismatch=False, source=None):
    """Load a checkpoint into ``net`` strictly; returns the names left out (a dropped head).

    ``source`` names an already-read dict in messages (e.g. 'checkpoint <path>').
    """
    if isinstance(path_or_dict, dict):
        checkpoint, source = path_or_dict, source or 'checkpoint'
    else:
        checkpoint, source = read_checkpoint(path_or_dict), f'checkpoint {path_or_dict}'
    entries, dropped = match_checkpoint(net, checkpoint, prefix, drop_head_on_mismatch, source)
    params = {}
    for name, value in entries.items():
        params[name] = value if isinstance(value, ms.Parameter) else ms.Parameter(value, name=name)
    not_loaded, _ = ms.load_param_into_net(net, params, strict_load=True)
    not_loaded = [name for name in not_loaded if name not in dropped]
    if not_loaded:  # only possible if names and structure disagree; never ignore it
        raise UserError(f'{source}: MindSpore did not load {_names(not_loaded)}')
    return dropped
