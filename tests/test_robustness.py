"""Bad input and faults, end to end through the scripts' command lines: one line naming the file or flag, a
non-zero exit, no traceback, and nothing written earlier lost or changed. Also the silent-wrong-answer cases
(COCO image ids, weight decay, EXIF sizes) against known answers."""
import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import COCO8_YAML, ROOT, run_script, tiny_cfg
from models.yolo import Model
from models.checkpoint import model_payload, save_checkpoint

COCO8 = ROOT / 'data' / 'coco8'
TRAIN_ARGS = ['--data', str(COCO8_YAML), '--batch-size', '4', '--img', '64', '64', '--device', 'cpu',
              '--workers', '0', '--noautoanchor']


def assert_one_line_error(r, prog, *needles):
    """Exit status 1, no traceback, exactly one 'prog: error:' line containing every needle."""
    assert r.returncode != 0, r.stderr[-2000:]
    assert 'Traceback' not in r.stderr, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith(f'{prog}: error:')]
    assert len(lines) == 1, r.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _digest(folder):
    """{relative path: sha256} of every file under folder."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()}


def _weights(path, nc=80, obj_bias=2.0):
    """A tiny P5 checkpoint that predicts a confident 'person' everywhere (so evaluations have detections)."""
    torch.manual_seed(0)
    model = Model(tiny_cfg('yolov4-p5', nc=nc))
    det = model.model[-1]
    for conv in det.m:
        b = conv.bias.detach().view(det.na, -1)
        b[:, :4] = 0  # boxes: every anchor shape at every cell (weights of the box outputs zeroed below)
        b[:, 4] = obj_bias
        b[:, 5:] = -12
        b[:, 5] = 3
        conv.weight.detach().view(det.na, det.no, -1)[:, :4] = 0
    model.names = yaml.safe_load(COCO8_YAML.read_text())['names'] if nc == 80 else [str(i) for i in range(nc)]
    save_checkpoint({'model': model_payload(model)}, path)
    return path


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    return _weights(tmp_path_factory.mktemp('w') / 'w.pt')


@pytest.fixture(scope='module')
def tiny_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp('cfg') / 'tiny-p5.yaml'
    path.write_text(yaml.safe_dump(tiny_cfg('yolov4-p5')))
    return path


@pytest.fixture(scope='module')
def one_epoch_run(tiny_yaml, tmp_path_factory):
    """A finished 1-epoch run (copy it before changing it)."""
    project = tmp_path_factory.mktemp('runs')
    r = run_script('train.py', '--cfg', tiny_yaml, '--epochs', '1', '--project', project, '--name', 'one', *TRAIN_ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    return project / 'one'


@contextlib.contextmanager
def _mounted(target, options):
    """A tmpfs mounted at target with options (skip where mounting is not permitted)."""
    target.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(target)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f'cannot mount a tmpfs here (needs root): {r.stderr.strip()}')
    try:
        yield target
    finally:
        subprocess.run(['umount', '-l', str(target)], capture_output=True)


# --- 1. COCO AP with the ground truth's image ids -------------------------------------------------------------
def _coco8_data(tmp_path, annotations):
    tmp_path.mkdir(parents=True, exist_ok=True)
    ann = tmp_path / 'instances.json'
    ann.write_text(json.dumps(annotations))
    data = tmp_path / 'data.yaml'
    data.write_text(yaml.safe_dump({'val': str(COCO8 / 'images'), 'nc': 80, 'val_annotations': str(ann)}))
    return data


def _perfect_detections(gt):
    """Detections equal to the ground-truth boxes, keyed by file name as test.py collects them."""
    names = {im['id']: im['file_name'] for im in gt['images']}
    return [{'image_id': names[a['image_id']], 'category_id': a['category_id'], 'bbox': a['bbox'], 'score': 0.9}
            for a in gt['annotations'] if not a.get('iscrowd')]


def _coco_ap(tmp_path, gt, detections):
    from types import SimpleNamespace

    import test as test_script
    from utils.data_config import load_data_config
    data = load_data_config(_coco8_data(tmp_path, gt))
    loader = SimpleNamespace(dataset=SimpleNamespace(img_files=sorted(str(p) for p in (COCO8 / 'images').glob('*'))))
    return test_script._coco_evaluate(detections, data, loader, 'w.pt', tmp_path)


def _coco8_gt():
    return json.loads((COCO8 / 'annotations' / 'instances.json').read_text())


def test_coco_ids_come_from_ground_truth_file_names(tmp_path):
    gt = _coco8_gt()
    ids = [im['id'] for im in gt['images']]
    perm = dict(zip(ids, ids[1:] + ids[:1]))  # valid ground truth whose ids are a permutation of the file numbers
    permuted = dict(gt, images=[dict(im, id=perm[im['id']]) for im in gt['images']],
                    annotations=[dict(a, image_id=perm[a['image_id']]) for a in gt['annotations']])
    stats = _coco_ap(tmp_path / 'perm', permuted, _perfect_detections(permuted))
    assert stats[0] == pytest.approx(1.0) and stats[1] == pytest.approx(1.0)  # was scored against other images
    dets = json.loads(next((tmp_path / 'perm').glob('*.json')).read_text())
    assert {d['image_id'] for d in dets} <= set(perm.values())


def test_coco_ids_without_file_names_use_numeric_stems(tmp_path):
    gt = _coco8_gt()
    detections = _perfect_detections(gt)
    no_names = dict(gt, images=[{k: v for k, v in im.items() if k != 'file_name'} for im in gt['images']])
    stats = _coco_ap(tmp_path, no_names, detections)
    assert stats[0] == pytest.approx(1.0)


@pytest.mark.parametrize('case', ['subset', 'no_overlap'])
def test_coco_ground_truth_that_misses_images_is_refused(tmp_path, weights, case):
    gt = json.loads((COCO8 / 'annotations' / 'instances.json').read_text())
    if case == 'subset':  # 3 of the 8 evaluated images are not in the annotation file
        gt = dict(gt, images=gt['images'][3:])
    else:  # file names and ids that match nothing evaluated
        gt = dict(gt, images=[dict(im, file_name=f'other_{im["file_name"]}', id=im['id'] + 10 ** 6)
                              for im in gt['images']], annotations=[])
    data = _coco8_data(tmp_path, gt)
    r = run_script('test.py', '--weights', weights, '--data', data, '--img', 128, '--device', 'cpu', '--save-json',
                '--workers', 0, '--project', tmp_path / 'runs')
    n = 3 if case == 'subset' else 8
    assert_one_line_error(r, 'test.py', f'{n} of 8 evaluated images are not in the ground truth',
                          str(tmp_path / 'instances.json'))
    assert 'AP -1' not in r.stderr + r.stdout


# --- 2. nonsense flag values are refused before anything is written --------------------------------------------
@pytest.mark.parametrize('script, args, flag', [
    ('train.py', ['--epochs', '0'], '--epochs 0'),
    ('train.py', ['--epochs', '-1'], '--epochs -1'),
    ('train.py', ['--batch-size', '0'], '--batch-size 0'),
    ('train.py', ['--img', '0', '0'], '--img-size 0'),
    ('test.py', ['--conf-thres', '2'], '--conf-thres 2.0'),
    ('test.py', ['--iou-thres', '0'], '--iou-thres 0.0'),
    ('test.py', ['--img', '-32'], '--img-size -32'),
    ('test.py', ['--batch', '0'], '--batch-size 0'),
    ('detect.py', ['--img-size', '0'], '--img-size 0'),
    ('detect.py', ['--conf', '1.5'], '--conf-thres 1.5'),
    ('models/export.py', ['--img', '0'], '--img-size 0'),
])
def test_nonsense_flag_values(tmp_path, tiny_yaml, weights, script, args, flag):
    common = {'train.py': ['--cfg', tiny_yaml, '--data', COCO8_YAML, '--device', 'cpu', '--project', tmp_path],
              'test.py': ['--weights', weights, '--data', COCO8_YAML, '--device', 'cpu', '--project', tmp_path],
              'detect.py': ['--weights', weights, '--device', 'cpu', '--project', tmp_path],
              'models/export.py': ['--weights', weights]}[script]
    before = _digest(weights.parent)
    r = run_script(script, *common, *args, timeout=120)
    assert_one_line_error(r, script, flag)
    assert not any(tmp_path.iterdir()) and _digest(weights.parent) == before


def test_epochs_zero_from_python_is_refused(tmp_path, tiny_yaml):
    import train as train_script
    from utils.errors import ArgumentError
    with pytest.raises(ArgumentError, match='--epochs 0: must be at least 1'):
        train_script.run(cfg=str(tiny_yaml), data=str(COCO8_YAML), epochs=0, device='cpu', project=str(tmp_path))


# --- 3. weight decay follows the batch really used -------------------------------------------------------------
def test_weight_decay_scaled_by_the_batch_used(tmp_path, tiny_yaml):
    import train as train_script
    train_script.run(cfg=str(tiny_yaml), data=str(COCO8_YAML), epochs=1, batch_size=1000, img_size=[64, 64],
                     device='cpu', workers=0, noautoanchor=True, project=str(tmp_path), name='big')
    ck = torch.load(tmp_path / 'big' / 'weights' / 'last.pt', weights_only=True)
    # 8 images: batches of 8, accumulate round(64 / 8) = 8, so 0.0005 * 8 * 8 / 64 = 0.0005 (was 0.0078)
    assert ck['optimizer']['param_groups'][1]['weight_decay'] == pytest.approx(0.0005)


# --- 4. EXIF orientations -------------------------------------------------------------------------------------
@pytest.mark.parametrize('orientation', range(1, 9))
def test_exif_size_matches_what_cv2_reads(tmp_path, orientation):
    from utils.label_cache import exif_size
    path = tmp_path / f'o{orientation}.jpg'
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new('RGB', (48, 20), (90, 120, 150)).save(path, exif=exif)
    with Image.open(path) as im:
        w, h = exif_size(im)
    assert (h, w) == cv2.imread(str(path)).shape[:2]


# --- 5. read-only dataset ---------------------------------------------------------------------------------------
def test_read_only_dataset_trains_and_evaluates(tmp_path, tiny_yaml, weights):
    src = tmp_path / 'src'
    shutil.copytree(COCO8 / 'images', src / 'images')
    shutil.copytree(COCO8 / 'labels', src / 'labels')
    ro = tmp_path / 'ro'
    with _mounted(ro, 'size=16m'):
        shutil.copytree(src, ro, dirs_exist_ok=True)
        subprocess.run(['mount', '-o', 'remount,ro', str(ro)], check=True)
        data = tmp_path / 'ro.yaml'
        data.write_text(yaml.safe_dump({'train': str(ro / 'images'), 'val': str(ro / 'images'), 'nc': 80}))
        r = run_script('test.py', '--weights', weights, '--data', data, '--img', 64, '--device', 'cpu', '--workers', 0,
                    '--project', tmp_path / 'runs')
        assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr[-3000:]
        assert len([ln for ln in r.stderr.splitlines() if 'label cache' in ln and 'not written' in ln]) == 1
        r = run_script('train.py', '--cfg', tiny_yaml, '--epochs', '1', '--project', tmp_path / 'runs', '--name', 't',
                    *TRAIN_ARGS[2:], '--data', data, '--cache-images', 'disk')
        assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr[-3000:]
        assert 'disk image cache not written' in r.stderr
        assert (tmp_path / 'runs' / 't' / 'weights' / 'last.pt').is_file()


# --- 6. damaged label cache -------------------------------------------------------------------------------------
@pytest.mark.parametrize('damage', ['truncate', 'flip'])
def test_damaged_label_cache_is_rebuilt(tmp_path, caplog, damage):
    from utils.datasets import LoadImagesAndLabels
    shutil.copytree(COCO8 / 'images', tmp_path / 'images')
    shutil.copytree(COCO8 / 'labels', tmp_path / 'labels')
    LoadImagesAndLabels(str(tmp_path / 'images'), img_size=64)
    cache = tmp_path / 'labels.cache'
    data = bytearray(cache.read_bytes())
    if damage == 'truncate':
        data = data[:len(data) // 2]
    else:
        data[len(data) // 3] ^= 0x10
    cache.write_bytes(bytes(data))
    caplog.set_level(logging.INFO)
    ds = LoadImagesAndLabels(str(tmp_path / 'images'), img_size=64)
    assert len(ds) == 8 and '(from scan)' in caplog.text
    caplog.clear()
    LoadImagesAndLabels(str(tmp_path / 'images'), img_size=64)  # the rebuilt cache is good again
    assert '(from cache' in caplog.text


# --- 7. a corrupt video does not stop the others ----------------------------------------------------------------
def test_corrupt_video_skipped_and_next_processed(tmp_path, weights):
    src = tmp_path / 'videos'
    src.mkdir()
    (src / 'a_corrupt.mp4').write_bytes(os.urandom(4096))
    vw = cv2.VideoWriter(str(src / 'b_good.mp4'), cv2.VideoWriter_fourcc(*'mp4v'), 10, (96, 64))
    for i in range(4):
        vw.write(np.full((64, 96, 3), 50 * i, np.uint8))
    vw.release()
    r = run_script('detect.py', '--weights', weights, '--source', src, '--img', 64, '--device', 'cpu', '--project',
                tmp_path / 'runs', '--name', 'v')
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert len([ln for ln in r.stderr.splitlines() if 'a_corrupt.mp4' in ln and 'skipped' in ln]) == 1
    cap = cv2.VideoCapture(str(tmp_path / 'runs' / 'v' / 'b_good.mp4'))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4


# --- 8 and 10. resume: stale temporary files, a run folder, load-time failures ----------------------------------
def test_resume_run_folder_removes_stale_temp_files(tmp_path, one_epoch_run):
    run = tmp_path / 'one'
    shutil.copytree(one_epoch_run, run)
    stale = [run / 'weights' / '.last.pt.4194000.tmp', run / 'weights' / '.best.pt.4194001.tmp']
    for p in stale:
        p.write_bytes(b'partial checkpoint')
    r = run_script('train.py', '--resume', run, '--epochs', '2')
    assert r.returncode == 0, r.stderr[-3000:]
    assert not any(p.exists() for p in stale)
    assert [ln.split()[0] for ln in (run / 'results.txt').read_text().splitlines()] == ['0/0', '1/1']


@pytest.mark.parametrize('case', ['missing file', 'folder without last.pt', 'stripped file', 'not a checkpoint'])
def test_resume_failures_are_one_line(tmp_path, one_epoch_run, case):
    run = tmp_path / 'one'
    shutil.copytree(one_epoch_run, run)
    before = _digest(run)
    target, needle = {'missing file': (run / 'weights' / 'nope.pt', 'nope.pt: no such file'),
                      'folder without last.pt': (tmp_path, 'a folder without weights/last.pt'),
                      'stripped file': (run / 'weights' / 'final.pt', 'holds no training state'),
                      'not a checkpoint': (run / 'results.txt', 'not a readable PyTorch checkpoint')}[case]
    r = run_script('train.py', '--resume', target, '--epochs', '3', timeout=120)
    assert_one_line_error(r, 'train.py', needle)
    assert _digest(run) == before


# --- 9. known errors of test.py, detect.py and export are one line ----------------------------------------------
def test_known_errors_of_the_scripts_are_one_line(tmp_path, weights):
    missing = tmp_path / 'missing.pt'
    cases = [
        ('test.py', ['--weights', missing, '--data', COCO8_YAML], 'missing.pt not found'),
        ('test.py', ['--weights', weights, '--data', tmp_path / 'nope.yaml'], 'nope.yaml not found'),
        ('detect.py', ['--weights', missing], 'missing.pt not found'),
        ('detect.py', ['--weights', weights, '--source', tmp_path / 'nothing.jpg'], 'nothing.jpg does not exist'),
        ('models/export.py', ['--weights', missing], 'missing.pt not found'),
    ]
    (tmp_path / 'bad.yaml').write_text('val: [unclosed\n')
    cases.append(('test.py', ['--weights', weights, '--data', tmp_path / 'bad.yaml'], 'not valid YAML'))
    for script, args, needle in cases:
        r = run_script(script, *args, '--device', 'cpu', '--project', tmp_path / 'runs', timeout=120) \
            if script != 'models/export.py' else run_script(script, *args, timeout=120)
        assert_one_line_error(r, script, needle)
    assert not (tmp_path / 'runs').exists()


def test_test_py_nc_mismatch_gives_advice_that_works(tmp_path):
    w = _weights(tmp_path / 'w3.pt', nc=3)
    r = run_script('test.py', '--weights', w, '--data', COCO8_YAML, '--device', 'cpu', '--img', 64, '--project',
                tmp_path / 'runs', timeout=120)
    line = assert_one_line_error(r, 'test.py', 'the model has 3 classes', 'nc=80', 'nc: 3')
    assert '--single-cls' not in line
    data = tmp_path / 'nc3.yaml'  # the advice: a data yaml with nc: 3
    data.write_text(yaml.safe_dump({'val': str(COCO8 / 'images'), 'nc': 3}))
    shutil.copytree(COCO8 / 'images', tmp_path / 'd' / 'images')
    (tmp_path / 'd' / 'labels').mkdir()
    for f in (COCO8 / 'labels').glob('*.txt'):  # labels of classes 0-2 only
        rows = [r for r in f.read_text().splitlines() if int(r.split()[0]) < 3]
        (tmp_path / 'd' / 'labels' / f.name).write_text('\n'.join(rows) + '\n')
    data.write_text(yaml.safe_dump({'val': str(tmp_path / 'd' / 'images'), 'nc': 3}))
    import test as test_script
    res, maps, _ = test_script.test(str(data), str(w), imgsz=64, device='cpu', workers=0)
    assert len(res) == 7 and maps.shape == (3,)


def test_test_py_checks_class_ids_before_evaluating(tmp_path, weights):
    shutil.copytree(COCO8 / 'images', tmp_path / 'images')
    shutil.copytree(COCO8 / 'labels', tmp_path / 'labels')
    (tmp_path / 'labels' / '000000000009.txt').write_text('85 0.5 0.5 0.2 0.2\n')
    data = tmp_path / 'd.yaml'
    data.write_text(yaml.safe_dump({'val': str(tmp_path / 'images'), 'nc': 80}))
    r = run_script('test.py', '--weights', weights, '--data', data, '--device', 'cpu', '--img', 64, '--project',
                tmp_path / 'runs', '--workers', 0, timeout=120)
    assert_one_line_error(r, 'test.py', '000000000009.txt: class 85', 'nc=80')
    assert 'Speed:' not in r.stderr  # refused before inference


# --- 11. a full disk -------------------------------------------------------------------------------------------
def test_full_disk_names_the_file_and_keeps_last(tmp_path, one_epoch_run):
    size_kb = sum(p.stat().st_size for p in one_epoch_run.rglob('*') if p.is_file()) // 1024 + 200
    disk = tmp_path / 'disk'
    with _mounted(disk, f'size={size_kb}k'):
        run = disk / 'one'
        shutil.copytree(one_epoch_run, run)
        before = _digest(run / 'weights')
        results = (run / 'results.txt').read_text()
        r = run_script('train.py', '--resume', run, '--epochs', '2')
        assert_one_line_error(r, 'train.py', 'no space left on device', str(run / 'weights' / 'last.pt'),
                              'previous last.pt is kept')
        assert _digest(run / 'weights') == before and (run / 'results.txt').read_text() == results
        assert not list((run / 'weights').glob('.*.tmp'))


def test_full_disk_in_save_checkpoint(tmp_path, monkeypatch):
    import models.checkpoint as ck
    from models.checkpoint import CheckpointError
    path = tmp_path / 'last.pt'
    save_checkpoint({'model': {'x': torch.zeros(3)}}, path)
    before = path.read_bytes()
    real_save = torch.save
    monkeypatch.setattr(ck.torch, 'save', lambda obj, f: real_save(obj, open('/dev/full', 'wb')))
    with pytest.raises(CheckpointError, match=f'no space left on device .* writing {path}: the previous last.pt'):
        save_checkpoint({'model': {'x': torch.ones(10 ** 5)}}, path)
    assert path.read_bytes() == before and not list(tmp_path.glob('.*.tmp'))


def test_full_disk_before_any_checkpoint_does_not_advise_resume(tmp_path, monkeypatch):
    """The first checkpoint of a run cannot be written: there is nothing to resume, and the line says so."""
    import models.checkpoint as ck
    from models.checkpoint import CheckpointError
    real_save = torch.save
    monkeypatch.setattr(ck.torch, 'save', lambda obj, f: real_save(obj, open('/dev/full', 'wb')))
    path = tmp_path / 'weights' / 'last.pt'
    with pytest.raises(CheckpointError) as e:
        save_checkpoint({'model': {'x': torch.ones(10 ** 5)}}, path)
    assert str(e.value).endswith(f'writing {path}: no checkpoint of this run was written, so there is nothing to '
                                 f'resume: free space and start it again')
    assert '--resume' not in str(e.value) and not list(path.parent.iterdir())


def test_previous_checkpoint_is_kept_in_its_slot(tmp_path):
    """save_checkpoint with a second slot: the file it replaces stays there, whole."""
    path, previous = tmp_path / 'last.pt', tmp_path / 'last-previous.pt'
    save_checkpoint({'model': {'x': torch.zeros(3)}}, path, previous)
    assert not previous.exists()
    first = path.read_bytes()
    save_checkpoint({'model': {'x': torch.ones(3)}}, path, previous)
    assert previous.read_bytes() == first and torch.load(path, weights_only=True)['model']['x'].sum() == 3
    assert not list(tmp_path.glob('.*.tmp'))


# --- 12. NMS candidates are capped, not timed out ---------------------------------------------------------------
def test_nms_caps_candidates_and_warns_once(caplog, monkeypatch):
    import utils.nms as nms_module
    from utils.nms import non_max_suppression
    monkeypatch.setattr(nms_module, '_cap_warned', False)
    g = torch.Generator().manual_seed(0)
    n, nc = 4000, 3
    pred = torch.zeros(2, n, 5 + nc)
    pred[..., :2] = torch.rand(2, n, 2, generator=g) * 600
    pred[..., 2:4] = torch.rand(2, n, 2, generator=g) * 40 + 4
    pred[..., 4:] = torch.rand(2, n, 1 + nc, generator=g) * 0.9 + 0.1
    full = non_max_suppression(pred.clone(), 0.001, 0.65, max_nms=10 ** 9)
    same = non_max_suppression(pred.clone(), 0.001, 0.65, max_nms=3 * n)  # cap not reached: identical
    assert all(torch.equal(a, b) for a, b in zip(full, same)) and 'candidates' not in caplog.text
    with caplog.at_level(logging.WARNING):
        capped = non_max_suppression(pred.clone(), 0.001, 0.65, max_nms=5000)
    assert len([r for r in caplog.records if 'only the 5000 highest-scoring' in r.getMessage()]) == 1  # once
    assert len(capped) == 2 and all(0 < len(c) <= 300 for c in capped)  # every image processed
    top = pred[0].clone()  # the capped result is NMS over the 5000 highest-scoring class candidates
    top[:, 5:] *= top[:, 4:5]
    scores = top[:, 5:].flatten()
    assert capped[0][:, 4].min() >= scores.sort(descending=True).values[4999] - 1e-6


# --- 13. a checkpoint naming a harmful callable is refused -----------------------------------------------------
@pytest.mark.parametrize('target', ['subprocess.Popen', 'os.system'])
def test_harmful_callable_refused(tmp_path, target):
    import importlib
    from models.checkpoint import CheckpointError, load_checkpoint
    module, name = target.rsplit('.', 1)
    path = tmp_path / 'harm.pt'
    torch.save({'model': {'state_dict': {}}, 'x': getattr(importlib.import_module(module), name)}, path)
    with pytest.raises(CheckpointError, match=rf"refused to load: it asks for '[a-z]*\.?{name}'"):
        load_checkpoint(path)


def test_binary_file_of_another_format_is_not_read_as_a_list(tmp_path, weights):
    (tmp_path / 'clip.gif').write_bytes(bytes(range(256)) * 64)
    r = run_script('detect.py', '--weights', weights, '--source', tmp_path / 'clip.gif', '--device', 'cpu', '--project',
                tmp_path / 'runs', timeout=120)
    assert_one_line_error(r, 'detect.py', 'no images or videos found', 'clip.gif')


def test_a_folder_that_refuses_writes_is_one_line(tmp_path):
    """A write refused with EPERM (a folder made immutable, or a file system that forbids the operation) is one
    line naming the file and what to do, as EACCES and EROFS are (it was a traceback)."""
    import errno

    from utils.errors import run_cli

    def main():
        raise PermissionError(errno.EPERM, 'Operation not permitted', str(tmp_path / 'runs' / 'exp'))
    with pytest.raises(SystemExit) as e:
        run_cli(main, 'train.py')
    assert str(e.value.code) == (f'train.py: error: operation not permitted writing {tmp_path / "runs" / "exp"}: '
                                 f'free space or choose another --project; earlier outputs are kept')


STUCK_HELPER = """
import ctypes, gc, multiprocessing, os, sys, time
gc.disable()
sys.path.insert(0, os.getcwd())
from utils.errors import run_cli


