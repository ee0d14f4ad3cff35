"""What watches a training loop from outside it: stop signals, the watchdog's beats, and rank 0's checkpoints."""
import signal
import time

from utils.async_checkpoint import CheckpointWriter
from utils.watchdog import Watchdog

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)  # Ctrl+C; schedulers, timeout, torchrun; SLURM's warning


class Guard:
    """What watches a run from outside the loop: stop signals (a stop is agreed by every rank and taken at
    a batch boundary), the watchdog, and rank 0's checkpoints (every period_min minutes and/or period_steps
    optimizer steps, at an optimizer-step boundary, written in the background)."""

    def __init__(self, paths, period_min=0.0, period_steps=0, watchdog=None, main_proc=True):
        self.paths, self.period_min, self.period_steps = paths, period_min, period_steps
        self.watchdog = watchdog or Watchdog(0)
        self.writer = CheckpointWriter() if main_proc else None
        self.signal = None
        self.last_save = time.monotonic()
        self._old_handlers = {}

    def __enter__(self):
        def on_signal(signum, frame):
            if self.signal == signal.SIGINT == signum:  # a second Ctrl+C: stop now
                raise KeyboardInterrupt
            self.signal = signum
        self._old_handlers = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
        self.watchdog.start()
        return self

    def __exit__(self, *exc):
        self.watchdog.stop()
        for s, h in self._old_handlers.items():
            signal.signal(s, h)
        if self.writer:
            self.writer.wait()

    def beat(self, phase, detail='', waiting=False):
        self.watchdog.beat(phase, detail, waiting)

    def due(self, steps):
        """Whether a periodic checkpoint is due after optimizer step `steps` (rank 0 decides alone)."""
        return self.writer is not None and (
            (self.period_steps > 0 and steps % self.period_steps == 0)
            or (self.period_min > 0 and time.monotonic() - self.last_save >= self.period_min * 60))

    def save(self, ckpt, best=False, background=True, then=None):
        self.beat('saving checkpoint', str(self.paths.last))
        self.writer.write(ckpt, [self.paths.last] + ([self.paths.best] if best else []), background, then)
        self.last_save = time.monotonic()


class EvaluationInterrupted(Exception):
    """A stop signal arrived during the end-of-epoch evaluation."""


class BeatingLoader:
    """The validation loader, reporting each batch to the watchdog (an evaluation is progress, not a hang) and
    ending the evaluation when a stop signal arrives (a COCO evaluation takes minutes; a scheduler's grace
    period before SIGKILL is often 30 s)."""

    def __init__(self, loader, guard):
        self.loader, self.guard = loader, guard

    def __iter__(self):
        for n, batch in enumerate(self.loader):
            if self.guard.signal:
                raise EvaluationInterrupted
            self.guard.beat('evaluation', f'batch {n}')
            yield batch

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)
