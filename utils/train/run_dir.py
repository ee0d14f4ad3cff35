"""Run folders: each has one writer, and a resume or an elastic restart finds the same folder again.

A new run takes the first free name of <project>/<name>, <name>2, <name>3, ... with `mkdir`, which is atomic:
two runs started at once get two folders. The writer then holds an exclusive `flock` on <run>/.lock, which the
kernel releases however the process ends (no stale locks after a kill -9 or a lost node), and writes who holds
it there. A second writer (`--exist-ok`, `--resume` of a live run) is refused with one line naming the holder.

The lock file also records the torchrun job the run belongs to (`elastic_job_key`), so that workers restarted
by torchrun's elastic agent continue the run their first attempt started instead of numbering a new one.
"""
import datetime
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

from models.checkpoint import CheckpointError

from utils.errors import ArgumentError, UserError
from utils.train.checkpoint_layout import TrainingCheckpoint, load_training_checkpoint
from utils.train.state import describe_position

LOGGER = logging.getLogger(__name__)
LOCK_NAME = '.lock'
PREVIOUS_NAME = 'last-previous.pt'  # last.pt's second slot: the checkpoint before it (models.checkpoint)
DAMAGED_NAME = 'last-damaged.pt'  # an unreadable last.pt, set aside when a resume falls back


class RunInUseError(UserError):
    """The run folder is being written by another live process; the message names it."""


def elastic_job_key():
    """An id shared by every attempt of one torchrun job (None outside torchrun): its rendezvous id, or where
    that is torchrun's default 'none', the host and pid of the agent that starts the workers."""
    if 'TORCHELASTIC_RUN_ID' not in os.environ:
        return None
    run_id = os.environ['TORCHELASTIC_RUN_ID']
    return run_id if run_id not in ('', 'none') else f'{socket.gethostname()}:{os.getppid()}'


def elastic_restart():
    """Whether this process was restarted by torchrun's elastic agent (--max-restarts) after a failure."""
    return int(os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') or 0) > 0


_HELD_LOCKS = set()  # descriptors of the run locks this process holds


def _close_inherited_locks():
    """In a child forked from a process that holds a run lock (a data-loader worker): close the lock's descriptor.
    An flock belongs to the open file, which a fork shares: a worker that outlived its run would keep the run
    folder locked, and the same command started again at once (a scheduler's requeue) would find it in use."""
    for fd in _HELD_LOCKS:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


class RunLock:
    """An exclusive lock on a run folder, held by this process (not by the processes it forks) until release() or
    the end of the process."""

    def __init__(self, save_dir, job_key=None, created=False):
        self.save_dir = Path(save_dir)
        self.created = created  # the folder was made by this claim (a run that never starts leaves nothing)
        path = self.save_dir / LOCK_NAME
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self.fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunInUseError(f'{self.save_dir} is being written by another run ({_describe(read_lock(path))}): '
                                f'wait for it to end, or give another --name') from None
        _HELD_LOCKS.add(self.fd)
        info = {'pid': os.getpid(), 'host': socket.gethostname(), 'job': job_key,
                'started': datetime.datetime.now().isoformat(timespec='seconds')}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(info).encode(), 0)
        os.fsync(self.fd)

    def release(self):
        if self.fd is not None:
            _HELD_LOCKS.discard(self.fd)
            os.close(self.fd)  # closing the only descriptor releases the flock
            self.fd = None


def read_lock(path):
    """The holder information a lock file records ({} when unreadable)."""
    try:
        return json.loads(Path(path).read_text() or '{}')
    except (OSError, ValueError):
        return {}


def _describe(info):
    return (f'pid {info.get("pid", "?")} on {info.get("host", "?")}, started {info.get("started", "?")}'
            if info else 'its lock is held')


