"""The run state a training checkpoint holds beyond the modules (Trainer.state_dict writes it, load_state_dict
reads it).

`RunState` is where a run stands (the epoch in progress and the batches of it done, optimizer steps,
accumulation, the epoch's running losses) and what it has measured (results lines, best fitness, the last
results and per-class mAPs that --image-weights draws from). With the model, EMA, optimizer and scaler
states, and the gradients accumulated since the last optimizer step, it is all a resume needs to continue
as if the run had never stopped: the data order and the augmentations depend only on (seed, epoch,
position) (utils.sampling).

A checkpoint's `epoch` is the last completed epoch (-1 before the first ends) and `progress` says where in
the next one the weights are, so the label always matches the weights it comes with.
"""
from copy import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch

from utils.torch_utils import de_parallel


@dataclass(kw_only=True)
class RunState:
    epoch: int = 0  # epoch in progress
    batch: int = 0  # batches of it done
    steps: int = 0  # optimizer steps since the start of training
    accumulate: int = 1  # batches per optimizer step (it grows during warm-up)
    bad_steps: int = 0  # consecutive non-finite losses
    mloss: torch.Tensor = field(default_factory=lambda: torch.zeros(4))  # the epoch's mean [box, obj, cls, total]
    row: str = ''  # the epoch's progress row (results.txt columns 1-8)
    best_fitness: float = 0.0
    results: tuple = (0,) * 7  # last evaluation: P, R, mAP@.5, mAP@.5:.95, val losses
    maps: list = None  # last per-class mAPs
    results_lines: list = field(default_factory=list)
    end_taken: bool = False  # the epoch's end is taken (in its after_epoch): a checkpoint resumes at the next one

    def start_epoch(self, epoch):
        self.epoch, self.batch, self.mloss, self.row, self.end_taken = epoch, 0, torch.zeros(4), '', False

    def next_epoch(self):
        """A copy of this state at the start of the next epoch."""
        state = copy(self)
        state.start_epoch(self.epoch + 1)
        return state


def describe_position(epoch, batch):
    return f'epoch {epoch} batch {batch}' if batch else f'the start of epoch {epoch}'


def plain(v):
    """Options as plain data for weights_only checkpoints and yaml."""
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def pending_gradients(model):
    """The gradients accumulated since the last optimizer step ({} when there are none)."""
    return {k: p.grad for k, p in de_parallel(model).named_parameters() if p.grad is not None}
