"""Errors the user can fix, and how the scripts report them.

Every error the project raises on purpose for bad input (a missing or unsafe weights file, a bad data or
model yaml, a dataset without usable images, a nonsense flag value, a disk that cannot be written) derives
from `UserError`. The scripts turn such an error into one line on stderr, `<script>: error: <message>`, and
exit with status 1; anything else is a bug and keeps its traceback.
"""
import argparse
import errno
import logging
import os
import signal
import sys

LOGGER = logging.getLogger(__name__)

# errno -> what to tell the user when a write fails for a reason that is not a bug
WRITE_ERRORS = {errno.ENOSPC: 'no space left on device', errno.EROFS: 'read-only file system',
                errno.EACCES: 'permission denied', errno.EPERM: 'operation not permitted',
                errno.EDQUOT: 'disk quota exceeded'}


class UserError(Exception):
    """Bad input the user can fix; the message names the file or flag and what to do."""


class ArgumentError(UserError, ValueError):
    """A command-line flag (or run() keyword) whose value makes no sense; the message names the flag."""


def write_error_reason(exc):
    """'no space left on device' (etc.) when exc is a write failure the user can fix, else None.

    PyTorch reports a full disk during torch.save as a RuntimeError "... unexpected pos ...", without errno.
    """
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRORS:
        return WRITE_ERRORS[exc.errno]
    if isinstance(exc, RuntimeError) and 'unexpected pos' in str(exc):
        return WRITE_ERRORS[errno.ENOSPC]
    return None


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Shows '(default: X)' after a flag's help where X says something: not for flags whose help already names
    their default, switches, or empty and None defaults (the help says what those mean)."""

    def _get_help_string(self, action):
        text = action.help or ''
        default = action.default
        empty = default is None or default is False or default is argparse.SUPPRESS or default in ('', [])
        switch = isinstance(action, argparse._StoreTrueAction)
        if '(default' in text.lower() or empty or switch or not action.option_strings:
            return text
        return f'{text} (default: %(default)s)'


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the defaults shown in --help and errors on one line (no usage block)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault('formatter_class', DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def check_at_least(flag, value, minimum):
    """Raise ArgumentError unless value (or every value of a list) is >= minimum."""
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if v is not None and v < minimum:
            raise ArgumentError(f'{flag} {v}: must be at least {minimum}')


def check_fraction(flag, value, allow_zero=True):
    """Raise ArgumentError unless 0 <= value <= 1 (0 < value <= 1 without allow_zero)."""
    if value is None:
        return
    if not (0 <= value <= 1) or (value == 0 and not allow_zero):
        raise ArgumentError(f'{flag} {value}: must be {"between 0 and 1" if allow_zero else "above 0 and at most 1"}')


def one_line(exc):
    """The message of exc on one line."""
    return ' '.join(str(exc).split()) or type(exc).__name__


class StopSignal(BaseException):
    """SIGTERM or SIGUSR1 (a scheduler's stop, SLURM's warning) raised where the script is, as Ctrl+C raises
    KeyboardInterrupt, so that its cleanup runs (loader workers, video writers) before it exits."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


SCRIPT_STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # raised as StopSignal by run_cli (SIGINT as Python's own)


def _raise_stop_signal(signum, frame):
    raise StopSignal(signum)


_fork_hook_registered = False


def _default_stop_signals():
    for s in SCRIPT_STOP_SIGNALS:
        signal.signal(s, signal.SIG_DFL)


def default_stop_signals_in_forked_children():
    """A process forked from a script (a library's helper, such as the process in which OpenVINO's converter
    sends its telemetry) starts with the default SIGTERM and SIGUSR1, not the script's handler. With the script's
    Python-level handler, a child stuck in C code (a lock held by another thread at the fork) could not be ended by
    SIGTERM, its parent's terminate(), and outlived the script for good. Registered once per process by run_cli;
    the data loader's workers set their own handlers after the fork (utils.datasets.seed_worker). train.py keeps
    its handlers in its forked children (StopSignals): there they are loader workers, which must not stop on the
    process group's signal before their own handlers are set."""
    global _fork_hook_registered
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_default_stop_signals)
        _fork_hook_registered = True


def run_cli(main, prog):
    """Run a script's main(); a UserError or a failed write becomes one line on stderr and exit status 1. A stop
    signal (SIGINT, SIGTERM, SIGUSR1) ends it with one line and 128 + the signal, its cleanup done (train.py takes
    them itself, to save a checkpoint first)."""
    for s in SCRIPT_STOP_SIGNALS:
        signal.signal(s, _raise_stop_signal)
    default_stop_signals_in_forked_children()
    try:
        main()
    except StopSignal as e:
        print(f'{prog}: stopped by {signal.Signals(e.signum).name}', file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        print(f'{prog}: interrupted (Ctrl+C)', file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except UserError as e:
        sys.exit(f'{prog}: error: {one_line(e)}')
    except (OSError, RuntimeError) as e:
        reason = write_error_reason(e)
        if reason is None:
            raise
        where = f' writing {e.filename}' if getattr(e, 'filename', None) else ''
        sys.exit(f'{prog}: error: {reason}{where}: free space or choose another --project; earlier outputs '
                 f'are kept')
