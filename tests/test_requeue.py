"""Promises about repetition, tested by repeating: the same command run again and again, with kills and stops
between, as a cluster's scheduler runs a requeued job; and exits tested with the garbage collector off, so that no
test passes because a collection happened to end a loader's workers first.

Training runs use the repository's tiny P5 (models/yolov4-p5-tiny.yaml) on coco8 at 64 px with mosaic and MixUp.
"Bit-identical" compares every tensor of the final last.pt's model and EMA, and results.txt line by line.
"""
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, DrainedProcess, assert_same_run, free_port
from conftest import last_pt_position as _progress

DATA = 'data/coco8.yaml'
CFG = 'models/yolov4-p5-tiny.yaml'
LEGACY = ROOT / 'tests' / 'data' / 'legacy-last.pt'  # written by the version before hooks had a namespace
ENV = dict(os.environ, OMP_NUM_THREADS='1')  # as every run compared here: threads change float sums


@pytest.fixture(scope='module')
def hyp(tmp_path_factory):
    """hyp.scratch.yaml with MixUp, a short warm-up and an optimizer step every 2 images (the legacy run's)."""
    h = yaml.safe_load((ROOT / 'data' / 'hyp.scratch.yaml').read_text())
    h.update(nbs=2, warmup_min_iters=4, warmup_epochs=0, mixup=0.5)
    path = tmp_path_factory.mktemp('hyp') / 'hyp.yaml'
    path.write_text(yaml.safe_dump(h))
    return path


def _args(hyp, project, name, epochs, *extra, batch=2, workers=0):
    return ['--cfg', CFG, '--data', DATA, '--hyp', str(hyp), '--weights', '', '--img', '64', '64', '--batch-size',
            str(batch), '--device', 'cpu', '--workers', str(workers), '--noautoanchor', '--epochs', str(epochs),
            '--project', str(project), '--name', name, *map(str, extra)]


def _popen(args, torchrun=False):
    cmd = [sys.executable, 'train.py'] if not torchrun else \
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', free_port(),
         'train.py']
    return DrainedProcess(cmd + args, cwd=ROOT, env=ENV, start_new_session=True)


def _train(args, torchrun=False, timeout=600):
    p = _popen(args, torchrun)
    _, err = p.communicate(timeout=timeout)
    return p.returncode, err


def _session_processes(sid):
    """The pids of live (not zombie) processes in session sid."""
    found = []
    for d in filter(str.isdigit, os.listdir('/proc')):
        try:
            fields = Path(f'/proc/{d}/stat').read_text().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != 'Z':
            found.append(int(d))
    return found


@pytest.fixture(scope='module')
def reference(hyp, tmp_path_factory):
    """The uninterrupted 3-epoch run every interrupted one must equal."""
    project = tmp_path_factory.mktemp('ref')
    code, err = _train(_args(hyp, project, 'ref', 3))
    assert code == 0, err[-3000:]
    return project / 'ref'


def test_resume_auto_again_and_again_with_growing_epochs(hyp, tmp_path):
    """The same --resume auto command four times, each with one more epoch: each continues the run (a resume used
    to write its checkpoint's path over --weights, and the next one refused the run as changed)."""
    for epochs in (1, 2, 3, 4):
        code, err = _train(_args(hyp, tmp_path, 'grow', epochs, '--notest', '--resume', 'auto'))
        assert code == 0, err[-3000:]
        if epochs > 1:
            assert f'Resuming {tmp_path / "grow"} at epoch {epochs - 1}, to {epochs} epochs' in err, err[-3000:]
    assert len((tmp_path / 'grow' / 'results.txt').read_text().splitlines()) == 4
    saved = yaml.safe_load((tmp_path / 'grow' / 'opt.yaml').read_text())
    assert saved['weights'] == '' and saved['epochs'] == 4  # the user's values, never a path of the run's


PREEMPT = '''
import os, signal, sys, threading
sys.path.insert(0, os.getcwd())  # the repository (this script lies in a temporary folder)
import train
from utils.train.hooks import Hook
target, delay, batches, args = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]

def kill_the_job():
    """SIGKILL the job: torchrun's agent (this process's parent under torchrun) or this process, and all below it."""
    root = os.getppid() if 'TORCHELASTIC_RUN_ID' in os.environ else os.getpid()
    parent = {}
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            parent[int(pid)] = int(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[1])
        except (OSError, ValueError):
            pass
    def below(pid):
        while pid in parent and pid != root:
            pid = parent[pid]
        return pid == root
    for pid in sorted(p for p in parent if below(p)):  # the agent first: it would restart or signal the ranks
        if pid != os.getpid():
            os.kill(pid, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)

class Preempt(Hook):
    def after_step(self):
        t = self.trainer
        if t.main and t.epoch * batches + t.batch == target:
            threading.Timer(delay, kill_the_job).start()

train.main(args, callbacks=[Preempt()])
'''


