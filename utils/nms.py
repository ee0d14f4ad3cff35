"""Non-maximum suppression: torchvision's NMS, or an exact NMS of our own when torchvision cannot be used."""
import logging

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


def nms_exact(boxes, scores, iou_thres, max_det=None):
    """Greedy NMS with torchvision's semantics: indices of kept boxes by descending score (ties in index order);
    a box is suppressed when its IoU with a kept box is > iou_thres.

    With max_det it stops once max_det boxes are kept: those are exactly the first max_det of the full result
    (a later box can never suppress an earlier one), at a cost of max_det passes over the boxes instead of one
    per kept box.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    b = boxes[order]
    x1, y1, x2, y2 = b.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    n = b.shape[0]
    suppressed = torch.zeros(n, dtype=torch.bool, device=b.device)
    keep, i = [], 0
    while i < n and (max_det is None or len(keep) < max_det):
        if suppressed[i]:  # jump to the next box that is still in
            rest = (~suppressed[i:]).nonzero()
            if not len(rest):
                break
            i += int(rest[0])
        keep.append(i)
        xx1 = torch.maximum(x1[i], x1[i + 1:])
        yy1 = torch.maximum(y1[i], y1[i + 1:])
        xx2 = torch.minimum(x2[i], x2[i + 1:])
        yy2 = torch.minimum(y2[i], y2[i + 1:])
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (areas[i] + areas[i + 1:] - inter)
        suppressed[i + 1:] |= iou > iou_thres
        i += 1
    return order[torch.tensor(keep, dtype=torch.long, device=b.device)]


EARLY_EXIT_MIN = 3000  # candidates above which NMS stops at max_det kept boxes (same result, bounded cost)


def nms(boxes, scores, iou_thres, max_det=None):
    """Indices of the boxes kept by NMS, by descending score (the first max_det of them when given).

    torchvision's kernel suppresses against every kept box, thousands with tens of thousands of candidates;
    past EARLY_EXIT_MIN candidates the exact NMS above stops at max_det instead, with identical indices.
    """
    tv = _torchvision_nms()
    if tv is not None and (max_det is None or boxes.shape[0] <= EARLY_EXIT_MIN):
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
