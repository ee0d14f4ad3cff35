"""Evaluation: NMS (and its fallback), AP, IoU variants, the loss, and test.py end to end."""
import json
import logging
import math

import numpy as np
import pytest
import torch
import yaml

import utils.nms as nms_module
from conftest import ROOT, tiny_cfg
from published_fixtures import OUT as PUBLISHED, eval_loss_inputs
from models.yolo import Model
from models.checkpoint import model_payload, save_checkpoint
from utils.nms import nms_exact, non_max_suppression
from utils.loss import ComputeLoss, build_targets, compute_loss
from utils.metrics import bbox_iou, compute_ap

HYP = yaml.safe_load((ROOT / 'data' / 'hyp.scratch.yaml').read_text())


def _pred(rows, nc):
    """Decoded predictions (1, n, 5 + nc) from (xc, yc, w, h, obj, cls_index, cls_score)."""
    p = torch.zeros(1, len(rows), 5 + nc)
    for i, (x, y, w, h, obj, c, s) in enumerate(rows):
        p[0, i, :5] = torch.tensor([x, y, w, h, obj])
        p[0, i, 5 + c] = s
    return p


def test_nms_one_class_overlap():
    p = _pred([(50, 50, 20, 20, 0.9, 0, 1.0), (52, 50, 20, 20, 0.8, 0, 1.0), (150, 50, 20, 20, 0.7, 0, 1.0)], 2)
    out = non_max_suppression(p, 0.25, 0.5)[0]
    assert out[:, 4].tolist() == pytest.approx([0.9, 0.7])
    assert out[0, :4].tolist() == pytest.approx([40, 40, 60, 60])


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_nms_reduced_precision_input_gives_float32(dtype):
    # centre 812, width 22: exact in both dtypes; the corners 801 and 823 are not in bfloat16 (steps of 4 above
    # 512), so computing them in the input's dtype would move the box by a pixel
    p = _pred([(812.0, 50, 22, 20, 0.9, 0, 1.0), (150, 50, 20, 20, 0.7, 0, 1.0)], 2).to(dtype)
    out = non_max_suppression(p, 0.25, 0.5)[0]
    assert out.dtype == torch.float32
    assert torch.equal(out, non_max_suppression(p.float(), 0.25, 0.5)[0])
    assert out[0, :4].tolist() == [801, 40, 823, 60]


def test_nms_two_classes_and_agnostic_and_filter():
    p = _pred([(50, 50, 20, 20, 0.9, 0, 1.0), (52, 50, 20, 20, 0.8, 1, 1.0)], 2)
    out = non_max_suppression(p, 0.25, 0.5)[0]
    assert sorted(out[:, 5].tolist()) == [0, 1]  # different classes do not suppress each other
    out = non_max_suppression(p, 0.25, 0.5, agnostic=True)[0]
    assert out[:, 5].tolist() == [0] and out[:, 4].tolist() == pytest.approx([0.9])
    out = non_max_suppression(p, 0.25, 0.5, classes=[1])[0]
    assert out[:, 5].tolist() == [1]


def test_nms_multi_label_and_conf():
    p = torch.zeros(1, 1, 8)
    p[0, 0, :5] = torch.tensor([50, 50, 20, 20, 0.5])
    p[0, 0, 5:] = torch.tensor([0.9, 0.6, 0.1])  # scores 0.45, 0.30, 0.05
    out = non_max_suppression(p, 0.25, 0.5)[0]
    assert out[:, 5].tolist() == [0, 1] and out[:, 4].tolist() == pytest.approx([0.45, 0.30])
    assert non_max_suppression(p, 0.6, 0.5)[0].shape == (0, 6)  # objectness below threshold: nothing


def test_nms_merge():
    # boxes [40,40,60,60] (score .9) and [44,40,64,60] (score .6): IoU 16*20/(2*400-320) = 0.667
    p = _pred([(50, 50, 20, 20, 0.9, 0, 1.0), (54, 50, 20, 20, 0.6, 0, 1.0), (150, 50, 20, 20, 0.7, 0, 1.0)], 1)
    out = non_max_suppression(p, 0.25, 0.5, merge=True)[0]
    x1 = (0.9 * 40 + 0.6 * 44) / 1.5
    assert out.shape[0] == 1  # the isolated box has no overlap: dropped by the redundancy rule, as published
    assert out[0, :4].tolist() == pytest.approx([x1, 40, x1 + 20, 60], abs=1e-4)