def _kill_loop(args, tmp_path, kills, seed, torchrun=False, batches=4):
    """Run the command with a preemption: one or two steps past where the run stands, after a random delay (mid-step,
    mid-save, mid-evaluation), every process of the job is SIGKILLed. Then again from where it was left, `kills`
    times. Returns the steps the run stood at after each kill."""
    script = tmp_path / 'preempt.py'
    script.write_text(PREEMPT)
    last, rng, positions = tmp_path / 'k' / 'weights' / 'last.pt', random.Random(seed), []
    for _ in range(kills):
        target, delay = _step(last, batches) + rng.randint(1, 2), rng.uniform(0, 0.3)
        launcher = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port',
                    free_port()] if torchrun else [sys.executable]
        p = DrainedProcess([*launcher, str(script), str(target), str(delay), str(batches), *args], cwd=ROOT, env=ENV,
                           start_new_session=True)
        _, err = p.communicate(timeout=300)
        assert p.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), err[-3000:]
        positions.append(_step(last, batches))
    return positions


def _step(last, batches):
    """The steps a run's last.pt stands at (0 before there is one)."""
    epoch, batch = _progress(last)
    return max(epoch * batches + batch, 0)


def test_sigkills_at_random_moments_then_the_same_command_end_as_one_run(hyp, reference, tmp_path):
    """Five SIGKILLs of the whole process group at random moments, each followed by the same --resume auto
    command: the run ends bit-identical to the uninterrupted one."""
    args = _args(hyp, tmp_path, 'k', 3, '--save-period-steps', '1', '--resume', 'auto', workers=2)
    positions = _kill_loop(args, tmp_path, 5, seed=1)
    assert 0 < positions[-1] < 12, positions  # killed inside the run, never after its end
    code, err = _train(args)
    assert code == 0, err[-3000:]
    assert_same_run(reference, tmp_path / 'k')


def test_torchrun_sigkills_at_random_moments_then_the_same_command_end_as_one_run(hyp, tmp_path):
    """The same under torchrun (2 processes): five SIGKILLs of the job, each followed by the same command."""
    code, err = _train(_args(hyp, tmp_path, 'ref', 3, '--notest'), torchrun=True)
    assert code == 0, err[-3000:]
    args = _args(hyp, tmp_path, 'k', 3, '--notest', '--save-period-steps', '1', '--resume', 'auto')
    positions = _kill_loop(args, tmp_path, 5, seed=2, torchrun=True)
    assert 0 < positions[-1] < 12, positions
    code, err = _train(args, torchrun=True)
    assert code == 0, err[-3000:]
    assert_same_run(tmp_path / 'ref', tmp_path / 'k')


def _fresh_coco8(tmp_path):
    """A copy of coco8 with no label cache, and its data yaml."""
    shutil.copytree(ROOT / 'data' / 'coco8', tmp_path / 'coco8', ignore=shutil.ignore_patterns('*.cache'))
    data = yaml.safe_load((ROOT / DATA).read_text())
    data.update(train=str(tmp_path / 'coco8' / 'images'), val=str(tmp_path / 'coco8' / 'images'),
                val_annotations=str(tmp_path / 'coco8' / 'annotations' / 'instances.json'))
    (tmp_path / 'd.yaml').write_text(yaml.safe_dump(data))
    return tmp_path / 'd.yaml'


GC_OFF = 'import gc, runpy, sys; gc.disable(); sys.argv = {argv!r}; runpy.run_path(sys.argv[0], run_name="__main__")'
WEIGHTS = str(ROOT / 'tests' / 'data' / 'quickstart-p5-tiny.pt')


def _exits(tmp_path, code, timeout=180):
    """Run Python `code` in a session of its own; returns (exit status, stderr); it must end within `timeout` s and
    leave no process of its session behind."""
    p = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise AssertionError(f'still running after {timeout} s: {code}') from None
    deadline = time.time() + 10
    while (left := _session_processes(p.pid)) and time.time() < deadline:
        time.sleep(0.1)
    assert not left, f'processes left behind: {left}'
    return p.returncode, err


@pytest.mark.parametrize('script', ['test.py', 'detect.py', 'train.py', 'train.py --evolve', 'train.run',
                                    'test.run', 'hub'])
