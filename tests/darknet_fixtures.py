"""Darknet test fixtures: random .weights with realistic BatchNorm statistics, a deterministic input, and the
outputs that an independent judge (OpenCV 4.x's darknet importer, .ci/darknet-judge.py) computed from them.

Regenerate tests/data/darknet/ from the cfgs in models/ (needs an OpenCV 4.x; this makes a venv with it, from
the package index pip is configured with):

    python tests/darknet_fixtures.py

The weights are numpy's default_rng(seed) draws in file order, so they are the same on every machine; only the
judge's outputs are stored (columns x, y, w, h, objectness and the first CLASSES_KEPT class scores).
"""
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.darknet import DarknetConv, DarknetModel, save_darknet_weights  # noqa: E402

DATA = ROOT / 'tests' / 'data' / 'darknet'
CASES = {'yolov4-tiny': 128, 'yolov4-csp': 128, 'yolov4-p5': 128, 'yolov4-p6': 128}
CLASSES_KEPT = 5
OPENCV_THRESHOLD = 0.2  # OpenCV's yolo layer zeroes class scores (objectness x class) below this


def randomize(model, seed=0):
    """Variance-preserving conv weights; BatchNorm scales 0.5-1, shifts ~0.1, means ~0.1, variances 0.5-1.5, so
    that activations stay of order 1 through every layer and the outputs depend on the input."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for m in model.layers:
            if not isinstance(m, DarknetConv):
                continue
            w = m.conv.weight
            w.copy_(torch.from_numpy(rng.standard_normal(w.shape) * np.sqrt(2.0 / w[0].numel())).float())
            n = w.shape[0]
            if isinstance(m.bn, torch.nn.BatchNorm2d):
                m.bn.bias.copy_(torch.from_numpy(rng.normal(0, 0.1, n)).float())
                m.bn.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.0, n)).float())
                m.bn.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.1, n)).float())
                m.bn.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, n)).float())
            else:
                m.conv.bias.copy_(torch.from_numpy(rng.normal(0, 0.1, n)).float())
    return model


def judge_input(size, seed=1):
    """A (1, 3, size, size) float32 image in [0, 1]: random 8x8-pixel blocks, deterministic."""
    coarse = np.random.default_rng(seed).uniform(0, 1, (1, 3, size // 8, size // 8)).astype(np.float32)
    return np.ascontiguousarray(coarse.repeat(8, axis=2).repeat(8, axis=3))


def judge_layout(z, raw):
    """Our decoded output (1, n, 5 + nc) in OpenCV's layout: per yolo layer, rows cell by cell (y, x) and anchor
    within a cell, boxes normalised by the input size, class scores multiplied by objectness."""
    out, offset = [], 0
    for r in raw:
        bs, na, ny, nx, no = r.shape
        n = na * ny * nx
        y = z[:, offset:offset + n].view(bs, na, ny, nx, no).permute(0, 2, 3, 1, 4).reshape(-1, no).clone()
        offset += n
        out.append(y)
    return out


def regenerate(cfg_dir, judge_python):
    """Run the judge on every case and store its outputs in DATA."""
    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, size in CASES.items():
            cfg = Path(cfg_dir) / f'{name}.cfg'
            model = randomize(DarknetModel(cfg))
            weights, blob, out = (Path(tmp) / f'{name}{ext}' for ext in ('.weights', '.npy', '.npz'))
            save_darknet_weights(model, weights)
            np.save(blob, judge_input(size))
            subprocess.run([str(judge_python), str(ROOT / '.ci' / 'darknet-judge.py'), str(cfg), str(weights),
                            str(blob), str(out)], check=True)
            judged = np.load(out)
            layers = sorted(k for k in judged.files if k.startswith('yolo'))
            np.savez_compressed(DATA / f'{name}.npz', opencv=judged['opencv'], size=size,
                                **{k: judged[k].reshape(-1, judged[k].shape[-1])[:, :5 + CLASSES_KEPT]
                                   for k in layers})
            print(f'{name}: {len(layers)} yolo layers judged by OpenCV {judged["opencv"]}')


def judge_environment(where):
    """A venv with numpy and opencv-python-headless<5 (the last OpenCV with the darknet importer)."""
    where = Path(where)
    python = where / 'bin' / 'python'
    if not python.exists():
        venv.create(where, with_pip=True)
        subprocess.run([str(python), '-m', 'pip', 'install', '-q', 'numpy', 'opencv-python-headless<5'], check=True)
    return python


if __name__ == '__main__':
    regenerate(ROOT / 'models', judge_environment(Path(tempfile.gettempdir()) / 'darknet-judge-venv'))
