"""Writing files all or nothing, and failing early and cleanly when they cannot be written.

Outputs are checked before any work (``check_*``: one-line UserErrors, never over an input, a
device or a FIFO), then written to a hidden temporary ``.<name>.<pid>.partial...`` beside the target
(through a symbolic link) and renamed onto it (``atomic_path``); the next run in the folder removes
the temporaries of dead processes (``remove_partial_files``).
"""
import contextlib
import errno
import fnmatch
import os
import shutil
import signal
import stat
import tempfile
from pathlib import Path

from src.tools.base.cli import UserError

PARTIAL_MARK = '.partial'
# What a rename onto a path would destroy, that is neither a regular file nor a folder.
SPECIAL_KINDS = ((stat.S_ISCHR, 'a character device'), (stat.S_ISBLK, 'a block device'),
                 (stat.S_ISFIFO, 'a FIFO'), (stat.S_ISSOCK, 'a socket'))


def reason(error):
    """Why an OSError happened, in words (a full disk in the words of the error lines here)."""
    if getattr(error, 'errno', None) == errno.ENOSPC:
        return 'no space left on the device'
    return getattr(error, 'strerror', None) or str(error) or type(error).__name__


def _kind(path, what):
    """What ``path`` is, links followed: None (nothing yet), 'a file', 'a folder' or a special kind."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:  # a loop of links, no permission to look
        raise UserError(f'{what} {path} cannot be written: {reason(error)}') from None
    if stat.S_ISREG(mode):
        return 'a file'
    if stat.S_ISDIR(mode):
        return 'a folder'
    return next((kind for is_kind, kind in SPECIAL_KINDS if is_kind(mode)), 'a special file')


def _same_file(first, second):
    try:
        return os.path.samefile(first, second)  # hard links too
    except OSError:
        return False


def check_outputs_apart(outputs, inputs):
    """A UserError unless every output ({label: path or None}) stays clear of every input: not the same
    file (links and hard links followed) and not inside an input folder, which is being read."""
    for out_label, output in outputs.items():
        if output is None:
            continue
        out_real = Path(os.path.realpath(output))
        for in_label, source in inputs.items():
            if source is None:
                continue
            in_real = Path(os.path.realpath(source))
            if in_real in out_real.parents or (out_real == in_real and in_real.is_dir()):
                where = 'inside ' if in_real != out_real else ''
                raise UserError(f'{out_label} {output} is {where}{in_label} {source}, a folder that is read: '
                                f'choose a {out_label} outside it')
            if out_real == in_real or _same_file(output, source):
                raise UserError(f'{out_label} {output} is the same file as {in_label} {source}: writing it would '
                                f'destroy an input; choose another {out_label}')


def _check_parent(path, what, shown=None):
    """UserError unless this process may write in the nearest existing folder above ``path``."""
    shown = path if shown is None else shown
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f'{what} {shown} cannot be written: {parent} is not a folder')
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f'{what} {shown} cannot be written: no permission to write in {parent}')


def check_writable(path, what='output'):
    """UserError unless a folder could be created at ``path`` (or is there) and written in."""
    path = Path(path)
    kind = _kind(path, what)
    if kind == 'a folder':
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f'{what} {path} cannot be written: no permission to write in {path}')
    elif kind is not None:
        raise UserError(f'{what} {path} is {kind}, not a folder: pass a folder')
    else:
        _check_parent(path, what)
    return path


def regular_target(path, what='output'):
    """The file that writing ``path`` creates or replaces (through a symbolic link); a UserError when
    that is a folder or a special file, which a rename would replace with a regular file."""
    path = Path(path)
    target = Path(os.path.realpath(path))
    kind = _kind(target, what)
    if kind not in (None, 'a file'):
        shown = f'{path} is {kind}' if target == path.absolute() else f'{path} leads to {target}, {kind}'
        raise UserError(f'{what} {shown}: only a regular file is written or replaced; pass another path')
    return target


def check_folder_creatable(path, what='folder'):
    """``check_writable`` for a folder that will hold new folders, found by making and removing one
    (/proc, /sys and read-only mounts refuse it although their permission bits allow it)."""
    path = check_writable(path, what)  # refuses a file, a device, a FIFO
    parent = path
    while not parent.is_dir():
        parent = parent.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f'.probe.{os.getpid()}{PARTIAL_MARK}', dir=parent))
    except OSError as error:
        raise UserError(f'{what} {path} cannot be written: no folder can be created in {parent} '
                        f'({reason(error)}); pass a folder on an ordinary disk') from None
    return path


def check_writable_file(path, what='output', example='output'):
    """UserError unless a regular file could be written at ``path`` (a folder gets the hint ``path/example``)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f'{what} {path} is a folder; pass a file name such as {path / example}')
    target = regular_target(path, what)
    _check_parent(target, what, path)
    if target.exists() and not os.access(target, os.W_OK) and not os.access(target.parent, os.W_OK):
        raise UserError(f'{what} {path} cannot be replaced: no permission')
    return path


