"""Known answers from the published code itself (tests/data/published/, made by tests/published_fixtures.py running
github:WongKinYiu/ScaledYOLOv4 branch yolov4-large at the commit it pins): checkpoints it pickled and stripped as
the releases were (P5, P6, P7; numpy 1 and 2 module paths), its models' outputs with and without TTA (square and
not), its loss of 3, 4 and 5 levels, its train.py's schedule, and its test.py's COCO JSON boxes."""
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, tiny_cfg
from models.checkpoint import load_checkpoint, model_from_checkpoint
from models.experimental import attempt_load
from models.yolo import Model
from published_fixtures import (DEPTH, ITEM_BATCH, ITEM_HYP, ITEM_IMG, ITEMS, LOSS_FAMILIES, LOSS_NC, LOSS_TARGETS,
                                NUMPY_PATHS, OUT, OUTPUT_COLUMNS, PUBLISHED_COMMIT, WIDE, WIDTH, loss_predictions,
                                seed_item)
from utils.loss import ComputeLoss

PICKLE = OUT / 'p5-tiny.pt'


@pytest.fixture(scope='module')
def outputs():
    return np.load(OUT / 'outputs.npz')


def forward(model, image, augment=False):
    x = torch.from_numpy(image.astype(np.float32)) / 255.0
    with torch.no_grad():
        return model(x, augment=augment)[0][..., :OUTPUT_COLUMNS].numpy()


def assert_outputs_match(ours, published):
    """Boxes within 2e-3 px and scores within 1e-5 (float32 rounding of the same float16 weights)."""
    assert ours.shape == published.shape
    np.testing.assert_allclose(ours[..., :4], published[..., :4], rtol=0, atol=2e-3)
    np.testing.assert_allclose(ours[..., 4:], published[..., 4:], rtol=0, atol=1e-5)


def test_published_pickle_loads_with_its_outputs(outputs):
    """The published code's own pickle (whole Model, mish_cuda.MishCuda, float16 by its strip_optimizer) loads
    without running code from the file and gives the published model's outputs."""
    model = attempt_load(PICKLE, map_location='cpu')
    assert model.names[0] == 'person' and model.nc == 80 and model.stride.tolist() == [8, 16, 32]
    assert_outputs_match(forward(model, outputs['image']), outputs['plain'])


def test_2020_pickle_state_is_upgraded(tmp_path, outputs):
    """The 2020 releases were pickled by PyTorch 1.6 and an older train.py: no Upsample.recompute_scale_factor, no
    Conv2d.padding_mode, no model names or nc, a Detect grid of another size. The same pickle stripped of those
    loads and runs as the published model (PyTorch's __setstate__ restores the first two;
    models.checkpoint._upgrade_released_model the rest)."""
    ckpt = load_checkpoint(PICKLE)
    model = ckpt['model']
    for m in model.modules():
        if isinstance(m, torch.nn.Upsample):
            del m.recompute_scale_factor
        elif isinstance(m, torch.nn.Conv2d):
            del m.padding_mode
    model.model[-1].grid = [torch.zeros(1, 1, 3, 3, 2)] * model.model[-1].nl
    del model.names, model.nc
    torch.save(ckpt, tmp_path / 'old.pt')
    old = model_from_checkpoint(load_checkpoint(tmp_path / 'old.pt')).fuse().eval()
    assert old.nc == 80 and len(old.names) == 80
    assert_outputs_match(forward(old, outputs['image']), outputs['plain'])


def test_fixtures_name_their_commit():
    """The fixtures were made from the commit the script pins, and say how to make them again."""
    made = json.loads((OUT / 'made-from.json').read_text())
    assert made['commit'] == PUBLISHED_COMMIT and made['command'].startswith('python tests/published_fixtures.py')


def test_tta_is_published(outputs):
    """forward(augment=True): scales 1, 0.83, 0.67 with the middle one flipped left-right, boxes mapped back."""
    model = attempt_load(PICKLE, map_location='cpu')
    assert_outputs_match(forward(model, outputs['image'], augment=True), outputs['tta'])


