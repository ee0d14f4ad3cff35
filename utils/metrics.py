"""Detection metrics: IoU variants, average precision, fitness and a confusion matrix (the published evaluation
protocol; see docs/architecture.md)."""
import math

import numpy as np
import torch

from utils.boxes import box_iou

_trapz = getattr(np, 'trapezoid', None) or np.trapz


def fitness(x):
    """Model fitness: 0.1 * mAP@0.5 + 0.9 * mAP@0.5:0.95 of rows [P, R, mAP@0.5, mAP@0.5:0.95, ...]."""
    w = [0.0, 0.0, 0.1, 0.9]
    return (np.asarray(x)[:, :4] * w).sum(1)


def bbox_iou(box1, box2, x1y1x2y2=True, GIoU=False, DIoU=False, CIoU=False, eps=1e-9):
    """IoU of box1 (4,) or (4, n) with box2 (n, 4), elementwise; optionally GIoU, DIoU or CIoU."""
    box2 = box2.T
    if x1y1x2y2:
        b1_x1, b1_y1, b1_x2, b1_y2 = box1[0], box1[1], box1[2], box1[3]
        b2_x1, b2_y1, b2_x2, b2_y2 = box2[0], box2[1], box2[2], box2[3]
    else:  # xywh -> xyxy
        b1_x1, b1_x2 = box1[0] - box1[2] / 2, box1[0] + box1[2] / 2
        b1_y1, b1_y2 = box1[1] - box1[3] / 2, box1[1] + box1[3] / 2
        b2_x1, b2_x2 = box2[0] - box2[2] / 2, box2[0] + box2[2] / 2
        b2_y1, b2_y2 = box2[1] - box2[3] / 2, box2[1] + box2[3] / 2

    inter = (torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0) * \
            (torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)).clamp(0)
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1
    union = (w1 * h1 + eps) + w2 * h2 - inter
    iou = inter / union
    if GIoU or DIoU or CIoU:
        cw = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)  # convex (smallest enclosing box) width
        ch = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)
        if GIoU:  # https://arxiv.org/pdf/1902.09630.pdf
            c_area = cw * ch + eps
            return iou - (c_area - union) / c_area
        c2 = cw ** 2 + ch ** 2 + eps  # convex diagonal squared
        rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4  # centre distance^2
        if DIoU:  # https://arxiv.org/abs/1911.08287v1
            return iou - rho2 / c2
        v = (4 / math.pi ** 2) * torch.pow(torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps)), 2)
        with torch.no_grad():  # 1e-7 (not eps): 1 + 1e-9 == 1 in float32, and a perfect match gave 0/0
            alpha = v / (v - iou + (1 + 1e-7))
        return iou - (rho2 / c2 + v * alpha)  # CIoU
    return iou


