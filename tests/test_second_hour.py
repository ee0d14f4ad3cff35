"""What a new user meets after the quick start: a GPU flag on a CPU machine, runs that fail before they start,
--nosave, a headless --view-img, model configs from models/yolo.py, --help and logs written to files."""
import os
import sys

import pytest
import torch
import yaml

from conftest import COCO8_YAML, ROOT, run_script, tiny_cfg
from models.checkpoint import model_payload, save_checkpoint
from models.yolo import Model
from test_robustness import assert_one_line_error



@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = Model(tiny_cfg('yolov4-p5', nc=80))
    model.names = yaml.safe_load(COCO8_YAML.read_text())['names']
    path = tmp_path_factory.mktemp('w') / 'w.pt'
    save_checkpoint({'model': model_payload(model)}, path)
    return path


# --- 1. --device 0 without CUDA: one line, in every script that takes --device ---------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a CUDA GPU: --device 0 is valid here')
@pytest.mark.parametrize('script', ['train.py', 'test.py', 'detect.py', 'models/yolo.py', 'utils.benchmarks'])
def test_gpu_device_on_a_cpu_machine(tmp_path, weights, script):
    args = {'train.py': ['--cfg', 'models/yolov4-p5-tiny.yaml', '--data', COCO8_YAML, '--project', tmp_path],
            'test.py': ['--weights', weights, '--data', COCO8_YAML, '--project', tmp_path],
            'detect.py': ['--weights', weights, '--project', tmp_path],
            'models/yolo.py': [], 'utils.benchmarks': ['--cfg', 'models/yolov4-p5-tiny.yaml']}[script]
    prog = 'python -m utils.benchmarks' if script.startswith('utils.') else script
    if script in ('models/yolo.py', 'utils.benchmarks'):  # their __main__ is run_cli(main): checked in-process
        import importlib
        from utils.errors import run_cli
        main = importlib.import_module(script.replace('/', '.').removesuffix('.py')).main
        with pytest.raises(SystemExit) as e:
            run_cli(lambda: main([*map(str, args), '--device', '0']), prog)
        line = str(e.value)
        assert line.startswith(f'{prog}: error: --device 0: ') and 'use --device cpu' in line and '\n' not in line
        return
    r = run_script(script, *args, '--device', '0', timeout=120)
    assert_one_line_error(r, prog, '--device 0', 'use --device cpu')
    assert not any(tmp_path.iterdir())


def test_device_that_is_not_one(tmp_path):
    from utils.errors import ArgumentError
    from utils.torch_utils import select_device
    with pytest.raises(ArgumentError, match=r'--device gpu: give cpu, a GPU index \(0\) or several'):
        select_device('gpu')
    assert select_device('CPU').type == 'cpu'


# --- 2. a run that fails before it starts leaves no folder; --nosave writes nothing -----------------------------
def _bad_labels(tmp_path):
    """A copy of coco8 whose first label file has class 5, and a data yaml that says nc: 3."""
    import shutil
    shutil.copytree(ROOT / 'data' / 'coco8' / 'images', tmp_path / 'images')
    shutil.copytree(ROOT / 'data' / 'coco8' / 'labels', tmp_path / 'labels')
    (tmp_path / 'labels' / '000000000009.txt').write_text('5 0.5 0.5 0.2 0.2\n')
    data = tmp_path / 'd.yaml'
    data.write_text(f'train: {tmp_path / "images"}\nval: {tmp_path / "images"}\nnc: 3\n')
    return data


def test_failed_start_leaves_no_run_folder(tmp_path):
    data = _bad_labels(tmp_path)
    project = tmp_path / 'runs'
    r = run_script('train.py', '--cfg', 'models/yolov4-p5-tiny.yaml', '--data', data, '--img', 64, 64, '--device',
                'cpu', '--workers', 0, '--project', project, timeout=300)
    assert_one_line_error(r, 'train.py', '000000000009.txt: class 5', 'nc=3')
    assert list(project.iterdir()) == []  # was runs/train/exp with hyp.yaml, opt.yaml, events and weights/


def test_missing_data_path_is_named_before_any_folder(tmp_path):
    data = tmp_path / 'd.yaml'
    data.write_text(f'train: {ROOT / "data" / "coco8" / "images"}\nval: nowhere/images\nnc: 80\n')
    r = run_script('train.py', '--cfg', 'models/yolov4-p5-tiny.yaml', '--data', data, '--device', 'cpu', '--project',
                tmp_path / 'runs', timeout=120)
    assert_one_line_error(r, 'train.py', f'data yaml {data}: val: nowhere/images does not exist')
    assert not (tmp_path / 'runs').exists()