def test_tta_on_a_non_square_input_is_published(outputs):
    """The same on a 96 x 160 input: each scale padded to the grid of 128 in height and width separately, and the
    flipped scale's x mapped back by the width (a de-flip by the height, or a square padding, fails here)."""
    model = attempt_load(PICKLE, map_location='cpu')
    assert outputs['image_wide'].shape[2:] == WIDE
    assert_outputs_match(forward(model, outputs['image_wide'], augment=True), outputs['tta_wide'])


@pytest.mark.parametrize('family', list(LOSS_FAMILIES))
def test_loss_is_published(family):
    """The published compute_loss on seeded predictions and targets (nc=3, hyp.scratch.yaml, class gain scaled by
    nc / 80 as the published train.py does) for the 3, 4 and 5 levels of P5, P6 and P7: each its objectness
    balance (P7's [4, 1, 0.5, 0.4, 0.1]) and gain (1.4 from 4 levels): the total and its box, objectness and
    class parts."""
    judged = np.load(OUT / 'loss.npz')
    model = Model(tiny_cfg(LOSS_FAMILIES[family][0], DEPTH, WIDTH, nc=LOSS_NC))
    hyp = yaml.safe_load((ROOT / 'data' / 'hyp.scratch.yaml').read_text())
    p = [torch.from_numpy(a) for a in loss_predictions([tuple(s) for s in judged[f'{family}_shapes']])]
    assert len(p) == {'p5': 3, 'p6': 4, 'p7': 5}[family]
    loss, items = ComputeLoss(model, dict(hyp, cls=hyp['cls'] * LOSS_NC / 80))(p, torch.from_numpy(LOSS_TARGETS))
    np.testing.assert_allclose(loss.detach().numpy(), judged[f'{family}_loss'], rtol=1e-5)
    np.testing.assert_allclose(items.numpy(), judged[f'{family}_items'], rtol=1e-5)


def test_coco_json_boxes_are_published(tmp_path):
    """test.py --save-json on data/coco8 at 192, conf 0.001, iou 0.65: the same detections as the published
    test.py's JSON, boxes mapped back to the original pixels (scale_coords) and written as COCO x, y, w, h."""
    import test
    test.test(str(ROOT / 'data' / 'coco8.yaml'), str(PICKLE), batch_size=8, imgsz=192, conf_thres=0.001,
              iou_thres=0.65, save_json=True, save_dir=tmp_path, plots=False, device='cpu', workers=0)
    ours = json.loads((tmp_path / 'detections_val2017_p5-tiny_results.json').read_text())
    published = json.loads((OUT / 'test-json.json').read_text())
    assert len(ours) == len(published) > 1000
    # matched within each image and class (scipy's assignment), so that last-bit differences between CPUs cannot
    # reorder near-equal detections: boxes within 2e-3 px (rounded to 3 places), scores within 2e-5 (5 places)
    from scipy.optimize import linear_sum_assignment
    groups = {}
    for side, dets in enumerate((ours, published)):
        for d in dets:
            groups.setdefault((d['image_id'], d['category_id']), ([], []))[side].append([d['score'], *d['bbox']])
    worst = np.zeros(2)
    for key, (a, b) in groups.items():
        assert len(a) == len(b), key
        a, b = np.array(a), np.array(b)
        cost = np.abs(a[:, None, 1:] - b[None, :, 1:]).max(-1) + 100 * np.abs(a[:, None, 0] - b[None, :, 0])
        rows, cols = linear_sum_assignment(cost)
        d = np.abs(a[rows] - b[cols])
        worst = np.maximum(worst, [d[:, 0].max(), d[:, 1:].max()])
    assert worst[0] <= 2e-5 and worst[1] <= 2e-3, worst


