"""Autoanchor (published; docs/architecture.md, "Training"): check the anchors' best possible recall; if < 0.98,
evolve new ones."""
import logging

import numpy as np
import torch

from utils.torch_utils import de_parallel

LOGGER = logging.getLogger(__name__)


def _label_wh(dataset, imgsz, rng, augment_scale=True):
    """Label widths and heights in pixels at imgsz (with the published 0.9-1.1 random scale)."""
    shapes = imgsz * dataset.shapes / dataset.shapes.max(1, keepdims=True)
    scale = rng.uniform(0.9, 1.1, size=(shapes.shape[0], 1)) if augment_scale else 1.0
    wh = np.concatenate([l[:, 3:5] * s for s, l in zip(shapes * scale, dataset.labels) if len(l)], 0) \
        if any(len(l) for l in dataset.labels) else np.zeros((0, 2))
    return torch.tensor(wh, dtype=torch.float32)


def _metrics(k, wh, thr):
    """(best possible recall, anchors above threshold per label) of anchors k (n, 2) for labels wh (m, 2)."""
    r = wh[:, None] / k[None]
    x = torch.min(r, 1. / r).min(2)[0]
    best = x.max(1)[0]
    return (best > 1. / thr).float().mean().item(), (x > 1. / thr).float().sum(1).mean().item()


def check_anchors(dataset, model, thr=4.0, imgsz=640, seed=0):
    """Log the BPR of the model's anchors; replace them in place when evolved ones recall better."""
    m = de_parallel(model).model[-1]
    rng = np.random.default_rng(seed)
    wh = _label_wh(dataset, imgsz, rng)
    if not len(wh):
        LOGGER.info('autoanchor: no labels, anchors kept')
        return
    anchors = (m.anchor_grid.clone().cpu().view(-1, 2))
    bpr, aat = _metrics(anchors, wh, thr)
    LOGGER.info('autoanchor: anchors/target = %.2f, best possible recall (BPR) = %.4f', aat, bpr)
    if bpr >= 0.98:
        return
    na = m.anchor_grid.numel() // 2
    usable = int((wh >= 2.0).all(1).sum())
    if usable < na:  # too few boxes to fit na anchors to: the model's own are as good a start as any
        LOGGER.warning('WARNING: autoanchor: %d labels of 2+ pixels, fewer than the %d anchors to fit: anchors kept',
                       usable, na)
        return
    LOGGER.info('autoanchor: BPR < 0.98, computing new anchors (k-means + genetic evolution)')
    new = kmean_anchors(wh.numpy(), n=na, img_size=imgsz, thr=thr, gen=1000, seed=seed)
    new_bpr = _metrics(torch.tensor(new, dtype=torch.float32), wh, thr)[0]
    if new_bpr > bpr:
        new = torch.tensor(new, device=m.anchors.device).type_as(m.anchors)
        m.anchor_grid[:] = new.clone().view_as(m.anchor_grid)
        from models.yolo import check_anchor_order
        check_anchor_order(m)  # levels by area as by stride (darknet's tiny lists stride 32 first)
        m.anchors[:] = m.anchor_grid.view_as(m.anchors) / m.stride.to(m.anchors.device).view(-1, 1, 1)
        LOGGER.info('autoanchor: new anchors saved to the model (BPR %.4f): %s', new_bpr,
                    ', '.join(f'{int(round(x))},{int(round(y))}' for x, y in m.anchor_grid.view(-1, 2).tolist()))
    else:
        LOGGER.info('autoanchor: evolved anchors are no better (BPR %.4f), original anchors kept', new_bpr)


def kmean_anchors(wh, n=9, img_size=640, thr=4.0, gen=1000, seed=0):
    """k-means on whitened label sizes, then `gen` generations of mutation (p 0.9, sigma 0.1) maximising
    the mean best-anchor fitness. Returns anchors (n, 2) sorted by area."""
    from scipy.cluster.vq import kmeans
    thr = 1. / thr
    rng = np.random.default_rng(seed)
    wh = wh[(wh >= 2.0).all(1)]  # drop labels under 2 pixels
    if len(wh) < n:
        raise ValueError(f'autoanchor needs at least {n} labels of 2+ pixels, found {len(wh)}')
    wh_t = torch.tensor(wh, dtype=torch.float32)

    def fitness(k):
        r = wh_t[:, None] / torch.tensor(k, dtype=torch.float32)[None]
        best = torch.min(r, 1. / r).min(2)[0].max(1)[0]
        return (best * (best > thr).float()).mean().item()

    s = wh.std(0)
    k, _ = kmeans(wh / s, n, iter=30, seed=int(rng.integers(2 ** 31)))
    k = k * s
    if len(k) < n:  # k-means returned fewer centroids (duplicates): pad with random label sizes
        k = np.concatenate([k, wh[rng.choice(len(wh), n - len(k))]], 0)
    f, sh, mp, sigma = fitness(k), k.shape, 0.9, 0.1
    for _ in range(gen):
        v = np.ones(sh)
        while (v == 1).all():
            v = ((rng.random(sh) < mp) * rng.random() * rng.standard_normal(sh) * sigma + 1).clip(0.3, 3.0)
        kg = (k.copy() * v).clip(min=2.0)
        fg = fitness(kg)
        if fg > f:
            f, k = fg, kg.copy()
    return k[np.argsort(k.prod(1))]
