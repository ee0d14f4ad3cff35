"""The training loss of Scaled-YOLOv4: CIoU box loss, objectness and class BCE (docs/architecture.md, "Loss")."""
import torch
import torch.nn as nn

from utils.metrics import bbox_iou
from utils.torch_utils import de_parallel

BALANCE = {3: [4.0, 1.0, 0.4], 4: [4.0, 1.0, 0.4, 0.1], 5: [4.0, 1.0, 0.5, 0.4, 0.1]}  # objectness per level
STRIDE_BALANCE = {8: 4.0, 16: 1.0, 32: 0.4, 64: 0.1, 128: 0.1}  # other heads (YOLOv4-tiny): by stride, as P5's


def objectness_balance(det):
    """The objectness weight of each level: published per level count for heads ordered by stride (P5/P6/P7/CSP),
    else by each level's stride (darknet's yolov4-tiny has two levels, stride 32 first)."""
    strides = [int(s) for s in det.stride.tolist()]
    if det.nl in BALANCE and strides == sorted(strides):
        return BALANCE[det.nl]
    return [STRIDE_BALANCE.get(s, 0.1) for s in strides]


def smooth_BCE(eps=0.1):
    """Positive and negative BCE targets with label smoothing eps (https://arxiv.org/pdf/1902.04103.pdf eq. 3)."""
    return 1.0 - 0.5 * eps, 0.5 * eps


class FocalLoss(nn.Module):
    """Focal loss wrapped around a BCEWithLogitsLoss (gamma, alpha 0.25)."""

    def __init__(self, loss_fcn, gamma=1.5, alpha=0.25):
        super().__init__()
        self.loss_fcn = loss_fcn
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = loss_fcn.reduction
        self.loss_fcn.reduction = 'none'  # applied per element

    def forward(self, pred, true):
        loss = self.loss_fcn(pred, true)
        pred_prob = torch.sigmoid(pred)
        p_t = true * pred_prob + (1 - true) * (1 - pred_prob)
        alpha_factor = true * self.alpha + (1 - true) * (1 - self.alpha)
        loss = loss * alpha_factor * (1.0 - p_t) ** self.gamma
        if self.reduction == 'mean':
            return loss.mean()
        return loss.sum() if self.reduction == 'sum' else loss


