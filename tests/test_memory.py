"""Memory traded for compute: activation checkpointing gives the gradients and BatchNorm statistics of the step
without it, on YAML and darknet models, and in train.py."""
import contextlib
import copy

import pytest
import torch

from conftest import COCO8_YAML, ROOT, tiny_cfg


def _models():
    from models.darknet import DarknetModel
    from models.yolo import Model
    torch.manual_seed(0)
    return {'yaml P5': Model(tiny_cfg('yolov4-p5', nc=3)), 'darknet yolov4-tiny': DarknetModel('yolov4-tiny.cfg', nc=3)}


def _step(model, x):
    """Forward and backward of a loss on every output; returns the number of conv forwards it took."""
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in model.modules()
             if isinstance(m, torch.nn.Conv2d)]
    sum(o.float().pow(2).mean() for o in model(x)).backward()
    for h in hooks:
        h.remove()
    return len(calls)


@pytest.mark.parametrize('name', ['yaml P5', 'darknet yolov4-tiny'])
def test_checkpointing_gives_the_same_gradients_and_statistics(name):
    plain = _models()[name].train()
    ckpt = copy.deepcopy(plain)
    ckpt.activation_checkpointing = True
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    n_plain, n_ckpt = _step(plain, x), _step(ckpt, x)
    assert n_ckpt > 1.8 * n_plain  # the convs ran again in backward: the activations were not kept
    for (k, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=k)  # measured: equal to the bit
    for k, v in plain.state_dict().items():  # running means, variances and batch counts: updated once
        assert torch.equal(ckpt.state_dict()[k], v), k


def test_the_recomputation_would_update_batchnorm_twice(monkeypatch):
    """The guard is needed: without it, the recomputation in backward moves the running statistics again."""
    import models.checkpointing as ac
    monkeypatch.setattr(ac, 'running_stats_kept', lambda bns: contextlib.nullcontext())
    plain = _models()['yaml P5'].train()
    ckpt = copy.deepcopy(plain)
    ckpt.activation_checkpointing = True
    x = torch.rand(2, 3, 128, 128)
    _step(plain, x)
    _step(ckpt, x)
    differ = [k for k, v in plain.state_dict().items() if 'running' in k and not torch.equal(ckpt.state_dict()[k], v)]
    assert differ


def test_train_with_checkpointing_is_the_same_run(tmp_path):
    import train
    common = dict(cfg=str(ROOT / 'models' / 'yolov4-p5-tiny.yaml'), data=str(COCO8_YAML), img_size=[64, 64],
                  batch_size=4, device='cpu', workers=0, noautoanchor=True, epochs=1, notest=True,
                  project=str(tmp_path))
    train.run(name='plain', **common)
    train.run(name='ckpt', activation_checkpointing=True, **common)
    a, b = (torch.load(tmp_path / n / 'weights' / 'last.pt', weights_only=True) for n in ('plain', 'ckpt'))
    for key in ('model', 'ema'):
        for k, v in a[key]['state_dict'].items():
            torch.testing.assert_close(b[key]['state_dict'][k], v, rtol=1e-5, atol=1e-6, msg=k)
