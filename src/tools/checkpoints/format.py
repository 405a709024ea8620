"""The checkpoint format: what a checkpoint holds, how it is written, and how it is read strictly.

What a checkpoint of this project holds (eval.py, export.py, convert.py and resume rely on it;
docs/training.md shows it from a user's side):
- the network's tensors under their own names (``stage0.*`` ... ``stage4.*``, ``linear.*``), as
  ``mindspore.save_checkpoint`` names them for the network: ``load_weights(net, path)`` loads them;
- with ``with_ema``, the EMA copies of all of them under ``ema.<name>``:
  ``load_weights(net, path, prefix='ema.')`` loads those;
- optimizer and loss-scale state under MindSpore's own names, none of which is a network root:
  ``moments.*`` (momentum) or ``adam_m.*``/``adam_v.*`` (adamw), ``global_step``, ``momentum``,
  ``scale_sense``, ``current_iterator_step``, ``last_overflow_iterator_step``;
- the position: ``epoch_num`` (1-based epoch of the last step taken),
  ``step_num`` (steps of that epoch taken), ``steps_per_epoch``;
- the model card (model_card.py): ``arch``, ``num_classes``, ``form``, ``class_names`` (the
  training classes in label order, the sorted class folder names), ``image_size``,
  ``interpolation``, ``mean``, ``std``, ``crop_pct``. Exports carry it on; files without it (older
  checkpoints) still work from the config's values, and without class names with class indices;
- an epoch's end (the periodic checkpoint written first when an epoch ends) also holds
  ``epoch_metrics``: that epoch's metrics.csv row as a JSON object in a string, from which a
  resumed run writes again what a kill right after the checkpoint lost (the row, the curves, the
  best checkpoint).

A checkpoint may hold more than the network, so only the entries under the network's own top-level
names count as network tensors when reading: nothing the network needs or the file offers as
weights is silently ignored. Files are written under a hidden temporary name and renamed into
place (src/tools/base/files.py), so a process killed at any moment leaves only complete files;
they carry MindSpore's CRC, so that a file damaged later fails to read instead of loading garbage.

MindSpore is imported by the functions that write and read checkpoints: the model card of an ONNX
file (model_card.py) is read without loading it.
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


# ----------------------------------------------------------------------------- writing
def save_checkpoint(entries, path, append_dict=None, verify=None):
    """``mindspore.save_checkpoint`` of ``entries`` to ``path``, all or nothing.

    ``entries`` is a list of {'name', 'data'} or a {name: array} dict. The file is written under a
    hidden temporary name beside ``path``, checked with ``verify(temporary_path)`` when given, and
    only then renamed onto ``path``; a crash or a failed check leaves ``path`` as it was. (MindSpore's
    writer renames its own temporary file too, but only as an undocumented detail and after deleting
    an existing file of the same name.) Returns what ``verify`` returned, else the path.
    """
    import mindspore as ms
    path = Path(path)
    if path.suffix != '.ckpt':
        raise UserError(f'checkpoint {path} must end with .ckpt')
    if isinstance(entries, dict):
        entries = [{'name': name, 'data': ms.Tensor(value)} for name, value in entries.items()]
    with atomic_path(path, '.ckpt') as temporary:
        ms.save_checkpoint(entries, str(temporary), append_dict=append_dict, crc_check=True)
        give_usual_permissions(temporary)  # MindSpore leaves its checkpoints readable by their owner only
        result = verify(temporary) if verify is not None else path
    return result


def train_state(train_cell, epoch_num, step_num, steps_per_epoch, card, epoch_metrics=None):
    """(entries, append_dict) for ``save_checkpoint``: every parameter of the train cell (network,
    optimizer, loss scale, EMA) except the per-step learning rates, plus the position, the model
    ``card`` (a ModelCard) and, at an epoch's end, the epoch's metrics row."""
    entries = [{'name': param.name, 'data': param} for param in train_cell.get_parameters()
               if param.name not in NOT_SAVED]
    append = {'epoch_num': int(epoch_num), 'step_num': int(step_num), 'steps_per_epoch': int(steps_per_epoch),
              **card.entries()}
    if epoch_metrics is not None:
        append[EPOCH_METRICS_KEY] = json.dumps(epoch_metrics)
    return entries, append


# ----------------------------------------------------------------------------- reading
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


def _network_entries(net, checkpoint, prefix):
    roots = {name.split('.', 1)[0] for name, _ in net.parameters_and_names()}
    entries = {}
    for name, value in checkpoint.items():
        key = name[len(prefix):]
        if name.startswith(prefix) and key.split('.', 1)[0] in roots:
            entries[key] = value
    return entries


def match_checkpoint(net, checkpoint, prefix='', drop_head_on_mismatch=False, source='checkpoint'):
    """({name: value} to load into ``net``, names dropped), or a UserError saying what does not match.

    With ``drop_head_on_mismatch`` a classifier of another class count is left out (transfer
    learning); the caller is told through the returned ``dropped`` list.
    """
    entries = _network_entries(net, checkpoint, prefix)
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
    """Load a checkpoint into ``net`` strictly; returns the names left out (a dropped head).

    ``source`` names an already-read dict in messages (e.g. 'checkpoint <path>').
    """
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
