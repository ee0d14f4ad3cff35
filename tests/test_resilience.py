"""Long runs that heal themselves: exact resumes at any batch, elastic restarts, signals, the watchdog, one writer
per run folder, and batches that do not depend on the number of loader workers.

The training runs use a tiny P5 on coco8 at 64 px with mosaic and MixUp (and multi-scale where one process has
two images a batch), so every source of randomness takes part. "Bit-identical" compares every tensor of the final
last.pt's model and EMA with torch.equal, and results.txt line by line.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, free_port, DrainedProcess, assert_same_run, tiny_cfg
from conftest import last_pt_position as _progress

DATA = str(ROOT / 'data' / 'coco8.yaml')


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """A tiny model config and a hyp with mosaic, MixUp, a short warm-up and a step every 2 images."""
    d = tmp_path_factory.mktemp('cfg')
    (d / 'tiny.yaml').write_text(yaml.safe_dump(tiny_cfg('yolov4-p5', depth=0.33, width=0.125)))
    hyp = yaml.safe_load((ROOT / 'data' / 'hyp.scratch.yaml').read_text())
    hyp.update(nbs=2, warmup_min_iters=4, warmup_epochs=0, mixup=0.5)
    (d / 'hyp.yaml').write_text(yaml.safe_dump(hyp))
    return d


def _args(files, project, name, epochs=3, workers=0, batch=2, *extra):
    return ['--cfg', files / 'tiny.yaml', '--hyp', files / 'hyp.yaml', '--data', DATA, '--batch-size', batch,
            '--img', '64', '64', '--device', 'cpu', '--noautoanchor', '--epochs', epochs,
            '--workers', workers, '--project', project, '--name', name, *extra]


def _popen(args, torchrun=None, **kw):
    cmd = [sys.executable, 'train.py'] if torchrun is None else \
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', free_port(),
         *torchrun, 'train.py']
    return DrainedProcess(cmd + [str(a) for a in args], cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS='1'), **kw)


def _train(args, torchrun=None):
    p = _popen(args, torchrun)
    _, err = p.communicate(timeout=600)
    return p.returncode, err


def _wait_for(proc, last, position, timeout=300):
    deadline = time.time() + timeout
    while _progress(last) < position:
        assert proc.poll() is None and time.time() < deadline, f'{last} never reached {position}'
        time.sleep(0.01)


def _wait_for_line(proc, text, count, timeout=300):
    """Until `count` lines of the process's stderr contain text."""
    deadline = time.time() + timeout
    while sum(text in ln for _, ln in proc.lines) < count:
        assert proc.poll() is None and time.time() < deadline, f'never {count} lines with {text!r}'
        time.sleep(0.05)


def _children(pid):
    out = []
    for d in filter(str.isdigit, os.listdir('/proc')):
        try:
            stat = open(f'/proc/{d}/stat').read()
        except OSError:
            continue
        if int(stat.rsplit(')', 1)[1].split()[1]) == pid:
            out.append(int(d))
    return out


def _worker_of_rank(agent_pid, local_rank):
    for pid in _children(agent_pid):
        env = open(f'/proc/{pid}/environ', 'rb').read().split(b'\0')
        if f'LOCAL_RANK={local_rank}'.encode() in env:
            return pid
    raise AssertionError(f'no worker of local rank {local_rank} under {agent_pid}')


def _last_line(err):
    """The last line a terminal shows (a progress bar ends its lines with carriage returns)."""
    return [ln for ln in err.replace('\r', '\n').splitlines() if ln.strip()][-1]


@pytest.fixture(scope='module')
def reference(files, tmp_path_factory):
    """An uninterrupted 3-epoch run, 0 loader workers."""
    project = tmp_path_factory.mktemp('ref')
    code, err = _train(_args(files, project, 'ref', 3, 0, 2, '--multi-scale'))
    assert code == 0, err[-3000:]
    return project / 'ref'


def test_worker_count_does_not_change_the_run(files, reference, tmp_path):
    code, err = _train(_args(files, tmp_path, 'w2', 3, 2, 2, '--multi-scale'))
    assert code == 0, err[-3000:]
    assert_same_run(reference, tmp_path / 'w2')


def _train_with_hook(args, hook):
    """train.main(args) in a fresh process with the hook class whose source is `hook` (a Hook subclass named
    Inject): a fault at a chosen place, as a scheduler's signal would make it."""
    script = f'''
import os, signal
import train
from utils.train.hooks import Hook
{hook}
train.main({[str(a) for a in args]!r}, callbacks=[Inject()])
'''
    return subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))  # as the reference: threads change float sums


