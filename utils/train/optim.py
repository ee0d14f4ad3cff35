"""The published optimizer and learning-rate recipe: parameter groups, nominal batch, cosine schedule, warm-up."""
import logging
import math
import warnings

import numpy as np
import torch

LOGGER = logging.getLogger(__name__)

NBS = 64  # nominal batch size


def optimizer_kwargs(impl):
    """torch.optim keyword for PyTorch's step implementation: 'default', 'foreach' (multi-tensor) or 'fused'."""
    return {'foreach': True} if impl == 'foreach' else {'fused': True} if impl == 'fused' else {}


def build_optimizer(model, hyp, adam=False, impl='default'):
    """Three parameter groups, as published: 0 BatchNorm and other weights without decay, 1 conv weights with
    weight decay, 2 biases without decay. SGD with Nesterov momentum, or Adam with beta1 = momentum.
    impl 'foreach' or 'fused' picks PyTorch's multi-tensor or fused step (same update, fewer kernels)."""
    no_decay, decay, biases = [], [], []
    for k, v in model.named_parameters():
        if not v.requires_grad:
            continue
        if '.bias' in k:
            biases.append(v)
        elif '.weight' in k and '.bn' not in k:
            decay.append(v)
        else:
            no_decay.append(v)
    kw = optimizer_kwargs(impl)
    if adam:
        optimizer = torch.optim.Adam(no_decay, lr=hyp['lr0'], betas=(hyp['momentum'], 0.999), **kw)
    else:
        optimizer = torch.optim.SGD(no_decay, lr=hyp['lr0'], momentum=hyp['momentum'], nesterov=True, **kw)
    optimizer.add_param_group({'params': decay, 'weight_decay': hyp['weight_decay']})
    optimizer.add_param_group({'params': biases})
    LOGGER.info('Optimizer groups: %g .bias, %g conv.weight, %g other', len(biases), len(decay), len(no_decay))
    return optimizer


def smart_optimizer(model, hyp, total_batch_size, adam=False, impl='default'):
    """(optimizer, hyp with weight decay scaled, nominal accumulation). Gradients of round(nbs / batch) batches
    are accumulated, and weight decay is scaled by batch * accumulation / nbs (nominal batch nbs: 64)."""
    nbs = hyp.get('nbs', NBS)
    accumulate = max(round(nbs / total_batch_size), 1)
    hyp = dict(hyp, weight_decay=hyp['weight_decay'] * total_batch_size * accumulate / nbs)
    return build_optimizer(model, hyp, adam, impl), hyp, nbs / total_batch_size


def cosine_lr(epochs, final=0.2):
    """The published schedule: a learning-rate factor falling from 1 to `final` (0.2) along a half cosine."""
    return lambda epoch: ((1 + math.cos(epoch * math.pi / epochs)) / 2) * (1 - final) + final


def step_schedule(scheduler):
    """The per-epoch scheduler step, without PyTorch's warning that it came before any optimizer.step(). That
    happens only when AMP's GradScaler skipped every step of the epoch for float16 overflow (a 1-batch epoch
    whose step is the first); the schedule counts epochs, so no rate is skipped and the warning would be false."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=r'Detected call of `lr_scheduler\.step\(\)` before')
        scheduler.step()


def warmup_iterations(batches_per_epoch, hyp):
    """Warm-up length: max(warmup_epochs epochs, warmup_min_iters iterations); published 3 epochs and 1000."""
    return max(round(hyp.get('warmup_epochs', 3) * batches_per_epoch), int(hyp.get('warmup_min_iters', 1000)))


def set_epoch_lr(optimizer, lr_lambda, epoch):
    """Every group's rate at `epoch` of the (possibly extended) schedule."""
    for g in optimizer.param_groups:
        g['lr'] = g['initial_lr'] * lr_lambda(epoch)


def warmup_step(optimizer, ni, warmup_iters, nominal_accumulate, lr_factor, momentum):
    """Learning rates, momentum and accumulation at warm-up iteration ni (of warmup_iters); returns the
    accumulation. The bias rate falls from 0.1 and the others rise from 0 to initial_lr * lr_factor; momentum
    rises from 0.9 to `momentum`; accumulation from 1 to its nominal value."""
    xi = [0, warmup_iters]
    accumulate = max(1, int(np.interp(ni, xi, [1, nominal_accumulate]).round()))
    for j, g in enumerate(optimizer.param_groups):
        g['lr'] = float(np.interp(ni, xi, [0.1 if j == 2 else 0.0, g['initial_lr'] * lr_factor]))
        if 'momentum' in g:
            g['momentum'] = float(np.interp(ni, xi, [0.9, momentum]))
    return accumulate


class Schedule:
    """The paper's schedule in one object: during the warm-up, each iteration's learning rates, momentum and
    accumulation (warmup_step); at each epoch's end, the cosine's step (a LambdaLR over epochs; epoch e > 0 runs at
    lr_lambda(e - 1), as published)."""

    def __init__(self, optimizer, scheduler, lr_lambda, warmup_iters, nominal_accumulate, momentum):
        self.optimizer, self.scheduler, self.lr_lambda = optimizer, scheduler, lr_lambda
        self.warmup_iters, self.nominal_accumulate, self.momentum = warmup_iters, nominal_accumulate, momentum
        scheduler.last_epoch = -1

    def warm_up(self, ni, epoch):
        """Set the rates and momentum of iteration ni (in epoch `epoch`) while the warm-up lasts; returns its
        accumulation, or None after the warm-up."""
        if ni > self.warmup_iters:
            return None
        return warmup_step(self.optimizer, ni, self.warmup_iters, self.nominal_accumulate, self.lr_lambda(epoch),
                           self.momentum)

    def end_epoch(self):
        """Step to the next epoch's rates; returns the ended epoch's rates (each group's)."""
        rates = [g['lr'] for g in self.optimizer.param_groups]
        step_schedule(self.scheduler)
        return rates
