"""The peak of live tensor bytes through a piece of work on the CPU: the counterpart of CUDA's
max_memory_allocated, where the process's peak RSS also counts the runtime, the allocator's free lists and Python.

It is counted at the operator level (a TorchDispatchMode), so the autograd engine's backward and a checkpoint's
recomputation are seen as they run. Work buffers an operator allocates and frees inside itself (oneDNN's, say)
are not; on a GPU max_memory_allocated counts those as well (cuDNN's workspaces)."""
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def storage_bytes(tensors):
    """Bytes of the distinct storages behind tensors (views of one storage count once)."""
    seen = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != 'meta':
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    seen.pop(0, None)
    return sum(seen.values())


class TensorPeak(TorchDispatchMode):
    """While active, counts every storage an operator creates, from the operator's return until the last tensor on
    it dies, on top of `baseline` bytes alive before (the model, its EMA, the optimizer's state, the batch).

    An operator's output either aliases an input (a view, an in-place op) or is new: only new storages are
    counted, so in-place updates of tensors made before (the weights in the optimizer step) add nothing."""

    def __init__(self, baseline_bytes=0):
        super().__init__()
        self.baseline = baseline_bytes
        self._live = {}  # storage address -> [bytes, tensors counted on it]
        self._counted = 0  # bytes of the storages counted and still alive
        self.peak = baseline_bytes

    @property
    def current(self):
        """Live tensor bytes now, the baseline included."""
        return self.baseline + self._counted

    def _release(self, key):
        entry = self._live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self._counted -= entry[0]
            del self._live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr()
                  for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or (key in inputs and key not in self._live):  # empty, or an alias of an uncounted tensor
                continue
            entry = self._live.get(key)
            if entry is None:
                entry = self._live[key] = [storage.nbytes(), 0]
                self._counted += entry[0]
                self.peak = max(self.peak, self.current)
            entry[1] += 1
            weakref.finalize(t, self._release, key)
        return out