def claim_new_run(path, exist_ok=False, job_key=None):
    """Create and lock a new run folder: `path` itself with exist_ok, else the first free of path, path2, ...
    Returns the RunLock (its save_dir is the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if exist_ok:
        created = not path.exists()
        path.mkdir(exist_ok=True)
        return RunLock(path, job_key, created)
    n = 1
    while True:
        candidate = path if n == 1 else path.with_name(f'{path.name}{n}')
        try:
            candidate.mkdir()
            return RunLock(candidate, job_key, created=True)
        except FileExistsError:
            n += 1


def release_run(lock, failed):
    """Release the run folder's lock. A run that failed before it produced anything (no checkpoint, results.txt
    or evolve.txt) in a folder it created is removed first, so that a failed start does not take the name (the
    next run would be exp2, and runs/train/exp/weights/best.pt would not exist)."""
    save_dir = lock.save_dir
    produced = any((save_dir / name).exists() for name in ('results.txt', 'evolve.txt')) or \
        any((save_dir / 'weights').glob('*.pt'))
    if failed and lock.created and not produced:
        shutil.rmtree(save_dir, ignore_errors=True)
        LOGGER.info('Removed %s: the run ended before it produced anything', save_dir)
    lock.release()


def find_job_run(project, name, job_key):
    """The run folder under project (<name>, <name>2, ...) that an earlier attempt of torchrun job `job_key`
    claimed, or None (the newest such folder where there are several)."""
    if job_key is None or not Path(project).is_dir():
        return None
    found = [p for p in Path(project).glob(f'{name}*') if (p / LOCK_NAME).is_file()
             and read_lock(p / LOCK_NAME).get('job') == job_key]
    return max(found, key=lambda p: (p / LOCK_NAME).stat().st_mtime) if found else None


def how_to_continue(resume, run_dir):
    """What a stopped run's last line tells its user: under --resume auto the same command continues it (as a
    requeued job does), else --resume names the run folder."""
    if resume == 'auto':
        return 'run the same command again (--resume auto continues it)'
    return f'continue with python train.py --resume {run_dir}'


def resume_path(resume, project):
    """The last.pt to resume: the newest under --project for a bare --resume, a run folder's weights/last.pt,
    or the given file."""
    if resume is True:
        runs = sorted(Path(project).glob('**/last.pt'), key=lambda x: x.stat().st_mtime)
        if not runs:
            raise ArgumentError(f'--resume: no last.pt found under {project}: name the run folder or its '
                                f'weights/last.pt')
        return runs[-1]
    path = Path(resume)
    if path.is_dir():
        candidates = [path / 'weights' / 'last.pt', path / 'last.pt']
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ArgumentError(f'--resume {path}: a folder without weights/last.pt (looked for '
                                f'{candidates[0]}); was the run started with --nosave, or is this the project '
                                f'folder rather than a run folder?')
        return found
    if not path.is_file():
        raise ArgumentError(f'--resume {path}: no such file; give a run folder (runs/train/exp) or its '
                            f'weights/last.pt')
    return path


def training_checkpoints(weights_dir):
    """The run's checkpoints that hold a training state, newest first: last.pt, then last-previous.pt and
    best.pt by modification time."""
    weights_dir = Path(weights_dir)
    others = [p for p in (weights_dir / PREVIOUS_NAME, weights_dir / 'best.pt') if p.is_file()]
    last = weights_dir / 'last.pt'
    return ([last] if last.is_file() else []) + sorted(others, key=lambda p: p.stat().st_mtime, reverse=True)


def load_newest_intact(weights_dir, results=None):
    """(path, TrainingCheckpoint, damaged path or None) of the newest checkpoint of the run that loads and holds a
    training state. When the newest is unreadable (truncated by a failing disk or an interrupted copy), the
    next one is taken with one warning naming both and what is lost; when none loads, the newest's error is
    raised. `results`: the run's results.txt, whose lines say how many epochs the lost checkpoint had ended."""
    found = training_checkpoints(weights_dir)
    errors = []
    for path in found:
        try:
            ckpt = load_training_checkpoint(path, download=False)
        except CheckpointError as e:
            errors.append((path, e))
            continue
        if not ckpt.resumable:
            errors.append((path, CheckpointError(f'{path} holds no training state')))
            continue
        if errors:
            LOGGER.warning('WARNING: %s', fallback_message(errors[0], path, ckpt, results))
        return path, ckpt, errors[0][0] if errors else None
    raise errors[0][1] if errors else CheckpointError(f'{weights_dir}: no last.pt to resume')


def fallback_message(damaged, path, ckpt, results):
    """'<damaged> is unreadable (...): resuming from <path>, saved at epoch E batch B; lost: ...'."""
    bad, error = damaged
    epoch, batch = ckpt.position()
    where = describe_position(epoch, batch)
    ended = len(Path(results).read_text().splitlines()) if results and Path(results).is_file() else 0
    lost_epochs = ended - len(ckpt.results)
    lost = (f'epochs {epoch}-{epoch + lost_epochs - 1} and the batches after them' if lost_epochs > 1 else
            f'epoch {epoch} and the batches after it' if lost_epochs == 1 else f'the batches trained after {where}')
    reason = str(error).split(': ', 1)[-1]
    return (f'{bad} is unreadable ({reason}): resuming from {path}, saved at {where}; lost and trained again: '
            f'{lost}')


def set_aside(damaged):
    """Rename an unreadable last.pt to last-damaged.pt (kept for inspection; the next save writes a new last.pt
    and must not keep the damaged one as its previous)."""
    if damaged is not None and Path(damaged).name == 'last.pt' and Path(damaged).exists():
        os.replace(damaged, Path(damaged).with_name(DAMAGED_NAME))


