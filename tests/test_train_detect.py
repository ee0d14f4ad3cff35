"""train.py (2 epochs, SIGKILL + resume, torchrun with 2 processes, bad class ids) and detect.py."""
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, free_port, run_script, DrainedProcess, tiny_cfg

TINY_ARGS = ['--data', str(ROOT / 'data' / 'coco8.yaml'), '--batch-size', '4', '--img', '64', '64',
             '--device', 'cpu', '--workers', '0', '--noautoanchor']


@pytest.fixture(scope='module')
def tiny_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp('cfg') / 'tiny-p5.yaml'
    path.write_text(yaml.safe_dump(tiny_cfg('yolov4-p5', depth=0.33, width=0.125)))
    return path


def _train(args, **kw):
    return run_script('train.py', *args, **kw)


@pytest.fixture(scope='module')
def trained_run(tiny_yaml, tmp_path_factory):
    project = tmp_path_factory.mktemp('runs')
    r = _train(['--cfg', str(tiny_yaml), '--epochs', '2', '--project', str(project), '--name', 'two', *TINY_ARGS])
    assert r.returncode == 0, r.stderr[-3000:]
    return project / 'two'


def test_two_epochs_write_every_output(trained_run):
    run = trained_run
    for f in ['weights/last.pt', 'weights/best.pt', 'weights/final.pt', 'results.txt', 'results.png', 'hyp.yaml',
              'opt.yaml', 'labels.png', 'train_batch0.jpg']:
        assert (run / f).is_file(), f
    assert list(run.glob('events.out.tfevents.*'))
    lines = (run / 'results.txt').read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == ['0/1', '1/1'] and all(len(ln.split()) == 15 for ln in lines)
    ck = torch.load(run / 'weights' / 'last.pt', weights_only=True)  # plain data, no allow-list needed
    assert ck['epoch'] == 1 and ck['ema_updates'] > 0 and ck['optimizer'] and 'scaler' in ck and ck['rng']
    assert len(ck['results']) == 2 and ck['hyp']['lr0'] == 0.01
    final = torch.load(run / 'weights' / 'final.pt', weights_only=True)
    assert final['optimizer'] is None
    assert all(v.dtype == torch.float16 for v in final['model']['state_dict'].values() if v.is_floating_point())


def test_checkpoint_in_test_and_detect(trained_run, tmp_path):
    import detect as detect_script
    import test as test_script
    w = str(trained_run / 'weights' / 'last.pt')
    res, maps, _ = test_script.test(str(ROOT / 'data' / 'coco8.yaml'), w, batch_size=4, imgsz=64,
                                    save_dir=tmp_path / 't', device='cpu', workers=0)
    assert len(res) == 7 and maps.shape == (80,)
    save_dir, dets = detect_script.detect(w, str(ROOT / 'data' / 'coco8' / 'images'), img_size=64, conf_thres=0.0,
                                          device='cpu', project=str(tmp_path), name='d', save_txt=True)
    assert len(list(save_dir.glob('*.jpg'))) == 8 and len(dets) == 8