def _our_recipe(judged):
    """(model, hyp as used, optimizer, nominal accumulation, lr_lambda, batches per epoch) built as train.py builds
    them for the published run described by `judged` (its images, batch and epochs)."""
    from utils.train.optim import cosine_lr, smart_optimizer
    model = Model(tiny_cfg('yolov4-p5', DEPTH, WIDTH))
    hyp = yaml.safe_load((ROOT / 'data' / 'hyp.scratch.yaml').read_text())
    optimizer, hyp, nominal_accumulate = smart_optimizer(model, hyp, judged['batch'])
    return (model, hyp, optimizer, nominal_accumulate, cosine_lr(judged['epochs'], hyp.get('lrf', 0.2)),
            judged['images'] // judged['batch'])


def test_recipe_is_published():
    """The published train.py's own optimizer steps (recipe.json): parameter groups, warm-up learning rates
    (biases falling from 0.1, the rest rising from 0 towards lr0 x the cosine factor of the epoch), momentum
    (0.9 rising to hyp momentum), weight decay scaled to the nominal batch 64, and the EMA decay ramp. Ours are
    built and stepped as train.py does."""
    from utils.train.optim import warmup_iterations, warmup_step
    from utils.torch_utils import ModelEMA
    judged = json.loads((OUT / 'recipe.json').read_text())
    model, hyp, optimizer, nominal_accumulate, lr_lambda, batches = _our_recipe(judged)
    torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lr_lambda)
    warmup = warmup_iterations(batches, hyp)
    assert warmup == 1000 and len(judged['steps']) == judged['epochs'] * batches
    for ni, groups in enumerate(judged['steps']):
        assert warmup_step(optimizer, ni, warmup, nominal_accumulate, lr_lambda(ni // batches),
                           hyp['momentum']) == 1
        ours = [{'params': len(g['params']), 'lr': g['lr'], 'momentum': g['momentum'],
                 'weight_decay': g['weight_decay']} for g in optimizer.param_groups]
        assert [g['params'] for g in ours] == [g['params'] for g in groups]
        for key in ('lr', 'momentum', 'weight_decay'):
            assert [g[key] for g in ours] == pytest.approx([g[key] for g in groups], rel=1e-12, abs=1e-15), (ni, key)
    ema = ModelEMA(model)
    assert [ema.decay(u) for u in range(1, len(judged['ema_decay']) + 1)] == pytest.approx(judged['ema_decay'],
                                                                                          rel=1e-12)


class _Batches:
    """A loader of `n` empty batches per epoch (the schedule reads no image), with the sampler the Trainer sets."""

    def __init__(self, n, batch_size):
        self.n, self.batch_size = n, batch_size
        self.sampler = type('Sampler', (), {'set_epoch': lambda *args: None})()

    def __len__(self):
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield torch.zeros(self.batch_size, 3, 8, 8, dtype=torch.uint8), torch.zeros(0, 6), [], None


def test_schedule_is_published(monkeypatch):
    """The published train.py through its 1000 warm-up iterations and on into the cosine (schedule.json: batch 2,
    so accumulation rises to 32; 36 epochs of 32 batches): the iteration of every optimizer step, and each
    group's learning rate, momentum and weight decay there, as our Trainer applies them in its own loop (the
    recipe built as train.py builds it; the forward pass and loss replaced by a zero, as on the published side)."""
    from utils.train.optim import warmup_iterations
    from utils.train.trainer import Recipe, Trainer, TrainParts
    judged = json.loads((OUT / 'schedule.json').read_text())
    model, hyp, optimizer, nominal_accumulate, lr_lambda, batches = _our_recipe(judged)
    recipe = Recipe(epochs=judged['epochs'], hyp=hyp, hyp_given=hyp, lr_lambda=lr_lambda,
                    warmup_iters=warmup_iterations(batches, hyp), nominal_accumulate=nominal_accumulate,
                    imgsz=64, stride=32)
    weight, iterations, steps = next(model.parameters()), [0], []
    model.forward = lambda x: weight.sum() * 0

    def zero_loss(pred, targets):
        iterations[0] += 1
        return pred.reshape(1), torch.zeros(4)
    step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        steps.append({'ni': iterations[0] - 1, 'params': [len(g['params']) for g in self.param_groups],
                      **{k: [g[k] for g in self.param_groups] for k in ('lr', 'momentum', 'weight_decay')}})
        return step(self, *args, **kwargs)
    monkeypatch.setattr(torch.optim.SGD, 'step', recording_step)
    parts = TrainParts(model=model, optimizer=optimizer, loss_fn=zero_loss, loader=_Batches(batches, judged['batch']),
                       scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lr_lambda),
                       scaler=torch.amp.GradScaler('cuda', enabled=False), device=torch.device('cpu'))
    Trainer(parts, recipe).train()
    published = judged['steps']
    assert recipe.warmup_iters == 1000 and published[-1]['ni'] > 1000 + 2 * 32  # the fixture goes past warm-up
    assert [s['ni'] for s in steps] == [s['ni'] for s in published]
    for ours, theirs in zip(steps, published):
        assert ours['params'] == theirs['params']
        for key in ('lr', 'momentum', 'weight_decay'):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-12, abs=1e-15), (ours['ni'], key)


