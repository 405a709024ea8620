"""Writing files all or nothing, and failing early and cleanly when they cannot be written.

- ``check_writable`` (``check_writable_file``): before any work, a one-line UserError when an output
  could not be created.
- ``atomic_path``: a hidden temporary beside the target, renamed onto it when complete; a failed
  write (disk full, permissions) removes the temporary and becomes one line naming the file and
  the reason, never a traceback or a half-written file.
- Temporaries are named ``.<name>.<pid>.partial...``, so that the next run on the same target (or
  in the same run folder) can tell a dead process's leftovers from a live writer's and remove them.
"""
import contextlib
import fnmatch
import os
import shutil
import signal
import tempfile
from pathlib import Path

from src.tools.base.cli import UserError

PARTIAL_MARK = '.partial'


def _reason(error):
    return error.strerror or str(error) or type(error).__name__


def check_writable(path, what='output'):
    """UserError unless a file or folder could be created at ``path``: it is not an existing folder
    (for a file) and its nearest existing parent is a folder this process may write to."""
    path = Path(path)
    parent = path if path.is_dir() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f'{what} {path} cannot be written: {parent} is not a folder')
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f'{what} {path} cannot be written: no permission to write in {parent}')
    if path.exists() and not path.is_dir() and not os.access(path, os.W_OK) and not os.access(path.parent, os.W_OK):
        raise UserError(f'{what} {path} cannot be replaced: no permission')
    return path


def check_folder_creatable(path, what='folder'):
    """``check_writable`` for a folder that will hold new folders: also a UserError when ``path``
    is an existing file, or when its nearest existing folder refuses a new folder although its
    permission bits allow one (/proc, /sys, read-only mounts; found by making and removing one)."""
    path = check_writable(path, what)
    if path.exists() and not path.is_dir():
        raise UserError(f'{what} {path} is a file; it takes a folder (one is created inside it for each run): '
                        f'pass another path')
    parent = path
    while not parent.is_dir():
        parent = parent.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f'.probe.{os.getpid()}{PARTIAL_MARK}', dir=parent))
    except OSError as error:
        raise UserError(f'{what} {path} cannot be written: no folder can be created in {parent} '
                        f'({_reason(error)}); pass a folder on an ordinary disk') from None
    return path


def check_writable_file(path, what='output', example='output'):
    """``check_writable`` for a file: also a UserError when ``path`` is an existing folder, suggesting
    ``path/example`` instead."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f'{what} {path} is a folder; pass a file name such as {path / example}')
    return check_writable(path, what)


def make_folder(path, what='folder'):
    """``mkdir -p`` as a one-line UserError when it fails."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f'could not create {what} {path}: {_reason(error)}') from None
    return Path(path)


def partial_name(path, tag=''):
    """The hidden temporary name of ``path`` for this process (``tag`` ends it)."""
    path = Path(path)
    return path.with_name(f'.{path.name}.{os.getpid()}{PARTIAL_MARK}{tag}')


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a hidden temporary path beside ``path``; on success rename it onto ``path``.

    On an error (or a failed check inside the block) the temporary file is removed and ``path``
    is left as it was; an OSError (disk full, no permission) becomes a UserError naming ``path``.
    ``suffix`` (default: ``path``'s) ends the temporary name, for writers that add or check one
    (mindspore.save_checkpoint appends '.ckpt' and writes its own '.tmp' first).
    """
    path = Path(path)
    temporary = partial_name(path, path.suffix if suffix is None else suffix)
    try:
        make_folder(path.parent)
        yield temporary
        kill_point_for_tests(path, 'written')
        os.replace(temporary, path)
        kill_point_for_tests(path, 'renamed')
    except OSError as error:
        raise UserError(f'could not write {path}: {_reason(error)}') from None
    finally:
        temporary.unlink(missing_ok=True)
        temporary.with_suffix('.tmp').unlink(missing_ok=True)  # a writer's own temporary of it


KILL_POINT_VARIABLE = 'REPVGG_TEST_KILL_AT'


def kill_point_for_tests(path, moment):
    """Test-only: SIGKILL this process at one point of an atomic write, so that a test stops a run
    between two writes without timing. ``REPVGG_TEST_KILL_AT=<file name pattern>:<moment>`` (fnmatch
    pattern; moment ``written``: the temporary is complete, not yet renamed; ``renamed``: the file
    is in place). Unset, as in every real run, it does nothing."""
    wanted = os.environ.get(KILL_POINT_VARIABLE)
    if wanted:
        pattern, _, when = wanted.rpartition(':')
        if when == moment and fnmatch.fnmatchcase(Path(path).name, pattern):
            os.kill(os.getpid(), signal.SIGKILL)


def write_text_atomic(path, text):
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding='utf-8')


def give_usual_permissions(path):
    """Permissions of a file created by this process under its umask (some writers make their files
    owner-read-only; a checkpoint or model file should be readable as every other file is)."""
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
    """Delete the temporaries that killed processes left in ``folder``: files and folders named
    ``.<name>.<pid>.partial*`` whose process is gone, of names starting with ``prefix[1:]`` (one
    target: '.model.onnx.'; one rank's checkpoints: '.RepVGG-A0_1-')."""
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

