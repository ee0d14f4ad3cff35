"""The activation of the CSP-Darknet family: Mish(x) = x * tanh(softplus(x)).

This is the one place where the activation is chosen. Every module of the project builds its activation
with `Mish()`, and released checkpoints that pickled `mish_cuda.MishCuda` (or a community rebuild's
spelling) are loaded onto this class by `utils.checkpoint`.

`Mish.forward` must not depend on attributes set in `__init__`: an unpickled released module carries only
the plain `nn.Module` state of the original `MishCuda` object.
"""
import torch.nn as nn
import torch.nn.functional as F


class Mish(nn.Module):
    """Mish activation (Misra, 2019) using PyTorch's native op."""

    def forward(self, x):
        return F.mish(x)
