"""Known answers from the published code (github:WongKinYiu/ScaledYOLOv4, branch yolov4-large at PUBLISHED_COMMIT,
its newest commit), run as a judge.

    git clone https://github.com/WongKinYiu/ScaledYOLOv4 /tmp/ScaledYOLOv4     # or any clone or bare git dir of it
    python tests/published_fixtures.py /tmp/ScaledYOLOv4      # rewrites tests/data/published/ (0.5 to 3 minutes)

The script extracts PUBLISHED_COMMIT from that repository (git archive) into a temporary folder and records the
commit in tests/data/published/made-from.json; a repository without that commit is refused. The published code runs
in processes of its own (its `models` and `utils` packages have our names), never copied here. Shims let the 2020
code run on today's libraries and change none of its arithmetic: a `mish_cuda` module whose MishCuda is x *
tanh(softplus(x)) (the extension's function, so the pickle names `mish_cuda.MishCuda` as the released files do);
numpy's removed aliases (np.int, np.float, np.trapz); an integer tensor's clamp_ by a float tensor's value
(build_targets' grid indices), which 2020's PyTorch did and today's refuses; the Model's bias priors written under
torch.no_grad(), where today's PyTorch lets them be written in place through a view as 2020's did. torch.load is
told to unpickle whole models (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD).

What it writes (tests/test_published.py reads them):
- p5-tiny.pt: the quick start's trained weights (tests/data/quickstart-p5-tiny.pt) in the published Model of
  models/yolov4-p5.yaml at depth 0.33, width 0.125, with names, nc, hyp and gr set as the published train.py sets
  them, saved in train.py's checkpoint layout and stripped by the published utils.general.strip_optimizer (float16,
  whole pickled model), as the released files were.
- p5-numpy2.pt, p6-numpy2.pt, p7-numpy2.pt: release-format pickles of each family (the published Model of
  models/yolov4-p5/p6/p7.yaml at depth 0.33, width FAMILY_WIDTH, nc FAMILY_NC, seeded weights and batch-norm
  statistics, names, nc, hyp and gr set as train.py sets them), in train.py's checkpoint layout with a numpy
  best_fitness, stripped by the published strip_optimizer (float16, whole pickled model, mish_cuda.MishCuda).
  Today's numpy writes its globals as numpy._core...; p5-numpy1.pt etc. are the same checkpoints pickled with
  numpy 1's names (numpy.core..., as the 2020 releases were: numpy1_pickle_module).
- families.npz: `image` (the coco8 image letterboxed to FAMILY_IMG, uint8 CHW) and each family's outputs on it by
  the published attempt_load (`p5`, `p6`, `p7`: x, y, w, h, objectness, 3 classes).
- items.npz: training items of the published utils.datasets.LoadImagesAndLabels (augment=True) on a copy of
  data/coco8 at ITEM_IMG, batch ITEM_BATCH, with hyp.scratch.yaml and every augmentation on (ITEM_HYP: rotation,
  shear, perspective, up-down flip and MixUp besides its translation, scale, HSV and left-right flip), python's
  random and numpy's global generator seeded with ITEM_SEED + k before item k: `mosaic_<k>_img` (uint8 CHW) and
  `mosaic_<k>_labels` (n x 6) for ITEMS['mosaic'], and `rect_<k>_...` for ITEMS['rect'] of a rect=True dataset
  (letterboxed to its batch shape, random_perspective without mosaic); `<kind>_files` the image order.
- outputs.npz: `image` (a coco8 image letterboxed to 192 by the published letterbox, uint8 CHW) and the
  published attempt_load model's decoded outputs on it, the first OUTPUT_COLUMNS columns (x, y, w, h, objectness,
  3 classes): `plain`, and `tta` (forward(augment=True)); `image_wide`, the same image letterboxed to WIDE (height
  96, width 160: not square, so that TTA's de-flip of x by the width is judged), and `tta_wide`.
- loss.npz: the published utils.general.compute_loss on seeded predictions (numpy default_rng(LOSS_SEED) normals,
  shapes `<family>_shapes`) and LOSS_TARGETS, for the P5, P6 and P7 heads (3, 4 and 5 levels: each its own
  objectness balance, and the 1.4 objectness gain of 4 and more) at depth 0.33, width 0.125 with nc=3 and
  hyp.scratch.yaml with its class gain scaled by nc / 80 as the published train.py does: `<family>_loss` (total x
  batch) and `<family>_items` (lbox, lobj, lcls, total). `eval_nc<nc>_loss` and `_items`: the same function on
  the P6 inputs of tests/test_eval.py (eval_loss_inputs) for nc 3 and 80.
- recipe.json: the published train.py itself, run for TRAIN_EPOCHS epochs on data/coco8 (batch TRAIN_BATCH, --img
  TRAIN_IMG, the P5 at depth 0.33, width 0.125 from scratch, hyp.scratch.yaml, --notest), with its optimizer's
  step and ModelEMA.update wrapped to record, at every step, each parameter group's size, learning rate, momentum
  and weight decay, and the EMA decay of every update. Every step here is a warm-up iteration (nw = 1000) taken
  with accumulation 1, so step k is iteration k of epoch k // (8 / TRAIN_BATCH). Its figures are skipped (today's
  matplotlib breaks its colour table).
- schedule.json: the published train.py past its warm-up: 36 epochs of 32 batches of 2 (SCHEDULE_*: coco8's
  images 8 times, made small), so that the 1000 warm-up iterations end in epoch 31 with accumulation risen to 32,
  and the last 4 optimizer steps fall in the cosine. Every optimizer step: its iteration, each group's size,
  learning rate, momentum and weight decay. The forward pass and loss are replaced by a zero there (see
  judge_schedule: the schedule reads neither), so that 1152 iterations take a minute.
- test-json.json: the published test.py's test() (as its __main__ calls it, figures off) with --save-json on
  data/coco8 at --img 192 --conf 0.001 --iou 0.65 --batch 8 with p5-tiny.pt: the COCO JSON boxes pycocotools
  scores.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / 'tests' / 'data' / 'published'
QUICKSTART = ROOT / 'tests' / 'data' / 'quickstart-p5-tiny.pt'
IMG, IMAGE = 192, '000000000009.jpg'
OUTPUT_COLUMNS = 8
DEPTH, WIDTH = 0.33, 0.125
LOSS_SEED, LOSS_NC, LOSS_BATCH = 0, 3, 2
LOSS_TARGETS = np.array([[0, 0, 0.50, 0.50, 0.20, 0.30], [0, 1, 0.12, 0.81, 0.05, 0.07],
                         [0, 2, 0.33, 0.66, 0.60, 0.45], [1, 0, 0.74, 0.26, 0.11, 0.09],
                         [1, 2, 0.49, 0.51, 0.90, 0.85], [1, 1, 0.04, 0.96, 0.03, 0.02]], dtype=np.float32)

TRAIN_EPOCHS, TRAIN_BATCH, TRAIN_IMG = 3, 2, 64
# schedule.json: the published train.py past its 1000 warm-up iterations: 64 images (coco8's, 8 times, made small),
# batch 2 (accumulation rising to 32), 36 epochs of 32 batches (warm-up ends in epoch 31)
SCHEDULE_COPIES, SCHEDULE_EPOCHS, SCHEDULE_BATCH, SCHEDULE_IMG = 8, 36, 2, 64
# released-format pickles of each family (random weights: the family's layers, not training, are what they judge)
FAMILIES, FAMILY_WIDTH, FAMILY_NC, FAMILY_IMG = ('yolov4-p5', 'yolov4-p6', 'yolov4-p7'), 0.0625, 3, 128
NUMPY_PATHS = {'numpy2': 'numpy._core', 'numpy1': 'numpy.core'}  # what numpy 2 and numpy 1 write in a pickle
# items.npz: training items of the published LoadImagesAndLabels on coco8 at ITEM_IMG, hyp.scratch.yaml with every
# augmentation on (ITEM_HYP), `random` and `np.random` seeded with ITEM_SEED + k before item k
ITEM_IMG, ITEM_BATCH, ITEM_SEED = 96, 2, 1000
ITEM_HYP = dict(degrees=10.0, shear=2.0, perspective=0.0005, flipud=0.5, mixup=0.5)
ITEMS = {'mosaic': [0, 1, 2, 3, 4, 5, 6, 7], 'rect': [0, 3, 5, 6]}  # dataset kind: indices (rect: no mosaic)
WIDE = (96, 160)  # height, width of the non-square TTA input
LOSS_FAMILIES = {'p5': ('yolov4-p5', 192), 'p6': ('yolov4-p6', 192), 'p7': ('yolov4-p7', 256)}  # cfg, image size

PUBLISHED_REPO = 'https://github.com/WongKinYiu/ScaledYOLOv4'
PUBLISHED_BRANCH = 'yolov4-large'
PUBLISHED_COMMIT = '676800364a3446900b9e8407bc880ea2127b3415'  # the branch's newest commit ("Update README.md")

SHIM_MISH = '''import torch, torch.nn as nn, torch.nn.functional as F
class MishCuda(nn.Module):
    def forward(self, x):
        return x * torch.tanh(F.softplus(x))
'''
SHIM_NUMPY = '''import numpy as np
import torch
for _name, _type in (('int', int), ('float', float), ('bool', bool), ('trapz', getattr(np, 'trapezoid', None))):
    if _name not in np.__dict__:
        setattr(np, _name, _type)
_clamp_ = torch.Tensor.clamp_
def _clamp_by_value(self, min=None, max=None):  # 2020's PyTorch clamped an integer tensor by a float tensor's value
    if not self.is_floating_point():
        min, max = [int(b) if isinstance(b, (torch.Tensor, float)) else b for b in (min, max)]
    return _clamp_(self, min, max)
torch.Tensor.clamp_ = _clamp_by_value
'''


def loss_predictions(shapes):
    """The seeded raw predictions of loss.npz, one float32 array per level."""
    rng = np.random.default_rng(LOSS_SEED)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def loss_shapes(strides, img=IMG, na=4):
    return [(LOSS_BATCH, na, img // s, img // s, LOSS_NC + 5) for s in strides]


def eval_loss_inputs(nc):
    """tests/test_eval.py's P6 loss case: torch-seeded predictions at 256 and six targets of nc classes."""
    import torch
    g = torch.Generator().manual_seed(1)
    p = [torch.randn(2, 4, 256 // s, 256 // s, 5 + nc, generator=g) for s in (8, 16, 32, 64)]
    t = torch.cat((torch.tensor([[0.], [0], [1], [1], [1], [0]]), torch.randint(0, nc, (6, 1), generator=g).float(),
                   torch.rand(6, 2, generator=g) * 0.8 + 0.1, torch.rand(6, 2, generator=g) * 0.4 + 0.02), 1)
    return p, t


def judge_environment(tmp):
    """PYTHONPATH and environment for a published-code process: the shims first, then the checkout."""
    shims = Path(tmp) / 'shims'
    shims.mkdir(exist_ok=True)
    (shims / 'mish_cuda.py').write_text(SHIM_MISH)
    (shims / 'sitecustomize.py').write_text(SHIM_NUMPY)
    return dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1', PYTHONPATH=str(shims))


# ---- the published side (runs with the published checkout as its working directory and first on sys.path) ----

def published_model(nc=80, name='yolov4-p5'):
    import torch
    import yaml
    from models.yolo import Model
    cfg = yaml.safe_load(open(f'models/{name}.yaml'))
    cfg.update(depth_multiple=DEPTH, width_multiple=WIDTH, nc=nc)
    torch.manual_seed(0)
    return Model(cfg)


def judge_checkpoint(out):
    import torch
    import yaml
    from utils.general import strip_optimizer
    model = published_model()
    ck = torch.load(QUICKSTART, map_location='cpu', weights_only=False)
    entry = ck.get('ema') or ck['model']
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in entry['state_dict'].items()})
    hyp = yaml.safe_load(open('data/hyp.scratch.yaml'))
    model.nc, model.hyp, model.gr, model.names = 80, hyp, 1.0, list(entry['names'])  # as train.py sets them
    path = str(out / 'p5-tiny.pt')
    torch.save({'epoch': 0, 'best_fitness': np.zeros(1), 'training_results': None, 'model': model,
                'optimizer': None}, path)
    strip_optimizer(path)


