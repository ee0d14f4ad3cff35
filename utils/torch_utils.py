"""PyTorch helpers: device selection, BatchNorm folding, model summary and FLOPs, EMA, image scaling (and
--multi-scale resizing)."""
import logging
import math
import os
import re
import time
from contextlib import contextmanager
from copy import deepcopy

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from utils.errors import ArgumentError

LOGGER = logging.getLogger(__name__)


def select_device(device='', batch_size=None):
    """Return the torch.device for '' (CUDA if available), 'cpu', '0' or '0,1,2,3'.

    Asking for CUDA where none is available, or a device that is not 'cpu' or GPU indices, is an error naming
    --device (one line from the scripts), rather than a silent CPU run or a traceback.
    """
    device = str(device).strip().lower().replace('cuda:', '').replace(' ', '')
    if device == 'cpu':
        LOGGER.info('Using CPU')
        return torch.device('cpu')
    if device and not re.fullmatch(r'\d+(,\d+)*', device):
        raise ArgumentError(f'--device {device}: give cpu, a GPU index (0) or several (0,1,2,3)')
    if device:
        os.environ['CUDA_VISIBLE_DEVICES'] = device  # before CUDA is first queried, as published
        if not torch.cuda.is_available():
            why = f'no CUDA GPU {device} is visible' if torch.version.cuda else 'this PyTorch is a CPU-only build'
            raise ArgumentError(f'--device {device}: {why}; use --device cpu')
    if not torch.cuda.is_available():
        LOGGER.info('Using CPU')
        return torch.device('cpu')
    n = torch.cuda.device_count()
    if n > 1 and batch_size and batch_size % n:
        raise ArgumentError(f'--batch-size {batch_size} is not a multiple of the GPU count {n}')
    for i in range(n):
        p = torch.cuda.get_device_properties(i)
        LOGGER.info('Using CUDA device%g %s (%.0f MiB)', i, p.name, p.total_memory / 2 ** 20)
    return torch.device('cuda:0')