def test_entry_points_exit_with_the_garbage_collector_off(script, tmp_path):
    """Each entry point, on a dataset with no label cache and with loader workers, ends its workers and exits
    with the garbage collector off (test.py printed its results and then waited forever on its workers)."""
    data = str(_fresh_coco8(tmp_path))
    train_args = ['--cfg', CFG, '--data', data, '--weights', '', '--img', '64', '64', '--batch-size', '4',
                  '--device', 'cpu', '--workers', '2', '--noautoanchor', '--epochs', '1', '--project',
                  str(tmp_path / 'runs')]
    test_args = ['--weights', WEIGHTS, '--data', data, '--img', '128', '--device', 'cpu', '--workers', '2',
                 '--project', str(tmp_path / 'runs')]
    code = {
        'test.py': GC_OFF.format(argv=['test.py', *test_args]),
        'detect.py': GC_OFF.format(argv=['detect.py', '--weights', WEIGHTS, '--source', str(tmp_path / 'coco8' /
                                         'images'), '--img', '128', '--device', 'cpu', '--project',
                                         str(tmp_path / 'runs')]),
        'train.py': GC_OFF.format(argv=['train.py', *train_args, '--notest']),
        'train.py --evolve': GC_OFF.format(argv=['train.py', *train_args, '--evolve', '1']),
        'train.run': 'import gc, train; gc.disable(); train.run(' + ', '.join(
            f'{k}={v!r}' for k, v in dict(cfg=CFG, data=data, img_size=[64, 64], batch_size=4, device='cpu',
                                          workers=2, noautoanchor=True, epochs=1,
                                          project=str(tmp_path / 'runs')).items()) + ')',
        'test.run': f'import gc, test; gc.disable(); test.run(weights={WEIGHTS!r}, data={data!r}, img_size=128, '
                    f'device="cpu", workers=2, project={str(tmp_path / "runs")!r})',
        'hub': f'import gc, torch; gc.disable(); m = torch.hub.load({str(ROOT)!r}, "custom", path={WEIGHTS!r}, '
               f'source="local", img_size=128); m({str(tmp_path / "coco8" / "images" / "000000000009.jpg")!r})',
    }[script]
    status, err = _exits(tmp_path, code)
    assert status == 0, err[-3000:]


def test_test_py_stopped_by_sigterm_ends_its_workers(tmp_path):
    """SIGTERM to test.py mid-evaluation (its workers ignore SIGTERM): one line, 128 + 15, no process left."""
    data = str(_fresh_coco8(tmp_path))
    code = ('import os, signal, sys, runpy\nimport utils.datasets as d\nstop = d.LoadImagesAndLabels.__getitem__\n'
            'def slow(self, i):\n    if i == 0: os.kill(os.getppid(), signal.SIGTERM)\n    return stop(self, i)\n'
            'd.LoadImagesAndLabels.__getitem__ = slow\n'
            f'sys.argv = {["test.py", "--weights", WEIGHTS, "--data", data, "--img", "128", "--device", "cpu", "--workers", "2", "--project", str(tmp_path)]!r}\n'  # noqa: E501
            'runpy.run_path("test.py", run_name="__main__")')
    status, err = _exits(tmp_path, code)
    assert status == 128 + signal.SIGTERM, err[-3000:]
    assert err.strip().splitlines()[-1] == 'test.py: stopped by SIGTERM' and 'Traceback' not in err


CALLBACKS = '''
import json, sys
import train
from utils.train.hooks import Hook

class Claims(Hook):
    """A callback whose state names the run's own keys."""
    def state_dict(self):
        return {'epoch': 1001, 'model': 'not a model', 'optimizer': None, 'steps': self.trainer.steps}
    def load_state_dict(self, state):
        json.dump(state, open(sys.argv[1], 'w'))

class Named(Hook):
    name = 'mine'
    def state_dict(self):
        return {'epoch': -5}

train.main(sys.argv[2:], callbacks=[Claims(), Named(), Named()])
'''


