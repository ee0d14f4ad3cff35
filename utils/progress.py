"""Progress bars that suit where the output goes.

On a terminal: tqdm as usual. Written to a file or a pipe (a batch scheduler's log, `> train.log`, `| tee`),
a redrawn bar would leave one carriage-return-joined line of thousands of frames; there, the bar prints a plain
line at most every `PLAIN_INTERVAL` seconds and a last line when it ends.
"""
import sys

from tqdm import tqdm

PLAIN_INTERVAL = 30.0  # seconds between the lines of a bar that does not go to a terminal
PLAIN_FORMAT = '{desc} {percentage:.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]'
PLAIN_FORMAT_NO_TOTAL = '{desc} {n_fmt} [{elapsed}, {rate_fmt}{postfix}]'


class PlainLines:
    """A file wrapper that turns tqdm's redraws ('\\r' + bar + padding) into whole lines, dropping blank ones."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        line = text.replace('\r', '').rstrip()
        if line:
            self.stream.write(line + '\n')

    def flush(self):
        self.stream.flush()


def _len(iterable):
    try:
        return len(iterable)
    except TypeError:
        return None


def is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class PlainBar(tqdm):
    """tqdm for a file or pipe: no line at the start, one at most every PLAIN_INTERVAL seconds (a new
    description does not print one), and the final state when it ends."""

    def set_description(self, desc=None, refresh=True):
        self.desc = desc or ''  # as given (tqdm appends ': '), and no line of its own

    def close(self):
        if not self.disable:
            self.delay = 0  # tqdm prints nothing at the end of a bar that never printed within its delay
        super().close()


def progress(iterable=None, **kwargs):
    """tqdm(iterable, **kwargs) on a terminal; plain lines (see the module) where stderr is not one."""
    stream = kwargs.pop('file', None) or sys.stderr
    if is_terminal(stream):
        return tqdm(iterable, file=stream, **kwargs)
    interval = max(kwargs.get('mininterval', 0), PLAIN_INTERVAL)
    kwargs.update(leave=True, mininterval=interval, delay=interval,
                  bar_format=PLAIN_FORMAT if kwargs.get('total', _len(iterable)) else PLAIN_FORMAT_NO_TOTAL)
    return PlainBar(iterable, file=PlainLines(stream), **kwargs)