def _train_with_sigterm(args, at):
    """SIGTERM after the step that leaves the run at `at` (epoch, batches done)."""
    return _train_with_hook(args, f'''
class Inject(Hook):
    def after_step(self):
        if (self.trainer.epoch, self.trainer.batch) == {tuple(at)!r}:
            os.kill(os.getpid(), signal.SIGTERM)
''')


def test_sigterm_mid_epoch_resumes_with_the_next_batch(files, reference, tmp_path):
    """Stopped in epoch 1 after warm-up ended there (its rates set by warm-up, not by the schedule), then the
    same command again with --resume auto: the next batch follows, and the run ends bit-identical."""
    args = _args(files, tmp_path, 'b', 3, 2, 2, '--multi-scale')
    r = _train_with_sigterm(args, (1, 2))  # taken at the next batch's agreement: saved after batch 3
    last = tmp_path / 'b' / 'weights' / 'last.pt'
    assert r.returncode == 128 + signal.SIGTERM, r.stderr[-3000:]
    assert _last_line(r.stderr) == (f'SIGTERM received: {last} saved at epoch 1 batch 3; continue with python '
                                    f'train.py --resume {tmp_path / "b"}') and 'Traceback' not in r.stderr
    ck = torch.load(last, weights_only=True)
    assert ck["epoch"] == 0 and ck["progress"]["batch"] == 3  # the label: the last completed epoch
    code, err = _train(args + ['--resume', 'auto'])
    assert code == 0, err[-3000:]
    assert "at epoch 1 batch 3, to 3 epochs" in err
    assert_same_run(reference, tmp_path / 'b')


AT_STEP = '''
import json, os, signal, sys, time
sys.path.insert(0, os.getcwd())  # the repository (this script lies in a temporary folder)
import train
from utils.train.hooks import Hook
marks, plan, args = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]

class AtStep(Hook):
    """For each [rank, epoch, batch, signal, files] of the plan: after the step that leaves that rank at (epoch,
    batch), once (a file in `marks` records it, with this process's id and the time), wait until one of `files`
    exists (when any are named), then send this process the signal."""
    def after_step(self):
        t = self.trainer
        for rank, epoch, batch, sig, files in plan:
            mark = os.path.join(marks, f'{rank}-{epoch}-{batch}')
            if (t.rank, t.epoch, t.batch) == (rank, epoch, batch) and not os.path.exists(mark):
                while files and not any(os.path.exists(f) for f in files):
                    time.sleep(0.01)
                with open(mark + '.tmp', 'w') as f:
                    json.dump({'pid': os.getpid(), 'time': time.time()}, f)
                os.replace(mark + '.tmp', mark)
                os.kill(os.getpid(), getattr(signal, sig))

train.main(args, callbacks=[AtStep()])
'''


def _torchrun_acting_at_steps(tmp_path, plan, args, restarts):
    """torchrun (2 ranks, --max-restarts restarts) of train.py with AT_STEP's plan: each rank acts on itself at
    set steps, whatever the machine's load (a test that polled last.pt from outside could miss a tiny run's steps
    on a loaded machine and find the job already ended). Returns the process and the folder of marks."""
    script, marks = tmp_path / 'at_step.py', tmp_path / 'marks'
    script.write_text(AT_STEP)
    marks.mkdir()
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', free_port(),
           '--max-restarts', str(restarts), str(script), str(marks), json.dumps(plan), *map(str, args)]
    return DrainedProcess(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS='1')), marks


def _mark(proc, marks, name, timeout=300):
    """The record {'pid', 'time'} of an action taken (AT_STEP), once it is there."""
    deadline, path = time.time() + timeout, marks / name
    while not path.is_file():
        assert proc.poll() is None and time.time() < deadline, f'{name} was never reached'
        time.sleep(0.01)
    return json.loads(path.read_text())


