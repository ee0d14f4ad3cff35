"""An end-to-end detector for ONNX: images in, final detections out, NMS inside as ONNX's NonMaxSuppression.

    models/export.py --include onnx --nms --conf-thres 0.25 --iou-thres 0.45 --max-det 300   # X-nms.onnx

Outputs per image, padded to max_det: num_dets (batch, 1) int64, boxes (batch, max_det, 4) x1, y1, x2, y2 pixels
of the network input, scores (batch, max_det) and classes (batch, max_det) int64, best first. The selection is
test.py's non_max_suppression (utils/nms.py) on the same predictions: candidates are (box, class) pairs with
objectness x class score above conf_thres (multi-label), suppressed per class at IoU above iou_thres, and the
max_det best kept. It differs only where test.py's cap of 30,000 candidates per image binds (the operator has no
cap), and in the order of exactly tied scores.
"""
import torch
import torch.nn as nn
import torchvision  # imported before any tracing: its first import runs ops the tracer cannot record


class NonMaxSuppression(torch.autograd.Function):
    """ONNX's NonMaxSuppression: selected (k, 3) [batch, class, box] of boxes (b, n, 4) xyxy and scores (b, c, n).
    Eager PyTorch computes it with torchvision (what tracing records is replaced by the operator)."""

    @staticmethod
    def forward(ctx, boxes, scores, max_per_class, iou_thres, conf_thres):
        out = []
        for b in range(boxes.shape[0]):
            c, i = (scores[b] > conf_thres).nonzero(as_tuple=True)
            keep = torchvision.ops.batched_nms(boxes[b, i], scores[b, c, i], c, iou_thres)
            c, i = c[keep], i[keep]
            for cls in c.unique():  # at most max_per_class per class, best first (keep is sorted by score)
                sel = (c == cls).nonzero(as_tuple=True)[0][:max_per_class]
                out.append(torch.stack((torch.full_like(i[sel], b), c[sel], i[sel]), 1))
        return torch.cat(out) if out else torch.zeros((0, 3), dtype=torch.int64, device=boxes.device)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou_thres, conf_thres):
        return g.op('NonMaxSuppression', boxes, scores,
                    g.op('Constant', value_t=torch.tensor([max_per_class], dtype=torch.int64)),
                    g.op('Constant', value_t=torch.tensor([iou_thres], dtype=torch.float32)),
                    g.op('Constant', value_t=torch.tensor([conf_thres], dtype=torch.float32)),
                    center_point_box_i=0)


class EndToEnd(nn.Module):
    """`model` (decoding, export mode: images -> (b, n, 5 + nc)) followed by NMS and per-image top max_det."""

    def __init__(self, model, conf_thres=0.25, iou_thres=0.45, max_det=300):
        super().__init__()
        self.model, self.conf, self.iou, self.max_det = model, conf_thres, iou_thres, max_det

    def forward(self, x):
        y = self.model(x)
        xy, wh = y[..., :2], y[..., 2:4]
        boxes = torch.cat((xy - wh / 2, xy + wh / 2), -1)  # (b, n, 4) x1, y1, x2, y2
        scores = (y[..., 5:] * y[..., 4:5]).transpose(1, 2).contiguous()  # (b, nc, n), as test.py scores pairs
        selected = NonMaxSuppression.apply(boxes, scores, self.max_det, self.iou, self.conf)
        image, cls, box = selected[:, 0], selected[:, 1], selected[:, 2]
        chosen = scores[image, cls, box]  # (k,)
        images = torch.arange(x.shape[0], device=x.device)[:, None]
        ranked = torch.where(image[None] == images, chosen[None], torch.full_like(chosen[None], -1.0))  # (b, k)
        pad = torch.full((x.shape[0], self.max_det), -1.0, device=x.device, dtype=ranked.dtype)
        top, idx = torch.cat((ranked, pad), 1).topk(self.max_det, dim=1)  # (b, max_det); idx >= k: padding
        valid = top > 0
        zero_box = torch.zeros((1, 4), device=x.device, dtype=boxes.dtype)  # row 0: what padding rows read
        boxes_k = torch.cat((zero_box, boxes[image, box]))
        cls_k = torch.cat((cls.new_full((1,), -1), cls))
        picked = torch.where(valid, idx + 1, torch.zeros_like(idx))
        scores_out = torch.where(valid, top, torch.zeros_like(top))
        return valid.sum(1, keepdim=True), boxes_k[picked], scores_out, cls_k[picked]