def test_sigkill_after_first_epoch_then_resume(tiny_yaml, tmp_path):
    args = ['--cfg', str(tiny_yaml), '--epochs', '3', '--project', str(tmp_path), '--name', 'k', *TINY_ARGS]
    p = subprocess.Popen([sys.executable, 'train.py', *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    results = tmp_path / 'k' / 'results.txt'
    deadline = time.time() + 300
    while time.time() < deadline and not (results.exists() and results.read_text().count('\n') >= 1):
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    n_done = results.read_text().count('\n')
    assert 1 <= n_done < 3
    r = _train(['--resume', str(tmp_path / 'k' / 'weights' / 'last.pt')])
    assert r.returncode == 0, r.stderr[-3000:]
    epochs = [ln.split()[0] for ln in results.read_text().splitlines()]
    assert epochs == ['0/2', '1/2', '2/2']


def test_torchrun_two_processes_only_rank0_writes(tiny_yaml, tmp_path):
    args = ['--cfg', str(tiny_yaml), '--epochs', '1', '--project', str(tmp_path), '--name', 'ddp', '--sync-bn',
            *TINY_ARGS]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port',
                        free_port(), 'train.py', *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '--sync-bn needs CUDA; ignored on CPU' in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ddp']  # no second run folder from rank 1
    assert len((tmp_path / 'ddp' / 'results.txt').read_text().splitlines()) == 1
    assert (tmp_path / 'ddp' / 'weights' / 'last.pt').exists()


def test_batch_size_must_divide_world_size(tiny_yaml, tmp_path):
    env = dict(os.environ, WORLD_SIZE='3', RANK='0', LOCAL_RANK='0')
    r = _train(['--cfg', str(tiny_yaml), '--project', str(tmp_path), *TINY_ARGS], env=env)
    assert r.returncode != 0 and 'must be a multiple of the number of processes 3' in r.stderr
    assert not any(tmp_path.iterdir())


def test_out_of_range_class_named(tiny_yaml, tmp_path):
    import shutil
    shutil.copytree(ROOT / 'data' / 'coco8' / 'images', tmp_path / 'images')
    shutil.copytree(ROOT / 'data' / 'coco8' / 'labels', tmp_path / 'labels')
    (tmp_path / 'labels' / '000000000009.txt').write_text('5 0.5 0.5 0.2 0.2\n')
    (tmp_path / 'd.yaml').write_text(f'train: {tmp_path / "images"}\nval: {tmp_path / "images"}\nnc: 3\n')
    args = ['--cfg', str(tiny_yaml), '--epochs', '1', '--project', str(tmp_path / 'runs'),
            *TINY_ARGS[2:], '--data', str(tmp_path / 'd.yaml')]
    r = _train(args)
    assert r.returncode == 1
    assert '000000000009.txt: class 5' in r.stderr and 'nc=3' in r.stderr


def test_detect_video_and_filters(trained_run, tmp_path):
    import detect as detect_script
    w = str(trained_run / 'weights' / 'final.pt')
    src = tmp_path / 'clip.mp4'
    vw = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*'mp4v'), 12, (96, 64))
    for i in range(5):
        vw.write(np.full((64, 96, 3), 40 * i, np.uint8))
    vw.release()
    save_dir, dets = detect_script.detect(w, str(src), img_size=64, conf_thres=0.0, device='cpu',
                                          project=str(tmp_path), name='v', save_txt=True, save_conf=True,
                                          classes=[0])
    cap = cv2.VideoCapture(str(save_dir / 'clip.mp4'))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    assert n == 5 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 96 and cap.get(cv2.CAP_PROP_FPS) == 12
    assert all((d[:, 5] == 0).all() for d in dets.values())  # --classes filters
    labels = sorted((save_dir / 'labels').glob('clip_*.txt'))
    assert labels and all(len(ln.split()) == 6 for f in labels for ln in f.read_text().splitlines())
    with pytest.raises(FileNotFoundError, match='missing.jpg'):
        detect_script.detect(w, str(tmp_path / 'missing.jpg'), device='cpu', project=str(tmp_path))


def test_training_options_together(tiny_yaml, tmp_path):
    args = ['--cfg', str(tiny_yaml), '--epochs', '1', '--project', str(tmp_path), '--name', 'opts', '--adam',
            '--multi-scale', '--image-weights', '--cache-images', '--freeze', '3', '--single-cls', '--seed', '7',
            *TINY_ARGS]
    r = _train(args)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = torch.load(tmp_path / 'opts' / 'weights' / 'last.pt', weights_only=True)
    assert ck['model']['nc'] == 1 and ck['opt']['adam'] and ck['opt']['freeze'] == 3
    assert type(ck['optimizer']['param_groups'][0]['betas']) in (tuple, list)  # Adam
    from models.yolo import Model
    torch.manual_seed(7 + 1)  # train.py seeds seed + 1 + rank before building the model
    init = Model(str(tiny_yaml), nc=1).state_dict()
    sd = ck['model']['state_dict']
    assert torch.equal(sd['model.0.conv.weight'], init['model.0.conv.weight'])  # frozen (layers 0-2)
    assert torch.equal(sd['model.2.cv1.conv.weight'], init['model.2.cv1.conv.weight'])
    assert not torch.equal(sd['model.3.conv.weight'], init['model.3.conv.weight'])  # trained


