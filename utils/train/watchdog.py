"""A watchdog that turns a hang into a failure that torchrun's elastic agent can restart.

The training thread reports progress with `beat(phase)` (loading data, forward/backward, optimizer step,
evaluation, saving) and says when it waits for the other ranks (`beat(phase, waiting=True)` before a
collective). A thread checks every few seconds:
- this rank made no progress for `timeout` seconds outside a wait: it is stuck in its own phase (a data-loader
  worker that hangs, a deadlock) and the watchdog says so;
- this rank has waited for the others that long: under DDP every rank publishes its progress in the
  rendezvous store, so the waiting rank names the rank that stopped (no sign of life: SIGSTOP, a frozen node),
  the rank stuck in a phase of its own, or, when every rank waits, a stuck collective. A rank that keeps
  making progress (rank 0 evaluating or saving while the others wait) is not a hang.
Then one line goes to stderr and the process exits with status 1. A peer found stopped on this host is killed
too, so that the agent need not wait for it. The watchdog arms itself at the first beat that is not a wait
after `arm()`, which train.py calls once the first batch is done: start-up, dataset caching and torch.compile's
first step are not timed.
"""
import json
import logging
import os
import signal
import socket
import sys
import threading
import time

LOGGER = logging.getLogger(__name__)
# Phases allowed a multiple of the timeout: one long step with nothing to beat at. After an evaluation's last
# batch come the metrics over every detection, the plots and, on COCO, pycocotools' COCOeval (minutes).
SLOW_PHASES = {'saving checkpoint': 4, 'evaluation metrics': 4}


