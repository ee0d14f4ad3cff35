"""Shared fixtures: small model configs, the repository paths and a local HTTP server."""
import copy
import functools
import http.server
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
COCO8_YAML = ROOT / 'data' / 'coco8.yaml'


_ports_taken = []


def free_port():
    """A TCP port on localhost, free now, for a rendezvous that binds it later (torchrun's --master_port).

    A port the kernel picks (bind to 0) lies in its ephemeral range, which it hands out again to any connect() on
    the machine, so it may be taken before torchrun binds it. This one lies below that range, where the kernel never
    hands out ports by itself, and is not given twice by this process. It is drawn at random from all of those
    ports: a block of its own for each pytest-xdist worker was the same block for the same worker of another suite
    running beside this one, and two suites took the same port (EADDRINUSE) within seconds of each other.
    """
    try:
        low = int(Path('/proc/sys/net/ipv4/ip_local_port_range').read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    ports = range(10000, max(10001, low))
    rng = random.Random(f'{os.getpid()} {time.time_ns()}')
    for _ in range(1000):
        port = rng.choice(ports)
        if port in _ports_taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(('127.0.0.1', port))
            except OSError:
                continue
        _ports_taken.append(port)
        return str(port)
    raise RuntimeError(f'no free port in {ports.start}-{ports.stop - 1}')


def run_script(*args, cwd=ROOT, env=None, timeout=600, **kwargs):
    """`python *args` in cwd, its output captured as text."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def tiny_cfg(name='yolov4-p5', depth=0.33, width=0.125, nc=None):
    """A published config with small depth/width multiples, for fast tests."""
    with open(ROOT / 'models' / f'{name}.yaml') as f:
        d = yaml.safe_load(f)
    d['depth_multiple'], d['width_multiple'] = depth, width
    if nc is not None:
        d['nc'] = nc
    return copy.deepcopy(d)


_started = []  # the DrainedProcesses of the test running


def _descendants(pid):
    """The processes below pid (children first), from /proc."""
    parent = {}
    for d in filter(str.isdigit, os.listdir('/proc')):
        try:
            parent[int(d)] = int(open(f'/proc/{d}/stat').read().rsplit(')', 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            pass
    below, frontier = [], [pid]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier]
        below += frontier
    return below


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test():
    """A test that fails while its process runs (a torchrun agent that restarts its ranks, a run of 200 epochs)
    leaves nothing behind to load the machine or hold a port: the process and those below it are killed."""
    yield
    while _started:
        p = _started.pop()
        if p.poll() is None:
            for pid in [*_descendants(p.pid), p.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            p.wait()


class DrainedProcess(subprocess.Popen):
    """A subprocess whose stderr a thread reads as it is written (stdout is discarded). A test that polls a file
    while the process runs would otherwise leave the pipe to fill up and block the process mid-run.
    communicate() returns (None, all of stderr); `lines` holds (time read, line) pairs as they come."""

    def __init__(self, cmd, **kwargs):
        super().__init__(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)
        _started.append(self)
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.stderr:
            self.lines.append((time.time(), line))

    def communicate(self, input=None, timeout=None):
        self.wait(timeout=timeout)
        self._reader.join(timeout=60)
        return None, ''.join(line for _, line in self.lines)


def last_pt_position(last):
    """(epoch, batch) of a run's last.pt, or (-1, -1) while there is none (it is replaced atomically)."""
    import torch
    try:
        p = torch.load(last, weights_only=True)['progress']
        return p['epoch'], p['batch']
    except (OSError, RuntimeError, EOFError, KeyError):
        return -1, -1


def assert_same_run(a, b):
    """Two runs are the same: every tensor of their last.pt's model and EMA equal, and results.txt line by line."""
    import torch
    ka, kb = (torch.load(Path(r) / 'weights' / 'last.pt', weights_only=True) for r in (a, b))
    for key in ('model', 'ema'):
        sa, sb = ka[key]['state_dict'], kb[key]['state_dict']
        differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
        assert not differ, f'{key}: {len(differ)} tensors differ, e.g. {differ[:3]}'
    assert (Path(a) / 'results.txt').read_text().splitlines() == (Path(b) / 'results.txt').read_text().splitlines()


@pytest.fixture
def tiny_p5():
    return tiny_cfg('yolov4-p5')


@pytest.fixture
def server(tmp_path):
    """An HTTP server on localhost serving tmp_path/served; yields its base URL."""
    served = tmp_path / 'served'
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}', served
    httpd.shutdown()