@pytest.fixture(scope='module')
def families():
    return np.load(OUT / 'families.npz')


@pytest.mark.parametrize('numpy_path', list(NUMPY_PATHS))
@pytest.mark.parametrize('family', ['p5', 'p6', 'p7'])
def test_released_pickle_of_each_family_loads_with_its_outputs(families, family, numpy_path):
    """A release-format pickle made by the published code for P5, P6 and P7 (3, 4 and 5 levels; whole float16
    Model with mish_cuda.MishCuda, stripped by its strip_optimizer), its best_fitness a numpy array pickled under
    numpy 2's module path (numpy._core) or numpy 1's (numpy.core, as the 2020 releases were): loaded through
    torch.load(weights_only=True) and our allow-list, it gives the published attempt_load's outputs."""
    path = OUT / f'{family}-{numpy_path}.pt'
    with zipfile.ZipFile(path) as z:  # the file names the numpy module path it is meant to exercise
        pickled = z.read(next(n for n in z.namelist() if n.endswith('data.pkl')))
    assert f'{NUMPY_PATHS[numpy_path]}.multiarray\n_reconstruct'.encode() in pickled
    assert b'mish_cuda\nMishCuda' in pickled
    ckpt = load_checkpoint(path)
    assert ckpt['best_fitness'].tolist() == [0.25] and ckpt['epoch'] == -1
    model = attempt_load(path, map_location='cpu')
    assert model.nc == 3 and len(model.stride) == {'p5': 3, 'p6': 4, 'p7': 5}[family]
    assert_outputs_match(forward(model, families['image']), families[family])


@pytest.mark.parametrize('kind', list(ITEMS))
def test_training_items_are_published(kind):
    """Training items of our LoadImagesAndLabels against the published one's (items.npz) with the same random
    numbers: mosaic (4 images placed about the fixed centre), random perspective (rotation, translation, scale,
    shear, perspective), MixUp, HSV and both flips; and, with rect batches, the letterbox and random perspective
    without mosaic. Images equal to the value, labels to float32 rounding."""
    from utils.datasets import LoadImagesAndLabels
    judged = np.load(OUT / 'items.npz')
    hyp = dict(yaml.safe_load((ROOT / 'data' / 'hyp.scratch.yaml').read_text()), **ITEM_HYP)
    dataset = LoadImagesAndLabels(str(ROOT / 'data' / 'coco8' / 'images'), ITEM_IMG, ITEM_BATCH, augment=True,
                                  hyp=hyp, rect=kind == 'rect', stride=32)
    assert [Path(f).name for f in dataset.img_files] == judged[f'{kind}_files'].tolist()
    boxed = 0
    for k, i in enumerate(ITEMS[kind]):
        seed_item(k)
        img, labels, _, _ = dataset[i]
        np.testing.assert_array_equal(img.numpy(), judged[f'{kind}_{k}_img'], err_msg=f'{kind} item {i}')
        np.testing.assert_allclose(labels.numpy(), judged[f'{kind}_{k}_labels'], rtol=1e-6, atol=1e-6,
                                   err_msg=f'{kind} item {i}')
        boxed += len(labels) > 0
    assert boxed >= len(ITEMS[kind]) // 2  # the items have boxes to compare