def test_torchrun_restarts_after_two_sigkills_give_the_same_run(files, tmp_path):
    """torchrun --max-restarts 2: rank 1 is killed twice inside epochs, at (1, 2) and then (in the restarted job)
    at (2, 2); the job ends by itself, bit-identical to the same command run without a failure."""
    args = _args(files, tmp_path, 'ref', 4, 1, 2, '--notest', '--save-period-steps', '1')
    code, err = _train(args, torchrun=['--max-restarts', '0'])
    assert code == 0, err[-3000:]
    plan = [[1, 1, 2, 'SIGKILL', []], [1, 2, 2, 'SIGKILL', []]]
    p, marks = _torchrun_acting_at_steps(tmp_path, plan, _args(files, tmp_path, 'k', 4, 1, 2, '--notest',
                                                                '--save-period-steps', '1'), restarts=2)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert sorted(x.name for x in marks.iterdir()) == ['1-1-2', '1-2-2']
    assert err.count('Continuing') == 2 and err.count('Resuming') == 2, err[-3000:]
    assert (tmp_path / 'k').is_dir() and not (tmp_path / 'k2').exists()  # the restarts continued in k
    assert_same_run(tmp_path / 'ref', tmp_path / 'k')


def test_stopped_rank_ends_the_job_then_it_restarts(files, tmp_path):
    """A rank stopped with SIGSTOP: within the watchdog time (plus a margin) the other rank ends the job with one
    line naming it; torchrun --max-restarts then restarts it and the run finishes."""
    p, marks = _torchrun_acting_at_steps(tmp_path, [[1, 0, 2, 'SIGSTOP', []]], _args(
        files, tmp_path, 's', 3, 0, 2, '--notest', '--save-period-steps', '1', '--watchdog', '4'), restarts=1)
    lines = p.lines
    stopped = _mark(p, marks, '1-0-2')  # rank 1 stopped itself after its second step
    victim, stopped_at = stopped['pid'], stopped['time']
    p.communicate(timeout=300)
    hang = [(t, ln) for t, ln in lines if 'shows no sign of life' in ln]
    assert hang, ''.join(ln for _, ln in lines)[-3000:]
    t, line = hang[0]
    assert line.startswith(f'train.py: error: rank 1 (pid {victim} on ') and 'torchrun --max-restarts' in line
    assert t - stopped_at < 4 + 60  # the watchdog's 4 s, with room for a loaded machine; gloo's own wait is 30 min
    assert p.returncode == 0, ''.join(ln for _, ln in lines)[-3000:]
    assert len((tmp_path / 's' / 'results.txt').read_text().splitlines()) == 3


@pytest.mark.parametrize('sig,group', [(signal.SIGTERM, True), (signal.SIGUSR1, False)])
def test_scheduler_signals_save_and_exit_with_one_line(files, tmp_path, sig, group):
    """SIGTERM to the whole process group (SLURM, timeout), loader workers included, and SLURM's SIGUSR1
    warning: last.pt is saved at a batch boundary and the run ends with one line."""
    p = _popen(_args(files, tmp_path, 'g', 30, 2, 2, '--save-period-steps', '1', '--notest'), start_new_session=True)
    last = tmp_path / 'g' / 'weights' / 'last.pt'
    _wait_for(p, last, (0, 2))
    os.killpg(p.pid, sig) if group else p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + sig, err[-3000:]
    assert _last_line(err).startswith(f'{signal.Signals(sig).name} received: {last} saved at ')
    assert 'Traceback' not in err and 'DataLoader worker' not in err
    epoch, batch = _progress(last)
    assert f'saved at epoch {epoch} batch {batch};' in err or f'the start of epoch {epoch};' in err


