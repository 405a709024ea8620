"""How entry points fail: one line that says what to fix, never a traceback for bad input."""
import argparse
import difflib
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


class OneLineParser(argparse.ArgumentParser):
    """argparse that raises UserError (one line) instead of printing usage and exiting, and hints
    at the closest known flag for an unknown one; every script's parser is one of these."""

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