def test_failed_start_keeps_folders_it_did_not_make(tmp_path):
    import train
    from utils.errors import UserError
    data = _bad_labels(tmp_path)
    kept = tmp_path / 'runs' / 'mine'
    kept.mkdir(parents=True)
    (kept / 'notes.txt').write_text('mine')
    common = dict(cfg=str(ROOT / 'models' / 'yolov4-p5-tiny.yaml'), data=str(data), img_size=[64, 64], device='cpu',
                  workers=0, project=str(tmp_path / 'runs'))
    with pytest.raises(UserError, match='class 5'):
        train.run(name='mine', exist_ok=True, **common)
    with pytest.raises(UserError, match='class 5'):
        train.run(name='auto', resume='auto', **common)
    assert sorted(p.name for p in (tmp_path / 'runs').iterdir()) == ['mine']
    assert (kept / 'notes.txt').read_text() == 'mine'


def test_nosave_writes_nothing(tmp_path, weights, caplog):
    import logging

    import detect
    with caplog.at_level(logging.INFO):
        save_dir, dets = detect.detect(str(weights), str(ROOT / 'data' / 'coco8' / 'images'), img_size=64,
                                       device='cpu', nosave=True, project=str(tmp_path / 'runs'))
    assert save_dir is None and len(dets) == 8 and not (tmp_path / 'runs').exists()
    assert 'nothing saved (--nosave)' in caplog.text and 'saved to' not in caplog.text


# --- 3. models/yolo.py: one line for a bad config or size ---------------------------------------------------------
def test_model_script_unknown_config():
    r = run_script('models/yolo.py', '--cfg', 'yolov4-p9.yaml', timeout=120)
    assert_one_line_error(r, 'models/yolo.py', 'model config yolov4-p9.yaml not found', 'models/')


@pytest.mark.parametrize('args, needle', [(['--img', '0'], '--img-size 0'), (['--nc', '0'], '--nc 0'),
                                          (['--cfg', 'MISSING_KEYS'], "missing keys ['anchors']")])
def test_model_script_bad_input(tmp_path, capsys, args, needle):
    from models.yolo import main
    from utils.errors import run_cli
    cfg = tiny_cfg('yolov4-p5')
    del cfg['anchors']
    (tmp_path / 'm.yaml').write_text(yaml.safe_dump(cfg))
    args = [str(tmp_path / 'm.yaml') if a == 'MISSING_KEYS' else a for a in args]
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: main(args), 'models/yolo.py')
    assert str(e.value).startswith('models/yolo.py: error: ') and needle in str(e.value)
    assert '\n' not in str(e.value)


def test_python_callers_get_the_same_one_line(tmp_path, weights):
    """From Python the scripts' errors are UserError subclasses (catchable) whose message is the scripts' line,
    raised without a chained 'During handling of the above exception' traceback."""
    import detect
    import test as test_script
    from models.experimental import attempt_load
    from utils.errors import UserError
    from utils.torch_utils import select_device
    garbage = tmp_path / 'garbage.pt'
    garbage.write_text('not a checkpoint')
    calls = [lambda: attempt_load(str(garbage)), lambda: Model('yolov4-p9.yaml'), lambda: select_device('gpu'),
             lambda: test_script.test(str(COCO8_YAML), str(garbage), device='cpu'),
             lambda: detect.detect(str(weights), str(tmp_path / 'no_such_folder'), device='cpu')]
    for call in calls:
        with pytest.raises(UserError) as e:
            call()
        assert '\n' not in str(e.value) and (e.value.__context__ is None or e.value.__suppress_context__)


# --- 4. --view-img without a display: one line before anything is written ------------------------------------
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='display detection is for Linux (X11/Wayland)')
def test_view_img_without_display(tmp_path, weights):
    env = {k: v for k, v in os.environ.items() if k not in ('DISPLAY', 'WAYLAND_DISPLAY')}
    r = run_script('detect.py', '--weights', weights, '--device', 'cpu', '--img', 64, '--view-img', '--project',
                tmp_path, env=env, timeout=120)
    assert r.returncode == 1  # was 134: Qt aborted the process
    assert_one_line_error(r, 'detect.py', '--view-img', 'drop --view-img')
    assert not any(tmp_path.iterdir())


# --- 9. --help without doubled or empty defaults; plain progress lines in logs -------------------------------------
HELP = {'train.py': 'train:parse_opt', 'test.py': 'test:parse_opt', 'detect.py': 'detect:parse_opt',
        'models/export.py': 'models.export:main', 'models/yolo.py': 'models.yolo:main',
        'python -m utils.benchmarks': 'utils.benchmarks:parse_opt', 'python -m utils.coco2yolo': 'utils.coco2yolo:main'}


