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
from models.darknet_convert import write_darknet  # noqa: E402
from models.yolo import Model  # noqa: E402

DATA = ROOT / 'tests' / 'data' / 'darknet'
CASES = {'yolov4-tiny': 128, 'yolov4-csp': 128, 'yolov4-p5': 128, 'yolov4-p6': 128}
YAML_CASES = {'yolov4-p5-tiny': 128, 'yolov4-csp': 128}  # our YAML models, written by models/darknet_convert.py
CLASSES_KEPT = 5
OPENCV_THRESHOLD = 0.2  # OpenCV's yolo layer zeroes class scores (objectness x class) below this


def randomize(model, seed=0):
    """Variance-preserving conv weights; BatchNorm scales 0.5-1, shifts ~0.1, means ~0.1, variances 0.5-1.5, so
    that activations stay of order 1 through every layer and the outputs depend on the input."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for m in model.model:
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


def randomize_yaml(model, seed=0):
    """randomize() for a YAML Model: the same draws per conv weight, conv bias and batch norm, in module order."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                w = m.weight
                w.copy_(torch.from_numpy(rng.standard_normal(w.shape) * np.sqrt(2.0 / w[0].numel())).float())
                if m.bias is not None:
                    m.bias.copy_(torch.from_numpy(rng.normal(0, 0.1, w.shape[0])).float())
            elif isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.bias.copy_(torch.from_numpy(rng.normal(0, 0.1, n)).float())
                m.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.0, n)).float())
                m.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.1, n)).float())
                m.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, n)).float())
    return model.eval()


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
    """Run the judge on every case and store its outputs in DATA: darknet's cfgs (CASES) as `name.npz`, our YAML
    models written as darknet files (YAML_CASES) as `yaml-name.npz`."""
    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, size in CASES.items():
            cfg, weights = Path(tmp) / f'{name}.cfg', Path(tmp) / f'{name}.weights'
            cfg.write_text((Path(cfg_dir) / f'{name}.cfg').read_text())
            save_darknet_weights(randomize(DarknetModel(cfg)), weights)
            judge(judge_python, cfg, weights, size, DATA / f'{name}.npz')
        for name, size in YAML_CASES.items():
            cfg, weights = Path(tmp) / f'yaml-{name}.cfg', Path(tmp) / f'yaml-{name}.weights'
            write_darknet(randomize_yaml(Model(f'{name}.yaml')), cfg, weights, img_size=size)
            judge(judge_python, cfg, weights, size, DATA / f'yaml-{name}.npz')


def judge(judge_python, cfg, weights, size, dst):
    """The judge's yolo outputs for cfg + weights on judge_input(size), stored in dst (the first columns)."""
    blob, out = Path(weights).with_suffix('.npy'), Path(weights).with_suffix('.npz')
    np.save(blob, judge_input(size))
    subprocess.run([str(judge_python), str(ROOT / '.ci' / 'darknet-judge.py'), str(cfg), str(weights), str(blob),
                    str(out)], check=True)
    judged = np.load(out)
    layers = sorted(k for k in judged.files if k.startswith('yolo'))
    np.savez_compressed(dst, opencv=judged['opencv'], size=size,
                        **{k: judged[k].reshape(-1, judged[k].shape[-1])[:, :5 + CLASSES_KEPT] for k in layers})
    print(f'{dst.name}: {len(layers)} yolo layers judged by OpenCV {judged["opencv"]}')


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
