"""The training loop: a Trainer that runs epochs of steps and calls hooks around them (detectron2's shape).

The loop keeps only what must stay inside a step: the forward pass, the ranks' per-batch agreement (a collective:
skip a non-finite step, stop on a signal or a callback's request), backward with accumulation and the optimizer
step, and the run state that a resume continues from (utils.train.state.RunState). Everything else is a hook
(utils.train.hooks): the EMA update, checkpoints, evaluation, results.txt, plots, trackers, the watchdog and stop
signals. `state_dict()` is the checkpoint: the loop's state and each hook's contribution; `load_state_dict()`
puts it back.

Events, in the order they come: before_train; then per epoch before_epoch, (before_step, after_step) per batch,
evaluate_epoch (hooks measure the epoch that ended and publish in `storage`), the Trainer's record of the epoch
(its results line, last results and best fitness, from what was published), after_epoch (hooks act on that
record: checkpoints, results.txt, trackers); after_train (also when the run fails or stops: `completed` tells).
Throughout an epoch's events, `state.epoch` is that epoch.

The Trainer holds, besides its hooks, what it must call itself: the process's stop signals (`stops`,
utils.train.signals.StopSignals), the watchdog it beats, the `checkpointer` that saves last.pt at a stop, and the
--image-weights draw of each epoch (TrainParts.image_draw). Hooks write none of its attributes; callbacks see it
through TrainerView, read-only.
"""
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from models.checkpoint import model_payload
from utils.datasets import loader_failure
from utils.errors import UserError
from utils.metrics import fitness
from utils.torch_utils import de_parallel, random_rescale
from utils.train.events import EVAL_TAGS, LR_TAGS, TRAIN_TAGS, EventStorage, StorageReader
from utils.train.optim import Schedule, set_epoch_lr
from utils.train.run_dir import how_to_continue
from utils.train.rng import rng_state, set_rng_state
from utils.sampling import batch_rng
from utils.train.checkpoint_layout import TrainingCheckpoint, hook_states_of, unique_keys
from utils.train.state import RunState, describe_position, pending_gradients
from utils.train.watchdog import Watchdog

LOGGER = logging.getLogger('train')
MAX_BAD_STEPS = 10  # consecutive non-finite losses before the run stops
EVENTS = ('before_train', 'before_epoch', 'before_step', 'after_step', 'evaluate_epoch', 'after_epoch',
          'after_train')


class TrainingStopped(RuntimeError):
    """Training ended early (signal, non-finite losses, a failed data loader); exit_code is what train.py exits
    with; save: whether rank 0 saves the state reached (a batch boundary) before exiting."""

    def __init__(self, message, exit_code=1, save=False):
        super().__init__(message)
        self.exit_code, self.save = exit_code, save


class EvaluationInterrupted(Exception):
    """A stop signal arrived during the end-of-epoch evaluation: the epoch's end is taken again on resume."""


class _StopAgreed(Exception):
    """Every rank agreed to a stop that a hook requested (request_stop): the run ends as a completed one."""


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """What the schedule and the step follow, fixed before training starts."""
    epochs: int
    hyp: dict  # as used (weight decay scaled to the batch)
    hyp_given: dict  # as given: saved in checkpoints
    lr_lambda: object  # epoch -> learning-rate factor
    warmup_iters: int
    nominal_accumulate: float  # nominal batch / total batch
    imgsz: int
    stride: int
    multi_scale: bool = False
    seed: int = 0
    amp_dtype: str = 'float16'  # float16 (CUDA only, as published), bfloat16, or none
    channels_last: bool = False
    options: dict = None  # the run's options as plain data (RunConfig.saved_options): saved in checkpoints
    save_dir: Path = None  # the run folder (rank 0 keeps weights/last.pt there)