def judge_outputs(out):
    import cv2
    import torch
    from models.experimental import attempt_load
    from utils.datasets import letterbox
    model = attempt_load(str(out / 'p5-tiny.pt'), map_location='cpu')
    image = letterbox(cv2.imread(str(ROOT / 'data' / 'coco8' / 'images' / IMAGE)), new_shape=IMG, auto=False)[0]
    image = image[None, :, :, ::-1].transpose(0, 3, 1, 2)  # BGR HWC -> RGB CHW, as test.py
    x = torch.from_numpy(np.ascontiguousarray(image)).float() / 255.0
    wide = letterbox(cv2.imread(str(ROOT / 'data' / 'coco8' / 'images' / IMAGE)), new_shape=WIDE, auto=False)[0]
    wide = np.ascontiguousarray(wide[None, :, :, ::-1].transpose(0, 3, 1, 2))
    with torch.no_grad():
        plain, tta = model(x)[0], model(x, augment=True)[0]
        tta_wide = model(torch.from_numpy(wide).float() / 255.0, augment=True)[0]
    np.savez_compressed(out / 'outputs.npz', image=image, plain=plain[..., :OUTPUT_COLUMNS].numpy(),
                        tta=tta[..., :OUTPUT_COLUMNS].numpy(), image_wide=wide,
                        tta_wide=tta_wide[..., :OUTPUT_COLUMNS].numpy())


