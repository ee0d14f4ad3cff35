"""Released weights one flag away: downloads from a local HTTP server (complete, resumed or retried, truncated,
offline) and the torch.hub entry points. Nothing here touches the internet."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from test_checkpoints import _released_checkpoint


def _closed_port_url():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return f'http://127.0.0.1:{s.getsockname()[1]}'


def test_release_name_is_downloaded_and_loads(tmp_path, server, monkeypatch):
    from models.experimental import attempt_load
    url, served = server
    image, published = _released_checkpoint(served / 'yolov4-p5.pt')  # made by the published code
    monkeypatch.setenv('YOLO_WEIGHTS_MIRROR', url)
    dst = tmp_path / 'weights' / 'yolov4-p5.pt'
    model = attempt_load(dst)
    assert dst.read_bytes() == (served / 'yolov4-p5.pt').read_bytes() and not list(dst.parent.glob('*.part'))
    with torch.no_grad():
        y = model(torch.from_numpy(image).float() / 255)[0].numpy()
    np.testing.assert_allclose(y[..., :4], published[..., :4], rtol=0, atol=2e-3)  # the published model's outputs
    np.testing.assert_allclose(y[..., 4:], published[..., 4:], rtol=0, atol=1e-5)


def test_partial_file_is_resumed_or_retried(tmp_path, server, monkeypatch):
    from models.checkpoint import load_checkpoint
    url, served = server
    _released_checkpoint(served / 'yolov4-p5_.pt')
    data = (served / 'yolov4-p5_.pt').read_bytes()
    dst = tmp_path / 'yolov4-p5_.pt'
    (tmp_path / 'yolov4-p5_.pt.part').write_bytes(data[:len(data) // 3])  # left by an interrupted download
    monkeypatch.setenv('YOLO_WEIGHTS_MIRROR', url)
    load_checkpoint(dst)
    assert dst.read_bytes() == data and not (tmp_path / 'yolov4-p5_.pt.part').exists()


def test_download_of_another_model_is_refused(tmp_path, server, monkeypatch):
    from models.checkpoint import CheckpointError, load_checkpoint
    url, served = server
    _released_checkpoint(served / 'yolov4-p7.pt', family='p6')  # a (P6) model under the P7 name: a wrong link
    monkeypatch.setenv('YOLO_WEIGHTS_MIRROR', url)
    with pytest.raises(CheckpointError, match='4 output levels, not the 5 of yolov4-p7.pt'):
        load_checkpoint(tmp_path / 'yolov4-p7.pt')
    assert not list(tmp_path.glob('yolov4-p7.pt*'))


def test_truncated_download_is_refused(tmp_path, server, monkeypatch):
    from models.checkpoint import CheckpointError, load_checkpoint
    url, served = server
    _released_checkpoint(tmp_path / 'full.pt')
    data = (tmp_path / 'full.pt').read_bytes()
    (served / 'yolov4-p7.pt').write_bytes(data[:len(data) // 2])  # the server itself has a cut file
    monkeypatch.setenv('YOLO_WEIGHTS_MIRROR', url)
    dst = tmp_path / 'w' / 'yolov4-p7.pt'
    with pytest.raises(CheckpointError, match=r'yolov4-p7.pt: the downloaded file is not a usable checkpoint .*'
                                              rf'put it at {dst}'):
        load_checkpoint(dst)
    assert not dst.exists() and not list(dst.parent.glob('*.part'))


def test_offline_download_is_one_line(tmp_path):
    env = dict(os.environ, YOLO_WEIGHTS_MIRROR=_closed_port_url())
    dst = tmp_path / 'yolov4-p5.pt'
    r = subprocess.run([sys.executable, 'detect.py', '--weights', str(dst), '--device', 'cpu', '--project',
                        str(tmp_path / 'runs')], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith('detect.py: error:')]
    assert len(lines) == 1 and 'download from' in lines[0] and 'fetch it by hand from https://github.com/' in lines[0]
    assert f'put it at {dst}' in lines[0] and not dst.exists() and not (tmp_path / 'runs').exists()


def test_hub_local_model_detects_in_original_pixels():
    import cv2
    model = torch.hub.load(str(ROOT), 'yolov4_p5', source='local', pretrained=False, classes=3, device='cpu')
    head = model.model.model[-1]
    for conv in head.m:  # a confident class 1 everywhere, so there are boxes to check
        conv.bias.view(head.na, -1)[:, 4] = 8.0
        conv.bias.view(head.na, -1)[:, 6] = 8.0
    path = ROOT / 'data' / 'coco8' / 'images' / '000000000009.jpg'
    h, w = cv2.imread(str(path)).shape[:2]
    det = model(str(path), size=128)
    assert det.shape[1] == 6 and len(det) > 0 and (det[:, 5] == 1).all()
    assert det[:, [0, 2]].max() <= w and det[:, [1, 3]].max() <= h and det[:, :4].min() >= 0
    both = model([str(path), cv2.imread(str(path))[..., ::-1]], size=128)  # path and RGB array: same result
    assert torch.equal(both[0], both[1]) and torch.equal(both[0], det)
    assert len(model.names) == 3


def test_hub_pretrained_offline_is_one_line(tmp_path):
    code = ('import torch; torch.hub.load(".", "yolov4_p6", source="local", pretrained=True)')
    env = dict(os.environ, YOLO_WEIGHTS_MIRROR=_closed_port_url())
    weights = ROOT / 'weights' / 'yolov4-p6.pt'
    if weights.exists():
        pytest.skip(f'{weights} is on disk, so nothing would be downloaded')
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().count('\n') == 0 and r.stderr.startswith('hubconf: error: yolov4-p6.pt is not on disk')
