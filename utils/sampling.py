"""The order of training samples and their random numbers, derived from (seed, epoch, position) alone.

A training run is reproducible and resumable at any batch when nothing it draws depends on how it was run:
- `EpochSampler` gives epoch e's order from (seed, e) (the permutation of torch's DistributedSampler, split
  over the ranks), can start at any position of an epoch, and hands each sample's key to the data-loader
  workers: `SampleKey(epoch, index, image)`.
- `seed_sample` seeds `random` and `np.random` for one sample from (seed, epoch, index) before its
  augmentations draw, so the images are the same for any number of loader workers, any scheduling of them,
  and after a resume.
- `batch_rng` gives the main process's per-batch draws (multi-scale sizes) from (seed, epoch, batch, rank).

The published code seeded each loader worker once, so its augmentations depended on the worker count and on
which worker took which batch (docs/fidelity.md).
"""
import random
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Sampler


class SampleKey(NamedTuple):
    """What a training loader asks its dataset for: `image` at position `index` of `epoch`."""
    epoch: int
    index: int  # position in the epoch's order (unique within an epoch; seeds the sample's augmentation)
    image: int  # dataset index of the image (index itself, or the image drawn there by --image-weights)


def _entropy(*values):
    return np.random.SeedSequence([int(v) for v in values]).generate_state(4)


def seed_sample(seed, epoch, index):
    """Seed `random` and `np.random` for the sample at `index` of `epoch` (about 20 us)."""
    state = _entropy(seed, epoch, index)
    random.seed(int(state[0]) << 32 | int(state[1]))
    np.random.seed(state)


def batch_rng(seed, epoch, batch, rank):
    """A `random.Random` for the main process's draws of one batch (multi-scale size) on one rank."""
    state = _entropy(seed, epoch, batch, max(rank, 0), 1 << 20)
    return random.Random(int(state[0]) << 32 | int(state[1]))


def epoch_rng(seed, epoch):
    """A `random.Random` for the draws made once per epoch (--image-weights)."""
    state = _entropy(seed, epoch, 1 << 21)
    return random.Random(int(state[0]) << 32 | int(state[1]))


class EpochSampler(Sampler):
    """Training order: epoch e is a permutation seeded by seed + e (DistributedSampler's, padded to a multiple
    of the world size and split by rank), or 0..n-1 without shuffle.

    set_epoch(e, start, images) selects the epoch, skips this rank's first `start` samples (a resume inside
    the epoch) and maps positions to images (--image-weights). Yields SampleKey.
    """

    def __init__(self, n, shuffle=True, seed=0, rank=-1, world_size=1):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size = max(rank, 0), max(world_size, 1)
        self.num_samples = -(-n // self.world_size)  # per rank, padded as DistributedSampler pads
        self.epoch, self.start, self.images = 0, 0, None

    def set_epoch(self, epoch, start=0, images=None):
        self.epoch, self.start, self.images = epoch, start, images

    def order(self, epoch):
        """This rank's positions of `epoch`, from its first sample."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            positions = torch.randperm(self.n, generator=g).tolist()
        else:
            positions = list(range(self.n))
        total = self.num_samples * self.world_size
        while len(positions) < total:  # pad with the first positions again
            positions += positions[:total - len(positions)]
        return positions[self.rank:total:self.world_size]

    def __iter__(self):
        for index in self.order(self.epoch)[self.start:]:
            yield SampleKey(self.epoch, index, index if self.images is None else self.images[index])

    def __len__(self):
        return self.num_samples
