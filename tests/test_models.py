"""Model core: exact architectures of the released models, fuse, FLOPs, TTA, YAML parser errors."""
import logging
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, tiny_cfg
from models.common import Conv
from models.yolo import ConfigError, Model
from utils.torch_utils import count_flops

RELEASED = {  # cfg: (parameters, state_dict entries, strides, GFLOPs, test size), as the released models
    'yolov4-p5': (70_834_012, 943, [8, 16, 32], 326.6, 896),
    'yolov4-p6': (127_590_576, 1186, [8, 16, 32, 64], 717.0, 1280),
    'yolov4-p7': (287_575_580, 1429, [8, 16, 32, 64, 128], 1636.7, 1536),
    'yolov4-csp': (52_924_765, 660, [8, 16, 32], 120.2, 640),
}


def _listing(cfg):
    """Every state_dict key and shape of the released model (tests/data/state_dict/<cfg>.txt, nc=80)."""
    path = ROOT / 'tests' / 'data' / 'state_dict' / f'{cfg}.txt'
    rows = [line.split() for line in path.read_text().splitlines() if line and not line.startswith('#')]
    return [(k, s) for k, s in rows]


@pytest.mark.parametrize('cfg', list(RELEASED))
def test_architecture_matches_release(cfg):
    params, entries, strides, gflops, size = RELEASED[cfg]
    model = Model(ROOT / 'models' / f'{cfg}.yaml')
    sd = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(sd) == entries
    mine = [(k, 'x'.join(map(str, v.shape)) if v.dim() else 'scalar') for k, v in sd.items()]
    assert mine == _listing(cfg)
    assert model.stride.tolist() == strides
    assert abs(count_flops(model, size) - gflops) / gflops < 0.01
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.03 for m in bns)


def test_anchors_and_bias_priors():
    model = Model(tiny_cfg('yolov4-p5'))
    det = model.model[-1]
    assert det.anchors.shape == (3, 4, 2) and det.anchor_grid.shape == (3, 1, 4, 1, 1, 2)
    assert torch.allclose(det.anchors[0, 0], torch.tensor([13 / 8, 17 / 8]))  # grid units
    assert torch.allclose(det.anchor_grid[2, 0, 3, 0, 0], torch.tensor([800., 800.]))  # pixels
    b = det.m[0].bias.view(det.na, -1)
    import math
    # default conv bias init is U(-1/sqrt(fan_in), ..): the prior dominates
    assert abs(b[:, 4].mean().item() - math.log(8 / (640 / 8) ** 2)) < 0.5
    assert abs(b[:, 5:].mean().item() - math.log(0.6 / (80 - 0.99))) < 0.5


@pytest.mark.parametrize('cfg,size', [('yolov4-p5', 64), ('yolov4-p6', 128), ('yolov4-p7', 128), ('yolov4-csp', 96)])
def test_forward_shapes(cfg, size):
    model = Model(tiny_cfg(cfg, nc=3))
    x = torch.rand(2, 3, size, size + model.stride.max().int().item())
    h, w = x.shape[2:]
    model.train()
    out = model(x)
    assert len(out) == len(model.stride)
    for o, s in zip(out, model.stride.tolist()):
        assert o.shape == (2, model.model[-1].na, h // int(s), w // int(s), 8)
    model.eval()
    with torch.no_grad():
        pred, raw = model(x)
    n = sum(model.model[-1].na * (h // int(s)) * (w // int(s)) for s in model.stride.tolist())
    assert pred.shape == (2, n, 8) and len(raw) == len(model.stride)
    assert (pred[..., 2:4] > 0).all() and ((pred[..., 4:] >= 0) & (pred[..., 4:] <= 1)).all()


def test_fuse_parity():
    torch.manual_seed(0)
    model = Model(tiny_cfg('yolov4-p5', nc=5))
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        y0 = model(x)[0]
        model.fuse()
        y1 = model(x)[0]
    assert not any(isinstance(m.bn, torch.nn.BatchNorm2d) for m in model.modules() if type(m) is Conv)
    assert torch.allclose(y0, y1, rtol=1e-4, atol=1e-4 * y0.abs().max().item())


def test_float16_model_decodes_boxes_in_float32():
    """Half-precision logits, decoded without float16's 1-pixel steps above 1024 (P7 at 1536)."""
    from models.yolo import Detect
    torch.manual_seed(0)
    head = Detect(nc=1, anchors=([10, 13, 16, 30, 33, 23],), ch=(8,)).eval().half()
    head.stride = torch.tensor([32.])
    with torch.no_grad():
        out, (raw,) = head([torch.randn(1, 8, 48, 48).half()])  # 48 x 32 = 1536 px
    assert out.dtype == torch.float32 and raw.dtype == torch.float16
    y = raw.double().sigmoid()
    gy, gx = torch.meshgrid(torch.arange(48.), torch.arange(48.), indexing='ij')
    xy = (y[..., :2] * 2 - 0.5 + torch.stack((gx, gy), -1).double()) * 32
    assert xy.max() > 1400
    assert (out[..., :2] - xy.view(1, -1, 2)).abs().max() < 1e-3


def test_tta_output():
    model = Model(tiny_cfg('yolov4-p5', nc=2)).eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        y, train_out = model(x, augment=True)
        y1 = model(x)[0]
    assert train_out is None
    # scale 1 output comes first, unchanged; 0.83 and 0.67 are padded to multiples of 128
    assert torch.equal(y[:, :y1.shape[1]], y1)
    n = lambda s: sum(4 * (s // k) ** 2 for k in (8, 16, 32))  # noqa: E731
    assert y.shape[1] == n(128) * 3


def test_nc_override_logs(caplog):
    with caplog.at_level(logging.INFO):
        model = Model(tiny_cfg('yolov4-p5'), nc=7)
    assert model.nc == 7 and model.model[-1].no == 12
    assert 'Overriding' in caplog.text and 'nc=7' in caplog.text


def test_unknown_module_names_row():
    d = tiny_cfg('yolov4-p5')
    d['head'][3] = [-6, 1, 'Evil', [256, 1, 1]]
    with pytest.raises(ConfigError, match=r"row 14: unknown module 'Evil'"):
        Model(d)


def test_unknown_argument_name_names_row():
    d = tiny_cfg('yolov4-p5')
    d['backbone'][0] = [-1, 1, 'Conv', ['__import__("os").system("true")', 3, 1]]
    with pytest.raises(ConfigError, match=r'row 0: unknown argument name'):
        Model(d)


def test_bad_from_index_names_row():
    d = tiny_cfg('yolov4-p5')
    d['head'][4] = [[-1, 40], 1, 'Concat', [1]]
    with pytest.raises(ConfigError, match=r'row 15: from index 40'):
        Model(d)


def test_yolo_script_prints_table():
    r = subprocess.run([sys.executable, 'models/yolo.py', '--cfg', 'yolov4-csp.yaml'], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert 'from' in out and 'params' in out and 'arguments' in out
    assert 'models.yolo.Detect' in out and 'models.common.SPPCSP' in out
    assert '52,924,765 parameters' in out and '120.2 GFLOPs' in out
