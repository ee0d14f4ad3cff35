"""Mish: the native path is exact, YOLO_MISH switches implementations, the extension steps aside without
CUDA; GPU checks (extension parity, float16 vs CPU float32, AMP, SyncBN) run only where CUDA is present."""
import copy
import logging
import os
import shutil
import sys

import pytest
import torch
import torch.nn.functional as F

import models.mish_cuda as mish_cuda
from conftest import tiny_cfg
from models.activations import Mish, extension_for, mish_mode

CUDA = torch.cuda.is_available()


def _formula(x):
    return x * torch.tanh(torch.log1p(torch.exp(x)))


@pytest.mark.parametrize('mode', ['native', 'auto', 'cuda'])
def test_cpu_path_exact_values_and_gradients(monkeypatch, mode):
    monkeypatch.setenv('YOLO_MISH', mode)
    x = torch.linspace(-15, 15, 2001, dtype=torch.float64, requires_grad=True)
    y = Mish()(x)
    y.sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    _formula(x2).sum().backward()
    assert torch.allclose(y, _formula(x.detach()), atol=1e-12, rtol=1e-12)
    assert torch.allclose(x.grad, x2.grad, atol=1e-12, rtol=1e-10)
    xf = x.detach().float()
    assert torch.allclose(Mish()(xf), _formula(x.detach()).float(), atol=1e-6, rtol=1e-6)


def test_inference_runs_mish_in_place_with_the_same_bits():
    """Without gradients Mish overwrites the fresh conv/BatchNorm output it is given: the model's outputs are the
    same bits as with gradients (a new tensor per Mish), and a Conv's input is left as it was."""
    from models.common import Conv
    from models.yolo import Model
    torch.manual_seed(0)
    model = Model(tiny_cfg()).eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        fast = model(x)[0]
    reference = model(x)[0].detach()
    assert torch.equal(fast, reference)
    conv, y = Conv(3, 8, 3).eval(), torch.randn(1, 3, 8, 8)
    before, bn_outputs = y.clone(), []
    conv.bn.register_forward_hook(lambda m, i, o: bn_outputs.append(o.data_ptr()))
    with torch.no_grad():
        out = conv(y)
    assert torch.equal(y, before) and out.data_ptr() == bn_outputs[-1]  # Mish wrote over the BatchNorm output
    assert conv(y).data_ptr() != bn_outputs[-1]  # with gradients, a new tensor
    z = torch.randn(100)
    expected = F.mish(z)
    with torch.no_grad():
        out = Mish()(z, inplace=True)
    assert out.data_ptr() == z.data_ptr() and torch.equal(out, expected)


def test_environment_switch(monkeypatch):
    monkeypatch.delenv('YOLO_MISH', raising=False)
    assert mish_mode() == 'native'
    for m in ('native', 'cuda', 'auto', ' AUTO '):
        monkeypatch.setenv('YOLO_MISH', m)
        assert mish_mode() == m.strip().lower()
    monkeypatch.setenv('YOLO_MISH', 'fast')
    with pytest.raises(ValueError, match="YOLO_MISH='fast'"):
        Mish()(torch.zeros(2))


def test_auto_falls_back_and_cuda_refuses_when_the_extension_cannot_build(monkeypatch):
    monkeypatch.setattr(mish_cuda, '_STATE', {'tried': True, 'module': None})  # a build that failed
    assert extension_for('auto', True) is None and extension_for('native', True) is None
    assert extension_for('cuda', False) is None  # CPU tensors: PyTorch's op in every mode
    with pytest.raises(RuntimeError, match='YOLO_MISH=cuda, but the Mish CUDA extension could not be built'):
        extension_for('cuda', True)
    built = object()
    monkeypatch.setattr(mish_cuda, '_STATE', {'tried': True, 'module': built})
    assert extension_for('auto', True) is built and extension_for('cuda', True) is built
    assert extension_for('native', True) is None
    # channels_last: the kernels take contiguous memory only (copies there and back: P5 2x slower on an H200)
    assert extension_for('cuda', True, contiguous=False) is None


@pytest.mark.skipif(CUDA, reason='checks the fallback of a machine without CUDA')
def test_extension_steps_aside_without_cuda(monkeypatch, caplog):
    monkeypatch.setattr(mish_cuda, '_STATE', {'tried': False, 'module': None})
    with caplog.at_level(logging.WARNING):
        assert mish_cuda.load_extension() is None
        assert mish_cuda.load_extension() is None
    assert caplog.text.count('Mish CUDA extension unavailable') == 1


def test_build_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv('YOLO_MISH_BUILD_DIR', str(tmp_path / 'b'))
    assert mish_cuda.build_dir() == str(tmp_path / 'b') and (tmp_path / 'b').is_dir()


