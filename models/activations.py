"""The activation of the CSP-Darknet family: Mish(x) = x * tanh(softplus(x)).

This is the one place where the activation is chosen. Every module of the project builds its activation
with `Mish()`, and released checkpoints that pickled `mish_cuda.MishCuda` (or a community rebuild's
spelling) are loaded onto this class by `utils.checkpoint`.

Implementation, chosen per call by the environment variable YOLO_MISH:
- `native` (default): PyTorch's own `F.mish` (a fused kernel on CUDA and CPU);
- `cuda`: the project's CUDA extension (`models/mish_cuda`, built on first use) for CUDA tensors;
- `auto`: the extension when it is built (or builds) and the tensor is on CUDA, else `F.mish`.
A failed build logs one line and falls back to `F.mish`. Tracing, scripting and export always use `F.mish`
(models/export.py further writes it as standard ops).

`Mish.forward` must not depend on attributes set in `__init__`: an unpickled released module carries only
the plain `nn.Module` state of the original `MishCuda` object.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

MODES = ('native', 'cuda', 'auto')


def mish_mode():
    """The implementation YOLO_MISH asks for; an unknown value is an error that names it."""
    mode = os.environ.get('YOLO_MISH', 'native').strip().lower() or 'native'
    if mode not in MODES:
        raise ValueError(f'YOLO_MISH={mode!r}: expected one of {", ".join(MODES)}')
    return mode


class _MishCudaFunction(torch.autograd.Function):
    """Autograd wrapper of the extension's forward and backward kernels."""

    @staticmethod
    def forward(ctx, x, ext):
        ctx.save_for_backward(x)
        ctx.ext = ext
        return ext.forward(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return ctx.ext.backward(grad.contiguous(), x), None


def _extension():
    from models.mish_cuda import load_extension
    return load_extension()


def mish(x):
    """Mish of x with the implementation chosen by YOLO_MISH (see the module docstring)."""
    mode = mish_mode()
    if mode == 'native' or not x.is_cuda or torch.jit.is_tracing() or torch.jit.is_scripting() \
            or torch.onnx.is_in_onnx_export():
        return F.mish(x)
    ext = _extension()
    if ext is None:
        return F.mish(x)
    return _MishCudaFunction.apply(x, ext)


class Mish(nn.Module):
    """Mish activation (Misra, 2019)."""

    def forward(self, x):
        return mish(x)