def test_two_runs_with_one_name_get_two_folders(files, tmp_path):
    procs = [_popen(_args(files, tmp_path, 'same', 1)) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    assert sorted(x.name for x in tmp_path.iterdir()) == ['same', 'same2']
    for run in ('same', 'same2'):
        assert len((tmp_path / run / 'results.txt').read_text().splitlines()) == 1


def test_a_live_run_has_one_writer(files, tmp_path):
    p = _popen(_args(files, tmp_path, 'live', 200))
    try:
        _wait_for(p, tmp_path / 'live' / 'weights' / 'last.pt', (1, 0))
        for extra in (['--resume', tmp_path / 'live'], _args(files, tmp_path, 'live', 2, 0, 2, '--exist-ok'),
                      _args(files, tmp_path, 'live', 2, 0, 2, '--resume', 'auto')):
            code, err = _train(extra)
            errors = [ln for ln in err.splitlines() if ln.startswith('train.py: error:')]
            assert code == 1 and len(errors) == 1 and 'Traceback' not in err, err[-2000:]
            assert f'is being written by another run (pid {p.pid} on {socket.gethostname()}, started' in errors[0]
    finally:
        p.kill()
        p.wait()


def test_resume_auto_starts_then_continues(files, tmp_path):
    code, err = _train(_args(files, tmp_path, 'auto', 1, 0, 2, '--resume', 'auto'))
    assert code == 0, err[-3000:]
    code, err = _train(_args(files, tmp_path, 'auto', 2, 0, 2, '--resume', 'auto'))
    assert code == 0 and 'Continuing' in err, err[-3000:]
    assert [x.name for x in tmp_path.iterdir()] == ['auto']
    assert [ln.split()[0] for ln in (tmp_path / 'auto' / 'results.txt').read_text().splitlines()] == ['0/0', '1/1']
    (tmp_path / 'auto' / 'weights' / 'final.pt').unlink()  # a requeue of the finished job (killed before its end)
    code, err = _train(_args(files, tmp_path, 'auto', 2, 0, 2, '--resume', 'auto'))
    assert code == 0 and 'has trained all 2 epochs: nothing left to do' in err, err[-3000:]
    assert (tmp_path / 'auto' / 'weights' / 'final.pt').is_file() and [x.name for x in tmp_path.iterdir()] == ['auto']
    assert len((tmp_path / 'auto' / 'results.txt').read_text().splitlines()) == 2


def test_killed_loader_worker_is_one_line_and_saves(files, tmp_path):
    p = _popen(_args(files, tmp_path, 'wk', 30, 2, 2, '--save-period-steps', '1', '--notest'))
    last = tmp_path / 'wk' / 'weights' / 'last.pt'
    _wait_for(p, last, (0, 2))
    worker = _children(p.pid)[0]
    os.kill(worker, signal.SIGKILL)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1, err[-3000:]
    line = _last_line(err)  # where the loader's SIGCHLD handler raises decides whether a batch boundary was reached
    assert line.startswith('data loader failed') and re.search(rf'DataLoader worker \(pid(\(s\))? {worker}\) (is '
                                                             rf'killed by signal: Killed|exited unexpectedly)', line)
    assert str(last) in line, err[-3000:]
    assert 'Traceback' not in err


def test_image_deleted_during_a_run_is_named(files, tmp_path):
    import shutil
    shutil.copytree(ROOT / 'data' / 'coco8', tmp_path / 'coco8')
    data = tmp_path / 'data.yaml'
    data.write_text(yaml.safe_dump(dict(yaml.safe_load(open(DATA)), train=str(tmp_path / 'coco8' / 'images'),
                                        val=str(tmp_path / 'coco8' / 'images'))))
    args = [str(a) for a in _args(files, tmp_path / 'runs', 'del', 30, 2, 2, '--notest', '--save-period-steps', '1')]
    args[args.index(DATA)] = str(data)
    p = _popen(args)
    _wait_for(p, tmp_path / 'runs' / 'del' / 'weights' / 'last.pt', (0, 1))
    gone = sorted((tmp_path / 'coco8' / 'images').glob('*.jpg'))[0]
    gone.unlink()
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1, err[-3000:]
    assert f'image {gone} could not be read' in _last_line(err) and 'Traceback' not in err, err[-3000:]


def test_epoch_sampler_is_distributed_samplers_order_and_resumes_inside_an_epoch():
    from torch.utils.data.distributed import DistributedSampler

    from utils.sampling import EpochSampler
    for n, world in ((10, 1), (10, 3), (2, 4)):
        for rank in range(world):
            ours = EpochSampler(n, shuffle=True, seed=5, rank=rank if world > 1 else -1, world_size=world)
            theirs = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=5)
            for epoch in (0, 3):
                ours.set_epoch(epoch)
                theirs.set_epoch(epoch)
                keys = list(ours)
                assert [k.index for k in keys] == list(theirs) and {k.epoch for k in keys} == {epoch}
                ours.set_epoch(epoch, start=2)
                assert list(ours) == keys[2:]
    s = EpochSampler(4, shuffle=False)
    s.set_epoch(1, images=[3, 3, 0, 1])  # --image-weights: positions keep their seeds, images are drawn
    assert [(k.index, k.image) for k in s] == [(0, 3), (1, 3), (2, 0), (3, 1)]


