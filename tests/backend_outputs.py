"""Run exported models in a process of their own and print what tests/test_backends.py checks, as JSON.

    python tests/backend_outputs.py SIZE CONF NAME=PATH[:PRECISION] ...

For each model: its metadata as loaded (names, nc, stride, precision, static shape) and its detections after NMS
on the coco8 images letterboxed to SIZE. The runtimes' thread pools and native libraries then live and die in
this process, not in a pytest worker that runs other modules' tests for minutes.
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import torch  # noqa: E402

from models.backends import load_exported  # noqa: E402
from models.experimental import attempt_load  # noqa: E402
from utils.augmentations import letterbox  # noqa: E402
from utils.nms import non_max_suppression  # noqa: E402
from utils.sources import to_chw_rgb  # noqa: E402

IMAGES = ROOT / 'data' / 'coco8' / 'images'


def detections(model, size, conf):
    """{image: [[x1, y1, x2, y2, score, class], ...]} after NMS (IoU 0.45) on the coco8 images at size x size."""
    out = {}
    for path in sorted(IMAGES.glob('*.jpg')):
        img = torch.from_numpy(to_chw_rgb(letterbox(cv2.imread(str(path)), size, auto=False)[0]))[None] / 255.0
        with torch.no_grad():
            out[path.name] = non_max_suppression(model(img.float())[0], conf, 0.45)[0].tolist()
    return out


def main(size, conf, *specs):
    result = {}
    for spec in specs:
        name, _, target = spec.partition('=')
        path, _, precision = target.partition(':') if not target.endswith('.pt') else (target, '', '')
        if path.endswith('.pt') and 'torchscript' not in path:
            model = attempt_load(path)
            meta = {'names': list(model.names), 'nc': model.nc, 'stride': model.stride.tolist()}
        else:
            model = load_exported(path, precision=precision or None)
            meta = {'names': model.names, 'nc': model.nc, 'stride': model.stride.tolist(),
                    'precision': model.precision, 'static_shape': model.static_shape}
        result[name] = {'meta': meta, 'detections': detections(model, int(size), float(conf))}
    print(json.dumps(result))


if __name__ == '__main__':
    main(*sys.argv[1:])
