"""Image and label augmentations of the published pipeline (docs/architecture.md, "Data").

Every function draws its random numbers in the same order as the published code, so a seeded run
produces the same images and labels; the box handling is vectorised.
"""
import math
import random

import cv2
import numpy as np

GREY = (114, 114, 114)


def letterbox(img, new_shape=(640, 640), color=GREY, auto=True, scaleFill=False, scaleup=True, stride=128):
    """Resize keeping the aspect ratio and pad to new_shape (h, w) or an int.

    auto: pad only up to the next multiple of `stride` (128, the largest stride of the family, as detect.py
    uses it); scaleFill: stretch to new_shape without padding; scaleup False: never enlarge.
    Returns (image, (w, h) ratios, (w, h) half-paddings).
    """
    shape = img.shape[:2]  # current [height, width]
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:
        r = min(r, 1.0)
    ratio = r, r
    new_unpad = int(round(shape[1] * r)), int(round(shape[0] * r))  # (w, h)
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if auto:
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    elif scaleFill:
        dw, dh = 0.0, 0.0
        new_unpad = (new_shape[1], new_shape[0])
        ratio = new_shape[1] / shape[1], new_shape[0] / shape[0]
    dw /= 2
    dh /= 2
    if shape[::-1] != new_unpad:
        img = cv2.resize(img, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return img, ratio, (dw, dh)


def augment_hsv(img, hgain=0.5, sgain=0.5, vgain=0.5):
    """Random hue/saturation/value gains in [1-g, 1+g], applied in place to a BGR uint8 image via LUTs.

    One LUT per channel as published (a single three-channel LUT pass measured slower on our CPUs)."""
    r = np.random.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    x = np.arange(0, 256, dtype=np.int16)
    luts = (((x * r[0]) % 180).astype(np.uint8), np.clip(x * r[1], 0, 255).astype(np.uint8),
            np.clip(x * r[2], 0, 255).astype(np.uint8))
    channels = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    cv2.cvtColor(cv2.merge([cv2.LUT(c, lut) for c, lut in zip(channels, luts)]), cv2.COLOR_HSV2BGR, dst=img)


def perspective_matrix(in_shape, out_size, degrees=10, translate=.1, scale=.1, shear=10, perspective=0.0):
    """Draw the random warp of random_perspective: (3x3 matrix M, scale s).

    in_shape is the (h, w) of the source, out_size the (h, w) of the result.
    """
    height, width = out_size
    C = np.eye(3)  # centre
    C[0, 2] = -in_shape[1] / 2
    C[1, 2] = -in_shape[0] / 2
    P = np.eye(3)  # perspective
    P[2, 0] = random.uniform(-perspective, perspective)
    P[2, 1] = random.uniform(-perspective, perspective)
    R = np.eye(3)  # rotation and scale
    a = random.uniform(-degrees, degrees)
    s = random.uniform(1 - scale, 1 + scale)
    R[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=s)
    S = np.eye(3)  # shear
    S[0, 1] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    S[1, 0] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    T = np.eye(3)  # translation
    T[0, 2] = random.uniform(0.5 - translate, 0.5 + translate) * width
    T[1, 2] = random.uniform(0.5 - translate, 0.5 + translate) * height
    return T @ S @ R @ P @ C, s  # order of operations (right to left) matters


def warp_image(img, M, out_size, perspective=0.0):
    height, width = out_size
    if perspective:
        return cv2.warpPerspective(img, M, dsize=(width, height), borderValue=GREY)
    return cv2.warpAffine(img, M[:2], dsize=(width, height), borderValue=GREY)


def warp_labels(targets, M, s, out_size, perspective=0.0):
    """Warp (n, 5) [cls, x1, y1, x2, y2] pixel labels by M through their 4 corners; clip; keep candidates."""
    n = len(targets)
    if not n:
        return targets
    height, width = out_size
    xy = np.ones((n * 4, 3))
    xy[:, :2] = targets[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
    xy = xy @ M.T
    xy = (xy[:, :2] / xy[:, 2:3]).reshape(n, 8) if perspective else xy[:, :2].reshape(n, 8)
    x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
    xy = np.concatenate((x.min(1), y.min(1), x.max(1), y.max(1))).reshape(4, n).T
    xy[:, [0, 2]] = xy[:, [0, 2]].clip(0, width)
    xy[:, [1, 3]] = xy[:, [1, 3]].clip(0, height)
    i = box_candidates(box1=targets[:, 1:5].T * s, box2=xy.T)
    targets = targets[i]
    targets[:, 1:5] = xy[i]
    return targets


def random_perspective(img, targets=(), degrees=10, translate=.1, scale=.1, shear=10, perspective=0.0,
                       border=(0, 0)):
    """Random rotation, scale, shear, perspective and translation of an image and its xyxy pixel labels.

    The output is the input size plus 2*border on each axis (border -s/2 turns a 2s mosaic into s).
    """
    out_size = (img.shape[0] + border[0] * 2, img.shape[1] + border[1] * 2)
    M, s = perspective_matrix(img.shape[:2], out_size, degrees, translate, scale, shear, perspective)
    if (border[0] != 0) or (border[1] != 0) or (M != np.eye(3)).any():
        img = warp_image(img, M, out_size, perspective)
    return img, warp_labels(targets, M, s, out_size, perspective)


def box_candidates(box1, box2, wh_thr=2, ar_thr=20, area_thr=0.2):
    """Boxes (4, n) kept after augmentation: w, h > wh_thr px, area > area_thr of before, aspect < ar_thr."""
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + 1e-16), h2 / (w2 + 1e-16))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + 1e-16) > area_thr) & (ar < ar_thr)


def xywhn2xyxy(x, w, h, padw=0.0, padh=0.0):
    """(n, 5) [cls, xc, yc, w, h] normalised -> [cls, x1, y1, x2, y2] pixels in a w x h image offset by pad."""
    y = x.copy()
    y[:, 1] = w * (x[:, 1] - x[:, 3] / 2) + padw
    y[:, 2] = h * (x[:, 2] - x[:, 4] / 2) + padh
    y[:, 3] = w * (x[:, 1] + x[:, 3] / 2) + padw
    y[:, 4] = h * (x[:, 2] + x[:, 4] / 2) + padh
    return y


def mosaic_placement(i, s, xc, yc, h, w):
    """Where image i (0-3, clockwise from top left) of (h, w) goes on the 2s x 2s canvas centred at (xc, yc):
    (canvas box, image box) as xyxy."""
    if i == 0:  # top left
        a = max(xc - w, 0), max(yc - h, 0), xc, yc
        b = w - (a[2] - a[0]), h - (a[3] - a[1]), w, h
    elif i == 1:  # top right
        a = xc, max(yc - h, 0), min(xc + w, s * 2), yc
        b = 0, h - (a[3] - a[1]), min(w, a[2] - a[0]), h
    elif i == 2:  # bottom left
        a = max(xc - w, 0), yc, xc, min(s * 2, yc + h)
        b = w - (a[2] - a[0]), 0, w, min(a[3] - a[1], h)
    else:  # bottom right
        a = xc, yc, min(xc + w, s * 2), min(s * 2, yc + h)
        b = 0, 0, min(w, a[2] - a[0]), min(a[3] - a[1], h)
    return a, b


def mixup(img, labels, img2, labels2):
    """Blend two augmented samples with ratio ~ Beta(8, 8); labels are concatenated."""
    r = np.random.beta(8.0, 8.0)
    img = (img * r + img2 * (1 - r)).astype(np.uint8)
    return img, np.concatenate((labels, labels2), 0)