def numpy1_pickle_module():
    """A pickle module for torch.save that writes numpy's globals under numpy 1's module path (numpy.core...), as
    a pickle made with numpy 1 (the 2020 releases) names them; numpy 2 writes numpy._core. Only the names differ."""
    import pickle
    import types

    class Pickler(pickle._Pickler):
        def save_global(self, obj, name=None):
            module = getattr(obj, '__module__', None) or ''
            if module.startswith('numpy._core'):
                name = name or obj.__qualname__
                self.write(pickle.GLOBAL + module.replace('numpy._core', 'numpy.core', 1).encode() + b'\n' +
                           name.encode() + b'\n')
                self.memoize(obj)
                return
            super().save_global(obj, name)
    return types.SimpleNamespace(Pickler=Pickler, Unpickler=pickle.Unpickler, load=pickle.load, dump=pickle.dump,
                                 __name__='pickle')


def judge_families(out):
    """<family>-<numpy>.pt and families.npz: see the module docstring."""
    import cv2
    import torch
    import yaml
    from models.experimental import attempt_load
    from utils.datasets import letterbox
    from utils.general import strip_optimizer
    hyp = yaml.safe_load(open('data/hyp.scratch.yaml'))
    image = letterbox(cv2.imread(str(ROOT / 'data' / 'coco8' / 'images' / IMAGE)), new_shape=FAMILY_IMG,
                      auto=False)[0]
    image = np.ascontiguousarray(image[None, :, :, ::-1].transpose(0, 3, 1, 2))
    x = torch.from_numpy(image).float() / 255.0
    outputs = {'image': image}
    for i, name in enumerate(FAMILIES):
        cfg = yaml.safe_load(open(f'models/{name}.yaml'))
        cfg.update(depth_multiple=DEPTH, width_multiple=FAMILY_WIDTH, nc=FAMILY_NC)
        torch.manual_seed(i)
        from models.yolo import Model
        model = Model(cfg)
        g = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):  # statistics and affine terms of a trained model's size
                    m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.6 - 0.3)
                    m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
        model.nc, model.hyp, model.gr, model.names = FAMILY_NC, hyp, 1.0, ['person', 'bicycle', 'car']  # train.py
        family = name.split('-')[1]
        path = out / f'{family}-numpy2.pt'
        torch.save({'epoch': 0, 'best_fitness': np.array([0.25]), 'training_results': None, 'model': model,
                    'optimizer': None}, path)  # train.py's checkpoint layout, as in a 2020 release
        strip_optimizer(str(path))
        torch.save(torch.load(path, map_location='cpu'), out / f'{family}-numpy1.pt',
                   pickle_module=numpy1_pickle_module())
        with torch.no_grad():
            outputs[family] = attempt_load(str(path), map_location='cpu')(x)[0].numpy()
    np.savez_compressed(out / 'families.npz', **outputs)


