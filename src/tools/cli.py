"""How entry points fail: one line that says what to fix, never a traceback for bad input."""
import functools
import sys


class UserError(Exception):
    """Bad input from the user (config, paths, checkpoints, data); the message says what to do."""


def user_entry_point(main):
    """Run ``main``; report a UserError as ``error: <message>`` on stderr and exit with status 2."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f'error: {error}', file=sys.stderr)
            sys.exit(2)
    return wrapper