def stuck_in_c():
    # as a forked DNS lookup waits for a lock that another thread of its parent held at the fork: a wait in C that
    # no signal interrupts, so that a Python-level handler never runs
    mutex = ctypes.create_string_buffer(64)  # zeros: a default pthread mutex
    libc = ctypes.CDLL(None)
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)


def main():
    helper = multiprocessing.get_context('fork').Process(target=stuck_in_c, daemon=True)
    helper.start()
    time.sleep(1)
    helper.terminate()  # what OpenVINO's telemetry does to its sender after a timeout
    helper.join(10)
    print('helper exit code', helper.exitcode)
    if helper.exitcode is None:
        os.kill(helper.pid, 9)


run_cli(main, 'models/export.py')
"""


def test_a_forked_helper_stuck_in_c_ends_with_sigterm(tmp_path):
    """A library's forked helper process stuck in C code ends when its parent sends SIGTERM. Seen in a loaded suite
    (test_benchmark_backends_prints_runtimes_side_by_side): OpenVINO's converter sends telemetry from a forked
    process and ends it with terminate() after a timeout; the child had inherited the script's Python-level SIGTERM
    handler, which never runs inside a glibc lock wait, so the benchmark printed its rows and never exited
    (multiprocessing joins its children at exit), and once killed left the helpers behind for good. Forked
    children now start with the default SIGTERM."""
    script = tmp_path / 'stuck_helper.py'
    script.write_text(STUCK_HELPER)
    p = subprocess.run([sys.executable, script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == 'helper exit code -15', (p.returncode, p.stdout, p.stderr)


def test_autoanchor_with_fewer_boxes_than_anchors_keeps_the_anchors(tiny_p5, caplog):
    """A dataset with fewer usable boxes than the model has anchors (after bad labels are left out): the anchors
    are kept with a warning, and training goes on (kmean_anchors raised a ValueError: a traceback)."""
    from utils.train.autoanchor import check_anchors

    class FewBoxes:
        shapes = np.array([[640, 480]] * 2)
        labels = [np.array([[0, .5, .5, .9, .02]]), np.array([[1, .5, .5, .01, .9], [2, .5, .5, .5, .5]])]
    model = Model(tiny_p5)
    before = model.model[-1].anchor_grid.clone()
    with caplog.at_level(logging.INFO):
        check_anchors(FewBoxes(), model, imgsz=64)
    assert torch.equal(model.model[-1].anchor_grid, before)
    assert any('fewer than the 12 anchors to fit: anchors kept' in r.getMessage() for r in caplog.records), \
        [r.getMessage() for r in caplog.records]


# --- 7b. a truncated JPEG is searched as far as it decodes, and named ---------------------------------------------
def test_truncated_jpeg_is_named_and_searched(tmp_path, weights):
    """detect.py on a JPEG cut in half: one warning naming it (not only libjpeg's, which names no file), its
    detections saved; a whole JPEG beside it gets no warning."""
    src = tmp_path / 'images'
    src.mkdir()
    whole = (COCO8 / 'images' / sorted(os.listdir(COCO8 / 'images'))[0]).read_bytes()
    (src / 'a_whole.jpg').write_bytes(whole)
    (src / 'b_cut.jpg').write_bytes(whole[:len(whole) // 2])
    r = run_script('detect.py', '--weights', weights, '--source', src, '--img', 64, '--device', 'cpu', '--project',
                   tmp_path / 'runs', '--name', 'j')
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    warned = [ln for ln in r.stderr.splitlines() if 'truncated JPEG' in ln]
    assert len(warned) == 1 and 'b_cut.jpg' in warned[0], r.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / 'runs' / 'j').iterdir()) == ['a_whole.jpg', 'b_cut.jpg']