def test_nms_max_det():
    xs = torch.arange(400).float() * 30
    p = torch.zeros(1, 400, 6)
    p[0, :, 0], p[0, :, 1], p[0, :, 2:4], p[0, :, 4], p[0, :, 5] = xs, 10, 10, torch.linspace(0.3, 0.9, 400), 1
    assert non_max_suppression(p, 0.25, 0.5)[0].shape[0] == 300


def test_exact_nms_equals_torchvision():
    tv = pytest.importorskip('torchvision')
    g = torch.Generator().manual_seed(0)
    for n in (1, 50, 600):
        xy = torch.rand(n, 2, generator=g) * 200
        wh = torch.rand(n, 2, generator=g) * 60 + 1
        boxes = torch.cat((xy, xy + wh), 1)
        scores = torch.rand(n, generator=g)
        for thr in (0.3, 0.5, 0.6, 0.65):
            assert torch.equal(nms_exact(boxes, scores, thr), tv.ops.nms(boxes, scores, thr))


@pytest.mark.parametrize('thr', [0.6, 0.65])
def test_exact_nms_threshold_compared_like_torchvision(thr):
    """torchvision compares the float32 IoU with the threshold in double precision: an IoU equal to float32(0.6)
    (above 0.6) suppresses, one equal to float32(0.65) (below 0.65) does not. A float32 comparison got 0.6 wrong."""
    tv = pytest.importorskip('torchvision')
    iou32 = float(np.float32(thr))
    boxes = torch.tensor([[0., 0., 10., 1.], [0., 0., 10 * iou32, 1.]])  # IoU = (10 * iou32) / 10 in float32
    scores = torch.tensor([0.9, 0.5])
    assert ((boxes[1, 2] * 1) / 10).item() == iou32
    expected = [0] if iou32 > thr else [0, 1]
    assert tv.ops.nms(boxes, scores, thr).tolist() == expected
    assert nms_exact(boxes, scores, thr).tolist() == expected


def test_cpu_nms_needs_no_torchvision(monkeypatch, caplog):
    """On the CPU, NMS never imports torchvision (its import costs over a second): a broken install changes
    nothing, not even a warning."""
    import sys
    monkeypatch.setitem(sys.modules, 'torchvision', None)  # import fails like a broken install
    monkeypatch.setattr(nms_module, '_TV_NMS', None)
    p = _pred([(50, 50, 20, 20, 0.9, 0, 1.0), (52, 50, 20, 20, 0.8, 0, 1.0), (150, 50, 20, 20, 0.7, 1, 1.0)], 2)
    with caplog.at_level(logging.WARNING):
        a = non_max_suppression(p, 0.25, 0.5)[0]
    assert caplog.text == '' and nms_module._TV_NMS is None
    assert a[:, 4].tolist() == pytest.approx([0.9, 0.7])


def test_broken_torchvision_warns_once(monkeypatch, caplog):
    """Where torchvision's kernel would be used (CUDA), a broken install gives one warning and the exact NMS."""
    import sys
    monkeypatch.setitem(sys.modules, 'torchvision', None)
    monkeypatch.setattr(nms_module, '_TV_NMS', None)
    with caplog.at_level(logging.WARNING):
        assert nms_module._torchvision_nms() is None and nms_module._torchvision_nms() is None
    assert caplog.text.count('torchvision NMS unavailable') == 1


def test_compute_ap_known_curve():
    ap, _, _ = compute_ap(np.array([0.2, 0.4]), np.array([1.0, 0.5]))
    # envelope 1 on [0, .2], 1 -> .5 on [.2, .4], then the 101-point trapezoid .5 -> 0 over [.40, .41]
    assert ap == pytest.approx(0.2 + 0.2 * 0.75 + 0.01 * 0.25)
    ap, _, _ = compute_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]))
    assert ap == pytest.approx(0.995)  # published quirk: the sentinel at recall 1 drops the last 0.01 to 0


