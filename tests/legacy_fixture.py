"""tests/data/legacy-last.pt: a training checkpoint of the layout before hooks had a namespace of their own and
before a resume kept the user's options apart from its own decisions (commit 2a41ef7, the last of that layout).

    git worktree add /tmp/old 2a41ef7 && cd /tmp/old
    OMP_NUM_THREADS=1 python /path/to/tests/legacy_fixture.py 0,2 /tmp/legacy   # SIGTERM after epoch 0 batch 2
    OMP_NUM_THREADS=1 python /path/to/tests/legacy_fixture.py 1,2 /tmp/legacy   # --resume auto, SIGTERM at 1, 2
    cp /tmp/legacy/runs/legacy/weights/last.pt /path/to/tests/data/legacy-last.pt

Run in that checkout, this script trains the tiny P5 on coco8 (tests/test_requeue.py's command) with a callback that
counts optimizer steps and keeps the count in the checkpoint, stopped by SIGTERM at the position given; the second
run resumes the first with --resume auto. So the file holds what an older version wrote: its own path as --weights
(the resume's doing), and the callback's key `counter_steps` merged at the top level.

tests/data/current-last.pt is the same two runs in a checkout of commit 0ff618c (the layout of today, with the
callback's state under hooks/Counter, written before utils.train.checkpoint_layout.TrainingCheckpoint existed):

    mkdir /tmp/cur && git archive 0ff618c | tar -x -C /tmp/cur && cd /tmp/cur   # then the two commands above
    cp /tmp/legacy/runs/legacy/weights/last.pt /path/to/tests/data/current-last.pt
"""
import os
import signal
import sys

import yaml

sys.path.insert(0, os.getcwd())  # the older checkout's train.py
import train  # noqa: E402
from utils.train.hooks import Hook  # noqa: E402

at, out = tuple(int(x) for x in sys.argv[1].split(',')), sys.argv[2]
hyp = yaml.safe_load(open('data/hyp.scratch.yaml'))
hyp.update(nbs=2, warmup_min_iters=4, warmup_epochs=0, mixup=0.5)
os.makedirs(out, exist_ok=True)
yaml.safe_dump(hyp, open(f'{out}/hyp.yaml', 'w'))


class Counter(Hook):
    steps = 0

    def after_step(self):
        self.steps += 1
        if (self.trainer.state.epoch, self.trainer.state.batch) == at:
            os.kill(os.getpid(), signal.SIGTERM)

    def state_dict(self):
        return {'counter_steps': self.steps}

    def load_state_dict(self, ckpt):
        self.steps = ckpt['counter_steps']


train.main(['--cfg', 'models/yolov4-p5-tiny.yaml', '--data', 'data/coco8.yaml', '--hyp', f'{out}/hyp.yaml',
            '--weights', '', '--img', '64', '64', '--batch-size', '2', '--device', 'cpu', '--workers', '0',
            '--noautoanchor', '--epochs', '3', '--project', f'{out}/runs', '--name', 'legacy', '--resume', 'auto'],
           callbacks=[Counter()])
