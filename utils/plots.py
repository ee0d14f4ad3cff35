"""Plots: training batches with boxes, PR curves, confusion matrix, label statistics, results, study."""
import logging
import math
from pathlib import Path

import cv2
import numpy as np

LOGGER = logging.getLogger(__name__)


def _pyplot():
    """matplotlib.pyplot on the Agg backend (files only, never a window), imported on first use: the import
    takes 0.4 s, which detect.py, and test.py without plots, do not need."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def color_list():
    """20 distinct BGR colours for class ids."""
    hexs = ('FF3838', 'FF9D97', 'FF701F', 'FFB21D', 'CFD231', '48F90A', '92CC17', '3DDB86', '1A9334', '00D4BB',
            '2C99A8', '00C2FF', '344593', '6473FF', '0018EC', '8438FF', '520085', 'CB38FF', 'FF95C8', 'FF37C7')
    return [tuple(int(h[i:i + 2], 16) for i in (4, 2, 0)) for h in hexs]


def plot_one_box(x, img, color=None, label=None, line_thickness=None):
    """Draw one xyxy box with an optional label on a BGR image (in place)."""
    tl = line_thickness or max(round(0.002 * (img.shape[0] + img.shape[1]) / 2) + 1, 1)
    color = color or (0, 255, 0)
    c1, c2 = (int(x[0]), int(x[1])), (int(x[2]), int(x[3]))
    cv2.rectangle(img, c1, c2, color, thickness=tl, lineType=cv2.LINE_AA)
    if label:
        tf = max(tl - 1, 1)
        t_size = cv2.getTextSize(label, 0, fontScale=tl / 3, thickness=tf)[0]
        c2 = c1[0] + t_size[0], c1[1] - t_size[1] - 3
        cv2.rectangle(img, c1, c2, color, -1, cv2.LINE_AA)
        cv2.putText(img, label, (c1[0], c1[1] - 2), 0, tl / 3, (225, 255, 255), thickness=tf, lineType=cv2.LINE_AA)


def plot_images(images, targets, paths=None, fname='images.jpg', names=None, max_size=640, max_subplots=16):
    """Mosaic of a batch (B, 3, H, W RGB, 0-255 or 0-1) with targets (n, 6 or 7: image, class, xywh, [conf]),
    xywh normalised or in pixels. Written to fname; returns the mosaic (BGR)."""
    images = images.cpu().float().numpy() if hasattr(images, 'cpu') else np.asarray(images, dtype=np.float32)
    targets = targets.cpu().numpy() if hasattr(targets, 'cpu') else np.asarray(targets)
    if images.max() <= 1:
        images = images * 255
    bs, _, h, w = images.shape
    bs = min(bs, max_subplots)
    ns = math.ceil(bs ** 0.5)
    scale = min(1.0, max_size / max(h, w) / ns * ns) if max(h, w) * ns > max_size * ns else 1.0
    h, w = math.ceil(scale * h), math.ceil(scale * w)
    mosaic = np.full((int(ns * h), int(ns * w), 3), 255, dtype=np.uint8)
    colors = color_list()
    for i in range(bs):
        x0, y0 = int(w * (i % ns)), int(h * (i // ns))
        img = images[i].transpose(1, 2, 0)[:, :, ::-1].astype(np.uint8)  # RGB -> BGR
        if scale < 1:
            img = cv2.resize(img, (w, h))
        mosaic[y0:y0 + h, x0:x0 + w] = img
        t = targets[targets[:, 0] == i] if len(targets) else targets
        if len(t):
            boxes = t[:, 2:6].copy()
            if boxes.max() <= 1.01:  # normalised
                boxes[:, [0, 2]] *= w
                boxes[:, [1, 3]] *= h
            elif scale < 1:
                boxes *= scale
            xyxy = np.stack([boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2,
                             boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2], 1)
            xyxy[:, [0, 2]] += x0
            xyxy[:, [1, 3]] += y0
            for j, box in enumerate(xyxy):
                cls = int(t[j, 1])
                conf = t[j, 6] if t.shape[1] > 6 else None
                if conf is not None and conf < 0.25:
                    continue
                name = names[cls] if names and cls < len(names) else str(cls)
                label = name if conf is None else f'{name} {conf:.1f}'
                plot_one_box(box, mosaic, color=colors[cls % len(colors)], label=label, line_thickness=1)
        if paths is not None and i < len(paths):
            cv2.putText(mosaic, Path(paths[i]).name[:40], (x0 + 5, y0 + 15), 0, 0.4, (220, 220, 220), 1,
                        cv2.LINE_AA)
        cv2.rectangle(mosaic, (x0, y0), (x0 + w, y0 + h), (255, 255, 255), thickness=2)
    if fname:
        cv2.imwrite(str(fname), mosaic)
    return mosaic


def plot_pr_curve(px, py, ap, save_dir='.', names=(), classes=()):
    """Precision-recall curve of each class (at IoU 0.5) and of all classes."""
    plt = _pyplot()
    fig, ax = plt.subplots(1, 1, figsize=(9, 6), tight_layout=True)
    py = np.stack(py, 1)
    ap50 = ap[:, 0]
    if 0 < len(classes) < 21:
        for i, c in enumerate(int(c) for c in classes[:py.shape[1]]):
            name = names[c] if names and c < len(names) else str(c)
            ax.plot(px, py[:, i], linewidth=1, label=f'{name} {ap50[i]:.3f}')
    else:
        ax.plot(px, py, linewidth=1, color='grey')
    ax.plot(px, py.mean(1), linewidth=3, color='blue', label=f'all classes {ap50.mean():.3f} mAP@0.5')
    ax.set_xlabel('Recall')
    ax.set_ylabel('Precision')
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(bbox_to_anchor=(1.04, 1), loc='upper left')
    fig.savefig(Path(save_dir) / 'PR_curve.png', dpi=150)
    plt.close(fig)


def plot_confusion_matrix(matrix, nc, save_dir='.', names=()):
    """Column-normalised confusion matrix with a background row and column."""
    plt = _pyplot()
    array = matrix / (matrix.sum(0).reshape(1, nc + 1) + 1e-6)
    array[array < 0.005] = np.nan
    fig, ax = plt.subplots(figsize=(12, 9), tight_layout=True)
    im = ax.imshow(array, cmap='Blues', vmin=0.0, vmax=1.0)
    labels = list(names)[:nc] + ['background'] if names and 0 < nc < 99 else None
    if labels:
        ax.set_xticks(range(nc + 1))
        ax.set_yticks(range(nc + 1))
        ax.set_xticklabels(labels, rotation=90, fontsize=6)
        ax.set_yticklabels(labels, fontsize=6)
    ax.set_xlabel('True')
    ax.set_ylabel('Predicted')
    fig.colorbar(im, ax=ax)
    fig.savefig(Path(save_dir) / 'confusion_matrix.png', dpi=150)
    plt.close(fig)


def plot_labels(labels, save_dir='.', names=()):
    """Histogram of classes and distributions of box centres and sizes (labels (n, 5) class, xywh norm)."""
    plt = _pyplot()
    c, b = labels[:, 0], labels[:, 1:].T
    nc = int(c.max() + 1) if len(c) else 1
    fig, ax = plt.subplots(2, 2, figsize=(8, 8), tight_layout=True)
    ax = ax.ravel()
    ax[0].hist(c, bins=np.linspace(0, nc, nc + 1) - 0.5, rwidth=0.8)
    ax[0].set_xlabel('classes')
    ax[1].scatter(b[0], b[1], c=c, cmap='jet', s=2, alpha=0.5)
    ax[1].set_xlabel('x')
    ax[1].set_ylabel('y')
    ax[2].scatter(b[2], b[3], c=c, cmap='jet', s=2, alpha=0.5)
    ax[2].set_xlabel('width')
    ax[2].set_ylabel('height')
    ax[3].hist2d(b[2], b[3], bins=50, cmap='Blues')
    ax[3].set_xlabel('width')
    ax[3].set_ylabel('height')
    fig.savefig(Path(save_dir) / 'labels.png', dpi=150)
    plt.close(fig)


RESULT_COLUMNS = ['Box (CIoU)', 'Objectness', 'Classification', 'Precision', 'Recall',
                  'val Box (CIoU)', 'val Objectness', 'val Classification', 'mAP@0.5', 'mAP@0.5:0.95']


def plot_results(save_dir='.'):
    """results.png from results.txt (columns as published: 2-4 train losses, 8-11 metrics, 12-14 val losses)."""
    plt = _pyplot()
    path = Path(save_dir) / 'results.txt'
    rows = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    rows = [r for r in rows if len(r) == 15]  # earlier versions wrote 7 columns for an epoch without a finite loss
    if not rows:
        return
    y = np.array([[float(v) for v in r[2:5] + r[8:15]] for r in rows]).T  # skip epoch, mem, total, targets, size
    order = [0, 1, 2, 3, 4, 7, 8, 9, 5, 6]  # as RESULT_COLUMNS
    fig, ax = plt.subplots(2, 5, figsize=(12, 6), tight_layout=True)
    x = np.arange(1, y.shape[1] + 1)
    for k, (col, a) in enumerate(zip(order, ax.ravel())):
        a.plot(x, y[col], marker='.', linewidth=2, markersize=6)
        a.set_title(RESULT_COLUMNS[k])
    fig.savefig(Path(save_dir) / 'results.png', dpi=150)
    plt.close(fig)


def plot_study(sizes, results, save_path):
    """mAP and speed against image size for `test.py --task study`."""
    plt = _pyplot()
    results = np.asarray(results)
    fig, ax = plt.subplots(1, 2, figsize=(10, 4), tight_layout=True)
    ax[0].plot(sizes, results[:, 3], '.-', label='mAP@0.5:0.95')
    ax[0].plot(sizes, results[:, 2], '.-', label='mAP@0.5')
    ax[0].set_xlabel('image size')
    ax[0].legend()
    ax[1].plot(sizes, results[:, 7], '.-')
    ax[1].set_xlabel('image size')
    ax[1].set_ylabel('ms per image (inference + NMS)')
    fig.savefig(save_path, dpi=150)
    plt.close(fig)
