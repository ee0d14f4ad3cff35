"""Known answers from the published code (github:WongKinYiu/ScaledYOLOv4, branch yolov4-large), run as a judge.

    python tests/published_fixtures.py PUBLISHED_CHECKOUT      # rewrites tests/data/published/

The published code runs in processes of its own (its `models` and `utils` packages have our names), from a
checkout given on the command line, never copied here. Shims let the 2020 code run on today's libraries and change
none of its arithmetic: a `mish_cuda` module whose MishCuda is x * tanh(softplus(x)) (the extension's function, so
the pickle names `mish_cuda.MishCuda` as the released files do); numpy's removed aliases (np.int, np.float,
np.trapz); an integer tensor's clamp_ by a float tensor's value (build_targets' grid indices), which 2020's PyTorch
did and today's refuses; the Model's bias priors written under torch.no_grad(), where today's PyTorch lets them be
written in place through a view as 2020's did. torch.load is told to unpickle whole models
(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD).

What it writes (tests/test_published.py reads them):
- p5-tiny.pt: the quick start's trained weights (tests/data/quickstart-p5-tiny.pt) in the published Model of
  models/yolov4-p5.yaml at depth 0.33, width 0.125, with names, nc, hyp and gr set as the published train.py sets
  them, saved in train.py's checkpoint layout and stripped by the published utils.general.strip_optimizer (float16,
  whole pickled model), as the released files were.
- outputs.npz: `image` (a coco8 image letterboxed to 192 by the published letterbox, uint8 CHW) and the
  published attempt_load model's decoded outputs on it, the first OUTPUT_COLUMNS columns (x, y, w, h, objectness,
  3 classes): `plain`, and `tta` (forward(augment=True)).
- loss.npz: the published utils.general.compute_loss on seeded predictions (numpy default_rng(LOSS_SEED) normals,
  shapes `shapes`) and `targets`, for that model's P5 head with nc=3 and hyp.scratch.yaml with its class gain
  scaled by nc / 80 as the published train.py does: `loss` (total x batch) and `items` (lbox, lobj, lcls, total).
- recipe.json: the published train.py itself, run for TRAIN_EPOCHS epochs on data/coco8 (batch TRAIN_BATCH, --img
  TRAIN_IMG, the P5 at depth 0.33, width 0.125 from scratch, hyp.scratch.yaml, --notest), with its optimizer's
  step and ModelEMA.update wrapped to record, at every step, each parameter group's size, learning rate, momentum
  and weight decay, and the EMA decay of every update. Every step here is a warm-up iteration (nw = 1000) taken
  with accumulation 1, so step k is iteration k of epoch k // (8 / TRAIN_BATCH). Its figures are skipped (today's
  matplotlib breaks its colour table).
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


def loss_shapes(strides, na=4):
    return [(LOSS_BATCH, na, IMG // s, IMG // s, LOSS_NC + 5) for s in strides]


def judge_environment(tmp):
    """PYTHONPATH and environment for a published-code process: the shims first, then the checkout."""
    shims = Path(tmp) / 'shims'
    shims.mkdir(exist_ok=True)
    (shims / 'mish_cuda.py').write_text(SHIM_MISH)
    (shims / 'sitecustomize.py').write_text(SHIM_NUMPY)
    return dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1', PYTHONPATH=str(shims))


# ---- the published side (runs with the published checkout as its working directory and first on sys.path) ----

def published_model(nc=80):
    import torch
    import yaml
    from models.yolo import Model
    cfg = yaml.safe_load(open('models/yolov4-p5.yaml'))
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
    with torch.no_grad():
        plain, tta = model(x)[0], model(x, augment=True)[0]
    np.savez_compressed(out / 'outputs.npz', image=image, plain=plain[..., :OUTPUT_COLUMNS].numpy(),
                        tta=tta[..., :OUTPUT_COLUMNS].numpy())


def judge_loss(out):
    import torch
    import yaml
    from utils.general import compute_loss
    model = published_model(nc=LOSS_NC)
    hyp = yaml.safe_load(open('data/hyp.scratch.yaml'))
    hyp['cls'] *= LOSS_NC / 80.  # train.py: scale coco-tuned hyp['cls'] to current dataset
    model.hyp, model.gr, model.nc = hyp, 1.0, LOSS_NC
    shapes = loss_shapes([int(s) for s in model.stride.tolist()])
    p = [torch.from_numpy(a) for a in loss_predictions(shapes)]
    loss, items = compute_loss(p, torch.from_numpy(LOSS_TARGETS), model)
    np.savez(out / 'loss.npz', shapes=np.array(shapes), targets=LOSS_TARGETS, loss=loss.numpy(), items=items.numpy())


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


def judge(out, tmp):
    out = Path(out)
    bias_priors_without_grad()
    judge_checkpoint(out)
    judge_outputs(out)
    judge_loss(out)
    judge_test_json(out, tmp)
    judge_recipe(out, tmp)


def regenerate(published):
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        env = judge_environment(tmp)
        env['PYTHONPATH'] += os.pathsep + str(Path(published).resolve())
        subprocess.run([sys.executable, str(Path(__file__).resolve()), '--judge', str(OUT), tmp], cwd=published,
                       env=env, check=True)
    print(f'published fixtures written to {OUT}')


if __name__ == '__main__':
    if sys.argv[1] == '--judge':
        sys.path.insert(0, os.getcwd())
        judge(sys.argv[2], sys.argv[3])
    else:
        regenerate(sys.argv[1])