@pytest.mark.parametrize('script', list(HELP))
def test_help_defaults_once_and_never_empty(script, capsys):
    import importlib
    module, function = HELP[script].split(':')
    with pytest.raises(SystemExit) as e:
        getattr(importlib.import_module(module), function)(['--help'])
    assert e.value.code == 0
    text = ' '.join(capsys.readouterr().out.split())  # help entries are wrapped over lines
    assert text.startswith(f'usage: {script}') and '(default:' in text
    for bad in ('(default: )', '(default: None)', '(default: False)', '(default: [])'):
        assert bad not in text, bad
    entries = text.split(' --')
    assert not [e for e in entries if e.count('(default') > 1]
    if script == 'train.py':  # a default of 0 says something too; a flag's own words are kept
        assert 'freeze the first N layers (default: 0)' in text and 'total epochs (default: 300)' in text


def test_progress_bars_print_plain_lines_to_a_file(tmp_path):
    from utils.progress import progress
    out = tmp_path / 'log.txt'
    with open(out, 'w') as f:
        bar = progress(total=3, file=f, leave=False)
        for i in range(3):
            bar.set_description(f'epoch {i}')
            bar.update(1)
        bar.close()
        for _ in progress(range(2), desc='scan', file=f):
            pass
    text = out.read_text()
    assert '\r' not in text and '\x1b' not in text
    lines = text.splitlines()  # one final line per bar, not one per update
    assert len(lines) == 2 and lines[0].startswith('epoch 2 100% 3/3 ') and lines[1].startswith('scan 100% 2/2 ')


def test_training_log_to_a_file_has_no_carriage_returns(tmp_path):
    r = run_script('train.py', '--cfg', 'models/yolov4-p5-tiny.yaml', '--data', COCO8_YAML, '--epochs', 2,
                '--batch-size', 4, '--img', 64, 64, '--device', 'cpu', '--workers', 0, '--noautoanchor',
                '--project', tmp_path, '--name', 'log', timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '\r' not in r.stderr + r.stdout
    rows = [ln for ln in r.stderr.splitlines() if ln.lstrip().startswith(('0/1', '1/1'))]
    assert len(rows) == 2 and all('100% 2/2' in ln for ln in rows), r.stderr[-3000:]  # each epoch's last row


# --- 5. your own weights through torch.hub ----------------------------------------------------------------------
def test_hub_custom_loads_your_own_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = Model(tiny_cfg('yolov4-p5', nc=2))
    model.names = ['cat', 'hat']
    head = model.model[-1]
    for conv in head.m:  # a confident 'hat' everywhere, so that there are boxes
        conv.bias.detach().view(head.na, -1)[:, 4] = 8.0
        conv.bias.detach().view(head.na, -1)[:, 6] = 8.0
    w = tmp_path / 'best.pt'
    save_checkpoint({'model': model_payload(model)}, w)
    hub = torch.hub.load(str(ROOT), 'custom', source='local', path=str(w), device='cpu', img_size=128)
    assert hub.names == ['cat', 'hat'] and hub.img_size == 128
    det = hub(str(ROOT / 'data' / 'coco8' / 'images' / '000000000009.jpg'))
    assert len(det) and (det[:, 5] == 1).all()
    with pytest.raises(SystemExit, match=r'^hubconf: error: .*nothing\.pt'):
        torch.hub.load(str(ROOT), 'custom', source='local', path=str(tmp_path / 'nothing.pt'), device='cpu')


# --- 7. bn_momentum in a hyp file ---------------------------------------------------------------------------------
@pytest.mark.parametrize('value', [0, 1.5, 'fast'])
def test_bn_momentum_out_of_range_is_refused(tmp_path, value):
    from utils.errors import ArgumentError
    from utils.train.hyp import load_hyp
    hyp = yaml.safe_load((ROOT / 'data' / 'hyp.quick.yaml').read_text())
    (tmp_path / 'h.yaml').write_text(yaml.safe_dump(dict(hyp, bn_momentum=value)))
    with pytest.raises(ArgumentError, match=f'bn_momentum {value} must be above 0 and at most 1'):
        load_hyp(tmp_path / 'h.yaml')


def test_bn_momentum_reaches_every_batchnorm_and_survives_a_resume(tmp_path):
    import train
    from utils.torch_utils import set_bn_momentum
    model = Model(tiny_cfg('yolov4-p5', nc=2))
    set_bn_momentum(model, 0.1)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.1 for m in bns)
    hyp = yaml.safe_load((ROOT / 'data' / 'hyp.quick.yaml').read_text())
    seen = []
    real = train.set_bn_momentum
    train.set_bn_momentum = lambda m, v: (seen.append(v), real(m, v))
    try:
        train.run(cfg=str(ROOT / 'models' / 'yolov4-p5-tiny.yaml'), data=str(COCO8_YAML), hyp=str(ROOT / 'data' /
                  'hyp.quick.yaml'), epochs=1, batch_size=8, img_size=[64, 64], device='cpu', workers=0,
                  noautoanchor=True, notest=True, project=str(tmp_path), name='bn')
        train.run(resume=str(tmp_path / 'bn'), epochs=2)
    finally:
        train.set_bn_momentum = real
    assert seen == [hyp['bn_momentum']] * 2