def test_callbacks_cannot_replace_the_runs_keys_and_get_their_state_back(hyp, tmp_path):
    """Callbacks whose state_dict() returns epoch, model and optimizer: last.pt keeps the run's own values, each
    callback's state lies under hooks/<its name>, and a resume hands it back."""
    got = tmp_path / 'restored.json'
    args = _args(hyp, tmp_path, 'cb', 1, '--notest')
    r = subprocess.run([sys.executable, '-c', CALLBACKS, str(got), *args], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = torch.load(tmp_path / 'cb' / 'weights' / 'last.pt', weights_only=True)
    assert ck['epoch'] == 0 and isinstance(ck['model'], dict) and ck['model']['state_dict']
    assert ck['optimizer']['state'] and ck['progress']['steps'] == 4
    assert ck['hooks']['Claims'] == {'epoch': 1001, 'model': 'not a model', 'optimizer': None, 'steps': 4}
    assert ck['hooks']['mine'] == ck['hooks']['mine#2'] == {'epoch': -5}
    args = _args(hyp, tmp_path, 'cb', 2, '--notest', '--resume', 'auto')
    r = subprocess.run([sys.executable, '-c', CALLBACKS, str(got), *args], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    import json
    assert json.loads(got.read_text()) == {'epoch': 1001, 'model': 'not a model', 'optimizer': None, 'steps': 4}
    assert torch.load(tmp_path / 'cb' / 'weights' / 'last.pt', weights_only=True)['epoch'] == 1


def test_a_run_of_the_older_layout_resumes_bit_identically(hyp, reference, tmp_path):
    """A last.pt written by the version before this layout (tests/data/legacy-last.pt: stopped twice by SIGTERM, the
    second time after one --resume auto, so that its options hold its own path as --weights, and a callback's
    state merged at the top level) resumes with the same command: the run equals the uninterrupted one, and the
    callback gets its old keys."""
    run = tmp_path / 'legacy'
    (run / 'weights').mkdir(parents=True)
    shutil.copy(LEGACY, run / 'weights' / 'last.pt')
    old = torch.load(run / 'weights' / 'last.pt', weights_only=True)
    assert 'hooks' not in old and old['opt']['weights'].endswith('weights/last.pt') and old['counter_steps']
    got = tmp_path / 'restored.json'
    script = CALLBACKS.replace("callbacks=[Claims(), Named(), Named()]", "callbacks=[Claims()]")
    r = subprocess.run([sys.executable, '-c', script, str(got), *_args(hyp, tmp_path, 'legacy', 3, '--resume',
                                                                        'auto')],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    import json
    assert json.loads(got.read_text()) == {'counter_steps': old['counter_steps']}
    _assert_continues_as_uninterrupted(reference, run)


def _assert_continues_as_uninterrupted(reference, run):
    """The run resumed from a committed fixture equals the uninterrupted one made here, where this machine's
    arithmetic is the fixture's. Its first 1.3 epochs were trained on another machine, and CPUs differ in their
    kernels (oneDNN's, OpenCV's): a pixel or a rounding apart, two runs part ways, so on a CPU that computes
    otherwise no run here can equal it bit for bit. Epoch 0's results line, which the checkpoint carries, tells:
    where it equals this machine's, the whole run must; otherwise only that comparison is skipped, saying why."""
    ours, resumed = ((Path(r) / 'results.txt').read_text().splitlines() for r in (reference, run))
    assert len(resumed) == len(ours) == 3, resumed
    if resumed[0] != ours[0]:
        pytest.skip(f'this CPU trains epoch 0 otherwise than the machine that made the fixture ({ours[0].split()} '
                    f'here, {resumed[0].split()} there): bit-identity is judged only on a CPU like that one')
    assert_same_run(reference, run)


CURRENT = ROOT / 'tests' / 'data' / 'current-last.pt'  # the same run's last.pt in this layout (at commit 0ff618c)


def test_a_run_of_the_current_layout_resumes_bit_identically(hyp, reference, tmp_path):
    """A committed last.pt of this layout (tests/data/current-last.pt: tests/legacy_fixture.py's run, stopped twice by
    SIGTERM, written by the code before utils.train.checkpoint_layout.TrainingCheckpoint) resumes through the
    schema with the same command: the run equals the uninterrupted one, and the callback gets its state back."""
    from utils.train.checkpoint_layout import load_training_checkpoint
    run = tmp_path / 'current'
    (run / 'weights').mkdir(parents=True)
    shutil.copy(CURRENT, run / 'weights' / 'last.pt')
    saved = load_training_checkpoint(run / 'weights' / 'last.pt')
    assert saved.position() == (1, 3) and saved.hooks == {'Counter': {'counter_steps': 7}}
    got = tmp_path / 'restored.json'
    script = CALLBACKS.replace("callbacks=[Claims(), Named(), Named()]", "callbacks=[Claims()]").replace(
        'class Claims(Hook):', 'class Claims(Hook):\n    name = "Counter"  # the fixture\'s callback')
    r = subprocess.run([sys.executable, '-c', script, str(got), *_args(hyp, tmp_path, 'current', 3, '--resume',
                                                                        'auto')],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    import json
    assert json.loads(got.read_text()) == {'counter_steps': 7}
    _assert_continues_as_uninterrupted(reference, run)


def test_a_forked_child_does_not_keep_the_run_lock(tmp_path):
    """A child forked while the run folder is locked (a loader worker, which ignores SIGTERM and may outlive the
    run) does not hold the lock: once the run releases it, the same command takes the folder at once."""
    import multiprocessing

    from utils.train.run_dir import RunInUseError, RunLock
    lock = RunLock(tmp_path)
    child = multiprocessing.get_context('fork').Process(target=time.sleep, args=(30,))
    child.start()
    try:
        claim = [sys.executable, '-c', f'from utils.train.run_dir import RunLock; RunLock({str(tmp_path)!r})']
        assert subprocess.run(claim, cwd=ROOT, capture_output=True).returncode != 0  # held by this process
        lock.release()
        r = subprocess.run(claim, cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    finally:
        child.kill()
        child.join()
    with pytest.raises(RunInUseError):  # and a live holder is still refused
        held = RunLock(tmp_path)
        RunLock(tmp_path)
    held.release()


def test_mlflow_server_that_is_down_costs_seconds(hyp, tmp_path):
    """--mlflow at a loopback port where nothing listens: the run takes about as long as without it (it took
    minutes of MLflow's HTTP retries), with one warning."""
    pytest.importorskip('mlflow', reason='mlflow is not installed (pip install -r requirements-test.txt)')
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    times, errs = [], []
    for name, extra in (('plain', []), ('down', ['--mlflow', f'http://127.0.0.1:{port}'])):
        t = time.time()
        code, err = _train(_args(hyp, tmp_path, name, 2, *extra))
        times.append(time.time() - t)
        errs.append(err)
        assert code == 0, err[-3000:]
    warnings = [ln for ln in errs[1].splitlines() if 'mlflow' in ln.lower() and 'WARNING' in ln]
    assert len(warnings) == 1 and 'training goes on without it' in warnings[0], warnings
    assert times[1] < 2 * times[0] + 10, times  # before: 256 s against 7 s; load slows both runs alike


INJECT = '''
import os, signal, sys
import test as tester
import train
from utils.train.hooks import Hook
phase, args = sys.argv[1], sys.argv[2:]
evaluate = tester.test

class Inject(Hook):
    def __getattribute__(self, name):
        if name == phase.split(':')[0] and self._now(phase):
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__getattribute__(name)

    def _now(self, phase):
        epoch = int(phase.split(':')[1]) if ':' in phase else None
        return epoch is None or (self.trainer is not None and self.trainer.epoch == epoch)

def stopped_evaluation(*a, **kw):
    os.kill(os.getpid(), signal.SIGTERM)
    return evaluate(*a, **kw)

if phase == 'evaluation':
    tester.test = stopped_evaluation
if phase == 'setup':
    train.load_data_config = lambda *a, _load=train.load_data_config, **kw: (os.kill(os.getpid(), signal.SIGTERM),
                                                                              _load(*a, **kw))[1]
train.main(args, callbacks=[Inject()])
'''


@pytest.mark.parametrize('phase', ['setup', 'before_train', 'before_epoch:1', 'after_step', 'evaluation',
                                   'after_epoch:1', 'after_train'])
def test_sigterm_in_each_phase_then_the_same_command(phase, hyp, tmp_path):
    """SIGTERM at each phase of a 2-epoch run (setup, each event, the evaluation, the last epoch's end and after
    final.pt): the process exits with 143, and the same command with --resume auto, started the moment it has
    exited, resumes or reports completion (it is never refused as in use), and the run ends complete."""
    args = _args(hyp, tmp_path, 'st', 2, '--resume', 'auto', workers=2)
    r = subprocess.run([sys.executable, '-c', INJECT, phase, *args], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 128 + signal.SIGTERM, r.stderr[-3000:]
    assert 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert 'continue with python train.py --resume' not in r.stderr  # under --resume auto: the same command
    if phase in ('before_epoch:1', 'after_step'):  # a stop at a batch boundary saves and says how to continue
        assert 'saved at' in r.stderr and 'run the same command again' in r.stderr, r.stderr[-3000:]
    code, err = _train(args)
    assert code == 0, err[-3000:]
    assert 'being written by another run' not in err
    assert len((tmp_path / 'st' / 'results.txt').read_text().splitlines()) == 2
    assert (tmp_path / 'st' / 'weights' / 'final.pt').is_file()
