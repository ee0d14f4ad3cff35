"""Training helpers: hyp files, class and image weights (and the --image-weights draw), RNG state capture,
hyperparameter mutation for --evolve."""
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from utils.errors import ArgumentError
from utils.sampling import epoch_rng

# hyperparameter: (mutation gain, lower limit, upper limit), as published
EVOLVE_META = {'lr0': (1, 1e-5, 1e-1), 'momentum': (0.1, 0.6, 0.98), 'weight_decay': (1, 0.0, 0.001),
               'giou': (1, 0.02, 0.2), 'cls': (1, 0.2, 4.0), 'cls_pw': (1, 0.5, 2.0), 'obj': (1, 0.2, 4.0),
               'obj_pw': (1, 0.5, 2.0), 'iou_t': (0, 0.1, 0.7), 'anchor_t': (1, 2.0, 8.0), 'fl_gamma': (0, 0.0, 2.0),
               'hsv_h': (1, 0.0, 0.1), 'hsv_s': (1, 0.0, 0.9), 'hsv_v': (1, 0.0, 0.9), 'degrees': (1, 0.0, 45.0),
               'translate': (1, 0.0, 0.9), 'scale': (1, 0.0, 0.9), 'shear': (1, 0.0, 10.0),
               'perspective': (1, 0.0, 0.001), 'flipud': (0, 0.0, 1.0), 'fliplr': (1, 0.0, 1.0),
               'mixup': (1, 0.0, 1.0)}
REQUIRED_HYP = ('lr0', 'momentum', 'weight_decay', 'giou', 'cls', 'cls_pw', 'obj', 'obj_pw', 'anchor_t', 'fl_gamma',
                'hsv_h', 'hsv_s', 'hsv_v', 'degrees', 'translate', 'scale', 'shear', 'perspective', 'flipud',
                'fliplr', 'mixup')


def load_hyp(path):
    """The hyperparameters of a hyp yaml; a missing key of the published recipe is an error naming it."""
    try:
        with open(path) as f:
            hyp = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ArgumentError(f'hyp yaml {path} is not valid YAML: {" ".join(str(e).split())}') from None
    missing = [k for k in REQUIRED_HYP if not isinstance(hyp, dict) or k not in hyp]
    if missing:
        raise ArgumentError(f'hyp yaml {path} lacks {", ".join(missing)} (see data/hyp.scratch.yaml)')
    if 'bn_momentum' in hyp and not (isinstance(hyp['bn_momentum'], (int, float)) and 0 < hyp['bn_momentum'] <= 1):
        raise ArgumentError(f'hyp yaml {path}: bn_momentum {hyp["bn_momentum"]} must be above 0 and at most 1')
    return hyp


def class_weights_from_labels(labels, nc=80):
    """Inverse class frequency, normalised to sum 1 (classes without labels count as 1)."""
    classes = np.concatenate([x[:, 0] for x in labels if len(x)] or [np.zeros(0)]).astype(int)
    weights = np.bincount(classes, minlength=nc).astype(np.float64)
    weights[weights == 0] = 1
    weights = 1 / weights
    return torch.from_numpy(weights / weights.sum()).float()


def image_weights_from_labels(labels, nc=80, class_weights=None):
    """Sampling weight of each image: the sum of its labels' class weights."""
    cw = np.ones(nc) if class_weights is None else np.asarray(class_weights)
    counts = np.array([np.bincount(x[:, 0].astype(int), minlength=nc) for x in labels])
    return (cw.reshape(1, nc) * counts).sum(1) + 1e-9


def image_order(dataset, class_weights, maps, seed, epoch, rank, device):
    """--image-weights: the images drawn for this epoch's positions by class weights (rank 0 draws from
    (seed, epoch) and the last per-class mAPs, which only it has; the others receive the draw)."""
    nc = len(class_weights)
    images = [0] * dataset.n
    if rank in (-1, 0):
        w = class_weights * (1 - np.asarray(maps if maps is not None else np.zeros(nc))) ** 2
        images = epoch_rng(seed, epoch).choices(range(dataset.n), k=dataset.n,
                                                weights=image_weights_from_labels(dataset.labels, nc, w))
    if rank != -1:
        order = torch.tensor(images, device=device)
        dist.broadcast(order, 0)
        images = order.cpu().tolist()
    return images


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


def mutate_hyp(hyp, evolve_file, keys, seed=0):
    """hyp mutated from the best earlier generations in evolve_file (or hyp itself for the first one)."""
    rng = np.random.default_rng(seed)
    hyp = dict(hyp)
    path = Path(evolve_file)
    if path.exists() and path.stat().st_size:
        x = np.loadtxt(path, ndmin=2)
        n = min(5, len(x))
        from utils.metrics import fitness
        x = x[np.argsort(-fitness(x))][:n]
        w = fitness(x) - fitness(x).min() + 1e-6
        parent = x[rng.choice(n, p=w / w.sum())]
        g = np.array([EVOLVE_META[k][0] for k in keys])
        v = np.ones(len(keys))
        while (v == 1).all():
            v = (g * (rng.random(len(keys)) < 0.8) * rng.standard_normal(len(keys)) * rng.random() * 0.2 + 1)
            v = v.clip(0.3, 3.0)
        for i, k in enumerate(keys):
            hyp[k] = float(parent[i + 7] * v[i])
    for k in keys:
        _, lo, hi = EVOLVE_META[k]
        hyp[k] = round(min(max(hyp[k], lo), hi), 5)
    return hyp
