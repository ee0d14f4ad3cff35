"""Two "nodes" on this machine: two torchrun launchers with --nnodes 2 meeting at a c10d rendezvous endpoint
(gloo), as on a cluster; then both resume from the same last.pt on shared storage."""
import os
import sys

import torch
import yaml

from conftest import ROOT, free_port, DrainedProcess, tiny_cfg


def _two_nodes(args, tmp_path):
    """Start node 0 and node 1 (one process each) with the same rendezvous endpoint; returns their exit codes and
    standard error. Their stderr is drained as it comes: a pipe read only after wait() fills up, and a node blocked
    writing to it never reached the rendezvous (the other node then failed with 'wait timeout ... MASTER_ADDR')."""
    endpoint = f'127.0.0.1:{free_port()}'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    procs = [DrainedProcess([sys.executable, '-m', 'torch.distributed.run', '--nnodes', '2', '--nproc_per_node', '1',
                             '--node_rank', str(node), '--rdzv_backend', 'c10d', '--rdzv_endpoint', endpoint,
                             '--rdzv_id', 'job1', 'train.py', *map(str, args)], cwd=ROOT, env=env)
             for node in (0, 1)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    return [(p.returncode, err) for p, err in zip(procs, errors)]


def test_two_nodes_train_then_resume_from_shared_last(tmp_path):
    cfg = tmp_path / 'tiny.yaml'
    cfg.write_text(yaml.safe_dump(tiny_cfg('yolov4-p5')))
    common = ['--data', ROOT / 'data' / 'coco8.yaml', '--batch-size', '4', '--img', '64', '64', '--device', 'cpu',
              '--workers', '0', '--noautoanchor']
    results = _two_nodes(['--cfg', cfg, '--epochs', '1', '--project', tmp_path / 'runs', '--name', 'mn', *common],
                         tmp_path)
    assert all(code == 0 for code, _ in results), results[0][1][-2000:] + results[1][1][-2000:]
    run = tmp_path / 'runs' / 'mn'
    assert sorted(p.name for p in (tmp_path / 'runs').iterdir()) == ['mn']  # node 1 made no run folder of its own
    ck = torch.load(run / 'weights' / 'last.pt', weights_only=True)
    assert ck['opt']['world_size'] == 2 and ck['epoch'] == 0

    results = _two_nodes(['--resume', run, '--epochs', '2'], tmp_path)  # every node reads the same last.pt
    assert all(code == 0 for code, _ in results), results[0][1][-2000:] + results[1][1][-2000:]
    assert [ln.split()[0] for ln in (run / 'results.txt').read_text().splitlines()] == ['0/0', '1/1']
    assert torch.load(run / 'weights' / 'last.pt', weights_only=True)['epoch'] == 1