def run_folder_of(checkpoint):
    """runs/train/exp for runs/train/exp/weights/last.pt (or a last.pt directly in the run folder)."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == 'weights' else checkpoint.parent


@dataclass(frozen=True)
class RunPlan:
    """Where a run writes and what it resumes: the run folder, the checkpoint (its path and what it holds, or None
    for a new run) and, on the main process, the folder's RunLock."""
    save_dir: Path
    checkpoint: Path = None
    ckpt: TrainingCheckpoint = None
    lock: RunLock = None


def plan_run(opt, preloaded=None):
    """Where this run writes and what it resumes, decided by the main process (a RunPlan). The checkpoint is
    checked before the folder is claimed (locked), and the folder is claimed before anything is written.

    - --resume auto: <project>/<name> itself; resumed when it has a last.pt, else a new run there;
    - a restart by torchrun's elastic agent: the folder this job's first attempt claimed, resumed from its
      newest last.pt (or started anew there when it has none);
    - --resume [X]: X's run folder, from X (or, on an elastic restart, from the folder's newest last.pt);
    - where the newest checkpoint of a run (not a file the user named) is unreadable: the newest intact one
      (load_newest_intact), and the damaged last.pt is set aside as last-damaged.pt;
    - otherwise a new folder <project>/<name>, <name>2, ... (or <name> itself with --exist-ok).
    """
    job = elastic_job_key()
    if opt.resume == 'auto':
        save_dir = Path(opt.project) / opt.name
    elif opt.resume:  # the checkpoint main() read (the newest intact one of a named run), or the one named
        checkpoint = Path(preloaded[0]) if preloaded else resume_path(opt.resume, opt.project)
        save_dir = run_folder_of(checkpoint)
    else:
        save_dir = find_job_run(opt.project, opt.name, job) if elastic_restart() else None
        if save_dir is None:
            lock = claim_new_run(Path(opt.project) / opt.name, exist_ok=opt.exist_ok or bool(opt.evolve),
                                 job_key=job)
            return RunPlan(lock.save_dir, lock=lock)
    ckpt, damaged = None, None
    if opt.resume == 'auto' or elastic_restart():  # the run's newest intact checkpoint, if it has one
        checkpoint = None
        if training_checkpoints(save_dir / 'weights'):
            checkpoint, ckpt, damaged = load_newest_intact(save_dir / 'weights', save_dir / 'results.txt')
    elif preloaded is not None and Path(preloaded[0]) == Path(checkpoint):
        ckpt, damaged = TrainingCheckpoint.from_dict(preloaded[1]), preloaded[2] if len(preloaded) > 2 else None
    elif checkpoint is not None:
        ckpt = load_training_checkpoint(checkpoint, download=True)
    if ckpt is not None and not ckpt.resumable:
        raise CheckpointError(f'{checkpoint} holds no training state (a stripped or released file): start a new '
                              f'run with --weights {checkpoint}')
    if checkpoint is not None:
        LOGGER.info('Continuing %s from %s', save_dir, checkpoint)
    created = not save_dir.exists()
    save_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(save_dir, job, created)
    set_aside(damaged)  # once the folder is ours: a live writer's last.pt is not touched
    return RunPlan(save_dir, Path(checkpoint) if checkpoint else None, ckpt, lock)


def _load(checkpoint, preloaded):
    """The TrainingCheckpoint, from preloaded (path, checkpoint) when it is the same file."""
    if preloaded is not None and Path(preloaded[0]) == Path(checkpoint):
        return TrainingCheckpoint.from_dict(preloaded[1])
    return load_training_checkpoint(checkpoint, download=True)


def agree_on_plan(opt, layout, preloaded=None):
    """plan_run on the main process, shared with every rank (a RunPlan; only the main process holds the lock).
    The other ranks load the same checkpoint; an error on the main process (a folder in use, a file that is no
    training checkpoint) ends every rank with the same line."""
    plan, shared = None, None
    if layout.main:
        try:
            plan = plan_run(opt, preloaded)
            shared = {'save_dir': str(plan.save_dir), 'checkpoint': str(plan.checkpoint) if plan.checkpoint else None}
        except (UserError, OSError) as e:
            shared = {'error': str(e)}
            if layout.rank == -1:
                raise
    if layout.rank != -1:
        box = [shared]
        dist.broadcast_object_list(box, 0)
        shared = box[0]
    if 'error' in shared:
        raise UserError(shared['error'])
    if plan is None:
        checkpoint = shared['checkpoint']
        plan = RunPlan(Path(shared['save_dir']), Path(checkpoint) if checkpoint else None,
                       _load(checkpoint, preloaded) if checkpoint else None)
    return plan
