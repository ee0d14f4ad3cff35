"""Per-image data held in a few flat numpy arrays instead of one Python object per image.

A DataLoader worker is a fork of the training process. Reading a Python object there writes its reference count,
so the kernel copies the object's page into the worker: with a list of 118,287 label arrays or path strings,
each worker's private memory grows as it meets more images, epoch after epoch (pytorch/pytorch#13246). A numpy
array's items are not objects, and reading them writes nothing. Each container here is a read-only sequence of
numpy views (or strings) made on access from such arrays.
"""
import os
from collections.abc import Sequence

import numpy as np


def _offsets(lengths):
    return np.concatenate(([0], np.cumsum(lengths, dtype=np.int64))).astype(np.int64)


class _Packed(Sequence):
    """Item i is made by the subclass's _item(i) from data[offsets[i]:offsets[i + 1]]."""

    def __init__(self, data, offsets):
        self.data, self.offsets = data, offsets

    def __len__(self):
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f'index {i} out of range for {n} items')
        i = int(i) % n
        return self._item(i)

    def _chunk(self, i):
        return self.data[self.offsets[i]:self.offsets[i + 1]]


class _Reorderable(_Packed):
    def take(self, order):
        """The items in `order` (e.g. sorted by aspect ratio), packed anew."""
        order = np.asarray(order, dtype=np.int64)
        lengths = (self.offsets[1:] - self.offsets[:-1])[order]
        rows = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in order]) \
            if len(order) else np.zeros(0, np.int64)
        return type(self)(self.data[rows], _offsets(lengths))


class RaggedArrays(_Reorderable):
    """A sequence of (k_i, columns) arrays (an image's labels), held as one (sum k_i, columns) array. Items are
    read-only views; change the values through `data` (e.g. data[:, 0] = 0 for single-class training)."""

    @classmethod
    def pack(cls, arrays, columns, dtype=np.float32):
        arrays = [np.asarray(a, dtype=dtype).reshape(-1, columns) for a in arrays]
        data = np.concatenate(arrays, 0) if arrays else np.zeros((0, columns), dtype)
        return cls(data, _offsets([len(a) for a in arrays]))

    def _item(self, i):
        view = self._chunk(i).view()
        view.flags.writeable = False
        return view


class PackedStrings(_Reorderable):
    """A sequence of strings (file paths), held as one byte array; an item is decoded when it is read. Paths that
    are not valid UTF-8 come back unchanged (os.fsencode/os.fsdecode)."""

    @classmethod
    def pack(cls, strings):
        encoded = [os.fsencode(str(s)) for s in strings]
        data = np.frombuffer(b''.join(encoded), dtype=np.uint8).copy()
        return cls(data, _offsets([len(b) for b in encoded]))

    def _item(self, i):
        return os.fsdecode(self._chunk(i).tobytes())


class PackedImages(_Packed):
    """Decoded images of known shapes (h_i, w_i, 3) in one uint8 buffer, allocated whole before the first image
    is stored (the RAM image cache). Items are read-only views; None until stored."""

    def __init__(self, hw, channels=3):
        hw = np.asarray(hw, dtype=np.int64).reshape(-1, 2)
        super().__init__(None, _offsets(hw[:, 0] * hw[:, 1] * channels))
        self.hw, self.channels = hw, channels
        self.stored = np.zeros(len(hw), dtype=bool)

    def store(self, i, img):
        if img.shape != (*self.hw[i], self.channels):
            raise ValueError(f'image {i} has shape {img.shape}, expected {(*self.hw[i], self.channels)}')
        if self.data is None:
            self.data = np.empty(int(self.offsets[-1]), dtype=np.uint8)
        self.data[self.offsets[i]:self.offsets[i + 1]] = img.reshape(-1)
        self.stored[i] = True

    def _item(self, i):
        if not self.stored[i]:
            return None
        view = self._chunk(i).view().reshape(*self.hw[i], self.channels)
        view.flags.writeable = False
        return view

    @property
    def nbytes(self):
        return int(self.offsets[-1])