def seed_item(k):
    """The RNG state before item k on both sides: python's random and numpy's global generator."""
    import random
    random.seed(ITEM_SEED + k)
    np.random.seed(ITEM_SEED + k)


def judge_items(out, tmp):
    import yaml
    from utils.datasets import LoadImagesAndLabels
    data = Path(tmp) / 'coco8-items'
    shutil.copytree(ROOT / 'data' / 'coco8', data, ignore=shutil.ignore_patterns('*.cache*'))  # without our cache
    hyp = dict(yaml.safe_load(open('data/hyp.scratch.yaml')), **ITEM_HYP)
    items = {}
    for kind, indices in ITEMS.items():
        dataset = LoadImagesAndLabels(str(data / 'images'), ITEM_IMG, ITEM_BATCH, augment=True, hyp=hyp,
                                      rect=kind == 'rect', stride=32)
        items[f'{kind}_files'] = np.array([Path(f).name for f in dataset.img_files])
        for k, i in enumerate(indices):
            seed_item(k)
            img, labels, _, _ = dataset[i]
            items[f'{kind}_{k}_img'], items[f'{kind}_{k}_labels'] = img.numpy(), labels.numpy()
    np.savez_compressed(out / 'items.npz', **items)


def judge_loss(out):
    import torch
    import yaml
    from utils.general import compute_loss
    hyp = yaml.safe_load(open('data/hyp.scratch.yaml'))
    results = {}
    for family, (name, img) in LOSS_FAMILIES.items():
        model = published_model(nc=LOSS_NC, name=name)
        model.hyp, model.gr, model.nc = dict(hyp, cls=hyp['cls'] * LOSS_NC / 80.), 1.0, LOSS_NC  # as train.py
        shapes = loss_shapes([int(s) for s in model.stride.tolist()], img)
        p = [torch.from_numpy(a) for a in loss_predictions(shapes)]
        loss, items = compute_loss(p, torch.from_numpy(LOSS_TARGETS), model)
        results.update({f'{family}_shapes': np.array(shapes), f'{family}_loss': loss.numpy(),
                        f'{family}_items': items.numpy()})
    for nc in (3, 80):
        model = published_model(nc=nc, name='yolov4-p6')
        model.hyp, model.gr, model.nc = dict(hyp, cls=hyp['cls'] * nc / 80.), 1.0, nc
        loss, items = compute_loss(*eval_loss_inputs(nc), model)
        results.update({f'eval_nc{nc}_loss': loss.numpy(), f'eval_nc{nc}_items': items.numpy()})
    np.savez(out / 'loss.npz', targets=LOSS_TARGETS, **results)