def make_folder(path, what='folder'):
    """``mkdir -p`` as a one-line UserError when it fails."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f'could not create {what} {path}: {reason(error)}') from None
    return Path(path)


def partial_name(path, tag=''):
    """The hidden temporary name of ``path`` for this process (``tag`` ends it)."""
    path = Path(path)
    return path.with_name(f'.{path.name}.{os.getpid()}{PARTIAL_MARK}{tag}')


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a hidden temporary path beside ``path`` (through a link), renamed onto it on success; on an
    error it is removed and ``path`` stays as it was, an OSError becoming a UserError naming ``path``.
    ``suffix`` ends the temporary name (mindspore.save_checkpoint appends '.ckpt', writes a '.tmp')."""
    path = Path(path)
    target = regular_target(path)
    temporary = partial_name(target, path.suffix if suffix is None else suffix)
    try:
        make_folder(target.parent)
        yield temporary
        kill_point_for_tests(path, 'written')
        os.replace(temporary, regular_target(path))  # checked again: something may have appeared there
        kill_point_for_tests(path, 'renamed')
    except OSError as error:
        raise UserError(f'could not write {path}: {reason(error)}') from None
    finally:
        temporary.unlink(missing_ok=True)
        temporary.with_suffix('.tmp').unlink(missing_ok=True)  # a writer's own temporary of it


KILL_POINT_VARIABLE = 'REPVGG_TEST_KILL_AT'


def kill_point_for_tests(path, moment):
    """Test-only: SIGKILL this process at ``REPVGG_TEST_KILL_AT=<fnmatch pattern>:<moment>`` (``written``:
    the temporary complete, not renamed; ``renamed``), so a test stops a run between two writes."""
    wanted = os.environ.get(KILL_POINT_VARIABLE)
    if wanted:
        pattern, _, when = wanted.rpartition(':')
        if when == moment and fnmatch.fnmatchcase(Path(path).name, pattern):
            os.kill(os.getpid(), signal.SIGKILL)


def write_text_atomic(path, text):
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding='utf-8')


def give_usual_permissions(path):
    """The permissions of the umask (MindSpore's writers make their files owner-read-only)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _owner_alive(name):
    """Whether the process whose pid a temporary's name carries is still running."""
    try:
        pid = int(name.split(PARTIAL_MARK)[0].rsplit('.', 1)[1])
    except (IndexError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != 0


def remove_partial_files(folder, prefix='.'):
    """Delete the temporaries ``<prefix>*.<pid>.partial*`` in ``folder`` whose process is gone (all: '.';
    one rank's checkpoints: '.RepVGG-A0_1-')."""
    pattern = f'{prefix}*{PARTIAL_MARK}*'
    removed = []
    for path in Path(folder).glob(pattern):
        if _owner_alive(path.name):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