def test_a_sample_is_the_same_whenever_it_is_loaded():
    from utils.datasets import LoadImagesAndLabels
    from utils.sampling import SampleKey
    hyp = dict(yaml.safe_load((ROOT / 'data' / 'hyp.scratch.yaml').read_text()), mixup=0.5)
    ds = LoadImagesAndLabels(str(ROOT / 'data' / 'coco8' / 'images'), img_size=64, augment=True, hyp=hyp, seed=1)
    first = [ds[SampleKey(2, i, i)] for i in range(4)]
    again = [ds[SampleKey(2, i, i)] for i in reversed(range(4))][::-1]
    for (a, la, _, _), (b, lb, _, _) in zip(first, again):
        assert torch.equal(a, b) and torch.equal(la, lb)
    other_epoch = ds[SampleKey(3, 0, 0)]
    assert not torch.equal(first[0][0], other_epoch[0])


class FakeStore:
    """The part of a c10d store the watchdog uses, shared by the 'ranks' of one test."""

    def __init__(self):
        self.data = {}

    def set(self, key, value):
        self.data[key] = value

    def check(self, keys):
        return all(k in self.data for k in keys)

    def get(self, key):
        return self.data[key].encode()


class FakeClock:
    """Seconds that pass only when a test says so: the watchdog tests need no sleeps and no threads."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _watchdogs(timeout=10):
    from utils.train.watchdog import Watchdog
    store, ended, clock = FakeStore(), {}, FakeClock()
    dogs = [Watchdog(timeout, r, 2, store, exit_fn=lambda m, r=r: ended.setdefault(r, m), clock=clock) for r in (0, 1)]
    for d in dogs:
        d.arm()
        d.beat('forward/backward', 'epoch 0 batch 0')
    return dogs, ended, clock


def _pass(clock, seconds, dogs, each_second=None):
    """`seconds` of the watchdogs' rounds (one a second, as a 10 s timeout gives), calling each_second() first."""
    for _ in range(seconds):
        clock.now += 1
        if each_second:
            each_second()
        for d in dogs:
            d.check()


def test_watchdog_waits_while_rank_0_evaluates_then_names_a_stopped_rank():
    dogs, ended, clock = _watchdogs()
    dogs[1].beat('all-reduce', 'agreeing on the step', waiting=True)
    _pass(clock, 40, dogs, lambda: dogs[0].beat('evaluation', 'batch 3'))  # 4 timeouts: rank 1 waits, no hang
    assert not ended
    _pass(clock, 9, dogs[1:])  # rank 0 stops: its records are no longer published
    assert not ended
    _pass(clock, 3, dogs[1:])
    assert 0 not in ended and ended[1].startswith('train.py: error: rank 0 (pid ') and \
        'shows no sign of life for 11 s' in ended[1] and 'last seen evaluation (batch 3)' in ended[1]


def test_watchdog_names_a_rank_stuck_in_its_own_phase():
    dogs, ended, clock = _watchdogs()
    dogs[0].beat('loading data', 'epoch 2 batch 5; data-loader workers [123, 124]')
    dogs[1].beat('all-reduce', 'agreeing on the step', waiting=True)
    _pass(clock, 10, dogs)
    assert not ended  # exactly the timeout: not yet
    _pass(clock, 1, dogs)
    assert re.fullmatch(r'train\.py: error: rank 0 made no progress for 11 s while loading data \(epoch 2 batch '
                        r'5; data-loader workers \[123, 124\]\); ending this process so that the job can be '
                        r'restarted \(torchrun --max-restarts\) or resumed \(--resume\)', ended[0]), ended[0]


def test_watchdog_gives_the_metrics_after_the_last_evaluation_batch_the_slow_allowance():
    """After an evaluation's last batch come the metrics, plots and COCOeval, with no batch to beat at: the
    watchdog allows them 4 timeouts (as a checkpoint's save), not one. Before, the last beat was the last batch's,
    and a final evaluation slowed by a loaded machine ended a healthy run after one timeout."""
    from types import SimpleNamespace

    from utils.train.hooks import BeatingLoader
    from utils.train.watchdog import Watchdog
    ended, clock = [], FakeClock()
    dog = Watchdog(10, -1, 1, None, exit_fn=ended.append, clock=clock)
    dog.arm()
    assert list(BeatingLoader([['a'], ['b']], SimpleNamespace(signal=0, beat=dog.beat))) == [['a'], ['b']]
    _pass(clock, 40, [dog])
    assert not ended
    _pass(clock, 1, [dog])
    assert ended and 'made no progress for 41 s while evaluation metrics (after 2 batches)' in ended[0], ended