def compute_ap(recall, precision):
    """AP: 101-point interpolated area under the precision envelope (COCO). Returns (ap, mpre, mrec)."""
    mrec = np.concatenate(([0.], recall, [min(recall[-1] + 1E-3, 1.)]))
    mpre = np.concatenate(([0.], precision, [0.]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    ap = _trapz(np.interp(x, mrec, mpre), x)
    return ap, mpre, mrec


def ap_per_class(tp, conf, pred_cls, target_cls, plot=False, save_dir='.', names=()):
    """Per-class precision, recall (both at score 0.1, as published), AP at each IoU threshold and F1.

    tp (n, niou) bool, conf (n,), pred_cls (n,), target_cls (m,). Returns (p, r, ap, f1, classes).
    With plot, a PR curve per class is written to save_dir/PR_curve.png.
    """
    i = np.argsort(-conf)
    tp, conf, pred_cls = tp[i], conf[i], pred_cls[i]
    unique_classes = np.unique(target_cls)
    pr_score = 0.1
    s = [unique_classes.shape[0], tp.shape[1]]
    ap, p, r = np.zeros(s), np.zeros(s), np.zeros(s)
    px, py = np.linspace(0, 1, 1000), []  # for plotting
    for ci, c in enumerate(unique_classes):
        i = pred_cls == c
        n_gt = (target_cls == c).sum()
        n_p = i.sum()
        if n_p == 0 or n_gt == 0:
            continue
        fpc = (1 - tp[i]).cumsum(0)
        tpc = tp[i].cumsum(0)
        recall = tpc / (n_gt + 1e-16)
        r[ci] = np.interp(-pr_score, -conf[i], recall[:, 0])  # negative x: xp decreases
        precision = tpc / (tpc + fpc)
        p[ci] = np.interp(-pr_score, -conf[i], precision[:, 0])
        for j in range(tp.shape[1]):
            ap[ci, j], mpre, mrec = compute_ap(recall[:, j], precision[:, j])
            if plot and j == 0:
                py.append(np.interp(px, mrec, mpre))  # precision at mAP@0.5
    f1 = 2 * p * r / (p + r + 1e-16)
    if plot and py:
        from utils.plots import plot_pr_curve
        plot_pr_curve(px, py, ap, save_dir, names, unique_classes)
    return p, r, ap, f1, unique_classes.astype('int32')


def match_predictions(pred, labels, iouv):
    """Published matching of one image: (npred, niou) bool of correct predictions.

    pred (n, 6) xyxy, conf, cls (in descending confidence); labels (m, 5) cls, xyxy. Within each class, each
    prediction in order claims its best-IoU target if that IoU is above iouv[0] and the target is not yet
    claimed. So a target goes to the first such prediction, which is found without a loop over predictions.
    """
    correct = torch.zeros(pred.shape[0], iouv.numel(), dtype=torch.bool)
    if not len(labels) or not len(pred):
        return correct
    tcls, iou_thresholds = labels[:, 0], iouv.cpu()
    for cls in torch.unique(tcls):
        ti = (cls == tcls).nonzero(as_tuple=False).view(-1)
        pi = (cls == pred[:, 5]).nonzero(as_tuple=False).view(-1)
        if not pi.shape[0]:
            continue
        ious, i = box_iou(pred[pi, :4], labels[ti, 1:5]).max(1)
        ious, i, pi = ious.cpu(), i.cpu(), pi.cpu()
        above = (ious > iou_thresholds[0]).nonzero(as_tuple=False).view(-1)  # in prediction order
        if not len(above):
            continue
        _, first = np.unique(i[above].numpy(), return_index=True)  # the first claim of each target
        claims = above[torch.from_numpy(first)]
        correct[pi[claims]] = ious[claims, None] > iou_thresholds
    return correct


class ConfusionMatrix:
    """Confusion matrix of detections against labels at IoU and confidence thresholds; the last row and
    column are background (missed targets and false positives)."""

    def __init__(self, nc, conf=0.25, iou_thres=0.45):
        self.matrix = np.zeros((nc + 1, nc + 1))
        self.nc = nc
        self.conf = conf
        self.iou_thres = iou_thres

    def process_batch(self, detections, labels):
        """detections (n, 6) x1, y1, x2, y2, conf, class; labels (m, 5) class, x1, y1, x2, y2."""
        detections = detections[detections[:, 4] > self.conf]
        gt_classes = labels[:, 0].int()
        detection_classes = detections[:, 5].int()
        iou = box_iou(labels[:, 1:], detections[:, :4])
        x = torch.where(iou > self.iou_thres)
        if x[0].shape[0]:
            matches = torch.cat((torch.stack(x, 1), iou[x[0], x[1]][:, None]), 1).cpu().numpy()
            if x[0].shape[0] > 1:
                matches = matches[matches[:, 2].argsort()[::-1]]
                matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
                matches = matches[matches[:, 2].argsort()[::-1]]
                matches = matches[np.unique(matches[:, 0], return_index=True)[1]]
        else:
            matches = np.zeros((0, 3))
        n = matches.shape[0] > 0
        m0, m1, _ = matches.transpose().astype(int)
        for i, gc in enumerate(gt_classes):
            j = m0 == i
            if n and sum(j) == 1:
                self.matrix[detection_classes[m1[j]], gc] += 1  # correct
            else:
                self.matrix[self.nc, gc] += 1  # background false negative
        for i, dc in enumerate(detection_classes):
            if not any(m1 == i):
                self.matrix[dc, self.nc] += 1  # background false positive

    def plot(self, save_dir='', names=()):
        from utils.plots import plot_confusion_matrix
        plot_confusion_matrix(self.matrix, self.nc, save_dir, names)