def test_rect_training_and_evolve(tiny_yaml, tmp_path):
    r = _train(['--cfg', str(tiny_yaml), '--epochs', '1', '--project', str(tmp_path), '--name', 'rect', '--rect',
                *TINY_ARGS])
    assert r.returncode == 0, r.stderr[-3000:]
    r = _train(['--cfg', str(tiny_yaml), '--epochs', '1', '--project', str(tmp_path), '--name', 'evo',
                '--evolve', '2', *TINY_ARGS])
    assert r.returncode == 0, r.stderr[-3000:]
    rows = (tmp_path / 'evo' / 'evolve.txt').read_text().splitlines()
    assert len(rows) == 2 and all(len(x.split()) == 7 + 22 for x in rows)


def test_sigterm_saves_last_and_exits_cleanly(tiny_yaml, tmp_path):
    args = ['--cfg', str(tiny_yaml), '--epochs', '50', '--project', str(tmp_path), '--name', 's', *TINY_ARGS]
    p = DrainedProcess([sys.executable, 'train.py', *args], cwd=ROOT)
    results = tmp_path / 's' / 'results.txt'
    deadline = time.time() + 300
    while time.time() < deadline and not (results.exists() and results.read_text().count('\n') >= 2):
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert 'SIGTERM received' in err and 'Traceback' not in err
    ck = torch.load(tmp_path / 's' / 'weights' / 'last.pt', weights_only=True)
    n = results.read_text().count('\n')
    assert ck['epoch'] == n - 1 and len(ck['results']) == n  # resume continues right after the last line


def test_non_finite_losses_skip_then_stop(tiny_yaml, tmp_path, monkeypatch, capsys):
    import train as train_script
    from utils.train import model as train_model
    calls = {'n': 0}

    class NanAfterFirstEpoch(train_model.ComputeLoss):
        def __call__(self, p, targets):
            calls['n'] += 1
            loss, items = super().__call__(p, targets)
            return (loss * float('nan'), items * float('nan')) if calls['n'] > 2 else (loss, items)
    monkeypatch.setattr(train_model, 'ComputeLoss', NanAfterFirstEpoch)  # what build_loss makes
    with pytest.raises(SystemExit) as e:
        train_script.run(cfg=str(tiny_yaml), data=str(ROOT / 'data' / 'coco8.yaml'), epochs=20, batch_size=4,
                         img_size=[64, 64], device='cpu', workers=0, noautoanchor=True, project=str(tmp_path),
                         name='nan', notest=True)
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert 'non-finite loss' in err and '10 non-finite losses in a row: training stopped' in err
    ck = torch.load(tmp_path / 'nan' / 'weights' / 'last.pt', weights_only=True)  # the last good checkpoint
    assert all(torch.isfinite(v).all() for v in ck['model']['state_dict'].values() if v.is_floating_point())


def test_sigterm_under_torchrun_stops_every_rank(tiny_yaml, tmp_path):
    args = ['--cfg', str(tiny_yaml), '--epochs', '50', '--project', str(tmp_path), '--name', 'ds', *TINY_ARGS]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    p = DrainedProcess([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port',
                        free_port(), 'train.py', *args], cwd=ROOT, env=env)
    results = tmp_path / 'ds' / 'results.txt'
    deadline = time.time() + 300
    while time.time() < deadline and not (results.exists() and results.read_text().count('\n') >= 2):
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)  # no rank is left waiting
    assert p.returncode != 0
    assert 'weights/last.pt saved at epoch' in err and 'continue with python train.py --resume' in err
    assert 'rank 1: SIGTERM received (rank 0 saves' in err
    ck = torch.load(tmp_path / 'ds' / 'weights' / 'last.pt', weights_only=True)
    assert ck['epoch'] == results.read_text().count('\n') - 1
