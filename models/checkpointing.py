"""Activation checkpointing: memory traded for compute in training (train.py --activation-checkpointing).

A checkpointed block keeps only its input for the backward pass; the activations inside it are computed again
when its gradients are needed (torch.utils.checkpoint, non-reentrant). YAML models group their rows into runs
of at most two rows whose inner output no later row reads (checkpoint_runs): a CSP block of the backbone or the
neck with the conv before it. Each run is checkpointed by its plan:
- 'run': the run as a whole, so that only its input is kept;
- 'each' (runs holding a CSP block of DEEP bottlenecks or more): every bottleneck, every Conv and the join of
  the block's two paths on their own. Checkpointed whole, such a run keeps little until backward, but its
  recomputation then holds all of its activations at once, late in the backward pass when the gradients are
  already allocated: that was the step's peak (P7 at 1536: 2.7 GiB for one block). In pieces it keeps more
  inputs, and recomputes one piece at a time;
- 'run+each' (runs whose input is at stride FINE_STRIDE or finer: the stem and the first CSP block, the largest
  tensors of the network): the run as a whole, and inside it each piece again (nested), so that its
  recomputation keeps only the pieces' inputs. These rows are computed three times, which costs little: they do
  a few percent of the network's operations. (Nesting only each Conv, as before, left the first CSP block's join
  recomputed whole: P7 at 1536 peaked there, 0.18 GiB higher.)
The Detect head is not checkpointed. Darknet models checkpoint each [convolutional] layer.

BatchNorm in train mode updates its running statistics at every forward; the recomputation would update them a
second time, with the same batch, and move them further than the step without checkpointing does. The first
pass updates them; the recomputation runs with them put back afterwards (running mean, variance and the batch
count), so the statistics, like the gradients, are those of the step without checkpointing.
"""
from contextlib import contextmanager

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

MAX_RUN = 2  # rows per checkpointed run
FINE_STRIDE = 2  # runs whose input is at this stride or finer also checkpoint each piece inside them
DEEP = 3  # runs holding a CSP block of this many bottlenecks or more checkpoint each bottleneck and Conv instead
_pieces = False  # whether pieces checkpoint themselves (see maybe_alone); module state, as a context variable
#                 would stop torch.compile


def batch_norms(module):
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextmanager
def running_stats_kept(bns):
    """The batch norms' running statistics as they are now, put back on exit."""
    saved = [(bn, bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in bns]
    try:
        yield
    finally:
        with torch.no_grad():
            for bn, mean, var, count in saved:
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.num_batches_tracked.copy_(count)


def checkpointed(fn, module, *inputs):
    """fn(*inputs), the activations of `module` inside it recomputed in backward; its batch norms' running
    statistics are updated once."""
    bns = batch_norms(module)
    calls = []

    def run(*args):
        calls.append(1)
        if len(calls) == 1:  # the forward pass
            return fn(*args)
        with running_stats_kept(bns):  # the recomputation in backward
            return fn(*args)
    return checkpoint(run, *inputs, use_reentrant=False)


@contextmanager
def pieces(on):
    """Within this block, the pieces (each Conv, each Bottleneck, the join of a CSP block's two paths) checkpoint
    themselves when `on` (see maybe_alone)."""
    global _pieces
    previous, _pieces = _pieces, on
    try:
        yield
    finally:
        _pieces = previous


def maybe_alone(module, forward, *inputs):
    """forward(*inputs) of a piece (a Conv, a Bottleneck, or the join of a CSP block's two paths), checkpointed on
    its own when pieces are on; nothing inside it is checkpointed again."""
    if not _pieces or not torch.is_grad_enabled():
        return forward(*inputs)

    def run(*t):
        with pieces(False):
            return forward(*t)
    return checkpointed(run, module, *inputs)


def plan(run, x, area):
    """The plan of a run of rows whose input is x, in a model whose input has `area` pixels: 'run+each', 'each' or
    'run' (see the module's docstring)."""
    x = x[0] if isinstance(x, list) else x
    if x.shape[-2] * x.shape[-1] * FINE_STRIDE ** 2 >= area:
        return 'run+each'
    deep = any(isinstance(getattr(m, 'm', None), nn.Sequential) and len(m.m) >= DEEP for m in run)
    return 'each' if deep else 'run'


def checkpoint_runs(rows, saved):
    """A YAML model's rows grouped into runs that one checkpoint can cover: a row joins the run before it when it
    reads only that run's output (f == -1) and no later row reads the output before it (not in `saved`). So a
    backbone's downsampling conv and the CSP block after it are one run, and only the run's input is kept. The
    Detect head is a run of its own (not checkpointed). Runs are at most MAX_RUN rows: the recomputation of a run
    holds all of its activations at once."""
    runs = []
    for m in rows:
        joins = runs and len(runs[-1]) < MAX_RUN and m.f == -1 and runs[-1][-1].i not in saved and \
            type(m).__name__ != 'Detect' and type(runs[-1][0]).__name__ != 'Detect'
        if joins:
            runs[-1].append(m)
        else:
            runs.append([m])
    return runs


def active(model, x):
    """Whether a forward of `model` on x checkpoints: the option is on, training, with gradients, on a tensor."""
    return getattr(model, 'activation_checkpointing', False) and model.training and torch.is_grad_enabled() and \
        isinstance(x, torch.Tensor)
