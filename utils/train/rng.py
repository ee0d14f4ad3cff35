"""The random number generators' states, as plain data for a checkpoint, and their restoration on resume."""
import random

import numpy as np
import torch


def rng_state():
    """All RNG states as plain data (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    return {'python': random.getstate(), 'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}


def set_rng_state(state, rank=-1):
    if not state:
        return
    random.setstate(state['python'])
    torch.set_rng_state(state['torch'])
    if state.get('cuda') and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])
    kind, keys, *rest = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if rank > 0:  # other ranks must not replay rank 0's augmentation stream
        random.seed(random.random() + rank)
        np.random.seed((np.random.randint(2 ** 31) + rank) % 2 ** 32)