def judge_test_json(out, tmp):
    import yaml
    data = Path(tmp) / 'coco8'
    shutil.copytree(ROOT / 'data' / 'coco8', data, ignore=shutil.ignore_patterns('*.cache*'))  # without our cache
    names = yaml.safe_load((ROOT / 'data' / 'coco8.yaml').read_text())['names']
    (Path(tmp) / 'coco8.yaml').write_text(json.dumps({'train': str(data / 'images'), 'val': str(data / 'images'),
                                                      'nc': 80, 'names': names}))
    import argparse
    import test  # the published test.py, called as its __main__ does, without its figures (today's matplotlib
    test.plot_images = lambda *args, **kwargs: None  # breaks its colour table; they do not touch the JSON)
    test.opt = argparse.Namespace(device='cpu', merge=False, save_txt=False, task='val', single_cls=False,
                                  augment=False, verbose=False)
    test.test(str(Path(tmp) / 'coco8.yaml'), str(out / 'p5-tiny.pt'), batch_size=8, imgsz=IMG, conf_thres=0.001,
              iou_thres=0.65, save_json=True, save_dir=tmp)
    shutil.move('detections_val2017_p5-tiny_results.json', out / 'test-json.json')


def judge_recipe(out, tmp):
    import runpy
    import yaml
    import torch
    import utils.general
    import utils.torch_utils
    cfg = yaml.safe_load(open('models/yolov4-p5.yaml'))
    cfg.update(depth_multiple=DEPTH, width_multiple=WIDTH)
    (Path(tmp) / 'p5-tiny.yaml').write_text(yaml.safe_dump(cfg))
    data = Path(tmp) / 'coco8.yaml'  # written by judge_test_json
    steps, decays = [], []
    step, update = torch.optim.SGD.step, utils.torch_utils.ModelEMA.update

    def recording_step(self, *args, **kwargs):
        steps.append([{'params': len(g['params']), 'lr': g['lr'], 'momentum': g['momentum'],
                       'weight_decay': g['weight_decay']} for g in self.param_groups])
        return step(self, *args, **kwargs)

    def recording_update(self, model):
        decays.append(self.decay(self.updates + 1))
        return update(self, model)
    torch.optim.SGD.step, utils.torch_utils.ModelEMA.update = recording_step, recording_update
    utils.general.plot_images = utils.general.plot_labels = lambda *args, **kwargs: None
    sys.argv = ['train.py', '--cfg', str(Path(tmp) / 'p5-tiny.yaml'), '--data', str(data), '--hyp',
                'data/hyp.scratch.yaml', '--weights', '', '--epochs', str(TRAIN_EPOCHS), '--batch-size',
                str(TRAIN_BATCH), '--img-size', str(TRAIN_IMG), str(TRAIN_IMG), '--device', 'cpu', '--notest',
                '--nosave', '--noautoanchor', '--logdir', str(Path(tmp) / 'runs')]
    try:
        runpy.run_path('train.py', run_name='__main__')
    finally:
        torch.optim.SGD.step, utils.torch_utils.ModelEMA.update = step, update
    (out / 'recipe.json').write_text(json.dumps({'epochs': TRAIN_EPOCHS, 'batch': TRAIN_BATCH, 'images': 8,
                                                 'steps': steps, 'ema_decay': decays}, indent=0))