def test_cuda_home_found_behind_an_nvcc_wrapper(monkeypatch, tmp_path):
    monkeypatch.delenv('CUDA_HOME', raising=False)
    monkeypatch.delenv('CUDA_PATH', raising=False)
    wrapper = tmp_path / 'bin' / 'nvcc'  # like /usr/local/bin/nvcc: a script, with no toolkit beside it
    wrapper.parent.mkdir()
    wrapper.write_text('#!/bin/sh\nexec /somewhere/bin/nvcc "$@"\n')
    for version in ('cuda-9.2', 'cuda-12.4', 'cuda-11.8'):
        (tmp_path / version / 'include').mkdir(parents=True)
        (tmp_path / version / 'include' / 'cuda_runtime.h').touch()
    search = (str(tmp_path / 'cuda'), str(tmp_path / 'cuda-*'))
    assert mish_cuda.find_cuda_home(str(wrapper), search) == str(tmp_path / 'cuda-12.4')  # newest, not 9.2
    (tmp_path / 'cuda').symlink_to(tmp_path / 'cuda-11.8')
    assert mish_cuda.find_cuda_home(str(wrapper), search) == str(tmp_path / 'cuda')
    real = tmp_path / 'cuda-9.2' / 'bin' / 'nvcc'  # an nvcc inside a toolkit wins: it is the one on PATH
    real.parent.mkdir()
    real.touch()
    assert mish_cuda.find_cuda_home(str(real), search) == str(tmp_path / 'cuda-9.2')
    assert mish_cuda.find_cuda_home(str(wrapper), (str(tmp_path / 'none'),)) is None
    monkeypatch.setenv('CUDA_HOME', '/opt/mine')  # the user's choice is left alone
    assert mish_cuda.find_cuda_home(str(wrapper), search) is None


def test_toolkit_reaches_an_already_imported_cpp_extension(monkeypatch, tmp_path):
    """torch.compile imports torch.utils.cpp_extension early, which reads CUDA_HOME once (a wrong guess here)."""
    import types
    stale = types.SimpleNamespace(CUDA_HOME='/usr/local')
    monkeypatch.setitem(sys.modules, 'torch.utils.cpp_extension', stale)
    monkeypatch.setenv('CUDA_HOME', '/opt/user-choice')
    mish_cuda._use_toolkit(None)
    assert stale.CUDA_HOME == '/opt/user-choice'
    mish_cuda._use_toolkit(str(tmp_path))  # found by find_cuda_home (only called when CUDA_HOME is unset)
    assert stale.CUDA_HOME == str(tmp_path) and os.environ['CUDA_HOME'] == str(tmp_path)


def _toolkit():
    return os.environ.get('CUDA_HOME') or os.environ.get('CUDA_PATH') or mish_cuda.find_cuda_home()


@pytest.mark.skipif(not (all(map(shutil.which, ('nvcc', 'ninja', 'c++'))) and torch.version.cuda and _toolkit()),
                    reason='needs nvcc, ninja, a C++ compiler, a CUDA toolkit and a CUDA build of PyTorch')
def test_extension_builds_and_imports_without_a_gpu(monkeypatch, tmp_path):
    """The ahead-of-time build (as in `docker build`): compiles, links and imports; refuses CPU tensors."""
    monkeypatch.setenv('CUDA_HOME', _toolkit())  # restored afterwards
    monkeypatch.setenv('YOLO_MISH_BUILD_DIR', str(tmp_path / 'build'))
    monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', '9.0')
    monkeypatch.setattr(mish_cuda, '_STATE', {'tried': False, 'module': None})
    ext = mish_cuda.load_extension(require_gpu=False)
    assert ext is not None, 'the extension did not build (see the warning above)'
    assert (tmp_path / 'build' / 'yolo_mish_cuda.so').is_file()
    with pytest.raises(RuntimeError, match='mish_cuda: input must be a CUDA tensor'):
        ext.forward(torch.zeros(3))


gpu = pytest.mark.skipif(not CUDA, reason='needs a CUDA GPU')


@gpu
@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-6), (torch.float16, 1e-3), (torch.bfloat16, 1e-2)])
def test_extension_matches_native_on_gpu(monkeypatch, dtype, tol):
    monkeypatch.setenv('YOLO_MISH', 'cuda')
    assert mish_cuda.load_extension() is not None, 'the extension did not build'
    x = (torch.randn(1 << 16, device='cuda') * 6).to(dtype).requires_grad_(True)
    y = Mish()(x)
    g = torch.randn_like(y)
    y.backward(g)
    x2 = x.detach().clone().requires_grad_(True)
    y2 = F.mish(x2)
    y2.backward(g)
    assert torch.allclose(y.float(), y2.float(), atol=tol, rtol=tol)
    assert torch.allclose(x.grad.float(), x2.grad.float(), atol=tol, rtol=tol)


@gpu
def test_float16_gpu_equals_cpu_float32():
    from models.yolo import Model
    torch.manual_seed(0)
    model = Model(tiny_cfg('yolov4-p5', nc=80)).eval().fuse()
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        ref = model(x)[0]
        out = model.cuda().half()(x.cuda().half())[0].float().cpu()
    rel = (out - ref).abs() / ref.abs().clamp(min=1.0)
    assert rel.max() < 1e-2