def test_iou_variants_known_pairs():
    t = lambda *b: torch.tensor(b, dtype=torch.float64)  # noqa: E731
    same = bbox_iou(t(0, 0, 2, 2), t(0, 0, 2, 2)[None], CIoU=True)
    assert same.item() == pytest.approx(1.0, abs=1e-6)
    a, b = t(0, 0, 1, 1), t(2, 0, 3, 1)[None]  # disjoint: IoU 0, enclosing 3x1, centres 2 apart
    assert bbox_iou(a, b).item() == pytest.approx(0)
    assert bbox_iou(a, b, GIoU=True).item() == pytest.approx(-1 / 3)
    assert bbox_iou(a, b, DIoU=True).item() == pytest.approx(-4 / 10)
    assert bbox_iou(a, b, CIoU=True).item() == pytest.approx(-4 / 10)  # same aspect ratio: v = 0
    a, b = t(0, 0, 2, 2), t(0, 0, 2, 1)[None]  # nested, aspect 1 vs 2
    iou, diou = 0.5, 0.5 - 0.25 / 8
    v = 4 / math.pi ** 2 * (math.atan(2 / 1) - math.atan(2 / 2)) ** 2
    assert bbox_iou(a, b, DIoU=True).item() == pytest.approx(diou, abs=1e-7)
    assert bbox_iou(a, b, CIoU=True).item() == pytest.approx(diou - v * v / (1 - iou + v), abs=1e-7)
    xywh = bbox_iou(t(1, 1, 2, 2), t(1, 0.5, 2, 1)[None], x1y1x2y2=False, CIoU=True)
    assert xywh.item() == pytest.approx(diou - v * v / (1 - iou + v), abs=1e-7)


def _loss_model():
    model = Model(tiny_cfg('yolov4-p5', nc=3))
    model.hyp, model.gr = dict(HYP), 1.0  # the published function form reads them off the model
    return model


@pytest.mark.parametrize('nc', [3, 80])
def test_compute_loss_known_values(nc):
    """A 4-level model (balance, 1.4 objectness gain, class gain scaled by nc / 80) against the published
    compute_loss on the same inputs (tests/data/published/loss.npz, eval_nc<nc>, made by tests/published_fixtures.py
    from the published code's utils/general.py)."""
    judged = np.load(PUBLISHED / 'loss.npz')
    torch.manual_seed(0)
    model = Model(tiny_cfg('yolov4-p6', nc=nc))
    p, t = eval_loss_inputs(nc)
    loss, got = ComputeLoss(model, dict(HYP, cls=HYP['cls'] * nc / 80))(p, t)
    assert loss.item() == pytest.approx(judged[f'eval_nc{nc}_loss'].item(), rel=1e-6)
    assert got.tolist() == pytest.approx(judged[f'eval_nc{nc}_items'].tolist(), rel=1e-6)
    assert not hasattr(model, 'hyp') and not hasattr(model, 'gr')  # the model carries no training settings