def schedule_dataset(tmp):
    """SCHEDULE_COPIES copies of coco8's images (longer side 64 px: the schedule does not depend on them, and
    loading them is cheap) with their labels; the data yaml's path."""
    import cv2
    root = Path(tmp) / 'coco64'
    for sub in ('images', 'labels'):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for f in sorted((ROOT / 'data' / 'coco8' / 'images').glob('*.jpg')):
        im = cv2.imread(str(f))
        r = 64 / max(im.shape[:2])
        im = cv2.resize(im, (round(im.shape[1] * r), round(im.shape[0] * r)), interpolation=cv2.INTER_AREA)
        label = ROOT / 'data' / 'coco8' / 'labels' / f'{f.stem}.txt'
        for k in range(SCHEDULE_COPIES):
            cv2.imwrite(str(root / 'images' / f'{k}-{f.name}'), im)
            (root / 'labels' / f'{k}-{f.stem}.txt').write_text(label.read_text() if label.is_file() else '')
    data = Path(tmp) / 'coco64.yaml'
    data.write_text(json.dumps({'train': str(root / 'images'), 'val': str(root / 'images'), 'nc': 80,
                                'names': [str(i) for i in range(80)]}))
    return data


def judge_schedule(out, tmp):
    """schedule.json: every optimizer step of the published train.py through the warm-up and into the cosine,
    with the iteration it came at (the count of compute_loss calls before it) and each group's lr, momentum and
    weight decay. The schedule reads neither the model's predictions nor the loss, so to make 1152 iterations
    cheap the training forward pass is replaced by a zero that depends on one parameter, the loss by that zero,
    and the final epoch's test.test by empty results; the loop of train.py (warm-up, accumulation, steps, the
    scheduler, the EMA) runs as published."""
    import runpy
    import yaml
    import torch
    import test
    import utils.general
    from models.yolo import Model
    forward = Model.forward

    def zero_forward(self, x, *args, **kwargs):
        training = self.training and hasattr(self, 'hyp')  # set by train.py after the stride's dry run
        return next(self.parameters()).sum() * 0 if training else forward(self, x, *args, **kwargs)
    Model.forward = zero_forward
    test.test = lambda *args, **kwargs: ((0.0,) * 7, np.zeros(80), (0.0, 0.0, 0.0))
    cfg = yaml.safe_load(open('models/yolov4-p5.yaml'))
    cfg.update(depth_multiple=DEPTH, width_multiple=WIDTH)
    (Path(tmp) / 'p5-tiny.yaml').write_text(yaml.safe_dump(cfg))
    data = schedule_dataset(tmp)
    steps, iterations = [], [0]
    step, compute_loss = torch.optim.SGD.step, utils.general.compute_loss

    def recording_step(self, *args, **kwargs):
        steps.append({'ni': iterations[0] - 1, 'params': [len(g['params']) for g in self.param_groups],
                      **{k: [float(g[k]) for g in self.param_groups] for k in ('lr', 'momentum', 'weight_decay')}})
        return step(self, *args, **kwargs)

    def counting_loss(pred, targets, model):
        iterations[0] += 1
        return pred.reshape(1), torch.zeros(4)
    torch.optim.SGD.step, utils.general.compute_loss = recording_step, counting_loss
    utils.general.plot_images = utils.general.plot_labels = lambda *args, **kwargs: None
    sys.argv = ['train.py', '--cfg', str(Path(tmp) / 'p5-tiny.yaml'), '--data', str(data), '--hyp',
                'data/hyp.scratch.yaml', '--weights', '', '--epochs', str(SCHEDULE_EPOCHS), '--batch-size',
                str(SCHEDULE_BATCH), '--img-size', str(SCHEDULE_IMG), str(SCHEDULE_IMG), '--device', 'cpu',
                '--notest', '--nosave', '--noautoanchor', '--logdir', str(Path(tmp) / 'runs-schedule')]
    try:
        runpy.run_path('train.py', run_name='__main__')
    finally:
        torch.optim.SGD.step, utils.general.compute_loss, Model.forward = step, compute_loss, forward
    images = 8 * SCHEDULE_COPIES
    (out / 'schedule.json').write_text(json.dumps({'epochs': SCHEDULE_EPOCHS, 'batch': SCHEDULE_BATCH,
                                                   'images': images, 'steps': steps}) + '\n')