def test_sigterm_during_evaluation_saves_the_finished_epoch(files, reference, tmp_path):
    """A stop signal during the end-of-epoch evaluation (minutes on COCO) ends it at once: last.pt holds the
    epoch's trained weights (every batch done), and the resume evaluates and continues as if never stopped."""
    r = _train_with_sigterm(_args(files, tmp_path, 'ev', 3, 0, 2, '--multi-scale'), (0, 4))  # the epoch's last step
    assert r.returncode == 128 + signal.SIGTERM, r.stderr[-3000:]
    last = tmp_path / 'ev' / 'weights' / 'last.pt'
    assert _last_line(r.stderr) == (f'SIGTERM received: {last} saved at epoch 0 batch 4; continue with python '
                                    f'train.py --resume {tmp_path / "ev"}')
    assert torch.load(last, weights_only=True)['epoch'] == -1 and not (tmp_path / 'ev' / 'results.txt').read_text()
    code, err = _train(['--resume', tmp_path / 'ev'])
    assert code == 0, err[-3000:]
    assert_same_run(reference, tmp_path / 'ev')


def test_only_a_different_hyp_is_a_new_schedule(files, tmp_path):
    """Resuming with the run's own --hyp again (a restart, --resume auto) keeps the checkpoint's rates; a hyp
    with other values (the paper's fine-tune) is a change."""
    import argparse

    import train
    hyp = yaml.safe_load((files / 'hyp.yaml').read_text())
    ckpt = {'opt': {'epochs': 3, 'hyp': str(files / 'hyp.yaml')}, 'hyp': hyp}
    layout = dict(local_rank=-1, world_size=1, global_rank=-1, device='', epochs=None)
    _, _, same = train.resumed_options(argparse.Namespace(hyp=str(files / 'hyp.yaml'), **layout), ckpt,
                                       tmp_path / 'weights' / 'last.pt')
    (tmp_path / 'ft.yaml').write_text(yaml.safe_dump(dict(hyp, lr0=0.002)))
    _, new, other = train.resumed_options(argparse.Namespace(hyp=str(tmp_path / 'ft.yaml'), **layout), ckpt,
                                          tmp_path / 'weights' / 'last.pt')
    assert not same and other and new['lr0'] == 0.002


def test_watchdog_without_a_store_leaves_waits_to_the_process_group():
    from utils.train.watchdog import Watchdog
    ended, clock = [], FakeClock()
    dog = Watchdog(10, 1, 2, None, exit_fn=ended.append, clock=clock)
    dog.arm()
    dog.beat('forward/backward')
    dog.beat('all-reduce', 'agreeing on the step', waiting=True)
    _pass(clock, 30, [dog])
    assert not ended  # it cannot tell a slow rank 0 from a lost one
    dog.beat('loading data', 'epoch 0 batch 1')
    _pass(clock, 11, [dog])
    assert ended and 'rank 1 made no progress for 11 s' in ended[0] and 'while loading data' in ended[0]


def test_watchdog_names_a_rank_stopped_at_start_by_pid_and_host():
    """Rank 1 announced itself and stopped before its first round (SIGSTOP a few seconds into a run): rank 0, which
    waits for it, names it by rank, pid and host."""
    from utils.train.watchdog import Watchdog
    store, ended, clock = FakeStore(), {}, FakeClock()
    dogs = [Watchdog(10, r, 2, store, exit_fn=lambda m, r=r: ended.setdefault(r, m), clock=clock) for r in (0, 1)]
    dogs[1].announce()
    dogs[0].announce()
    dogs[0].arm()
    dogs[0].beat('forward/backward')
    dogs[0].beat('all-reduce', 'agreeing on the step', waiting=True)
    _pass(clock, 12, dogs[:1])
    assert ended[0].startswith(f'train.py: error: rank 1 (pid {os.getpid()} on {socket.gethostname()}) shows no sign '
                               f'of life for ')


def test_watchdog_names_the_ranks_that_never_reported():
    """A 4-rank job whose ranks 1 and 3 never reached the store (stopped at start-up): the waiting ranks name them."""
    from utils.train.watchdog import Watchdog
    store, ended, clock = FakeStore(), {}, FakeClock()
    dogs = [Watchdog(10, r, 4, store, exit_fn=lambda m, r=r: ended.setdefault(r, m), clock=clock) for r in (0, 2)]
    for d in dogs:
        d.arm()
        d.beat('forward/backward')
        d.beat('all-reduce', 'agreeing on the step', waiting=True)
    _pass(clock, 11, dogs)
    assert not ended  # rank 0's last progress was seen by rank 2 a round after it was made
    _pass(clock, 1, dogs)
    assert ended[2] == ('train.py: error: rank 2 waited 12 s in all-reduce for ranks 1, 3, which never reported '
                        '(not started, or stopped before their first report); ending this process so that the job '
                        'can be restarted (torchrun --max-restarts) or resumed (--resume)')