def test_loss_falls_when_prediction_moves_onto_target():
    model = _loss_model()
    targets = torch.tensor([[0, 1, 0.4, 0.55, 0.2, 0.3]])  # image 0, class 1
    shapes = [(1, 4, 128 // s, 128 // s, 8) for s in (8, 16, 32)]
    p0 = [torch.zeros(s) for s in shapes]
    loss0, items0 = compute_loss(p0, targets, model)
    assert torch.isfinite(loss0).all() and loss0.item() > 0 and items0.shape == (4,)
    tcls, tbox, indices, anchors = build_targets(p0, targets, model)
    assert sum(len(b) for b, *_ in indices) >= 3  # matched on several anchors / neighbour cells
    p1 = [torch.full(s, -6.0) for s in shapes]  # confident background everywhere...
    logit = lambda y: torch.log(y / (1 - y))  # noqa: E731
    for i, (b, a, gj, gi) in enumerate(indices):  # ...and exact boxes, objectness, class at the targets
        xy = logit((tbox[i][:, :2] + 0.5) / 2)
        wh = logit((tbox[i][:, 2:] / anchors[i]).sqrt() / 2)
        p1[i][b, a, gj, gi, :4] = torch.cat((xy, wh), 1)
        p1[i][b, a, gj, gi, 4] = 6.0
        p1[i][b, a, gj, gi, 5 + tcls[i]] = 6.0
    loss1, items1 = compute_loss(p1, targets, model)
    assert loss1.item() < 0.1 * loss0.item()
    assert items1[0].item() < 1e-4  # box loss ~ 0: CIoU of identical boxes is 1
    assert (items1 < items0).all()


def test_loss_single_class_has_no_cls_term_and_batch_scaling():
    model = Model(tiny_cfg('yolov4-p5', nc=1))
    torch.manual_seed(0)
    p = [torch.randn(2, 4, 128 // s, 128 // s, 6) for s in (8, 16, 32)]
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.2, 0.2], [1, 0, 0.3, 0.3, 0.1, 0.2]])
    loss, items = ComputeLoss(model, dict(HYP))(p, targets)
    assert items[2].item() == 0
    assert loss.item() == pytest.approx(2 * items[3].item(), rel=1e-6)


def _ckpt(path, obj_bias=None):
    torch.manual_seed(0)
    model = Model(tiny_cfg('yolov4-p5', nc=80))
    if obj_bias is not None:  # confident 'person' everywhere, so the evaluation has detections
        det = model.model[-1]
        for conv in det.m:
            b = conv.bias.detach().view(det.na, -1)
            b[:, 4] = obj_bias
            b[:, 5:] = -12
            b[:, 5] = 3
    model.names = yaml.safe_load((ROOT / 'data' / 'coco8.yaml').read_text())['names']
    save_checkpoint({'model': model_payload(model)}, path)


def test_test_py_end_to_end_with_pycocotools(tmp_path, capsys):
    import test as test_script
    _ckpt(tmp_path / 'w.pt', obj_bias=2.0)
    (mp, mr, map50, map_, *losses), maps, times = test_script.main(
        ['--weights', str(tmp_path / 'w.pt'), '--data', str(ROOT / 'data' / 'coco8.yaml'), '--img', '256',
         '--batch', '4', '--save-json', '--device', 'cpu', '--project', str(tmp_path / 'runs'), '--name', 'e2e',
         '--workers', '0'])
    out = capsys.readouterr().out
    run = tmp_path / 'runs' / 'e2e'
    dets = json.loads(next(run.glob('detections_val2017_w_results.json')).read_text())
    assert dets and {d['category_id'] for d in dets} == {1}
    ids = {d['image_id'] for d in dets}
    assert ids <= {9, 25, 30, 34, 36, 42, 149, 250}
    assert all(len(d['bbox']) == 4 and d['bbox'][2] >= 0 and d['bbox'][3] >= 0 for d in dets)
    assert 'Average Precision' in out  # pycocotools' 12 figures
    assert 0 <= map_ <= 1 and 0 <= map50 <= 1 and map50 >= map_
    assert (run / 'confusion_matrix.png').exists() and (run / 'test_batch0_pred.jpg').exists()
    assert len(times) == 3 and maps.shape == (80,)


def test_test_py_zero_detections_and_bad_input(tmp_path, caplog):
    import test as test_script
    _ckpt(tmp_path / 'w.pt', obj_bias=-20.0)
    data = str(ROOT / 'data' / 'coco8.yaml')
    res, maps, _ = test_script.test(data, str(tmp_path / 'w.pt'), batch_size=4, imgsz=128, save_json=True,
                                    save_dir=tmp_path / 'run', device='cpu', workers=0)
    assert res[:4] == (0., 0., 0., 0.) and (maps == 0).all()
    from models.checkpoint import CheckpointError
    from utils.data_config import DataConfigError
    with pytest.raises(CheckpointError, match='missing.pt not found'):
        test_script.test(data, str(tmp_path / 'missing.pt'), save_dir=tmp_path / 'r2', device='cpu')
    with pytest.raises(DataConfigError, match='nope.yaml not found'):
        test_script.test(str(tmp_path / 'nope.yaml'), str(tmp_path / 'w.pt'), device='cpu')
    (tmp_path / 'bad.yaml').write_text('train: x\n')
    with pytest.raises(DataConfigError, match='lacks required keys: nc, val'):
        test_script.test(str(tmp_path / 'bad.yaml'), str(tmp_path / 'w.pt'), device='cpu')
    (tmp_path / 'nc3.yaml').write_text(f'val: {ROOT / "data" / "coco8" / "images"}\nnc: 3\n')
    with pytest.raises(ValueError, match='80 classes but .*nc3.yaml has nc=3'):
        test_script.test(str(tmp_path / 'nc3.yaml'), str(tmp_path / 'w.pt'), save_dir=tmp_path / 'r3', device='cpu')


def test_test_py_tasks_and_options(tmp_path, capsys):
    import test as test_script
    _ckpt(tmp_path / 'w.pt', obj_bias=2.0)
    common = ['--weights', str(tmp_path / 'w.pt'), '--data', str(ROOT / 'data' / 'coco8.yaml'), '--img', '128',
              '--device', 'cpu', '--project', str(tmp_path / 'runs'), '--workers', '0']
    test_script.main(common + ['--name', 'v', '--verbose', '--save-txt'])
    assert '              person' in capsys.readouterr().err  # per-class row (logging to stderr)
    labels = list((tmp_path / 'runs' / 'v' / 'labels').glob('*.txt'))
    assert labels and all(len(ln.split()) == 5 for f in labels for ln in f.read_text().splitlines())
    rows = test_script.main(common + ['--name', 's', '--task', 'study'])
    assert len(rows) == 1 and (tmp_path / 'runs' / 's' / 'study.png').exists()
    res, _, times = test_script.main(common + ['--name', 'sp', '--task', 'speed'])
    assert len(res) == 7 and len(times) == 3
    assert sorted(p.name for p in (tmp_path / 'runs').iterdir()) == ['s', 'sp', 'v']


def test_save_json_without_ground_truth_still_reports(tmp_path, caplog):
    import test as test_script
    _ckpt(tmp_path / 'w.pt', obj_bias=2.0)
    (tmp_path / 'd.yaml').write_text(f'val: {ROOT / "data" / "coco8" / "images"}\nnc: 80\n'
                                     f'val_annotations: {tmp_path / "missing.json"}\n')
    with caplog.at_level(logging.INFO):
        res, _, _ = test_script.test(str(tmp_path / 'd.yaml'), str(tmp_path / 'w.pt'), batch_size=4, imgsz=128,
                                     save_json=True, save_dir=tmp_path / 'run', device='cpu', workers=0)
    lines = [ln for ln in caplog.text.splitlines() if 'no COCO ground truth' in ln]
    assert len(lines) == 1 and 'missing.json' in lines[0]
    assert list((tmp_path / 'run').glob('detections_val2017_w_results.json')) and len(res) == 7


def test_faster_coco_eval_gives_pycocotools_numbers(tmp_path):
    """The optional faster-coco-eval backend gives the same 12 statistics as pycocotools on the bundled data,
    for detections with shifted boxes, false positives and random scores."""
    pytest.importorskip('faster_coco_eval', reason='faster-coco-eval is not installed (pip install faster-coco-eval)')
    import test as test_script
    gt = json.loads((ROOT / 'data' / 'coco8' / 'annotations' / 'instances.json').read_text())
    rng = np.random.default_rng(0)
    dets = []
    for a in gt['annotations']:
        for _ in range(3):
            x, y, w, h = a['bbox']
            s = rng.uniform(0.7, 1.3, 2)
            dets.append({'image_id': a['image_id'], 'category_id': int(rng.choice([a['category_id'], 1, 62])),
                         'bbox': [x + rng.normal(0, 0.1 * w), y + rng.normal(0, 0.1 * h), w * s[0], h * s[1]],
                         'score': float(rng.uniform(0.01, 1))})
    file = tmp_path / 'dets.json'
    file.write_text(json.dumps(dets))
    ids = sorted(im['id'] for im in gt['images'])
    ref = test_script.coco_score(gt, file, ids, 'pycocotools')
    fast = test_script.coco_score(gt, file, ids, 'faster-coco-eval')
    assert 0.05 < ref[0] < 0.95 and np.allclose(fast, ref, atol=1e-12, rtol=0), (ref, fast)


@pytest.mark.parametrize('ties,crowded', [(False, False), (True, False), (False, True)])
def test_blocked_nms_equals_torchvision(ties, crowded):
    """Many blocks of candidates, class offsets as non_max_suppression makes them, with and without tied scores,
    spread out or crowded on 40 objects (most boxes suppressed by earlier blocks): the full result and the one
    cut at max_det (which stops early) are torchvision's indices."""
    torchvision = pytest.importorskip('torchvision')
    g = torch.Generator().manual_seed(3)
    n = nms_module.NMS_BLOCK * 12 + 7
    if crowded:
        xy = (torch.rand(40, 2, generator=g) * 600)[torch.randint(0, 40, (n,), generator=g)]
        xy += torch.randn(n, 2, generator=g) * 4
    else:
        xy = torch.rand(n, 2, generator=g) * 600
    boxes = torch.cat((xy, xy + torch.rand(n, 2, generator=g) * 80 + 2), 1)
    boxes += torch.randint(0, 80 if not crowded else 12, (n, 1), generator=g).float() * 4096
    scores = torch.rand(n, generator=g)
    if ties:
        scores = (scores * 50).round() / 50
    full = torchvision.ops.nms(boxes, scores, 0.65)
    assert len(full) > 300
    assert torch.equal(nms_module.nms(boxes, scores, 0.65), full)
    assert torch.equal(nms_module.nms(boxes, scores, 0.65, max_det=300), full[:300])


def test_channels_last_evaluation_and_detection_agree(tmp_path, monkeypatch):
    """--channels-last only changes the memory format: the same detections to float rounding (the boxes, scores
    and mAP of test.py; detect.py's boxes), on the CPU's convolution kernels for that format."""
    import detect as detect_script
    import test as test_script
    from models.experimental import attempt_load
    _ckpt(tmp_path / 'w.pt', obj_bias=2.0)
    data = str(ROOT / 'data' / 'coco8.yaml')
    loaded = []  # the models the scripts load, to check their memory format
    for script in (test_script, detect_script):
        monkeypatch.setattr(script, 'attempt_load', lambda *a, **k: loaded.append(attempt_load(*a, **k)) or loaded[-1])
    runs = {}
    for cl in (False, True):
        res, maps, _ = test_script.test(data, str(tmp_path / 'w.pt'), batch_size=4, imgsz=128, save_txt=True,
                                        save_dir=tmp_path / f'test{cl}', device='cpu', workers=0, plots=False,
                                        channels_last=cl)
        _, dets = detect_script.detect(str(tmp_path / 'w.pt'), str(ROOT / 'data' / 'coco8' / 'images'), 128,
                                       conf_thres=0.25, device='cpu', nosave=True, project=str(tmp_path),
                                       name=f'detect{cl}', channels_last=cl)
        runs[cl] = res, dets
    layouts = [m.model[0].conv.weight.is_contiguous(memory_format=torch.channels_last) for m in loaded]
    assert layouts == [False, False, True, True]
    (res0, dets0), (res1, dets1) = runs[False], runs[True]
    assert np.allclose(res0[:4], res1[:4], atol=1e-3)
    labels = [sorted((tmp_path / f'test{cl}' / 'labels').glob('*.txt')) for cl in (False, True)]
    assert len(labels[0]) > 0 and [f.name for f in labels[0]] == [f.name for f in labels[1]]
    for f0, f1 in zip(*labels):
        a, b = np.loadtxt(f0, ndmin=2), np.loadtxt(f1, ndmin=2)
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-3)
    assert dets0.keys() == dets1.keys() and sum(len(d) for d in dets0.values()) > 0
    for k in dets0:
        assert dets0[k].shape == dets1[k].shape and torch.allclose(dets0[k], dets1[k], atol=1.0)


