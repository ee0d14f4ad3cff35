"""Non-maximum suppression: an exact NMS of our own on the CPU (torchvision's results), torchvision's kernel on CUDA."""
import logging

import numpy as np
import torch

from utils.boxes import box_iou, xywh2xyxy

LOGGER = logging.getLogger(__name__)

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


def _above_threshold(iou_thres, dtype):
    """A test `iou > iou_thres` on IoUs of `dtype` that decides like torchvision's kernel, which compares them
    with the threshold in double precision: where the threshold rounds up in `dtype` (0.6 does in float32), an
    IoU equal to the rounded value is above it."""
    t = torch.tensor(iou_thres, dtype=dtype).item()
    return (lambda iou: iou >= t) if t > iou_thres else (lambda iou: iou > t)


def _overlaps(a, area_a, b, area_b, above):
    """(len(a), len(b)) bool: IoU(a_i, b_j) above the threshold, computed with torchvision's arithmetic."""
    w = (torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp_(min=0)
    h = (torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1])).clamp_(min=0)
    inter = w.mul_(h)
    return above(inter / (area_a[:, None] + area_b[None] - inter))


def _greedy(over):
    """Positions kept by greedy suppression among boxes in score order, given `over` (upper triangular: box i
    overlaps a later box j): a box is kept when no box kept before it overlaps it."""
    over = over.cpu().numpy()
    keep = np.ones(len(over), dtype=bool)
    for i in range(len(keep)):
        if keep[i]:
            keep &= ~over[i]
    return torch.from_numpy(np.flatnonzero(keep))


NMS_BLOCK = 256  # boxes compared as one matrix


def nms_exact(boxes, scores, iou_thres, max_det=None):
    """Greedy NMS with torchvision's semantics: indices of kept boxes by descending score (ties in index order);
    a box is suppressed when its IoU with a kept box is above iou_thres.

    The boxes are taken in blocks of NMS_BLOCK by score: a block is first checked against every box kept so
    far, then the boxes it leaves free are resolved among themselves. Whether a box is kept depends only on the
    boxes before it, so with max_det it stops once max_det boxes are kept: exactly the first max_det of the full
    result, at the cost of the blocks that hold them.
    """
    device = boxes.device
    order = scores.argsort(descending=True, stable=True)
    b = boxes[order]
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    above = _above_threshold(iou_thres, b.dtype)
    limit = len(b) if max_det is None else min(max_det, len(b))
    kept = torch.zeros(0, dtype=torch.long, device=device)
    for start in range(0, len(b), NMS_BLOCK):
        blk, blk_areas = b[start:start + NMS_BLOCK], areas[start:start + NMS_BLOCK]
        free = (~_overlaps(b[kept], areas[kept], blk, blk_areas, above).any(0)).nonzero().view(-1)
        within = _overlaps(blk[free], blk_areas[free], blk[free], blk_areas[free], above).triu_(1)
        kept = torch.cat((kept, free[_greedy(within).to(device)] + start))
        if len(kept) >= limit:
            break
    return order[kept[:limit]]


def nms(boxes, scores, iou_thres, max_det=None):
    """Indices of the boxes kept by NMS, by descending score (the first max_det of them when given).

    On CUDA torchvision's kernel; elsewhere, and where torchvision cannot be used, the exact NMS above (the
    same indices as torchvision's CPU kernel; it also spares a process torchvision's import, over a second).
    """
    tv = _torchvision_nms() if boxes.is_cuda else None
    if tv is not None:
        i = tv(boxes, scores, iou_thres)
        return i if max_det is None else i[:max_det]
    return nms_exact(boxes, scores, iou_thres, max_det)


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
    """NMS on decoded predictions (bs, N, 5 + nc) as published (docs/architecture.md).

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
        i = nms(boxes, scores, iou_thres, max_det)
        if merge and (1 < n < 3E3):
            iou = box_iou(boxes[i], boxes) > iou_thres
            weights = iou * scores[None]
            x[i, :4] = torch.mm(weights, x[:, :4]).float() / weights.sum(1, keepdim=True)
            i = i[iou.sum(1) > 1]  # require redundancy
        output[xi] = x[i]
    return output