STOP_IN_A_STORE_CALL = '''
import datetime, gc, os, sys, threading, time
gc.disable()
sys.path.insert(0, os.getcwd())
import torch.distributed as dist
from utils.train.watchdog import Watchdog

real, entered = dist.TCPStore('127.0.0.1', 0, 1, is_master=True, wait_for_workers=False), threading.Event()

class SlowStore:
    """A round trip of 0.5 s inside C++ with the GIL released: a loaded machine's rendezvous store."""
    def set(self, key, value):
        entered.set()
        try:
            real.wait(['never set'], datetime.timedelta(seconds=0.5))
        except RuntimeError:
            pass
    def check(self, keys):
        return False

class SlowTeardown:
    def __del__(self):  # runs while the interpreter finalizes, and outlasts the store call
        time.sleep(1)

teardown = SlowTeardown()
dog = Watchdog(0.4, 1, 2, None).start()
dog.store = SlowStore()
entered.wait(10)
dog.stop()  # then the process exits, as a rank does once its training is done
'''


def test_a_rank_that_ends_while_its_watchdog_talks_to_the_store_exits_cleanly(tmp_path):
    """A rank whose training ended while its watchdog thread was inside a store call (seen under load: rank 1 done
    while rank 0 ran the final evaluation) aborted as the interpreter finalized, 'terminate called without an active
    exception' (SIGABRT), and torchrun then failed the job and sent rank 0 SIGTERM. Watchdog.stop() now waits for
    the thread; the process exits 0, with the garbage collector off."""
    script = tmp_path / 'stop_in_a_store_call.py'
    script.write_text(STOP_IN_A_STORE_CALL)
    p = subprocess.run([sys.executable, script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and 'terminate called' not in p.stderr, (p.returncode, p.stderr[-2000:])


# --- damaged checkpoints and changed flags on resume (issue 29) ------------------------------------------------
def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])  # a failing disk, or a copy between file systems cut short


def test_truncated_last_pt_resumes_from_the_previous_checkpoint(files, reference, tmp_path):
    """A requeue (--resume auto) finds last.pt truncated: it resumes from last-previous.pt, the checkpoint before it,
    with one warning naming both and what is lost, sets the damaged file aside, and ends bit-identical."""
    args = _args(files, tmp_path, 'd', 3, 0, 2, '--multi-scale', '--save-period-steps', '1')
    r = _train_with_sigterm(args, (1, 2))
    assert r.returncode == 128 + signal.SIGTERM, r.stderr[-3000:]
    weights = tmp_path / 'd' / 'weights'
    assert torch.load(weights / 'last-previous.pt', weights_only=True)['progress']['batch'] == 2
    _truncate(weights / 'last.pt')
    code, err = _train(args + ['--resume', 'auto'])
    assert code == 0, err[-3000:]
    warnings = [ln for ln in err.splitlines() if 'is unreadable' in ln]
    assert len(warnings) == 1, err[-3000:]
    assert warnings[0].startswith(f'WARNING: {weights / "last.pt"} is unreadable (') and warnings[0].endswith(
        f'resuming from {weights / "last-previous.pt"}, saved at epoch 1 batch 2; lost and trained again: the '
        f'batches trained after epoch 1 batch 2')
    assert (weights / 'last-damaged.pt').is_file()
    assert_same_run(reference, tmp_path / 'd')


def test_truncated_last_pt_under_an_elastic_restart(files, tmp_path):
    """torchrun --max-restarts 1: with rank 0 frozen (no save can land), last.pt is truncated and both ranks are
    killed; the restarted job resumes from the newest intact checkpoint, names it and the loss, and ends
    bit-identical to an uninterrupted run."""
    args = _args(files, tmp_path, 'ref', 3, 0, 2, '--notest')
    code, err = _train(args, torchrun=['--max-restarts', '0'])
    assert code == 0, err[-3000:]
    last = tmp_path / 'k' / 'weights' / 'last.pt'
    # last.pt lands before best.pt (the same background write, in that order) and last-previous.pt comes with the
    # next save: rank 0 waits, after its first step of epoch 1, until one of them is on disk (each is renamed into
    # place whole), then stops itself, its writer thread with it, so that the files the restart finds are the
    # ones looked at here
    behind = (last.with_name('best.pt'), last.with_name('last-previous.pt'))
    p, _marks = _torchrun_acting_at_steps(tmp_path, [[0, 1, 1, 'SIGSTOP', [str(f) for f in behind]]],
                                          _args(files, tmp_path, 'k', 3, 0, 2, '--notest'), restarts=1)
    frozen = _mark(p, _marks, '0-1-1')
    ranks = [_worker_of_rank(p.pid, r) for r in (0, 1)]
    assert ranks[0] == frozen['pid']
    _truncate(last)
    intact = max((f for f in behind if f.is_file()), key=lambda f: f.stat().st_mtime)
    for pid in reversed(ranks):
        os.kill(pid, signal.SIGKILL)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    warnings = [ln for ln in err.splitlines() if 'is unreadable' in ln]
    assert len(warnings) == 1 and f'resuming from {intact}, saved at ' in warnings[0], err[-3000:]
    assert_same_run(tmp_path / 'ref', tmp_path / 'k')


