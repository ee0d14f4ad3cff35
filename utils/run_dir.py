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
import os
import socket
from pathlib import Path

from utils.errors import UserError

LOCK_NAME = '.lock'


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


class RunLock:
    """An exclusive lock on a run folder, held until release() or the end of the process."""

    def __init__(self, save_dir, job_key=None):
        self.save_dir = Path(save_dir)
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
        info = {'pid': os.getpid(), 'host': socket.gethostname(), 'job': job_key,
                'started': datetime.datetime.now().isoformat(timespec='seconds')}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(info).encode(), 0)
        os.fsync(self.fd)

    def release(self):
        if self.fd is not None:
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
        path.mkdir(exist_ok=True)
        return RunLock(path, job_key)
    n = 1
    while True:
        candidate = path if n == 1 else path.with_name(f'{path.name}{n}')
        try:
            candidate.mkdir()
            return RunLock(candidate, job_key)
        except FileExistsError:
            n += 1


def find_job_run(project, name, job_key):
    """The run folder under project (<name>, <name>2, ...) that an earlier attempt of torchrun job `job_key`
    claimed, or None (the newest such folder where there are several)."""
    if job_key is None or not Path(project).is_dir():
        return None
    found = [p for p in Path(project).glob(f'{name}*') if (p / LOCK_NAME).is_file()
             and read_lock(p / LOCK_NAME).get('job') == job_key]
    return max(found, key=lambda p: (p / LOCK_NAME).stat().st_mtime) if found else None