def time_synchronized():
    """time.perf_counter() after waiting for pending CUDA work."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


@contextmanager
def torch_distributed_zero_first(local_rank):
    """Let the local master do something first (e.g. build a cache) while the other ranks wait."""
    if local_rank not in (-1, 0):
        dist.barrier()
    yield
    if local_rank == 0:
        dist.barrier()


def is_parallel(model):
    return type(model) in (nn.parallel.DataParallel, nn.parallel.DistributedDataParallel)


def de_parallel(model):
    """The bare model of a torch.compile and/or DP/DDP wrapper (or the model itself)."""
    model = getattr(model, '_orig_mod', model)  # torch.compile
    model = model.module if is_parallel(model) else model
    return getattr(model, '_orig_mod', model)


def set_bn_momentum(model, momentum):
    """Set the running-statistics momentum of every BatchNorm layer (a hyp file's bn_momentum)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = float(momentum)


def initialize_weights(model):
    """Published initialisation: default conv init; BatchNorm eps 1e-3 and momentum 0.03, as released."""
    for m in model.modules():
        t = type(m)
        if t is nn.BatchNorm2d:
            m.eps = 1e-3
            m.momentum = 0.03
        elif t in (nn.LeakyReLU, nn.ReLU, nn.ReLU6):
            m.inplace = True


def fuse_conv_and_bn(conv, bn):
    """conv with bn folded in (in place): afterwards conv(x) equals bn(conv(x)) in eval mode. Returns conv.

    The published code built a new Conv2d (a random init, then overwritten); the values are the same."""
    w_conv = conv.weight.detach().float().view(conv.out_channels, -1)
    scale = bn.weight.detach().float() / torch.sqrt(bn.running_var.float() + bn.eps)
    b_conv = conv.bias.detach().float() if conv.bias is not None else torch.zeros_like(scale)
    b_bn = bn.bias.detach().float() - scale * bn.running_mean.float()
    dtype = conv.weight.dtype
    conv.weight = nn.Parameter((scale[:, None] * w_conv).view(conv.weight.shape).to(dtype), requires_grad=False)
    conv.bias = nn.Parameter((scale * b_conv + b_bn).to(dtype), requires_grad=False)
    return conv


def count_flops(model, img_size=640, ch=3):
    """GFLOPs (2 x multiply-adds) of one forward pass at img_size, counted by torch.utils.flop_counter.

    Counted at the model's largest stride and scaled by area, which is exact for sizes that are multiples
    of it (convolution cost is proportional to the output area).
    """
    from torch.utils.flop_counter import FlopCounterMode
    stride = max(int(model.stride.max()), 32) if hasattr(model, 'stride') else 32
    img_size = img_size if isinstance(img_size, (list, tuple)) else (img_size, img_size)
    p = next(model.parameters())
    x = torch.zeros((1, ch, stride, stride), device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9 * img_size[0] / stride * img_size[1] / stride


def model_info(model, verbose=False, img_size=640):
    """Log layer count, parameters, gradients and GFLOPs; returns (layers, parameters, gflops)."""
    n_p = sum(x.numel() for x in model.parameters())
    n_g = sum(x.numel() for x in model.parameters() if x.requires_grad)
    n_l = len(list(model.modules()))
    if verbose:
        LOGGER.info('%5s %40s %9s %12s %20s %10s %10s', 'layer', 'name', 'gradient', 'parameters', 'shape', 'mu',
                    'sigma')
        for i, (name, p) in enumerate(model.named_parameters()):
            LOGGER.info('%5g %40s %9s %12g %20s %10.3g %10.3g', i, name, p.requires_grad, p.numel(),
                        list(p.shape), p.float().mean(), p.float().std() if p.numel() > 1 else 0)
    try:
        gflops = count_flops(model, img_size)
        fs = f', {gflops:.1f} GFLOPs at {img_size}'
    except (RuntimeError, ValueError, AttributeError, StopIteration) as e:  # e.g. a model without parameters
        LOGGER.debug('FLOPs not counted: %s', e)
        gflops, fs = None, ''
    LOGGER.info('Model Summary: %d layers, %s parameters, %s gradients%s', n_l, f'{n_p:,}', f'{n_g:,}', fs)
    return n_l, n_p, gflops


def scale_img(img, ratio=1.0, same_shape=False, gs=128):
    """Resize a (bs,3,h,w) batch bilinearly by ratio, then pad right/bottom to a multiple of gs with 0.447."""
    if ratio == 1.0:
        return img
    h, w = img.shape[2:]
    s = (int(h * ratio), int(w * ratio))
    img = F.interpolate(img, size=s, mode='bilinear', align_corners=False)
    if not same_shape:
        h, w = (math.ceil(x * ratio / gs) * gs for x in (h, w))
    return F.pad(img, [0, w - s[1], 0, h - s[0]], value=0.447)  # ImageNet mean


def copy_attr(a, b, include=(), exclude=()):
    """Copy b's public attributes onto a (only `include` when given, never `exclude`)."""
    for k, v in b.__dict__.items():
        if (include and k not in include) or k.startswith('_') or k in exclude:
            continue
        setattr(a, k, v)


def intersect_dicts(da, db, exclude=()):
    """Entries of da whose keys are in db with the same shape, skipping keys containing an `exclude` string."""
    return {k: v for k, v in da.items() if k in db and not any(x in k for x in exclude) and v.shape == db[k].shape}


EMA_ATTRIBUTES = ('nc', 'names', 'yaml', 'stride', 'category_ids')  # what the EMA copy follows (no training settings)


class ModelEMA:
    """Exponential moving average of all floating model state, as published.

    decay = 0.9999 * (1 - exp(-updates / 2000)) ramps up so early epochs are not dominated by the random
    initialisation. The update uses fused foreach kernels over all tensors at once.
    """

    def __init__(self, model, decay=0.9999, updates=0):
        self.ema = deepcopy(de_parallel(model)).eval()
        self.updates = updates
        self.base_decay = decay
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def decay(self, updates):
        return self.base_decay * (1 - math.exp(-updates / 2000))

    def update(self, model):
        with torch.no_grad():
            self.updates += 1
            d = self.decay(self.updates)
            msd = de_parallel(model).state_dict()
            ema_t, model_t = [], []
            for k, v in self.ema.state_dict().items():
                if v.dtype.is_floating_point:
                    ema_t.append(v)
                    model_t.append(msd[k].detach().to(v.dtype))
            torch._foreach_mul_(ema_t, d)
            torch._foreach_add_(ema_t, model_t, alpha=1. - d)

    def update_attr(self, model, include=(), exclude=('process_group', 'reducer')):
        copy_attr(self.ema, model, include, exclude)


def random_rescale(imgs, imgsz, stride, rng):
    """--multi-scale: the batch resized to a random multiple of the stride in [0.5, 1.5] x imgsz."""
    sz = rng.randrange(int(imgsz * 0.5), int(imgsz * 1.5) + stride) // stride * stride
    sf = sz / max(imgs.shape[2:])
    if sf != 1:
        ns = [math.ceil(x * sf / stride) * stride for x in imgs.shape[2:]]
        imgs = F.interpolate(imgs, size=ns, mode='bilinear', align_corners=False)
    return imgs