def test_a_named_checkpoint_is_not_swapped(files, reference, tmp_path):
    """--resume path/to/last.pt names a file: a damaged one is refused in one line, not replaced by another."""
    import shutil
    run = tmp_path / 'named'
    shutil.copytree(reference, run)
    _truncate(run / 'weights' / 'last.pt')
    code, err = _train(['--resume', run / 'weights' / 'last.pt'])
    assert code == 1 and 'Traceback' not in err, err[-3000:]
    assert _last_line(err).startswith(f'train.py: error: {run / "weights" / "last.pt"}: not a readable PyTorch '
                                      f'checkpoint')


@pytest.mark.parametrize('flag, value', [('--cfg', 'models/yolov4-csp.yaml'), ('--data', 'other.yaml'),
                                         ('--batch-size', '4')])
def test_resume_auto_refuses_flags_that_change_the_run(files, reference, tmp_path, flag, value):
    import shutil
    shutil.copytree(reference, tmp_path / 'ref')
    if value == 'other.yaml':  # another dataset (here the same images under another data yaml)
        value = str(tmp_path / value)
        Path(value).write_text(Path(DATA).read_text().replace(' coco8/', f' {ROOT / "data" / "coco8"}/'))
    args = _args(files, tmp_path, 'ref', 3, 0, 2, '--multi-scale')
    args[args.index(flag) + 1] = value
    before = (tmp_path / 'ref' / 'weights' / 'last.pt').read_bytes()
    code, err = _train(args + ['--resume', 'auto'])
    assert code == 1 and 'Traceback' not in err, err[-3000:]
    line = _last_line(err)
    assert line.startswith(f'train.py: error: --resume auto: {tmp_path / "ref"} was trained with other values of '
                           f'{flag} {value} (the run\'s: '), line
    assert line.endswith('give another --name to start a new run with them, or leave them out to continue this one')
    assert (tmp_path / 'ref' / 'weights' / 'last.pt').read_bytes() == before


def test_resume_auto_accepts_more_epochs_and_names_them(files, reference, tmp_path):
    import shutil
    shutil.copytree(reference, tmp_path / 'ref')
    code, err = _train(_args(files, tmp_path, 'ref', 4, 0, 2, '--multi-scale') + ['--resume', 'auto'])
    assert code == 0, err[-3000:]
    assert f'WARNING: resuming {tmp_path / "ref"} with --epochs 4 (the run\'s: 3)' in err
    assert len((tmp_path / 'ref' / 'results.txt').read_text().splitlines()) == 4


def test_a_loader_failure_raised_in_a_weakref_callback_prints_no_traceback():
    """PyTorch's SIGCHLD handler can raise a killed worker's error inside a weakref callback, where Python prints
    'Exception ignored in ...' and a traceback (seen once in a loaded CI run): under StopSignals it is not printed
    (the loader raises it again at the next batch); any other unraisable error still is."""
    code = """
import sys, weakref
from utils.train.signals import StopSignals
class Thing:
    pass
def raise_in_callback(error):
    def callback(_):
        raise error
    thing = Thing()
    ref = weakref.ref(thing, callback)
    del thing
with StopSignals():
    raise_in_callback(RuntimeError('DataLoader worker (pid 123) is killed by signal: Killed. '))
    print('--', file=sys.stderr)
    raise_in_callback(ValueError('a real bug'))
"""
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    before, after = r.stderr.split('--\n')
    assert r.returncode == 0 and before == '', r.stderr
    assert 'Traceback' in after and 'ValueError: a real bug' in after, r.stderr
