"""Model ensembles and checkpoint loading for inference (test.py, detect.py, export)."""
import logging

import torch
import torch.nn as nn

from models.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from models.backends import export_kind, load_exported
from models.darknet_convert import load_darknet_model

LOGGER = logging.getLogger(__name__)


class Ensemble(nn.ModuleList):
    """Several models whose decoded inference outputs are averaged (same levels and anchors per level)."""

    def forward(self, x, augment=False):
        y = [module(x, augment)[0] for module in self]
        shapes = {tuple(t.shape) for t in y}
        if len(shapes) > 1:
            raise RuntimeError(f'ensemble members give outputs of different shapes {sorted(shapes)}: '
                               'only models with the same levels and anchors per level can be averaged')
        return torch.stack(y).mean(0), None


def attempt_load(weights, map_location=None, cfg=None):
    """Load one weights file, or several as an Ensemble: float32, fused, eval mode, with names and stride.

    Reads released checkpoints and the project's own (models/checkpoint.py), never running code from the file,
    darknet .weights (models/darknet.py) with their `cfg` (default: the cfg of the same name in models/), and
    exported models (TorchScript, ONNX, OpenVINO: models/backends.py), which run on the CPU.
    """
    files = weights if isinstance(weights, (list, tuple)) else [weights]
    if not files:
        raise CheckpointError('no weights file given')
    model = Ensemble()
    for w in files:
        if export_kind(w):
            m = load_exported(w)
        elif str(w).endswith('.weights'):
            m = load_darknet_model(w, cfg).to(map_location or 'cpu')
        else:
            # rebuilt on the CPU from its state_dict, then moved (test.py --device 0 once ran a CPU model)
            m = model_from_checkpoint(load_checkpoint(w, map_location='cpu'), path=w).to(map_location or 'cpu')
        model.append(m.float().fuse().eval())
    for m in model:
        for p in m.parameters():
            p.requires_grad_(False)
    if len(model) == 1:
        return model[-1]
    LOGGER.info('Ensemble created with %s', list(files))
    names = [list(m.names) for m in model]
    if any(n != names[0] for n in names):
        raise CheckpointError(f'ensemble members {list(files)} have different class names')
    model.names = names[0]
    model.nc = model[-1].nc
    model.stride = max((m.stride for m in model), key=lambda s: float(s.max()))
    return model
