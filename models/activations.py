"""The activation of the CSP-Darknet family: Mish(x) = x * tanh(softplus(x)).

This is the one place where the activation is chosen. Every module of the project builds its activation
with `Mish()`, and released checkpoints that pickled `mish_cuda.MishCuda` (or a community rebuild's
spelling) are loaded onto this class by `models.checkpoint`.

Implementation, chosen per call by the environment variable YOLO_MISH:
- `native` (default): PyTorch's own `F.mish` (a fused kernel on CUDA and CPU);
- `auto`: the project's CUDA extension (`models/mish_cuda`, built on first use) for CUDA tensors when it is
  built or builds; a failed build logs one line and `F.mish` is used;
- `cuda`: the extension for CUDA tensors, and an error naming the cause when it cannot be built (for
  measurements that must not silently fall back).
CPU tensors always use `F.mish`, and so do CUDA tensors in another memory layout than contiguous (channels_last):
the extension's kernels read and write contiguous memory only, and copying each activation there and back is
costly (on an H200, P5 at batch 32 with the extension: 190 ms in channels_last against 96 ms contiguous, where
P6 with PyTorch's Mish is faster in channels_last). Tracing, scripting and export always use `F.mish`
(models/export.py further writes it as standard ops).

`Mish.forward` must not depend on attributes set in `__init__`: an unpickled released module carries only
the plain `nn.Module` state of the original `MishCuda` object.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.errors import UserError

MODES = ('native', 'cuda', 'auto')


class MishModeError(UserError, ValueError):
    """YOLO_MISH names no implementation."""


def mish_mode():
    """The implementation YOLO_MISH asks for; an unknown value is an error that names it."""
    mode = os.environ.get('YOLO_MISH', 'native').strip().lower() or 'native'
    if mode not in MODES:
        raise MishModeError(f'YOLO_MISH={mode!r}: expected one of {", ".join(MODES)}')
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


def extension_for(mode, is_cuda, contiguous=True):
    """The extension module to run Mish with under YOLO_MISH=mode, or None for `F.mish` (always for CPU tensors
    and for tensors that are not contiguous)."""
    if mode == 'native' or not is_cuda or not contiguous:
        return None
    from models.mish_cuda import load_extension
    ext = load_extension()
    if ext is None and mode == 'cuda':
        raise RuntimeError('YOLO_MISH=cuda, but the Mish CUDA extension could not be built (the warning above '
                           'says why); set YOLO_MISH=auto to fall back to PyTorch\'s mish, or native')
    return ext


def mish(x, inplace=False):
    """Mish of x with the implementation chosen by YOLO_MISH (see the module docstring). With `inplace`, PyTorch's
    kernel overwrites x (the same bits, one allocation and one pass over memory fewer); the caller must own x and
    record no gradient. Tracing, export and the extension ignore `inplace`."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return F.mish(x)
    ext = extension_for(mish_mode(), x.is_cuda, x.is_contiguous())
    return F.mish(x, inplace=inplace) if ext is None else _MishCudaFunction.apply(x, ext)


class Mish(nn.Module):
    """Mish activation (Misra, 2019)."""

    def forward(self, x, inplace=False):
        return mish(x, inplace)
