"""How entry points fail: one line that says what to fix, never a traceback for bad input."""
import argparse
import contextlib
import difflib
import functools
import signal
import sys


class UserError(Exception):
    """Bad input from the user (config, paths, checkpoints, data); the message says what to do."""


def user_entry_point(main):
    """Run ``main``; a UserError is ``error: <message>`` on stderr and status 2, Ctrl+C (or the SIGTERM
    that MindSpore makes of it, ``Terminated``) one line and status 130 (files are written atomically)."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        restore_ctrl_c()
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f'error: {error}', file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt as stop:
            how = 'Ctrl+C or SIGTERM' if isinstance(stop, Terminated) else 'Ctrl+C'
            print(f'error: interrupted ({how}); no file was left half-written', file=sys.stderr)
            sys.exit(130)
        finally:
            signal.signal(signal.SIGTERM, previous)
    return wrapper


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: MindSpore's graph back-end turns Ctrl+C into one
    (``DefaultIntHandler``, mindspore/ccsrc/utils/signal_util.cc; docs/training.md), and a handler
    cannot tell it from a scheduler's, so both stop the run as Ctrl+C does."""


def _raise_terminated(_signum, _frame):
    raise Terminated


def restore_ctrl_c():
    """Put Python's Ctrl+C handler back (MindSpore installs its own at import, and one that turns
    Ctrl+C into SIGTERM as it builds or runs graphs; a training loop calls this once per step)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def quiet_logger(logger, level):
    """``logger`` set to ``level`` inside the block (libraries that log what a one-line error says)."""
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def listed(names, limit=6):
    """Sorted names for an error line: the first ``limit``, then how many more."""
    names = sorted(names)
    return ', '.join(names[:limit]) + (f' and {len(names) - limit} more' if len(names) > limit else '')


def at_least(minimum):
    """An argparse type: a whole number of at least ``minimum``, as the config's ranges say it."""
    def convert(text):
        value = int(text) if text.strip().isdigit() else -1
        if value < minimum:
            raise argparse.ArgumentTypeError(f'must be at least {minimum}, got {text}')
        return value
    return convert


class OneLineParser(argparse.ArgumentParser):
    """argparse that raises a one-line UserError, with the closest known flag for an unknown one."""

    def error(self, message):
        if message.startswith('unrecognized arguments'):
            flags = [flag for action in self._actions for flag in action.option_strings]
            hints = []
            for arg in message.split(':', 1)[1].split():
                close = difflib.get_close_matches(arg.split('=')[0], flags, n=1, cutoff=0.6)
                if arg.startswith('-') and close:
                    hints.append(f'{arg} -> {close[0]}')
            if hints:
                message += f" (did you mean {', '.join(hints)}?)"
        raise UserError(message)
