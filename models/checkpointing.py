"""Activation checkpointing: memory traded for compute in training (train.py --activation-checkpointing).

A checkpointed block keeps only its input for the backward pass; the activations inside it are computed again
when its gradients are needed (torch.utils.checkpoint, non-reentrant). YAML models checkpoint runs of at most
two rows whose inner output no later row reads (checkpoint_runs): a CSP block of the backbone or the neck with
the conv before it, so that only the run's input is kept. The Detect head is not checkpointed. Darknet models
checkpoint each [convolutional] layer.

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
