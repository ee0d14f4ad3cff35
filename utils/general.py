"""General helpers: logging setup, run folders, image-size checks, box conversions and NMS."""
import glob
import logging
import math
import re
from pathlib import Path

import numpy as np
import torch

from utils.metrics import box_iou  # noqa: F401  (published import location)

LOGGER = logging.getLogger(__name__)


def set_logging(rank=-1, verbose=True):
    """Plain-message logging on rank -1/0, warnings only on the other DDP ranks."""
    logging.basicConfig(format='%(message)s',
                        level=logging.INFO if (verbose and rank in (-1, 0)) else logging.WARNING, force=True)


def options_from_kwargs(parse_opt, kwargs, prog):
    """A script's parsed defaults updated with keyword arguments named like its flags (underscores)."""
    opt = parse_opt([])
    unknown = set(kwargs) - set(vars(opt))
    if unknown:
        raise TypeError(f'{prog}: unknown options {sorted(unknown)}')
    vars(opt).update(kwargs)
    return opt


def make_divisible(x, divisor):
    """Smallest multiple of divisor that is >= x."""
    return math.ceil(x / divisor) * divisor


def check_img_size(img_size, s=32):
    """img_size rounded up to a multiple of the stride s, with a warning when it changes."""
    new_size = make_divisible(img_size, int(s))
    if new_size != img_size:
        LOGGER.warning('WARNING: --img-size %g must be a multiple of max stride %g, updating to %g',
                       img_size, s, new_size)
    return new_size


def increment_path(path, exist_ok=False, sep='', mkdir=False):
    """runs/exp -> runs/exp, runs/exp2, runs/exp3, ... : the first that does not exist (or path if exist_ok).

    Never deletes or reuses an existing run folder unless exist_ok.
    """
    path = Path(path)
    if path.exists() and not exist_ok:
        dirs = glob.glob(f'{path}{sep}*')
        matches = [re.fullmatch(rf'{re.escape(path.name)}{re.escape(sep)}(\d+)', Path(d).name) for d in dirs]
        n = max([int(m.group(1)) for m in matches if m] + [1]) + 1
        path = Path(f'{path}{sep}{n}')
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path


def xyxy2xywh(x):
    """Boxes (n, 4) x1y1x2y2 -> centre x, centre y, width, height (torch or numpy)."""
    y = x.clone() if hasattr(x, 'clone') else np.copy(x)
    y[:, 0] = (x[:, 0] + x[:, 2]) / 2
    y[:, 1] = (x[:, 1] + x[:, 3]) / 2
    y[:, 2] = x[:, 2] - x[:, 0]
    y[:, 3] = x[:, 3] - x[:, 1]
    return y


def xywh2xyxy(x):
    """Boxes (n, 4) centre x, centre y, width, height -> x1y1x2y2 (torch or numpy)."""
    y = x.clone() if hasattr(x, 'clone') else np.copy(x)
    y[:, 0] = x[:, 0] - x[:, 2] / 2
    y[:, 1] = x[:, 1] - x[:, 3] / 2
    y[:, 2] = x[:, 0] + x[:, 2] / 2
    y[:, 3] = x[:, 1] + x[:, 3] / 2
    return y


def clip_coords(boxes, img_shape):
    """Clip xyxy boxes (in place) to an image of shape (h, w)."""
    boxes[:, 0].clamp_(0, img_shape[1])
    boxes[:, 1].clamp_(0, img_shape[0])
    boxes[:, 2].clamp_(0, img_shape[1])
    boxes[:, 3].clamp_(0, img_shape[0])


def scale_coords(img1_shape, coords, img0_shape, ratio_pad=None):
    """Map xyxy coords (in place) from a letterboxed img1_shape (h, w) back to the original img0_shape."""
    if ratio_pad is None:
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        pad = (img1_shape[1] - img0_shape[1] * gain) / 2, (img1_shape[0] - img0_shape[0] * gain) / 2
    else:
        gain = ratio_pad[0][0]
        pad = ratio_pad[1]
    coords[:, [0, 2]] -= pad[0]
    coords[:, [1, 3]] -= pad[1]
    coords[:, :4] /= gain
    clip_coords(coords, img0_shape)
    return coords


def coco80_to_coco91_class():
    """COCO category id of each of the 80 contiguous class indices (SPEC 9)."""
    return [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
            33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
            60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]


# --- NMS: torchvision's batched NMS, or an exact NMS of our own when torchvision cannot be used ---------
_TV_NMS = None


def _torchvision_nms():
    """torchvision.ops.nms if it imports and runs, else None (with one warning)."""
    global _TV_NMS
    if _TV_NMS is None:
        try:
            import torchvision
            torchvision.ops.nms(torch.zeros((1, 4)), torch.zeros(1), 0.5)
            _TV_NMS = torchvision.ops.nms
        except (ImportError, RuntimeError, AttributeError, OSError) as e:
            LOGGER.warning('WARNING: torchvision NMS unavailable (%s: %s); using the exact NMS of this project '
                           'instead (same results, slower)', type(e).__name__, str(e).splitlines()[0][:120])
            _TV_NMS = False
    return _TV_NMS or None


