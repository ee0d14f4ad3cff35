"""The stop signals of a training process: SIGINT (Ctrl+C), SIGTERM (schedulers, timeouts, torchrun) and SIGUSR1
(SLURM's warning before the time limit)."""
import logging
import signal
import sys

from utils.datasets import loader_failure
from utils.train.trainer import TrainingStopped

LOGGER = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """The stop signals for the whole of a training process (train.main holds them from its start to its end), so
    that a stop signal at any moment ends the process with 128 + the signal, leaving a state that the same command
    resumes or reports complete:
    - before the training loop: the process stops at once (TrainingStopped; nothing is saved yet);
    - in the loop (between the Trainer's enter_loop and leave_loop): recorded in `received`, which the Trainer
      reads at each batch; a stop agreed by every rank and taken at a batch boundary with a checkpoint. A second
      Ctrl+C stops at once;
    - after the loop (the last checkpoint, final.pt, trackers, the lock's release): recorded in `received`, and the
      process exits with it once the run's end is written (train.main).
    A signal that came between two loops (--evolve's generations) stops the next one at its first batch."""

    def __init__(self):
        self.received, self.looping, self.finishing, self.old_handlers = None, False, False, {}
        self.old_unraisablehook = None

    def __enter__(self):
        self.old_handlers = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        self.old_unraisablehook, sys.unraisablehook = sys.unraisablehook, self._on_unraisable
        return self

    def __exit__(self, *exc):
        for s, h in self.old_handlers.items():
            signal.signal(s, h)
        sys.unraisablehook = self.old_unraisablehook

    def _on_unraisable(self, unraisable):
        """PyTorch's SIGCHLD handler raises a killed data-loader worker's error in whatever code runs at that
        moment; in a weakref or __del__ callback Python cannot raise it and prints a traceback instead. The loader
        raises it again at its next batch (the run's one line), so here it is only logged for debugging."""
        if loader_failure(unraisable.exc_value) is not None:
            LOGGER.debug('data loader failure inside %r (raised again at the next batch): %s', unraisable.object,
                         unraisable.exc_value)
        else:
            self.old_unraisablehook(unraisable)

    def enter_loop(self):
        self.looping, self.finishing = True, False

    def leave_loop(self):
        self.looping, self.finishing = False, True

    def _on_signal(self, signum, frame):
        if self.received == signal.SIGINT == signum:
            raise KeyboardInterrupt
        self.received = self.received or signum
        if not (self.looping or self.finishing):
            raise TrainingStopped(f'{signal.Signals(signum).name} received before training started: nothing to '
                                  f'save', 128 + signum)
