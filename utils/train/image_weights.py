"""--image-weights: class weights from the labels, and each epoch's draw of images by them and the last mAPs."""
import numpy as np
import torch
import torch.distributed as dist

from utils.sampling import epoch_rng


def class_weights_from_labels(labels, nc=80):
    """Inverse class frequency, normalised to sum 1 (classes without labels count as 1)."""
    classes = np.concatenate([x[:, 0] for x in labels if len(x)] or [np.zeros(0)]).astype(int)
    weights = np.bincount(classes, minlength=nc).astype(np.float64)
    weights[weights == 0] = 1
    weights = 1 / weights
    return torch.from_numpy(weights / weights.sum()).float()


def image_weights_from_labels(labels, nc=80, class_weights=None):
    """Sampling weight of each image: the sum of its labels' class weights."""
    cw = np.ones(nc) if class_weights is None else np.asarray(class_weights)
    counts = np.array([np.bincount(x[:, 0].astype(int), minlength=nc) for x in labels])
    return (cw.reshape(1, nc) * counts).sum(1) + 1e-9


def image_order(dataset, class_weights, maps, seed, epoch, rank, device):
    """--image-weights: the images drawn for this epoch's positions by class weights (rank 0 draws from
    (seed, epoch) and the last per-class mAPs, which only it has; the others receive the draw)."""
    nc = len(class_weights)
    images = [0] * dataset.n
    if rank in (-1, 0):
        w = class_weights * (1 - np.asarray(maps if maps is not None else np.zeros(nc))) ** 2
        images = epoch_rng(seed, epoch).choices(range(dataset.n), k=dataset.n,
                                                weights=image_weights_from_labels(dataset.labels, nc, w))
    if rank != -1:
        order = torch.tensor(images, device=device)
        dist.broadcast(order, 0)
        images = order.cpu().tolist()
    return images
