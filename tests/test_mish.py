"""Mish: the native path is exact, YOLO_MISH switches implementations, the extension steps aside without
CUDA; GPU checks (extension parity, float16 vs CPU float32, AMP, SyncBN) run only where CUDA is present."""
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


@gpu
def test_amp_step_and_syncbn_one_process(tmp_path):
    import torch.distributed as dist
    import yaml
    from conftest import ROOT
    from models.yolo import Model
    from utils.loss import ComputeLoss
    os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    os.environ.setdefault('MASTER_PORT', '29533')
    dist.init_process_group('nccl', rank=0, world_size=1)
    try:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(Model(tiny_cfg('yolov4-p5', nc=3))).cuda()
        compute_loss = ComputeLoss(model, yaml.safe_load((ROOT / 'data' / 'hyp.scratch.yaml').read_text()))
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0])
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        scaler = torch.amp.GradScaler('cuda')
        targets = torch.tensor([[0, 1, 0.5, 0.5, 0.2, 0.3], [1, 2, 0.3, 0.4, 0.1, 0.1]], device='cuda')
        with torch.autocast('cuda'):
            loss, items = compute_loss(ddp(torch.rand(2, 3, 128, 128, device='cuda')), targets)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        assert torch.isfinite(items).all()
    finally:
        dist.destroy_process_group()