def nms_exact(boxes, scores, iou_thres):
    """Greedy NMS with torchvision's semantics: indices of kept boxes by descending score; a box is
    suppressed when its IoU with a kept box is > iou_thres."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    b = boxes[order]
    x1, y1, x2, y2 = b.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    n = b.shape[0]
    suppressed = torch.zeros(n, dtype=torch.bool, device=b.device)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        if i + 1 == n:
            break
        xx1 = torch.maximum(x1[i], x1[i + 1:])
        yy1 = torch.maximum(y1[i], y1[i + 1:])
        xx2 = torch.minimum(x2[i], x2[i + 1:])
        yy2 = torch.minimum(y2[i], y2[i + 1:])
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (areas[i] + areas[i + 1:] - inter)
        suppressed[i + 1:] |= iou > iou_thres
    return order[torch.tensor(keep, dtype=torch.long, device=b.device)]


def nms(boxes, scores, iou_thres):
    tv = _torchvision_nms()
    return tv(boxes, scores, iou_thres) if tv is not None else nms_exact(boxes, scores, iou_thres)


MAX_NMS_CANDIDATES = 30000  # class candidates per image kept for NMS (highest scores), as in the yolov5 lineage
_cap_warned = False


def _cap_candidates(x, max_nms):
    """The max_nms highest-scoring rows of x (n, 6) when there are more; warns once per process."""
    global _cap_warned
    if x.shape[0] <= max_nms:
        return x
    if not _cap_warned:
        LOGGER.warning('WARNING: NMS: %d candidates in one image above the confidence threshold; only the %d '
                       'highest-scoring are kept (usual for an untrained model at conf 0.001; a trained one stays '
                       'far below the cap)', x.shape[0], max_nms)
        _cap_warned = True
    return x[x[:, 4].argsort(descending=True, stable=True)[:max_nms]]


def non_max_suppression(prediction, conf_thres=0.1, iou_thres=0.6, merge=False, classes=None, agnostic=False,
                        max_det=300, max_nms=MAX_NMS_CANDIDATES):
    """NMS on decoded predictions (bs, N, 5 + nc) as published (SPEC 9).

    Multi-label when nc > 1, class filter, class-offset (or agnostic) NMS, at most max_det per image, merge
    mode (score-weighted mean of the boxes overlapping each kept box, keeping only boxes with overlaps, as
    published). No time limit: every image is processed. Where the published code stopped after 10 s per
    batch and silently dropped the remaining images, here at most `max_nms` candidates per image (the
    highest-scoring) go into NMS, which bounds its cost. Returns per image an (n, 6) tensor
    [x1, y1, x2, y2, score, class] (empty when nothing is detected).
    """
    if prediction.dtype in (torch.float16, torch.bfloat16):  # boxes in pixels need float32's precision
        prediction = prediction.float()
    nc = prediction.shape[2] - 5
    xc = prediction[..., 4] > conf_thres
    max_wh = 4096  # class offset for batched NMS
    multi_label = nc > 1
    output = [torch.zeros((0, 6), device=prediction.device)] * prediction.shape[0]
    for xi, x in enumerate(prediction):
        x = x[xc[xi]]
        if not x.shape[0]:
            continue
        x[:, 5:] *= x[:, 4:5]  # conf = obj_conf * cls_conf
        box = xywh2xyxy(x[:, :4])
        if multi_label:
            i, j = (x[:, 5:] > conf_thres).nonzero(as_tuple=False).T
            x = torch.cat((box[i], x[i, j + 5, None], j[:, None].float()), 1)
        else:
            conf, j = x[:, 5:].max(1, keepdim=True)
            x = torch.cat((box, conf, j.float()), 1)[conf.view(-1) > conf_thres]
        if classes is not None and len(classes):
            x = x[(x[:, 5:6] == torch.tensor(classes, device=x.device, dtype=x.dtype)).any(1)]
        x = _cap_candidates(x, max_nms)
        n = x.shape[0]
        if not n:
            continue
        c = x[:, 5:6] * (0 if agnostic else max_wh)
        boxes, scores = x[:, :4] + c, x[:, 4]
        i = nms(boxes, scores, iou_thres)
        i = i[:max_det]
        if merge and (1 < n < 3E3):
            iou = box_iou(boxes[i], boxes) > iou_thres
            weights = iou * scores[None]
            x[i, :4] = torch.mm(weights, x[:, :4]).float() / weights.sum(1, keepdim=True)
            i = i[iou.sum(1) > 1]  # require redundancy
        output[xi] = x[i]
    return output
