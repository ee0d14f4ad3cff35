"""What a new user meets in the first hour: every script says what it did and writes only where it was told,
the confusion matrix shows missed objects, export without onnx (--help: tests/test_second_hour.py)."""
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from conftest import COCO8_YAML, ROOT, tiny_cfg
from models.checkpoint import model_payload, save_checkpoint, strip_optimizer
from models.yolo import Model



def _weights(path, obj_bias):
    torch.manual_seed(0)
    model = Model(tiny_cfg('yolov4-p5', nc=80))
    for conv in model.model[-1].m:
        conv.bias.detach().view(model.model[-1].na, -1)[:, 4] = obj_bias
    model.names = yaml.safe_load(COCO8_YAML.read_text())['names']
    save_checkpoint({'model': model_payload(model)}, path)
    return path


def test_test_from_python_writes_nothing_without_save_dir(tmp_path, monkeypatch):
    import test as test_script
    w = _weights(tmp_path / 'w.pt', obj_bias=2.0)
    work = tmp_path / 'cwd'
    work.mkdir()
    monkeypatch.chdir(work)
    res, _, _ = test_script.test(str(COCO8_YAML), str(w), batch_size=4, imgsz=64, device='cpu', workers=0)
    assert len(res) == 7 and not any(work.iterdir())  # no confusion_matrix.png or test_batch*.jpg here
    from utils.errors import ArgumentError
    with pytest.raises(ArgumentError, match='need a save_dir'):
        test_script.test(str(COCO8_YAML), str(w), imgsz=64, device='cpu', save_json=True)


def test_confusion_matrix_counts_objects_of_images_without_detections(tmp_path, monkeypatch):
    import test as test_script
    from utils.metrics import ConfusionMatrix
    seen = {}
    monkeypatch.setattr(ConfusionMatrix, 'plot', lambda self, save_dir, names: seen.update(matrix=self.matrix.copy()))
    w = _weights(tmp_path / 'w.pt', obj_bias=-20.0)  # finds nothing
    test_script.test(str(COCO8_YAML), str(w), batch_size=4, imgsz=64, device='cpu', workers=0, save_dir=tmp_path / 'r')
    m = seen['matrix']
    classes = [int(line.split()[0]) for f in (ROOT / 'data' / 'coco8' / 'labels').glob('*.txt')
               for line in f.read_text().splitlines() if line.strip()]
    expected = np.bincount(classes, minlength=80)
    assert (m[80, :80] == expected).all() and m[:80].sum() == 0  # every object missed: background (FN) row


def test_strip_optimizer_says_what_it_did(tmp_path, caplog):
    model = Model(tiny_cfg('yolov4-p5', nc=2))
    src = tmp_path / 'best.pt'
    save_checkpoint({'epoch': 4, 'best_fitness': 0.3, 'model': model_payload(model), 'ema': model_payload(model),
                     'optimizer': {'state': {}, 'param_groups': []}}, src)
    with caplog.at_level(logging.INFO):
        strip_optimizer(src, tmp_path / 'final.pt')
    assert 'Optimizer stripped' not in caplog.text
    assert f'Inference weights (float16 EMA, no optimizer) of {src} saved as {tmp_path / "final.pt"}' in caplog.text
    assert torch.load(src, weights_only=True)['optimizer'] is not None  # best.pt keeps its training state
    final = torch.load(tmp_path / 'final.pt', weights_only=True)
    assert final['optimizer'] is None and final['epoch'] == -1 and final['best_fitness'] == pytest.approx(0.3)


def test_export_without_onnx_writes_torchscript_and_says_how(tmp_path, monkeypatch, caplog):
    from models.export import export
    w = _weights(tmp_path / 'w.pt', obj_bias=0.0)
    monkeypatch.setitem(sys.modules, 'onnx', None)  # as with only requirements.txt installed
    with caplog.at_level(logging.WARNING):
        files, diffs = export(str(w), img_size=(64, 64))
    assert list(files) == ['torchscript'] and files['torchscript'].is_file() and not (tmp_path / 'w.onnx').exists()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and 'pip install onnx' in lines[0]


def test_scripts_say_what_they_wrote(tmp_path):
    w = _weights(tmp_path / 'w.pt', obj_bias=2.0)
    r = subprocess.run([sys.executable, 'test.py', '--weights', str(w), '--data', str(COCO8_YAML), '--img', '64',
                        '--device', 'cpu', '--save-json', '--project', str(tmp_path / 'runs'), '--name', 't'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f'Results saved to {tmp_path / "runs" / "t"}')
    assert 'detections_val2017_w_results.json' in last
    r = subprocess.run([sys.executable, 'detect.py', '--weights', str(w), '--source', 'data/coco8/images', '--img',
                        '64', '--conf', '0.01', '--device', 'cpu', '--project', str(tmp_path / 'runs'), '--name', 'd'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert sum(ln.startswith('image ') and '/8 ' in ln and '.jpg 64x64: ' in ln for ln in lines) == 8
    assert lines[-1].startswith('Done: 8 images/frames, ') and str(tmp_path / 'runs' / 'd') in lines[-1]