class ComputeLoss:
    """The training loss of Scaled-YOLOv4, built once from the hyperparameters and the detection head.

    loss = ComputeLoss(model, hyp); total, items = loss(predictions, targets). Predictions are the raw
    per-level outputs (bs, na, ny, nx, 5 + nc); targets (n, 6) [image, class, x, y, w, h] normalised. Returns
    (loss * batch_size, detached [lbox, lobj, lcls, total]). `hyp` is used as given: train.py passes it with
    `cls` already scaled by nc / 80. `gr` is the objectness target's IoU ratio (1.0: the CIoU itself).
    """

    def __init__(self, model, hyp, gr=1.0):
        self.det = de_parallel(model).model[-1]  # its anchors are read at each call (they follow .to(device))
        self.hyp, self.gr, self.nc = hyp, gr, self.det.nc
        device = self.det.anchors.device
        bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp['cls_pw']], device=device))
        bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp['obj_pw']], device=device))
        if hyp['fl_gamma'] > 0:
            bce_cls, bce_obj = FocalLoss(bce_cls, hyp['fl_gamma']), FocalLoss(bce_obj, hyp['fl_gamma'])
        self.bce_cls, self.bce_obj = bce_cls, bce_obj
        self.cp, self.cn = smooth_BCE(eps=0.0)
        self.balance = objectness_balance(self.det)

    def __call__(self, p, targets):
        device = targets.device
        lcls, lbox, lobj = (torch.zeros(1, device=device) for _ in range(3))
        tcls, tbox, indices, anchors = self.build_targets(p, targets)
        for i, pi in enumerate(p):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros_like(pi[..., 0])
            nb = b.shape[0]
            if nb:
                ps = pi[b, a, gj, gi]  # predictions at the targets' cells
                pbox = self.det.train_box(i, ps, anchors[i])  # the head's own decoding
                ciou = bbox_iou(pbox.T, tbox[i], x1y1x2y2=False, CIoU=True)
                lbox += (1.0 - ciou).mean()
                tobj[b, a, gj, gi] = (1.0 - self.gr) + self.gr * ciou.detach().clamp(0).type(tobj.dtype)
                if self.nc > 1:
                    t = torch.full_like(ps[:, 5:], self.cn)
                    t[range(nb), tcls[i]] = self.cp
                    lcls += self.bce_cls(ps[:, 5:], t)
            lobj += self.bce_obj(pi[..., 4], tobj) * self.balance[i]

        h, nl = self.hyp, len(p)
        s = 3 / nl
        lbox *= h['giou'] * s
        lobj *= h['obj'] * s * (1.4 if nl >= 4 else 1.)
        lcls *= h['cls'] * s
        bs = tobj.shape[0]
        loss = lbox + lobj + lcls
        return loss * bs, torch.cat((lbox, lobj, lcls, loss)).detach()

    def build_targets(self, p, targets):
        """Assign targets to anchors and cells per level: (classes, boxes, (image, anchor, gy, gx), anchors).

        A target matches anchor k when max(w/a_w, a_w/w, h/a_h, a_h/h) < anchor_t; each match also goes to the
        left/up neighbour cell when the fractional part of x/y is < g (and x/y > 1), and to the right/down one
        when that of (nx - x)/(ny - y) is < g (and > 1), g being how far the head's centres reach past their cell
        (0.5 for Scaled-YOLOv4's). Cell indices are clamped to the grid.
        """
        det = self.det
        na, nt = det.na, targets.shape[0]
        tcls, tbox, indices, anch = [], [], [], []
        gain = torch.ones(6, device=targets.device)
        off = torch.tensor([[1, 0], [0, 1], [-1, 0], [0, -1]], device=targets.device).float()
        at = torch.arange(na, device=targets.device).view(na, 1).repeat(1, nt)  # anchor index of each copy
        anchor_t = self.hyp['anchor_t']
        for i in range(det.nl):
            anchors, g = det.anchors[i], det.cell_reach(i)  # Scaled-YOLOv4's heads: g = 0.5
            gain[2:] = torch.tensor(p[i].shape, device=targets.device)[[3, 2, 3, 2]]  # xyxy gain
            t, offsets = targets * gain, 0
            if nt:
                r = t[None, :, 4:6] / anchors[:, None]
                j = torch.max(r, 1. / r).max(2)[0] < anchor_t
                a, t = at[j], t.repeat(na, 1, 1)[j]
                gxy = t[:, 2:4]
                gxi = gain[[2, 3]] - gxy
                z = torch.zeros_like(gxy)
                j, k = ((gxy % 1. < g) & (gxy > 1.)).T
                l, m = ((gxi % 1. < g) & (gxi > 1.)).T
                a, t = torch.cat((a, a[j], a[k], a[l], a[m]), 0), torch.cat((t, t[j], t[k], t[l], t[m]), 0)
                offsets = torch.cat((z, z[j] + off[0], z[k] + off[1], z[l] + off[2], z[m] + off[3]), 0) * g
            else:
                a = at[:, :0].reshape(-1)
            b, c = t[:, :2].long().T
            gxy = t[:, 2:4]
            gwh = t[:, 4:6]
            gij = (gxy - offsets).long()
            gij[:, 0].clamp_(0, int(gain[2]) - 1)
            gij[:, 1].clamp_(0, int(gain[3]) - 1)
            gi, gj = gij.T
            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - gij, gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anch


def compute_loss(p, targets, model):
    """The published function form: the loss with the hyperparameters a model carries (`model.hyp`, `model.gr`,
    as released checkpoints do). New code builds a ComputeLoss once instead."""
    m = de_parallel(model)
    return ComputeLoss(m, m.hyp, getattr(m, 'gr', 1.0))(p, targets)


def build_targets(p, targets, model):
    """The published function form of ComputeLoss.build_targets (anchor_t from `model.hyp`)."""
    m = de_parallel(model)
    return ComputeLoss(m, m.hyp, getattr(m, 'gr', 1.0)).build_targets(p, targets)