def bias_priors_without_grad():
    """The published Model writes its bias priors in place through a view of a parameter, which PyTorch >= 1.7
    refuses outside torch.no_grad(); the same writes under no_grad give the same values."""
    import torch
    from models.yolo import Model
    initialize = Model._initialize_biases

    def _initialize_biases(self, *args, **kwargs):
        with torch.no_grad():
            return initialize(self, *args, **kwargs)
    Model._initialize_biases = _initialize_biases


JUDGES = ('checkpoint', 'outputs', 'loss', 'test_json', 'recipe', 'schedule', 'families', 'items')


def judge(out, tmp, only=JUDGES):
    out = Path(out)
    bias_priors_without_grad()
    for name in only:
        if name == 'recipe' and 'test_json' not in only:
            judge_test_json(out, tmp)  # writes the data yaml the recipe trains on
        if name in ('test_json', 'recipe', 'schedule', 'items'):
            globals()[f'judge_{name}'](out, tmp)
        else:
            globals()[f'judge_{name}'](out)


def regenerate(repository, only=JUDGES):
    """Extract PUBLISHED_COMMIT from a git repository of the published code and run the judge on it (the JUDGES
    named in `only`: all of them by default)."""
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        published = Path(tmp) / 'published'
        published.mkdir()
        archive = subprocess.run(['git', '-C', str(repository), 'archive', PUBLISHED_COMMIT], capture_output=True)
        if archive.returncode:
            raise SystemExit(f'{repository}: no commit {PUBLISHED_COMMIT} of {PUBLISHED_REPO} '
                             f'({archive.stderr.decode().strip()})')
        subprocess.run(['tar', '-x', '-C', str(published)], input=archive.stdout, check=True)
        env = judge_environment(tmp)
        env['PYTHONPATH'] += os.pathsep + str(published)
        subprocess.run([sys.executable, str(Path(__file__).resolve()), '--judge', str(OUT), tmp, *only],
                       cwd=published, env=env, check=True)
    (OUT / 'made-from.json').write_text(json.dumps({
        'repository': PUBLISHED_REPO, 'branch': PUBLISHED_BRANCH, 'commit': PUBLISHED_COMMIT,
        'command': 'python tests/published_fixtures.py <a git clone of the repository>'}, indent=1) + '\n')
    print(f'published fixtures written to {OUT} from {PUBLISHED_COMMIT}')


if __name__ == '__main__':
    if sys.argv[1] == '--judge':
        sys.path.insert(0, os.getcwd())
        judge(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        regenerate(sys.argv[1], sys.argv[2:] or JUDGES)  # python tests/published_fixtures.py REPO [JUDGE ...]
