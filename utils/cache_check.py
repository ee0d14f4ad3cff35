"""Checks before --cache-images: the bytes the cache will take, against the memory or disk there is.

The bytes are exact, not sampled: each image is cached at its size after the resize to the training size (the
longer side img_size, 3 channels, uint8), and the label scan knows every image's original size. In RAM every
training process of a node holds its own copy (DDP: LOCAL_WORLD_SIZE of them). The cache must fit in 80% of the
memory available (MemAvailable, or the cgroup's limit where that is lower), leaving the rest to training. On
disk, .npy files go next to the images: the ones not yet written must fit in the free space there.
"""
import os
import shutil
from pathlib import Path

import numpy as np

from utils.errors import UserError

RAM_FRACTION = 0.8  # of the memory available; the rest is for the model, the loaders and the evaluation
NPY_HEADER = 128  # bytes of an .npy file's header


class CacheTooLarge(UserError):
    """The image cache does not fit; the message gives the numbers and the alternative."""


def resized_hw(shapes, img_size):
    """(n, 2) int64 (height, width) of each image resized so that its longer side is img_size, as
    LoadImagesAndLabels resizes it: shapes is (n, 2) of (width, height)."""
    wh = np.asarray(shapes, dtype=np.float64).reshape(-1, 2)
    r = img_size / wh.max(1)
    return np.stack([(wh[:, 1] * r).astype(np.int64), (wh[:, 0] * r).astype(np.int64)], 1)


def resized_bytes(shapes, img_size):
    """Bytes of each image resized so that its longer side is img_size (3 channels, uint8)."""
    hw = resized_hw(shapes, img_size)
    return hw[:, 0] * hw[:, 1] * 3


def available_memory():
    """Bytes of memory available to this process: /proc/meminfo's MemAvailable, capped by a cgroup v2 limit; None
    where neither can be read."""
    found = []
    try:
        for line in Path('/proc/meminfo').read_text().splitlines():
            if line.startswith('MemAvailable:'):
                found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        limit = Path('/sys/fs/cgroup/memory.max').read_text().strip()
        if limit != 'max':
            found.append(int(limit) - int(Path('/sys/fs/cgroup/memory.current').read_text()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def free_disk(path):
    return shutil.disk_usage(path).free


def local_processes(rank):
    """The processes of this node that each cache a copy: the training loader's, one per local rank under DDP."""
    return int(os.environ.get('LOCAL_WORLD_SIZE', 1)) if rank != -1 else 1


def _gb(n):
    return f'{n / 1e9:.1f} GB' if n >= 1e9 else f'{n / 1e6:.1f} MB' if n >= 1e6 else f'{n / 1e3:.1f} kB'


def check_image_cache(mode, shapes, img_size, rank=-1, npy_files=None, prefix=''):
    """Raise CacheTooLarge, before anything is cached, when --cache-images `mode` ('ram' or 'disk') does not fit."""
    sizes = resized_bytes(shapes, img_size)
    each, n = int(sizes.sum()), len(sizes)
    if mode == 'ram':
        procs, available = local_processes(rank), available_memory()
        need = each * procs
        if available is None or need <= RAM_FRACTION * available:
            return
        copies = f'{procs} processes on this node x {_gb(each)}' if procs > 1 else 'one process'
        raise CacheTooLarge(f'{prefix}--cache-images ram: {n} images at {img_size} take {_gb(need)} in memory '
                            f'({copies}), more than {RAM_FRACTION:.0%} of the {_gb(available)} available: cache them '
                            f'on disk with --cache-images disk ({_gb(each)} next to the images), or train without '
                            f'--cache-images')
    missing = [i for i, f in enumerate(npy_files) if not Path(f).exists()]
    need = int(sizes[missing].sum()) + NPY_HEADER * len(missing)
    if not missing:
        return
    folder = Path(npy_files[missing[0]]).parent
    free = free_disk(folder)
    if need > free:
        raise CacheTooLarge(f'{prefix}--cache-images disk: {len(missing)} images at {img_size} take {_gb(need)} on '
                            f'the disk of {folder} (next to the images), more than its {_gb(free)} free: free space '
                            f'there, or train without --cache-images (or with --cache-images ram)')
