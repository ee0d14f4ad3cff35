"""Checkpoints written in the background: training pauses only while the state is copied into host memory.

A P5 training state is about 0.85 GB (model, EMA and optimizer momentum in float32). Writing it takes seconds;
copying it takes a fraction of that (`python -m utils.benchmarks --mode checkpoint` measures both). The writer
keeps one write in flight and the writes in order, so an older state never replaces a newer one, and each
file is written atomically (models.checkpoint.save_checkpoint).
"""
import logging
import threading
import time

import torch

from models.checkpoint import save_checkpoint

LOGGER = logging.getLogger(__name__)


def host_copy(obj):
    """obj with every tensor copied to the CPU: a snapshot that later training steps do not change."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to('cpu', copy=True)
    if isinstance(obj, dict):
        return {k: host_copy(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(host_copy(v) for v in obj)
    return obj


class CheckpointWriter:
    """Saves checkpoints one at a time, in order, in a background thread (or in the caller's, on request).

    An error of a background write (a full disk) is raised by the next write() or wait(). The timings of the
    last write are kept in copy_s (the pause of training) and write_s.
    """

    def __init__(self, previous=None):
        self.previous = dict(previous or {})  # path -> its second slot (save_checkpoint's `previous`)
        self._thread, self._error = None, None
        self.copy_s = self.write_s = 0.0

    def write(self, ckpt, paths, background=True, then=None):
        """Save ckpt to each of paths, after the previous write has finished, then call `then()` (which should
        happen only once the checkpoint is on disk). In the background, from a host copy taken now; otherwise
        now, in this thread."""
        self.wait()
        if not background:
            self._save(ckpt, paths, then)
            self.wait()
            return
        t = time.perf_counter()
        snapshot = host_copy(ckpt)
        self.copy_s = time.perf_counter() - t
        thread = threading.Thread(target=self._save, args=(snapshot, paths, then), name='checkpoint-writer')
        thread.start()  # before it is recorded: a signal handler raising in between must not leave it unstarted
        self._thread = thread

    def _save(self, ckpt, paths, then=None):
        t = time.perf_counter()
        try:
            for path in paths:
                save_checkpoint(ckpt, path, self.previous.get(path))
            if then is not None:
                then()
        except Exception as e:  # noqa: BLE001 - handed to the training thread, which raises it
            self._error = e
        self.write_s = time.perf_counter() - t

    def then(self, fn):
        """Call fn once the write in flight is on disk (now, when none is): in order with the writes, and not at
        all when that write failed (its error is raised by the next write() or wait())."""
        previous = self._thread
        if previous is None:
            if self._error is None:
                fn()
            return

        def after_previous():
            previous.join()
            if self._error is None:
                try:
                    fn()
                except Exception as e:  # noqa: BLE001 - handed to the training thread, which raises it
                    self._error = e
        thread = threading.Thread(target=after_previous, name='checkpoint-writer')
        thread.start()
        self._thread = thread

    def busy(self):
        return self._thread is not None and self._thread.is_alive()

    def wait(self):
        """Block until the write in flight is done; raise its error, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
