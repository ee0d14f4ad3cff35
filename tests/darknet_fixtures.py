"""Darknet test fixtures judged by darknet itself: AlexeyAB's darknet (the darknet that trained and runs the YOLOv4 and
Scaled-YOLOv4 releases), its C code built CPU-only, run on .cfg/.weights pairs that this module makes.

Two kinds of case, all on one input (`judge_input()`: two coco8 images letterboxed to 128 x 128 as darknet does,
the exact tensor darknet saw, stored in tests/data/darknet/input.npz):
- READ_CASES: darknet's own cfgs with weights from `random_weights()` (seeded draws, batch norms calibrated on the
  input so that the outputs depend on it). The tests read the same weights with DarknetModel.
- WRITE_CASES: our YAML models (P5, P6, P7, CSP with random calibrated weights; the quick start's trained P5-tiny),
  written as darknet files by models/darknet_convert.py. The tests check that darknet's outputs of those files are
  the YAML model's own.

Each case's tests/data/darknet/<case>.npz holds darknet's decoded predictions (B, N, 5 + CLASSES_KEPT): x, y, w, h in
input pixels, objectness, class probabilities; rows by [yolo] layer, anchor, row, column) and `noise`: darknet's own
difference between its fused and unfused forward passes on the same files (xy px, wh relative, objectness, class),
its float32 noise floor, which the tests scale by NOISE_FACTOR for their tolerance.

Regenerate (needs the judge: a CPU build of github:AlexeyAB/darknet at DARKNET_COMMIT with its `dn_judge` driver
and `judge.py`):

    git clone https://github.com/AlexeyAB/darknet /tmp/darknet && git -C /tmp/darknet checkout DARKNET_COMMIT
    DARKNET_SRC=/tmp/darknet JUDGE_DIR/build.sh       # CPU-only, no AVX or OpenMP; about a minute
    python tests/darknet_fixtures.py JUDGE_DIR        # JUDGE_DIR holds judge.py; DN_JUDGE or DARKNET_DIR its binary

The build that made the stored outputs did not record its commit. DARKNET_COMMIT is the repository's newest
(2025-12-15); a build of it reproduces the stored read-yolov4-tiny and read-yolov4-p5 outputs within 0.01 and 0.12
of the tests' tolerance (not bit for bit: the compiler and CPU differ).

The weights are numpy draws from default_rng(seed) in module order, calibrated in float64 and rounded to float32, so
they are the same on every machine; only the input and darknet's outputs are stored.
"""
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from models.darknet import DarknetModel, save_darknet_weights  # noqa: E402
from models.darknet_convert import write_darknet  # noqa: E402
from models.yolo import Model  # noqa: E402

DATA = ROOT / 'tests' / 'data' / 'darknet'
CFGS = DATA / 'cfg'  # darknet's cfgs that models/ does not ship (YOLOv4, YOLOv4x-mish, the yolov4-csp branch's)
QUICKSTART = ROOT / 'tests' / 'data' / 'quickstart-p5-tiny.pt'
IMG, IMAGES = 128, ('000000000009.jpg', '000000000025.jpg')
SIZES = {128: 2, 256: 1}  # input size: images (P7 at 128 has a 1 x 1 level, whose 2 values calibrate nothing)
READ_CASES = ('yolov4-tiny', 'yolov4-csp', 'scaledyolov4-branch-yolov4-csp', 'yolov4', 'yolov4-p5', 'yolov4-p6',
              'yolov4x-mish')
WRITE_CASES = {'quickstart-p5-tiny': 128, 'yolov4-p5': 128, 'yolov4-p6': 128, 'yolov4-p7': 256, 'yolov4-csp': 128}
CLASSES_KEPT = 5
DARKNET_COMMIT = '59596d7880f6504768df41d6daa586f5cb2b932f'  # github:AlexeyAB/darknet master (see the docstring)
NOISE_FACTOR = 10  # tolerance: 10 x darknet's own fused-vs-unfused difference
NOISE_FLOORS = (1e-4, 1e-5, 1e-6, 1e-6)  # absolute floors of that tolerance (xy px, wh relative, objectness, class)
# AlexeyAB darknet's batch-norm epsilon, from its source (src/blas.c normalize_cpu: sqrt(variance + .00001f);
# src/network.c fuse_conv_batchnorm: sqrt(variance + .00001)), independent of models/darknet.py's BN_EPS
DARKNET_EPS = 1e-5
CALIBRATION_EPS = 1e-5  # the eps of the calibrating forward pass: fixed, so the weights do not follow BN_EPS


def read_case_cfg(name):
    """A READ_CASES cfg: models/ ships darknet's Scaled-YOLOv4 and tiny cfgs, tests/data/darknet/cfg the others."""
    shipped = ROOT / 'models' / f'{name}.cfg'
    return shipped if shipped.is_file() else CFGS / f'{name}.cfg'


def judge_input(img=IMG):
    """The (SIZES[img], 3, img, img) float32 input darknet saw: RGB in [0, 1], stored exactly as multiples of 1/510
    (pixels k/255 and the letterbox's 0.5)."""
    return (np.load(DATA / 'input.npz')[f'halves{img}'].astype(np.float32) / 510).astype(np.float32)


def encode_input(x):
    """judge_input()'s storage of x, checked to be exact."""
    halves = np.rint(x.astype(np.float64) * 510).astype(np.uint16)
    assert np.array_equal((halves.astype(np.float32) / 510).astype(np.float32), x), 'input not in steps of 1/510'
    return halves


