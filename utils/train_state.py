"""What a training checkpoint holds beyond the modules, and how a resume puts it back.

`RunState` is where a run stands (the epoch in progress and the batches of it done, optimizer steps,
accumulation, the epoch's running losses) and what it has measured (results lines, best fitness, the last
results and per-class mAPs that --image-weights draws from). With the model, EMA, optimizer and scaler
states, and the gradients accumulated since the last optimizer step, it is all a resume needs to continue
as if the run had never stopped: the data order and the augmentations depend only on (seed, epoch,
position) (utils.sampling).

A checkpoint's `epoch` is the last completed epoch (-1 before the first ends) and `progress` says where in
the next one the weights are, so the label always matches the weights it comes with.
"""
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from models.checkpoint import checkpoint_header, model_payload
from utils.torch_utils import de_parallel
from utils.train_utils import rng_state, set_rng_state


@dataclass
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

    def start_epoch(self, epoch):
        self.epoch, self.batch, self.mloss, self.row = epoch, 0, torch.zeros(4), ''


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


def training_checkpoint(state, model, ema, optimizer, scaler, opt, hyp, fitness=None):
    """Everything a resume needs, as plain data (loadable with weights_only=True); hyp as given, unscaled."""
    progress = {k: v for k, v in asdict(state).items() if k not in ('best_fitness', 'results_lines')}
    progress['results'] = [float(x) for x in state.results]
    progress['maps'] = None if state.maps is None else [float(x) for x in state.maps]
    return dict(checkpoint_header(state.epoch - 1, state.best_fitness),
                model=model_payload(de_parallel(model)), ema=model_payload(ema.ema), ema_updates=ema.updates,
                optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), gradients=pending_gradients(model),
                progress=progress, opt={k: plain(v) for k, v in vars(opt).items()}, hyp=hyp, rng=rng_state(),
                results=list(state.results_lines), fitness=fitness, torch=str(torch.__version__))


def restore_training_state(ckpt, model, optimizer, scaler, ema, hyp, hyp_changed, rank, accumulate):
    """Load optimizer, scaler, EMA, pending gradients and RNG states of a resumed run; returns its RunState.

    A checkpoint without `progress` (older, or from the epoch-only format) resumes at the start of the
    epoch after its label, with `accumulate` batches per step. With a new --hyp (fine-tune) its lr0,
    momentum and weight decay take effect on every group.
    """
    optimizer.load_state_dict(ckpt['optimizer'])
    if ckpt.get('scaler'):
        scaler.load_state_dict(ckpt['scaler'])
    if ema and ckpt.get('ema'):
        ema.ema.load_state_dict(ckpt['ema']['state_dict'])
        ema.updates = ckpt['ema_updates']
    params = dict(de_parallel(model).named_parameters())
    for k, g in (ckpt.get('gradients') or {}).items():
        params[k].grad = g.to(params[k].device).clone()
    if hyp_changed:
        for j, g in enumerate(optimizer.param_groups):
            g['initial_lr'] = hyp['lr0']
            g['momentum'] = hyp['momentum']
            if j == 1:
                g['weight_decay'] = hyp['weight_decay']
    set_rng_state(ckpt.get('rng'), rank)
    state = RunState(epoch=ckpt['epoch'] + 1, accumulate=accumulate, best_fitness=ckpt['best_fitness'] or 0.0,
                     results_lines=list(ckpt.get('results') or []))
    for k, v in (ckpt.get('progress') or {}).items():
        setattr(state, k, tuple(v) if k == 'results' else v)
    return state
