"""torch.hub entry points:

    model = torch.hub.load('path/to/this/repo', 'yolov4_p5', source='local')            # released weights
    model = torch.hub.load('path/to/this/repo', 'yolov4_p6', source='local', pretrained=False, classes=3)
    model = torch.hub.load('path/to/this/repo', 'custom', source='local', path='runs/train/exp/weights/best.pt')
    detections = model('data/coco8/images/000000000009.jpg')   # [(n, 6) x1, y1, x2, y2, conf, class]

The returned Detector takes an image path, an RGB uint8 numpy array (HWC), a PIL image, or a list of those,
and returns one tensor of detections after NMS per image, with boxes in that image's own pixels.
"""
import sys
from pathlib import Path

import numpy as np
import torch

dependencies = ['torch', 'torchvision', 'numpy', 'cv2', 'yaml']

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class Detector(torch.nn.Module):
    """A fused, eval-mode detector with letterboxing in front and NMS behind (conf 0.25, IoU 0.45 by default)."""

    def __init__(self, model, img_size=640, conf=0.25, iou=0.45):
        super().__init__()
        self.model, self.img_size, self.conf, self.iou = model, img_size, conf, iou
        self.names, self.stride = list(model.names), model.stride
        self.static = getattr(model, 'static_shape', None) is not None  # an export of one input size

    @staticmethod
    def _read(image):
        """BGR uint8 HWC from a path, an RGB numpy array or a PIL image."""
        import cv2
        if isinstance(image, (str, Path)):
            img = cv2.imread(str(image))
            if img is None:
                raise FileNotFoundError(f'image {image} could not be read')
            return img
        return np.ascontiguousarray(np.asarray(image.convert('RGB') if hasattr(image, 'convert') else image)[..., ::-1])

    @torch.no_grad()
    def forward(self, images, size=None, augment=False):
        from utils.augmentations import letterbox
        from utils.boxes import scale_coords
        from utils.nms import non_max_suppression
        from utils.sources import to_chw_rgb
        single = not isinstance(images, (list, tuple))
        originals = [self._read(x) for x in ([images] if single else images)]
        size = self.img_size if self.static else size or self.img_size
        p = next(iter([*self.model.parameters(), *self.model.buffers()]))
        out = []
        for im0 in originals:  # one at a time: images of different shapes get their own letterbox
            img = letterbox(im0, size, auto=not self.static)[0]
            img = torch.from_numpy(to_chw_rgb(img)).to(p.device, p.dtype)[None] / 255.0
            det = non_max_suppression(self.model(img, augment=augment)[0], self.conf, self.iou)[0]
            det[:, :4] = scale_coords(img.shape[2:], det[:, :4], im0.shape).round()
            out.append(det)
        return out[0] if single else out


def _user_errors_in_one_line(build):
    """build() with a bad input (offline without the file, a refused checkpoint, a --device without CUDA) turned
    into one line and exit status 1, as the scripts do, rather than a traceback."""
    from utils.errors import UserError, one_line
    try:
        return build()
    except UserError as e:
        raise SystemExit(f'hubconf: error: {one_line(e)}') from None


def _detector(model, device, img_size):
    model = model.to(device).fuse().eval()
    for q in model.parameters():
        q.requires_grad_(False)
    return Detector(model, img_size=img_size)


def _create(cfg, pretrained, classes, device):
    return _user_errors_in_one_line(lambda: _build(cfg, pretrained, classes, device))


def _build(cfg, pretrained, classes, device):
    from models.checkpoint import model_from_checkpoint, load_checkpoint
    from models.yolo import TEST_SIZES, Model  # the paper's test sizes: the default inference size
    from utils.torch_utils import intersect_dicts, select_device
    device = select_device(device or '')  # '' : CUDA when there is one, else the CPU
    if pretrained:
        if cfg == 'yolov4-tiny':  # released for darknet only: its .weights in the YAML model that is its cfg
            from models.darknet_convert import load_darknet_model
            model = load_darknet_model(f'{cfg}.weights', cfg=ROOT / 'models' / f'{cfg}.yaml')
        else:
            weights = f'{cfg}.pt'
            model = model_from_checkpoint(load_checkpoint(weights), weights)
        if classes != model.nc:  # a new head for `classes`, everything else from the release
            new = Model(model.yaml, nc=classes)
            new.load_state_dict(intersect_dicts(model.state_dict(), new.state_dict()), strict=False)
            model = new
    else:
        model = Model(ROOT / 'models' / f'{cfg}.yaml', nc=classes)
    return _detector(model, device, TEST_SIZES[cfg])


def custom(path, device=None, img_size=640, cfg=None):
    """Your own weights: a run's best.pt, last.pt or final.pt (any class count), a released file, darknet
    .weights (with `cfg`, default models/<name>.cfg), or an export (.torchscript.pt, .onnx, _openvino_model/), as
    torch.hub.load(repo, 'custom', path='.../best.pt');
    img_size: the default inference size (a call's size= overrides it; use the size the model was trained at)."""
    def build():
        from models.backends import export_kind, input_size
        from models.experimental import attempt_load
        from utils.torch_utils import select_device
        model = attempt_load(path, map_location=select_device(device or ''), cfg=cfg)  # fused, eval, no grads
        return Detector(model, img_size=input_size(model, img_size)[0] if export_kind(path) else img_size)
    return _user_errors_in_one_line(build)


def yolov4_p5(pretrained=True, classes=80, device=None):
    """YOLOv4-P5 (COCO AP 51.2 at 896), released weights when pretrained."""
    return _create('yolov4-p5', pretrained, classes, device)


def yolov4_p6(pretrained=True, classes=80, device=None):
    """YOLOv4-P6 (COCO AP 53.9 at 1280), released weights when pretrained."""
    return _create('yolov4-p6', pretrained, classes, device)


def yolov4_p7(pretrained=True, classes=80, device=None):
    """YOLOv4-P7 (COCO AP 55.0 at 1536), released weights when pretrained."""
    return _create('yolov4-p7', pretrained, classes, device)


def yolov4_tiny(pretrained=True, classes=80, device=None):
    """YOLOv4-tiny (COCO AP 22.0 at 416), darknet's released yolov4-tiny.weights in models/yolov4-tiny.yaml when
    pretrained."""
    return _create('yolov4-tiny', pretrained, classes, device)


def yolov4_csp(pretrained=False, classes=80, device=None):
    """YOLOv4-CSP, built from its config (no PyTorch checkpoint of it was released with the large models)."""
    if pretrained:
        raise SystemExit('hubconf: error: no released PyTorch checkpoint of YOLOv4-CSP is known to this project: '
                         'use pretrained=False, or load your own with models.experimental.attempt_load')
    return _create('yolov4-csp', False, classes, device)