@dataclass(kw_only=True)
class TrainParts:
    """The objects a run trains with, built by train.py."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    loss_fn: object
    loader: object
    device: torch.device
    ema: object = None  # ModelEMA on the main process, else None
    image_draw: object = None  # --image-weights: (epoch, per-class mAPs) -> the epoch's image indices; None: all


def autocast(device, amp_dtype):
    """Mixed precision for the forward pass and loss: float16 on CUDA (published), bfloat16 on CUDA or CPU."""
    enabled = amp_dtype == 'bfloat16' or (amp_dtype == 'float16' and device.type == 'cuda')
    dtype = torch.bfloat16 if amp_dtype == 'bfloat16' else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


class Trainer:
    """Holds the model, EMA, optimizer, scaler, schedule, loader and run state; train() runs the epochs and calls
    each hook's before_/after_ train, epoch and step methods in the order the hooks were given."""

    def __init__(self, parts, recipe, hooks=(), rank=-1, world_size=1, *, stops=None, watchdog=None,
                 checkpointer=None):
        self.model, self.ema, self.optimizer = parts.model, parts.ema, parts.optimizer
        self.scheduler, self.scaler, self.loss_fn = parts.scheduler, parts.scaler, parts.loss_fn
        self.loader, self.device, self.image_draw = parts.loader, parts.device, parts.image_draw
        self.recipe, self.rank, self.world_size = recipe, rank, world_size
        self.main = rank in (-1, 0)
        self.stops = stops  # the process's StopSignals: `received` is read at each batch
        self.watchdog = watchdog or Watchdog(0)  # beaten here; hooks.WatchdogHook starts, arms and stops it
        self.checkpointer = checkpointer  # save_now() -> the path of last.pt saved at a stop (rank 0's)
        self.state = RunState(accumulate=max(round(recipe.nominal_accumulate), 1))
        self.schedule = Schedule(parts.optimizer, parts.scheduler, recipe.lr_lambda, recipe.warmup_iters,
                                 recipe.nominal_accumulate, recipe.hyp.get('momentum'))
        self.lr = []  # the epoch's learning rates, before the schedule steps
        self.storage = EventStorage()  # the scalars the loop and its hooks publish (utils.train.events)
        self.agreed_signal = None  # the stop signal every rank agreed on at the last batch
        self.stop_reason = None  # request_stop()
        self.batch = None  # (imgs, targets, paths, ni) of the step in progress, for hooks
        self.stepped = self.stopping = self.stop_agreed = self.completed = False
        self.hooks = []
        for h in hooks:
            h.trainer = self
            self.hooks.append(h)
        self.hook_keys = unique_keys(self.hooks)  # each hook's entry in the checkpoint

    # --- the loop ---------------------------------------------------------------------------------------------
    def train(self):
        """Train the remaining epochs; returns the last evaluation's results."""
        if self.stops is not None:
            self.stops.enter_loop()
        self.call('before_train')
        try:
            self.run_epochs()
            self.completed = True
        except _StopAgreed:  # a hook's request: a completed run, last.pt holding the weights it ends with
            if self.main and self.state.batch and self.checkpointer is not None:
                self.checkpointer.save_now()
            self.completed = True
        except TrainingStopped as e:
            self.save_at_stop(e)
        except RuntimeError as e:  # the loader's SIGCHLD handler raises wherever this thread is: no save then
            self.raise_runtime_error(e)
        finally:
            self.call('after_train')
            if self.stops is not None:
                self.stops.leave_loop()
        return self.state.results

    @property
    def signal(self):
        """The stop signal this process received, or that another rank did (agreed at the last batch); None."""
        return self.agreed_signal or (self.stops.received if self.stops is not None else None)

    def in_last_epoch(self):
        return self.state.epoch == self.recipe.epochs - 1

    def run_epochs(self):
        for epoch in range(self.state.epoch, self.recipe.epochs):
            self.call('before_epoch')
            images = None if self.image_draw is None else self.image_draw(epoch, self.state.maps)
            self.loader.sampler.set_epoch(epoch, self.state.batch * self.loader.batch_size, images)
            stopped = self.run_epoch() or not self.end_epoch()
            if self.signal and (stopped or self.rank == -1):  # under DDP a stop is agreed inside the epoch
                raise TrainingStopped(f'{signal.Signals(self.signal).name} received', 128 + self.signal, save=True)

    def run_epoch(self):
        """Batches state.batch on of epoch state.epoch; returns True when a stop was agreed."""
        self.model.train()
        it = iter(self.loader)
        worker_pids = [w.pid for w in getattr(it, '_workers', [])]
        batches = enumerate(it, start=self.state.batch)
        while (item := self.next_batch(batches, worker_pids)):
            self.call('before_step')
            if self.run_step(*item):
                return True
        return False

    def next_batch(self, batches, worker_pids):
        """The next (i, batch) or None at the end; a failed data loader becomes TrainingStopped."""
        where = f'epoch {self.state.epoch} batch {self.state.batch}'
        self.beat('loading data', f'{where}; data-loader workers {worker_pids or "none (in process)"}')
        try:
            return next(batches)
        except StopIteration:
            return None
        except (RuntimeError, UserError, OSError) as e:
            reason = loader_failure(e) or (' '.join(str(e).split()) if isinstance(e, UserError) else None)
            if reason is None:
                raise
            raise TrainingStopped(f'data loader failed at {where}: {reason}', save=True) from None

    def run_step(self, i, batch):
        """One batch: forward, the ranks' agreement, then backward and an optimizer step at accumulation
        boundaries (or the step skipped); then after_step. Returns whether a stop signal was agreed."""
        imgs, targets, paths, _ = batch
        state = self.state
        self.beat('forward/backward', f'epoch {state.epoch} batch {i}', waiting=self.rank != -1)  # DDP syncs
        ni = i + len(self.loader) * state.epoch  # iterations since the start of training
        accumulate = self.schedule.warm_up(ni, state.epoch)
        if accumulate is not None:
            state.accumulate = accumulate
        imgs = self.prepare_images(imgs, i)
        with autocast(self.device, self.recipe.amp_dtype):
            loss, loss_items = self.loss_fn(self.model(imgs), targets.to(self.device))
            if self.rank != -1:
                loss *= self.world_size  # gradients are averaged across ranks
        finite = self.agree(bool(torch.isfinite(loss).all()))
        if self.stop_agreed:
            raise _StopAgreed
        self.stopping = self.agreed_signal is not None  # a signal that comes later is taken at the next batch
        self.stepped = finite and self.backward_and_step(loss, ni)
        if not finite:
            self.skip_step(loss_items, i)
        state.batch = i + 1
        if self.main and finite:
            state.mloss = (state.mloss * i + loss_items.detach().cpu()) / (i + 1)
            state.row = self.progress_row(state.mloss, targets.shape[0], imgs.shape[-1])
        self.batch = (imgs, targets, paths, ni)
        self.call('after_step')
        return self.stopping

    def progress_row(self, mloss, targets, img_size):
        """The epoch's progress row: results.txt's first 8 columns."""
        mem = '%.3gG' % (torch.cuda.memory_reserved() / 1E9 if self.device.type != 'cpu' else 0)
        return ('%10s' * 2 + '%10.4g' * 6) % (f'{self.state.epoch}/{self.recipe.epochs - 1}', mem, *mloss, targets,
                                              img_size)

    def prepare_images(self, imgs, i):
        """uint8 images to the device as floats in [0, 1], at the multi-scale size of batch i."""
        r = self.recipe
        imgs = imgs.to(self.device, non_blocking=True).float() / 255.0
        if r.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        if r.multi_scale:
            imgs = random_rescale(imgs, r.imgsz, r.stride, batch_rng(r.seed, self.state.epoch, i, self.rank))
        return imgs

    def agree(self, finite):
        """Whether the step is finite everywhere; under DDP all ranks agree on it and on a stop (a signal, or a
        hook's request_stop) with one small all-reduce per batch, or they would wait on each other."""
        received = self.stops.received if self.stops is not None else None
        if self.rank == -1:
            self.agreed_signal, self.stop_agreed = received, self.stop_reason is not None
            return finite
        self.beat('all-reduce', 'agreeing on the step', waiting=True)
        flags = torch.tensor([0. if finite else 1., float(self.agreed_signal or received or 0),
                              float(self.stop_reason is not None)], device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        self.agreed_signal = int(flags[1].item()) or None
        self.stop_agreed = bool(flags[2].item())
        return flags[0].item() == 0

    def backward_and_step(self, loss, ni):
        """Backward, and an optimizer step at each accumulation boundary; returns whether it stepped."""
        self.state.bad_steps = 0
        self.scaler.scale(loss).backward()
        if ni % self.state.accumulate:
            return False
        self.beat('optimizer step')
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        self.state.steps += 1
        return True

    def skip_step(self, loss_items, i):
        """A non-finite loss: the step is skipped (accumulated gradients dropped); 10 in a row stop the run."""
        self.state.bad_steps += 1
        LOGGER.warning('WARNING: non-finite loss %s at epoch %g batch %g: step skipped', loss_items.tolist(),
                       self.state.epoch, i)
        self.optimizer.zero_grad()
        if self.state.bad_steps >= MAX_BAD_STEPS:
            raise TrainingStopped(f'{self.state.bad_steps} non-finite losses in a row: training stopped; the last '
                                  f'good checkpoint is {self.checkpoint_path()}. Lower lr0 or check the labels.')

    def end_epoch(self):
        """The epoch's end: the schedule's step and the epoch's training losses and rates published, the
        evaluate_epoch hooks, the epoch recorded, the after_epoch hooks; then the next epoch starts. Returns False
        when the evaluation was stopped: every batch done, the end not taken (a resume takes it)."""
        state = self.state
        self.lr = self.schedule.end_epoch()
        if self.main and not state.row:  # no batch of the epoch had a finite loss: its losses are unknown
            state.row = self.progress_row([float('nan')] * 4, 0, self.recipe.imgsz)
        self.storage.put(state.epoch, {**dict(zip(TRAIN_TAGS, state.mloss[:3].tolist())),
                                       **dict(zip(LR_TAGS, self.lr))})
        try:
            self.call('evaluate_epoch')
        except EvaluationInterrupted:
            return False
        self.record_epoch()
        state.end_taken = True
        self.call('after_epoch')
        state.start_epoch(state.epoch + 1)
        return True

    def record_epoch(self):
        """The ended epoch in the run state, from what its hooks published: the evaluation's results and per-class
        mAPs (an epoch not evaluated keeps the last ones, as published), its results.txt line and the best fitness;
        the results and the epoch's fitness are published (trackers log each epoch, as published)."""
        s, published = self.state, self.storage.epoch(self.state.epoch)
        if all(tag in published for tag in EVAL_TAGS):
            s.results, s.maps = tuple(published[tag] for tag in EVAL_TAGS), self.storage.array(s.epoch, 'maps')
        fit = float(fitness(np.array(s.results).reshape(1, -1))[0])
        s.results_lines.append(s.row + '%10.4g' * 7 % tuple(s.results))
        s.best_fitness = max(s.best_fitness, fit)
        self.storage.put(s.epoch, {**dict(zip(EVAL_TAGS, s.results)), 'fitness': fit})

    # --- stopping ---------------------------------------------------------------------------------------------
    def request_stop(self, reason):
        """End the run as a completed one (final.pt written) at the next batch, on every rank: for callbacks that
        stop early. Under DDP a request of any rank is agreed at the next batch's all-reduce."""
        if self.stop_reason is None:
            LOGGER.info('Stopping: %s', reason)
            self.stop_reason = reason

    def save_at_stop(self, e):
        """A stop at a batch boundary: rank 0 saves last.pt there (when the stop allows) and the message says where
        to continue from."""
        if not e.save:
            raise e
        if not self.main:
            raise TrainingStopped(f'rank {self.rank}: {e} (rank 0 saves {self.checkpoint_path()})',
                                  e.exit_code) from None
        saved = None if self.checkpointer is None else self.checkpointer.save_now()
        where = describe_position(self.state.epoch, self.state.batch)
        if saved is None:
            raise TrainingStopped(f'{e} at {where}', e.exit_code) from None
        hint = how_to_continue((self.recipe.options or {}).get('resume'), saved.parent.parent)
        raise TrainingStopped(f'{e}: {saved} saved at {where}; {hint}', e.exit_code) from None

    def raise_runtime_error(self, e):
        if self.signal and not self.main:  # rank 0 stopped in its evaluation and left this rank's collective
            raise TrainingStopped(f'rank {self.rank}: {signal.Signals(self.signal).name} received (rank 0 saves '
                                  f'{self.checkpoint_path()})', 128 + self.signal) from None
        reason = loader_failure(e)
        if reason is None:
            raise e
        raise TrainingStopped(f'data loader failed: {reason}; the last checkpoint is {self.checkpoint_path()}') \
            from None

    def checkpoint_path(self):
        """Where rank 0 keeps the run's last.pt."""
        return Path(self.recipe.save_dir) / 'weights' / 'last.pt'

    # --- hooks ------------------------------------------------------------------------------------------------
    def call(self, event):
        for h in self.hooks:
            getattr(h, event)()

    def beat(self, phase, detail='', waiting=False):
        self.watchdog.beat(phase, detail, waiting)

    # --- the checkpoint ---------------------------------------------------------------------------------------
    def state_dict(self, fitness=None):
        """Everything a resume needs, as plain data (loadable with weights_only=True): the checkpoint."""
        s = self.state.next_epoch() if self.state.end_taken else self.state
        progress = {k: v for k, v in vars(s).items() if k not in ('best_fitness', 'results_lines', 'end_taken')}
        progress['results'] = [float(x) for x in s.results]
        progress['maps'] = None if s.maps is None else [float(x) for x in s.maps]
        ema = {} if self.ema is None else dict(ema=model_payload(self.ema.ema), ema_updates=self.ema.updates)
        return TrainingCheckpoint(epoch=s.epoch - 1, best_fitness=s.best_fitness,
                                  model=model_payload(de_parallel(self.model)), optimizer=self.optimizer.state_dict(),
                                  scaler=self.scaler.state_dict(), gradients=pending_gradients(self.model),
                                  progress=progress, options=dict(self.recipe.options or {}),
                                  hyp=self.recipe.hyp_given, rng=rng_state(), results=list(s.results_lines),
                                  fitness=fitness, torch_version=str(torch.__version__), **ema,
                                  hooks=hook_states_of(self.hook_keys)).to_dict()

    def load_state_dict(self, ckpt, hyp_changed=False):
        """Resume from checkpoint `ckpt` (a TrainingCheckpoint, or its dict; the model already has its weights):
        optimizer, scaler, pending gradients, RNG states, run state and schedule, and each hook's part. A
        checkpoint without `progress` (older, or epoch-only) resumes at the start of the epoch after its label. With
        a new --hyp (fine-tune), its lr0, momentum and weight decay take effect on every group; with a new --hyp or
        --epochs, the rates follow the new schedule."""
        ckpt = TrainingCheckpoint.from_dict(ckpt)
        self.optimizer.load_state_dict(ckpt.optimizer)
        if ckpt.scaler:
            self.scaler.load_state_dict(ckpt.scaler)
        params = dict(de_parallel(self.model).named_parameters())
        for k, g in ckpt.gradients.items():
            params[k].grad = g.to(params[k].device).clone()
        hyp = self.recipe.hyp
        if hyp_changed:
            for j, g in enumerate(self.optimizer.param_groups):
                g['initial_lr'], g['momentum'] = hyp['lr0'], hyp['momentum']
                if j == 1:
                    g['weight_decay'] = hyp['weight_decay']
        set_rng_state(ckpt.rng, self.rank)
        state = RunState(epoch=ckpt.epoch + 1, accumulate=self.state.accumulate,
                         best_fitness=ckpt.best_fitness or 0.0, results_lines=list(ckpt.results))
        for k, v in ckpt.progress.items():
            setattr(state, k, tuple(v) if k == 'results' else v)
        self.state = state
        self.scheduler.last_epoch = state.epoch - 1
        if hyp_changed or ckpt.option('epochs') != self.recipe.epochs:
            set_epoch_lr(self.optimizer, self.recipe.lr_lambda, max(state.epoch - 1, 0))
        if self.ema is not None and ckpt.ema:
            self.ema.ema.load_state_dict(ckpt.ema_state_dict)
            self.ema.updates = ckpt.ema_updates
        for key, state in ckpt.hook_states(self.hook_keys).items():
            self.hook_keys[key].load_state_dict(state)


class TrainerView:
    """What a callback (train.run(callbacks=[...])) sees of the run, read-only: where it stands, what it measured,
    the modules, and request_stop. Within an epoch's events `epoch` is that epoch (in after_epoch, the one that
    ended); `batch` counts its batches done."""

    def __init__(self, trainer):
        self._trainer = trainer

    epoch = property(lambda self: self._trainer.state.epoch, doc='the epoch of the events now')
    batch = property(lambda self: self._trainer.state.batch, doc="the epoch's batches done")
    steps = property(lambda self: self._trainer.state.steps, doc='optimizer steps since the start of training')
    results = property(lambda self: tuple(self._trainer.state.results),
                       doc='the last evaluation: P, R, mAP@.5, mAP@.5:.95, val box, obj, cls losses')
    maps = property(lambda self: tuple(self._trainer.state.maps or ()), doc='the last per-class mAP@.5:.95')
    best_fitness = property(lambda self: self._trainer.state.best_fitness)
    lr = property(lambda self: tuple(self._trainer.lr), doc="the ended epoch's rates, one per parameter group")
    storage = property(lambda self: StorageReader(self._trainer.storage), doc='the published scalars, to read')
    model = property(lambda self: self._trainer.model, doc='the model being trained (DDP-wrapped under DDP)')
    ema = property(lambda self: self._trainer.ema, doc="the EMA (utils.torch_utils.ModelEMA), rank 0's; else None")
    rank = property(lambda self: self._trainer.rank)
    world_size = property(lambda self: self._trainer.world_size)
    main = property(lambda self: self._trainer.main, doc='whether this is the main process (rank -1 or 0)')
    signal = property(lambda self: self._trainer.signal, doc='the stop signal received, or None')
    completed = property(lambda self: self._trainer.completed, doc='in after_train: whether the run completed')

    def request_stop(self, reason):
        """End the run as a completed one at the next batch (Trainer.request_stop)."""
        self._trainer.request_stop(reason)