def _published_matching(pred, labels, iouv):
    """The published per-prediction loop, kept here as the reference for match_predictions."""
    from utils.boxes import box_iou
    correct = torch.zeros(pred.shape[0], iouv.numel(), dtype=torch.bool)
    detected, tcls = set(), labels[:, 0]
    for cls in torch.unique(tcls):
        ti = (cls == tcls).nonzero(as_tuple=False).view(-1)
        pi = (cls == pred[:, 5]).nonzero(as_tuple=False).view(-1)
        if pi.shape[0]:
            ious, i = box_iou(pred[pi, :4], labels[ti, 1:5]).max(1)
            for j in (ious > iouv[0]).nonzero(as_tuple=False).view(-1):
                d = ti[i[j]]
                if d.item() not in detected:
                    detected.add(d.item())
                    correct[pi[j]] = ious[j] > iouv
                    if len(detected) == len(labels):
                        break
    return correct


def test_matching_equals_the_published_loop():
    """Crowded images (300 predictions, several per target, tied boxes, few classes): the loop-free matching
    gives the published loop's correct matrix exactly."""
    from utils.metrics import match_predictions
    g = torch.Generator().manual_seed(5)
    iouv = torch.linspace(0.5, 0.95, 10)
    n_correct = 0
    for trial in range(60):
        m = int(torch.randint(1, 40, (1,), generator=g))
        xy = torch.rand(m, 2, generator=g) * 300
        labels = torch.cat((torch.randint(0, 4, (m, 1), generator=g).float(), xy,
                            xy + torch.rand(m, 2, generator=g) * 80 + 5), 1)
        src = torch.randint(0, m, (300,), generator=g)
        boxes = labels[src, 1:] + torch.randn(300, 4, generator=g) * (trial % 4) * 4
        if trial % 5 == 0:
            boxes = boxes.round()  # exact duplicates and ties
        cls = torch.where(torch.rand(300, generator=g) < 0.8, labels[src, 0],
                          torch.randint(0, 4, (300,), generator=g).float())
        conf = torch.rand(300, generator=g).sort(descending=True).values
        pred = torch.cat((boxes, conf[:, None], cls[:, None]), 1)
        expected = _published_matching(pred, labels, iouv)
        assert torch.equal(match_predictions(pred, labels, iouv), expected)
        n_correct += int(expected[:, 0].sum())
    assert n_correct > 500  # the cases do exercise the matching