def randomize(model, seed=0):
    """Seeded weights in module order: variance-preserving conv weights, conv biases ~0.1, batch-norm scales 0.5-1
    and shifts 0.5-1.5 (positive shifts keep a deep random net from amplifying float32 rounding: darknet's own noise
    floor on P6 is then 0.002 px instead of 0.4 px); the running statistics are left to calibrate()."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                w = m.weight
                w.copy_(torch.from_numpy(rng.standard_normal(w.shape) * np.sqrt(2.0 / w[0].numel())).float())
                if m.bias is not None:
                    m.bias.copy_(torch.from_numpy(rng.normal(0, 0.1, w.shape[0])).float())
            elif isinstance(m, nn.BatchNorm2d):
                m.bias.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, m.num_features)).float())
                m.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.0, m.num_features)).float())
    return model


def calibrate(model, x):
    """Every batch norm's running mean and variance set to those of its input over x (one training-mode pass with
    momentum 1 and a fixed eps), so that activations stay of order 1 through every layer. Returns model in eval.

    The pass runs in float64 and the statistics are then rounded to float32, so they are the same on every machine.
    In float32 they depended on the CPU's kernels (AVX2 and AVX-512 round differently): a P7 variance was off by up
    to 0.9% from its float64 value, which moved P7's objectness by 0.003, beyond the tolerance."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    kept = [(m.momentum, m.eps) for m in norms]
    for m in norms:
        m.momentum, m.eps = 1.0, CALIBRATION_EPS
    with torch.no_grad():
        model.double().train()(torch.from_numpy(x).double())
    model.float()
    for m, (momentum, eps) in zip(norms, kept):
        m.momentum, m.eps = momentum, eps
    return model.eval()


def random_weights(model, img=IMG, seed=0):
    """randomize() then calibrate() on judge_input(img)."""
    return calibrate(randomize(model, seed), judge_input(img))


def read_case_model(name):
    return random_weights(DarknetModel(read_case_cfg(name)))


def write_case_model(name):
    """The YAML model of a WRITE_CASES case, in eval mode: the quick start's trained weights, or random ones."""
    if name == 'quickstart-p5-tiny':
        return model_from_checkpoint(load_checkpoint(QUICKSTART), str(QUICKSTART)).float().eval()
    return random_weights(Model(f'{name}.yaml'), WRITE_CASES[name])


def predictions(model, img=IMG):
    """A model's decoded outputs on judge_input(img) in darknet_pred's layout: (B, N, 5 + CLASSES_KEPT) float64."""
    with torch.no_grad():
        z, _ = model.eval()(torch.from_numpy(judge_input(img)))
    return z[..., :5 + CLASSES_KEPT].double().numpy()


def differences(ours, darknet):
    """Largest differences per column group: xy (px), wh (relative), objectness, class probability."""
    d = np.abs(np.asarray(ours, np.float64) - np.asarray(darknet, np.float64))
    wh = d[..., 2:4] / np.maximum(np.abs(darknet[..., 2:4]), 1e-3)
    return np.array([d[..., :2].max(), wh.max(), d[..., 4].max(), d[..., 5:].max()])


def tolerance(noise):
    return np.maximum(NOISE_FACTOR * np.asarray(noise), NOISE_FLOORS)


# ---- regeneration (needs the judge) ----

def run_darknet(judge, cfg, weights, img, tmp):
    """darknet's predictions on judge_input(img), fused (as darknet runs for inference) and unfused, in
    darknet_pred's layout."""
    net_cfg, inp, x = Path(tmp) / 'net.cfg', Path(tmp) / 'input.bin', judge_input(img)
    judge.write_inference_cfg(str(cfg), str(net_cfg), img)
    x.tofile(inp)
    preds = []
    for extra in ([], ['nofuse']):
        raw = Path(tmp) / f'raw{len(preds)}.bin'
        subprocess.run([judge.DN_JUDGE, 'run', str(net_cfg), str(weights), str(inp), str(len(x)), str(img), str(img),
                        str(raw)] + extra, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        meta = judge.load_meta(str(raw) + '.json')
        preds.append(judge.decode_raw(judge.load_raw(str(raw), meta), meta)[..., :5 + CLASSES_KEPT])
    return preds


def store_case(judge, name, cfg, weights, img, tmp, ours):
    fused, unfused = run_darknet(judge, cfg, weights, img, tmp)
    noise = differences(unfused, fused)
    np.savez_compressed(DATA / f'{name}.npz', pred=fused, noise=noise, img=img)
    print(f'{name}: darknet {fused.shape}, noise {noise}, ours - darknet {differences(ours, fused)} '
          f'(tolerance {tolerance(noise)}), objectness std {fused[..., 4].std():.3f}')


def regenerate(judge_dir):
    sys.path.insert(0, str(judge_dir))
    import judge  # the judge's own helpers (cfg for inference, raw output decoding)
    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        images = [str(ROOT / 'data' / 'coco8' / 'images' / f) for f in IMAGES]
        np.savez_compressed(DATA / 'input.npz', **{f'halves{img}': encode_input(judge.make_input(tmp, img, n, images))
                                                   for img, n in SIZES.items()})
        for name in READ_CASES:
            model = read_case_model(name)
            weights = save_darknet_weights(model, Path(tmp) / 'net.weights')
            store_case(judge, f'read-{name}', read_case_cfg(name), weights, IMG, tmp, predictions(model))
        for name, img in WRITE_CASES.items():
            model = write_case_model(name)
            cfg, weights = write_darknet(model, Path(tmp) / 'w.cfg', Path(tmp) / 'w.weights', img_size=img)
            store_case(judge, f'write-{name}', cfg, weights, img, tmp, predictions(model, img))


if __name__ == '__main__':
    regenerate(sys.argv[1])
