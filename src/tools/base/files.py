"""Writing files all or nothing: a run killed at any moment leaves the old file or the new one."""
import contextlib
import os
from pathlib import Path

PARTIAL_MARK = '.partial'


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a hidden temporary path beside ``path``; on success rename it onto ``path``.

    On an error (or a failed check inside the block) the temporary file is removed and ``path``
    is left as it was. ``suffix`` (default: ``path``'s) ends the temporary name, for writers that
    add or check one (mindspore.save_checkpoint appends '.ckpt'). Leftovers of a killed process
    match ``.*.partial*`` (see ``remove_partial_files``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f'.{path.name}.{os.getpid()}{PARTIAL_MARK}{path.suffix if suffix is None else suffix}')
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path, text):
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding='utf-8')


def remove_partial_files(folder, prefix='.'):
    """Delete the temporary files that a killed run left in ``folder`` (those of files whose name
    starts with ``prefix[1:]``, e.g. one rank's checkpoints: '.RepVGG-A0_1-')."""
    for path in Path(folder).glob(f'{prefix}*{PARTIAL_MARK}*'):
        path.unlink(missing_ok=True)