class Watchdog:
    """See the module docstring. timeout in seconds (0: off); store: the process group's store (DDP) or None.
    `clock` (seconds, default time.monotonic) and `check()` let a test drive it without threads or sleeps."""

    def __init__(self, timeout, rank=-1, world_size=1, store=None, *, prefix='train.py', exit_fn=None,
                 clock=time.monotonic):
        self.timeout, self.rank, self.world_size, self.store = timeout, rank, world_size, store
        self.prefix, self.clock = prefix, clock
        self.exit_fn = exit_fn or _exit_now
        self.interval = min(max(timeout / 10, 0.2), 5.0)
        self.phase, self.detail, self.waiting = 'starting', '', False
        self.beats, self.last_beat, self.heartbeats = 0, clock(), 0
        self.armed = False
        self.peers = {}  # rank -> dict(record, seen_alive, seen_progress): when its counters last changed here
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self.announce()
        if self.timeout > 0:
            self._thread = threading.Thread(target=self._run, name='watchdog', daemon=True)
            self._thread.start()
        return self

    def announce(self):
        """Publish this rank's record (pid, host) at once, before the first round: a rank stopped right after it
        started is then named with its pid and host, not only its rank."""
        if self.store is not None and self.timeout > 0:
            self._exchange(0, self.clock())

    def stop(self, wait=30.0):
        """End the thread and wait for it (at most `wait` s) to finish a store call it is in. A daemon thread
        still inside a c10d store call when the interpreter finalizes is ended inside C++ code, which aborts
        the process ('terminate called without an active exception', SIGABRT); under torchrun a rank that
        aborts as it exits fails the whole job, even one whose other ranks are finishing it."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(wait)
            if self._thread.is_alive():
                LOGGER.warning('WARNING: the watchdog is still waiting for the rendezvous store after %g s', wait)

    def arm(self):
        """Start timing from the next beat that is not a wait (called after each batch; only the first counts)."""
        if self.armed is False:
            self.armed = None

    def beat(self, phase, detail='', waiting=False):
        """Progress: the training thread enters `phase` (waiting=True: a wait for the other ranks)."""
        self.phase, self.detail, self.waiting = phase, detail, waiting
        self.beats += 1
        self.last_beat = self.clock()
        if self.armed is None and not waiting:
            self.armed = True

    def _limit(self, phase):
        return self.timeout * SLOW_PHASES.get(phase, 1)

    def _run(self):
        while not self._stop.wait(self.interval):
            if self.check():
                return

    def check(self):
        """One round of the watchdog thread: publish and read the records, and end the process (exit_fn) when
        this rank is stuck or waits for a rank that is; returns whether it ended."""
        self.heartbeats += 1
        now = self.clock()
        if self.store is not None:
            self._exchange(self.heartbeats, now)
        if self.armed is True and now - self.last_beat > self._limit(self.phase):
            message = self._diagnose(now)
            if message:
                self.exit_fn(f'{self.prefix}: error: {message}; ending this process so that the job can be '
                             f'restarted (torchrun --max-restarts) or resumed (--resume)')
                return True
        return False

    def _exchange(self, hb, now):
        """Publish this rank's record and read the others'; note when each peer's counters last changed."""
        record = {'hb': hb, 'beats': self.beats, 'phase': self.phase, 'detail': self.detail, 'waiting': self.waiting,
                  'pid': os.getpid(), 'host': socket.gethostname()}
        try:
            self.store.set(f'watchdog/{self.rank}', json.dumps(record))
            for r in range(self.world_size):
                key = f'watchdog/{r}'
                if r == self.rank or not self.store.check([key]):
                    continue
                rec = json.loads(self.store.get(key))
                old = self.peers.get(r)
                self.peers[r] = {'record': rec,
                                 'alive': now if old is None or old['record']['hb'] != rec['hb'] else old['alive'],
                                 'progress': now if old is None or old['record']['beats'] != rec['beats']
                                 else old['progress']}
        except (RuntimeError, ValueError, OSError) as e:  # the store is gone: the job is ending anyway
            LOGGER.debug('watchdog: store unavailable: %s', e)

    def _diagnose(self, now):
        """The line to end with, or None while another rank is still making progress."""
        stuck_for = now - self.last_beat
        where = f' ({self.detail})' if self.detail else ''
        if not self.waiting:
            return f'rank {max(self.rank, 0)} made no progress for {stuck_for:.0f} s while {self.phase}{where}'
        if self.store is None:  # the others cannot be seen: a wait is left to the process group's timeout
            return None
        for r, p in sorted(self.peers.items()):  # a rank that shows no sign of life
            rec = p['record']
            if now - p['alive'] > self.timeout:
                self._kill_if_local(rec)
                return (f'rank {r} (pid {rec["pid"]} on {rec["host"]}) shows no sign of life for '
                        f'{now - p["alive"]:.0f} s (stopped, frozen or its node lost; last seen {rec["phase"]}'
                        f'{" (" + rec["detail"] + ")" if rec["detail"] else ""}); rank {max(self.rank, 0)} '
                        f'waited for it in {self.phase}')
        progressing = [r for r, p in self.peers.items() if now - p['progress'] <= self._limit(p['record']['phase'])]
        if progressing:
            return None  # e.g. rank 0 evaluating or saving while this rank waits
        busy = [(r, p) for r, p in sorted(self.peers.items()) if not p['record']['waiting']]
        if busy:  # alive but stuck in a phase of its own: its watchdog reports it; if not, after a grace
            r, p = busy[0]
            if now - p['progress'] <= self._limit(p['record']['phase']) + 3 * self.interval + 1:
                return None
            self._kill_if_local(p['record'])
            return (f'rank {r} (pid {p["record"]["pid"]} on {p["record"]["host"]}) made no progress for '
                    f'{now - p["progress"]:.0f} s while {p["record"]["phase"]}')
        silent = [r for r in range(self.world_size) if r != self.rank and r not in self.peers]
        if silent:  # never in the store: no pid or host to give, only their ranks
            return (f'rank {max(self.rank, 0)} waited {stuck_for:.0f} s in {self.phase} for rank'
                    f'{"s" if len(silent) > 1 else ""} {", ".join(map(str, silent))}, which never reported (not '
                    f'started, or stopped before their first report)')
        return (f'every rank has waited {stuck_for:.0f} s in a collective (rank {max(self.rank, 0)}: '
                f'{self.phase}{where}): a stuck collective')

    @staticmethod
    def _kill_if_local(record):
        if record.get('host') == socket.gethostname() and record.get('pid') not in (None, os.getpid()):
            try:
                os.kill(record['pid'], signal.SIGKILL)
            except OSError:
                pass


def _exit_now(message):
    """One line on stderr, then exit at once: the training thread may be blocked in C++ (a collective)."""
    try:
        sys.stdout.flush()
        sys.stderr.write('\n' + message + '\n')  # after a progress bar's carriage return
        sys.stderr.flush()
    finally:
        os._exit(1)
