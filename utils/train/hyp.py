"""Hyperparameters: the hyp yaml's reading and checking, and their mutation for --evolve."""
from pathlib import Path

import numpy as np
import yaml

from utils.errors import ArgumentError

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
