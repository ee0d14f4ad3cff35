"""The benchmark script's quick mode prints its tables (speed figures are reported, not asserted)."""
import re

import pytest

from conftest import ROOT
from utils.benchmarks import main


def test_infer_quick_prints_table(capsys):
    main(['--cfg', 'models/yolov4-csp.yaml', '--img', '64', '--batch-size', '1', '--device', 'cpu', '--quick'])
    out = capsys.readouterr().out
    assert out.startswith('infer benchmark: models/yolov4-csp.yaml on CPU')
    assert re.search(r'batch\s+dtype\s+memory format\s+NMS\s+ms/batch\s+images/s', out)
    assert re.search(r'\n\s+1\s+float32\s+contiguous\s+no\s+[\d.]+\s+[\d.]+', out)
    assert re.search(r'\n\s+1\s+float32\s+contiguous\s+yes\s+[\d.]+\s+[\d.]+', out)


def test_train_quick_prints_table(capsys):
    main(['--mode', 'train', '--img', '64', '--batch-size', '2', '--quick'])
    out = capsys.readouterr().out
    assert 'train benchmark: models/yolov4-p5-tiny.yaml' in out
    assert re.search(r'\n\s+2\s+64\s+float32\s+[\d.]+\s+[\d.]+\s+\d+', out)


def test_data_quick_prints_table(capsys):
    main(['--mode', 'data', '--img', '128', '--source', str(ROOT / 'data' / 'coco8'), '--quick'])
    out = capsys.readouterr().out
    assert re.search(r'128\s+published\s+8\s+[\d.]+', out) and re.search(r'128\s+this project\s+8\s+[\d.]+', out)
