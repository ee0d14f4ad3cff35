"""Training speed options (channels_last, bfloat16 autocast, foreach/fused optimizer steps, torch.compile): each
trains a step on the CPU with finite losses; bfloat16 gives the float32 loss within a stated tolerance."""
import math

import pytest
import torch
import yaml

from conftest import ROOT, tiny_cfg

HYP = yaml.safe_load((ROOT / 'data' / 'hyp.scratch.yaml').read_text())
BF16_REL_TOL = 0.02  # measured: 0.1-0.5% on this batch; bfloat16 keeps 8 bits of mantissa


@pytest.fixture(scope='module')
def tiny_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp('cfg') / 'tiny-p5.yaml'
    path.write_text(yaml.safe_dump(tiny_cfg('yolov4-p5')))
    return path


@pytest.mark.parametrize('options', [{'channels_last': True}, {'amp_dtype': 'bfloat16'},
                                     {'optimizer_impl': 'foreach'}, {'optimizer_impl': 'fused', 'adam': True},
                                     {'compile': True}], ids=lambda o: '-'.join(f'{k}={v}' for k, v in o.items()))
def test_option_trains_with_finite_losses(tmp_path, tiny_yaml, options, monkeypatch):
    import train
    if options.get('compile'):  # dynamo capture and AOT autograd as in a real run, without inductor's C++ build
        real_compile = torch.compile                       # (minutes on 2 cores; the benchmark test covers inductor)
        monkeypatch.setattr(train.torch, 'compile', lambda m, **kw: real_compile(m, backend='aot_eager', **kw))
    train.run(cfg=str(tiny_yaml), data=str(ROOT / 'data' / 'coco8.yaml'), epochs=1, batch_size=8, img_size=[64, 64],
              device='cpu', workers=0, noautoanchor=True, notest=True, project=str(tmp_path), name='o', **options)
    ck = torch.load(tmp_path / 'o' / 'weights' / 'last.pt', weights_only=True)
    losses = [float(x) for x in ck['results'][0].split()[2:6]]
    assert all(math.isfinite(x) and x > 0 for x in losses), losses
    assert all(torch.isfinite(v).all() for v in ck['model']['state_dict'].values() if v.is_floating_point())
    assert all(ck['opt'][k] == v for k, v in options.items())


def test_bfloat16_loss_close_to_float32():
    from models.yolo import Model
    from utils.datasets import create_dataloader
    from utils.loss import ComputeLoss
    torch.manual_seed(0)
    model = Model(tiny_cfg('yolov4-p5')).train()
    loss_fn = ComputeLoss(model, HYP)
    imgs, targets, _, _ = next(iter(create_dataloader(str(ROOT / 'data' / 'coco8' / 'images'), 128, 8, 32,
                                                      workers=0)[0]))
    x = imgs.float() / 255
    ref, ref_items = loss_fn(model(x), targets)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        low, low_items = loss_fn(model(x), targets)
    assert low.item() == pytest.approx(ref.item(), rel=BF16_REL_TOL)
    assert low_items.tolist() == pytest.approx(ref_items.tolist(), rel=BF16_REL_TOL, abs=1e-4)


def test_epoch_schedule_step_after_amp_skipped_every_step_is_silent(recwarn):
    """A 1-batch epoch whose only step AMP skipped for float16 overflow has no optimizer.step(); the per-epoch
    schedule still advances, and PyTorch's warning about the order (seen in the GPU report) is not printed."""
    from utils.train.optim import cosine_lr, step_schedule
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=cosine_lr(10))
    step_schedule(scheduler)
    assert not [w for w in recwarn if 'lr_scheduler.step()' in str(w.message)]
    assert optimizer.param_groups[0]['lr'] == pytest.approx(0.1 * cosine_lr(10)(1))
