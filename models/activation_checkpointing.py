"""Activation checkpointing: memory traded for compute in training (train.py --activation-checkpointing).

A policy applied to the model from outside, in the shape of PyTorch's apply_activation_checkpointing: the building
blocks of models/common.py know nothing of it. When `model.activation_checkpointing` is on, a model's forward in
training runs its rows through this module (`run`), which checkpoints them, and for the plans that ask for it
wraps the blocks' pieces for the duration of the call (`wrapped_pieces`): each piece's `forward` (or a CSP block's
`join`) is replaced, on the instance, by a checkpointed one, and put back afterwards. Nothing is left on the
modules between calls, so their state_dict keys, pickles and copies (the EMA) are untouched.

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
from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from models.common import Bottleneck, BottleneckCSP, BottleneckCSP2, Conv

MAX_RUN = 2  # rows per checkpointed run
FINE_STRIDE = 2  # runs whose input is at this stride or finer also checkpoint each piece inside them
DEEP = 3  # runs holding a CSP block of this many bottlenecks or more checkpoint each bottleneck and Conv instead
PIECES = ((Conv, 'forward'), (Bottleneck, 'forward'), (BottleneckCSP, 'join'), (BottleneckCSP2, 'join'))  # the
#        pieces a plan may checkpoint on their own, and the method of each that is wrapped


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


class Piece:
    """A piece's method (a Conv's or a Bottleneck's forward, a CSP block's join of its two paths) checkpointed on
    its own, while wrapped_pieces has put it on the module's instance in place of the class's method. Nothing
    inside it is checkpointed again: it runs with the wrappers of the module and its submodules taken off."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *inputs):
        method = getattr(type(self.module), self.name).__get__(self.module)
        if not torch.is_grad_enabled():
            return method(*inputs)

        def run(*t):
            with _taken_off(self.module):
                return method(*t)
        return checkpointed(run, self.module, *inputs)


def _wrappable(m):
    return [name for cls, name in PIECES if isinstance(m, cls)]


@contextmanager
def _swapped(changes):
    """Each (module, method name, value) set on the module's instance (None: the instance's own entry removed, so
    that the class's method is used), and put back as it was on exit."""
    before = [(m, name, m.__dict__.get(name)) for m, name, _ in changes]
    try:
        for m, name, value in changes:
            _set(m, name, value)
        yield
    finally:
        for m, name, value in reversed(before):
            _set(m, name, value)


def _set(m, name, value):
    if value is None:
        m.__dict__.pop(name, None)
    else:
        m.__dict__[name] = value


def _taken_off(module):
    """The Piece wrappers of module and its submodules taken off within this block."""
    return _swapped([(m, name, None) for m in module.modules() for name in _wrappable(m)
                     if isinstance(m.__dict__.get(name), Piece)])


def wrapped_pieces(rows):
    """Within this block, the pieces of `rows` (each Conv, each Bottleneck, the join of each CSP block's two paths)
    checkpointed on their own: their methods wrapped on the instances (Piece), from outside the blocks."""
    return _swapped([(m, name, Piece(m, name)) for row in rows for m in row.modules() for name in _wrappable(m)])


def _run_rows(rows, x, pieces):
    """The rows applied in turn; with pieces, each piece inside them checkpointed on its own."""
    with wrapped_pieces(rows) if pieces else nullcontext():
        for m in rows:
            x = m(x)
    return x


def checkpointed_rows(rows, x, area):
    """A run of rows applied to x as its plan says: in pieces ('each'), or checkpointed whole, with its pieces
    nested inside ('run+each') or not ('run'); `area` is the pixels of the model's input."""
    how = plan(rows, x, area)
    if how == 'each':
        return _run_rows(rows, x, pieces=True)
    nested = how == 'run+each'
    return checkpointed(lambda *t: _run_rows(rows, list(t) if len(t) > 1 else t[0], nested),
                        nn.ModuleList(rows), *(x if isinstance(x, list) else [x]))


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