def _one_step(model, imgs, targets, dtype, runner=None):
    """One SGD step of the training loss at `dtype` under autocast (float32: none), with a GradScaler for float16.
    Returns the loss parts, the unscaled gradients and the weights' change, each as one float32 vector."""
    import yaml

    from conftest import ROOT
    from utils.loss import ComputeLoss
    device = imgs.device.type
    compute_loss = ComputeLoss(model, yaml.safe_load((ROOT / 'data' / 'hyp.scratch.yaml').read_text()))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.937, nesterov=True)
    scaler = torch.amp.GradScaler(device, init_scale=2.0 ** 8, enabled=dtype == torch.float16)
    before = torch.cat([p.detach().flatten().float() for p in model.parameters()])
    with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
        loss, items = compute_loss((runner or model)(imgs), targets)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    grads = torch.cat([p.grad.flatten().float() for p in model.parameters()])
    scaler.step(opt)
    scaler.update()
    after = torch.cat([p.detach().flatten().float() for p in model.parameters()])
    return items.float(), grads, after - before


def _step_inputs(device):
    torch.manual_seed(0)
    imgs = torch.rand(2, 3, 128, 128, device=device)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.2, 0.3], [1, 2, 0.3, 0.4, 0.1, 0.1]], device=device)
    return imgs, targets


def _head_bias_grads(model, grads):
    """The gradients of the Detect layer's biases, cut from the flat vector `_one_step` returns."""
    out, offset = [], 0
    head = f'model.{len(model.model) - 1}.m.'
    for name, p in model.named_parameters():
        if name.startswith(head) and name.endswith('.bias'):
            out.append(grads[offset:offset + p.numel()])
        offset += p.numel()
    return torch.cat(out)


def _assert_reduced_step_is_sound(model, reduced, reference_model, reference, rtol):
    """A reduced-precision step against the float32 step of the same model: loss parts and the size of the head's
    bias gradients (no BatchNorm behind them) within rtol, their direction the same, every gradient finite, the step
    taken, and weights and BatchNorm statistics kept in float32 and updated as often as float32's (once by the
    step; the constructor's stride probe, a train-mode forward in the published code too, counted one before).
    The gradients of early layers are not compared: BatchNorm's backward cancels large terms, and at reduced
    precision the remainder is mostly rounding (bfloat16 at initialisation: cosine 0.3 to float32's for the first
    convs)."""
    (items, grads, delta), (ref_items, ref_grads, _) = reduced, reference
    torch.testing.assert_close(items, ref_items, rtol=rtol, atol=1e-4)
    assert torch.isfinite(grads).all() and (delta != 0).any()
    head, ref_head = _head_bias_grads(model, grads), _head_bias_grads(model, ref_grads)
    assert F.cosine_similarity(head, ref_head, dim=0) > 0.99 and abs(head.norm() / ref_head.norm() - 1) < rtol
    assert all(p.dtype == torch.float32 for p in model.parameters())
    norms = [(m, r) for m, r in zip(model.modules(), reference_model.modules())
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(m.running_mean.dtype == m.running_var.dtype == torch.float32 for m, _ in norms)
    assert all(m.num_batches_tracked == r.num_batches_tracked == 2 for m, r in norms)


def _reference_and_copy(device):
    from models.yolo import Model
    torch.manual_seed(0)
    reference = Model(tiny_cfg('yolov4-p5', nc=3)).to(device).train()
    return reference, copy.deepcopy(reference)


def test_bfloat16_autocast_step_is_sound_on_cpu():
    """The training step under CPU autocast (--amp-dtype bfloat16) against the same step in float32: see
    _assert_reduced_step_is_sound. bfloat16's 8-bit mantissa puts the class loss 6% off at initialisation."""
    imgs, targets = _step_inputs('cpu')
    reference, model = _reference_and_copy('cpu')
    ref_step = _one_step(reference, imgs, targets, torch.float32)
    _assert_reduced_step_is_sound(model, _one_step(model, imgs, targets, torch.bfloat16), reference, ref_step,
                                  rtol=0.1)


@gpu
def test_amp_syncbn_ddp_step_agrees_with_the_plain_step(monkeypatch):
    """The multi-GPU training step (SyncBatchNorm, DDP, float16 autocast and a GradScaler), on one process, equals
    the same step of the plain model under the same autocast (one process syncs nothing, so the two must agree to
    rounding), and is sound against the float32 step."""
    import torch.distributed as dist

    from conftest import free_port
    monkeypatch.setattr(torch.backends.cudnn, 'deterministic', True)
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)  # a float32 reference, not TF32
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    monkeypatch.setenv('MASTER_PORT', free_port())
    dist.init_process_group('nccl', rank=0, world_size=1)
    try:
        imgs, targets = _step_inputs('cuda')
        reference, plain = _reference_and_copy('cuda')
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(reference))
        assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0])
        synced = _one_step(model, imgs, targets, torch.float16, runner=ddp)
        for got, want in zip(synced, _one_step(plain, imgs, targets, torch.float16)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        ref_step = _one_step(reference, imgs, targets, torch.float32)
        _assert_reduced_step_is_sound(model, synced, reference, ref_step, rtol=0.03)
    finally:
        dist.destroy_process_group()
