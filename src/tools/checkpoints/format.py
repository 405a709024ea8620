"""The checkpoint format: what a checkpoint holds (docs/training.md, "Checkpoints"), how it is written
(all or nothing, with MindSpore's CRC) and how it is read strictly: only entries under the network's
own top-level names are network tensors, and every one the network needs must be there.
MindSpore is imported by the functions that use it: an ONNX file's model card is read without it.
"""
import json
from pathlib import Path

from src.tools.base.cli import UserError, listed
from src.tools.base.files import atomic_path, give_usual_permissions
from src.tools.checkpoints.model_card import ModelCard

HEAD_NAMES = ('linear.weight', 'linear.bias')
EMA_PREFIX = 'ema.'
EPOCH_METRICS_KEY = 'epoch_metrics'
# Train-cell parameters that are derived from the config, not state: rebuilt, never saved.
NOT_SAVED = ('learning_rate',)


def save_checkpoint(entries, path, append_dict=None, verify=None):
    """``mindspore.save_checkpoint`` to ``path`` all or nothing (its own writer first deletes the old file): a
    temporary, checked by ``verify(temporary)`` when given, renamed onto ``path``; ``verify``'s result or path."""
    import mindspore as ms
    path = Path(path)
    if isinstance(entries, dict):
        entries = [{'name': name, 'data': ms.Tensor(value)} for name, value in entries.items()]
    with atomic_path(path, '.ckpt') as temporary:
        ms.save_checkpoint(entries, str(temporary), append_dict=append_dict, crc_check=True)
        give_usual_permissions(temporary)  # MindSpore leaves its checkpoints readable by their owner only
        result = verify(temporary) if verify is not None else path
    return result


def train_state(train_cell, epoch_num, step_num, steps_per_epoch, card, epoch_metrics=None):
    """(entries, append_dict) of the train cell (not its learning rates), position, ``card`` and metrics row."""
    entries = [{'name': param.name, 'data': param} for param in train_cell.get_parameters()
               if param.name not in NOT_SAVED]
    append = {'epoch_num': int(epoch_num), 'step_num': int(step_num), 'steps_per_epoch': int(steps_per_epoch),
              **card.entries()}
    if epoch_metrics is not None:
        append[EPOCH_METRICS_KEY] = json.dumps(epoch_metrics)
    return entries, append


def read_checkpoint(path):
    """The checkpoint at ``path`` as {name: Parameter or value}; a UserError if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f'checkpoint {path} does not exist')
    if path.suffix != '.ckpt':
        raise UserError(f'checkpoint {path} is not a MindSpore .ckpt file; convert PyTorch/timm '
                        f'weights first with convert.py')
    if path.stat().st_size == 0:
        raise UserError(f'checkpoint {path} is empty (0 bytes): an interrupted copy or a full disk? '
                        f'use another checkpoint')
    import mindspore as ms
    try:
        return ms.load_checkpoint(str(path), crc_check=True)  # files written without a CRC load too
    except (ValueError, RuntimeError, TypeError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f'checkpoint {path} cannot be read (corrupt or not a checkpoint): {first_line}') from None


def integer(value):
    """A position entry (stored by MindSpore as a Parameter or a plain int) as an int."""
    return int(value.asnumpy()) if hasattr(value, 'asnumpy') else int(value)


def recorded_class_names(checkpoint, source='checkpoint'):
    """The class names a checkpoint records (a list of str), or None when it records none."""
    names = ModelCard.read(checkpoint, source, 're-save it with this project').class_names
    return list(names) if names is not None else None


def recorded_epoch_metrics(checkpoint):
    """The metrics row an epoch-end checkpoint carries (a dict), or None (mid-epoch, older files)."""
    text = checkpoint.get(EPOCH_METRICS_KEY)
    try:
        row = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        row = None
    return row if isinstance(row, dict) else None


def check_recorded_arch(checkpoint, arch, source):
    """UserError when the checkpoint records that it was trained as another arch than ``arch``."""
    saved = ModelCard.read(checkpoint, source, 're-save it with this project').arch
    if saved is not None and saved != arch:
        raise UserError(f'{source} was trained as {saved}, the config asks for {arch}: '
                        f'set arch: {saved}, or use a checkpoint of {arch}')


def is_deploy_form(checkpoint, prefix=''):
    """True when the network tensors (under ``prefix``) are re-parameterized blocks (rbr_reparam)."""
    return any('rbr_reparam' in name[len(prefix):] for name in checkpoint
               if name.startswith(prefix) and name[len(prefix):].startswith('stage'))


def match_checkpoint(net, checkpoint, prefix='', drop_head_on_mismatch=False, source='checkpoint'):
    """({name: value} to load into ``net``, names dropped), or a UserError saying what does not match.
    ``drop_head_on_mismatch``: leave out a classifier of another class count (transfer learning)."""
    roots = {name.split('.', 1)[0] for name, _ in net.parameters_and_names()}
    entries = {name[len(prefix):]: value for name, value in checkpoint.items()
               if name.startswith(prefix) and name[len(prefix):].split('.', 1)[0] in roots}
    expected = {name: tuple(param.shape) for name, param in net.parameters_and_names()}
    if not entries:
        raise UserError(f'{source} holds no tensors of this network{" under " + prefix if prefix else ""}; '
                        f'is it a RepVGG checkpoint of this project (or converted with convert.py)?')
    dropped = []
    head = {name: tuple(entries[name].shape) for name in HEAD_NAMES if name in entries and name in expected}
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
            details.append(f'missing from it: {listed(missing)}')
        if unexpected:
            details.append(f'not in the network: {listed(unexpected)}')
        raise UserError(f'{source} does not match the network ({"; ".join(details)}); '
                        f'check arch and deploy.{form_hint}')
    wrong_shape = [f'{name} {tuple(value.shape)} vs {expected[name]}' for name, value in entries.items()
                   if tuple(value.shape) != expected[name]]
    if wrong_shape:
        raise UserError(f'{source} has tensors of other shapes than the network '
                        f'({listed(wrong_shape, 3)}); check arch')
    return entries, dropped


def load_weights(net, path_or_dict, prefix='', drop_head_on_mismatch=False, source=None):
    """Load a checkpoint (path or read dict, named ``source``) into ``net`` strictly; the names left out."""
    if isinstance(path_or_dict, dict):
        checkpoint, source = path_or_dict, source or 'checkpoint'
    else:
        checkpoint, source = read_checkpoint(path_or_dict), f'checkpoint {path_or_dict}'
    entries, dropped = match_checkpoint(net, checkpoint, prefix, drop_head_on_mismatch, source)
    import mindspore as ms
    params = {}
    for name, value in entries.items():
        params[name] = value if isinstance(value, ms.Parameter) else ms.Parameter(value, name=name)
    not_loaded, _ = ms.load_param_into_net(net, params, strict_load=True)
    not_loaded = [name for name in not_loaded if name not in dropped]
    if not_loaded:  # only possible if names and structure disagree; never ignore it
        raise UserError(f'{source}: MindSpore did not load {listed(not_loaded)}')
    return dropped
