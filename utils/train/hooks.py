"""The hooks of the training loop (utils.train.trainer): each does one thing around the epochs and steps.

A hook overrides any of before_train, before_epoch, before_step, after_step, after_epoch and after_train; it
reads and changes the run through `self.trainer`. state_dict() returns its own state, which the checkpoint keeps
under hooks/<state_key> (utils.train.checkpoint_layout), and load_state_dict(state) gets it back on resume.
train.py assembles them in the order they must run (train.build_hooks); users add their own with
train.run(callbacks=[...]), wrapped in SafeCallback so that a failing one cannot end a run.
"""
import logging
import signal
import time

import numpy as np

from utils.metrics import fitness
from utils.plots import plot_images, plot_results
from utils.progress import progress
from utils.torch_utils import EMA_ATTRIBUTES, de_parallel
from utils.train.checkpoint_writer import CheckpointWriter
from utils.train.events import EVAL_TAGS
from utils.train.recipe import image_order
from utils.train.trainer import EvaluationInterrupted, TrainingStopped

LOGGER = logging.getLogger('train')
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)  # Ctrl+C; schedulers, timeout, torchrun; SLURM's warning


class Hook:
    """Does nothing at every event; subclasses override what they need."""
    trainer = None

    def before_train(self):
        pass

    def after_train(self):
        pass

    def before_epoch(self):
        pass

    def after_epoch(self):
        pass

    def before_step(self):
        pass

    def after_step(self):
        pass

    @property
    def state_key(self):
        """The name of this hook's entry in the checkpoint: its `name`, or its class's."""
        return getattr(self, 'name', None) or type(self).__name__

    def state_dict(self):
        """This hook's state to keep in the checkpoint (plain data; {}: none)."""
        return {}

    def load_state_dict(self, state):
        """Take back the state that state_dict() returned, on resume."""


class StopSignals:
    """SIGINT, SIGTERM and SIGUSR1 for the whole of a training process (train.main holds them from its start to its
    end), so that a stop signal at any moment ends the process with 128 + the signal, leaving a state that the same
    command resumes or reports complete:
    - before the training loop: the process stops at once (TrainingStopped; nothing is saved yet);
    - in the loop (SignalsHook hands it to trainer.signal): a stop agreed by every rank and taken at a batch
      boundary with a checkpoint; a second Ctrl+C stops at once;
    - after the loop (the last checkpoint, final.pt, trackers, the lock's release): recorded in `received`, and the
      process exits with it once the run's end is written (train.main)."""

    def __init__(self):
        self.received, self.trainer, self.finishing, self.old_handlers = None, None, False, {}

    def __enter__(self):
        self.old_handlers = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, h in self.old_handlers.items():
            signal.signal(s, h)

    def _on_signal(self, signum, frame):
        if self.received == signal.SIGINT == signum:
            raise KeyboardInterrupt
        self.received = self.received or signum
        if self.trainer is not None:
            self.trainer.signal = self.trainer.signal or signum
        elif not self.finishing:
            raise TrainingStopped(f'{signal.Signals(signum).name} received before training started: nothing to '
                                  f'save', 128 + signum)


class SignalsHook(Hook):
    """Hands the process's stop signals (StopSignals) to the training loop while it runs."""

    def __init__(self, stops):
        self.stops = stops

    def before_train(self):
        self.stops.trainer, self.stops.finishing = self.trainer, False
        self.trainer.signal = self.stops.received  # one that came between two runs (--evolve's generations)

    def after_train(self):
        self.stops.trainer, self.stops.finishing = None, True


class WatchdogHook(Hook):
    """Runs the watchdog (utils.train.watchdog) for the loop's beats; it is armed once the first batch is done
    (start-up and torch.compile's first step are not timed)."""

    def __init__(self, watchdog):
        self.watchdog = watchdog

    def before_train(self):
        self.trainer.watchdog = self.watchdog.start()

    def after_step(self):
        self.watchdog.arm()

    def after_train(self):
        self.watchdog.stop()


class Checkpoints(Hook):
    """Rank 0's last.pt (and best.pt): written in the background, one at a time and in order. Periodic ones come
    every period_min minutes and/or period_steps optimizer steps, at an optimizer-step boundary; the end-of-epoch
    one is EpochCheckpoint's. A stop's is written in the foreground (save_now)."""

    def __init__(self, paths, period_min=0.0, period_steps=0, clock=time.monotonic):
        self.paths, self.period_min, self.period_steps, self.clock = paths, period_min, period_steps, clock
        self.writer = CheckpointWriter(previous={paths.last: paths.previous})  # last.pt's second slot
        self.last_save = clock()

    def due(self, steps):
        return (self.period_steps > 0 and steps % self.period_steps == 0) or \
            (self.period_min > 0 and self.clock() - self.last_save >= self.period_min * 60)

    def after_step(self):
        t = self.trainer
        if t.stepped and not t.stopping and self.due(t.state.steps):
            self.save(t.state_dict())

    def save(self, ckpt, best=False, background=True, then=None):
        self.trainer.beat('saving checkpoint', str(self.paths.last))
        self.writer.write(ckpt, [self.paths.last] + ([self.paths.best] if best else []), background, then)
        self.last_save = self.clock()

    def save_now(self):
        """last.pt of the state reached, in the foreground (a stop); returns its path."""
        self.save(self.trainer.state_dict(), background=False)
        return self.paths.last

    def after_train(self):
        self.writer.wait()


class EMAHook(Hook):
    """The EMA of the weights: updated after each optimizer step, its attributes (names, strides) copied at each
    epoch's end before it is evaluated (its weights and update count are the run's own state: the Trainer keeps
    them in the checkpoint)."""

    def after_step(self):
        if self.trainer.stepped:
            self.trainer.ema.update(self.trainer.model)

    def after_epoch(self):
        self.trainer.ema.update_attr(de_parallel(self.trainer.model), include=EMA_ATTRIBUTES)


class Progress(Hook):
    """The per-epoch header and progress bar on the main process (closed before the evaluation prints its own)."""
    COLUMNS = ('Epoch', 'gpu_mem', 'box', 'obj', 'cls', 'total', 'targets', 'img_size')

    def __init__(self):
        self.bar = None

    def before_epoch(self):
        LOGGER.info(('\n' + '%10s' * 8), *self.COLUMNS)
        self.bar = progress(total=len(self.trainer.loader), initial=self.trainer.state.batch, leave=False)

    def after_step(self):
        if self.trainer.state.row:
            self.bar.set_description(self.trainer.state.row)
        self.bar.update(1)

    def after_epoch(self):
        self.close()

    def after_train(self):
        self.close()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class TrainBatchPlots(Hook):
    """train_batch0-2.jpg: the first three batches as the model sees them (new runs)."""

    def __init__(self, save_dir, names):
        self.save_dir, self.names = save_dir, names

    def after_step(self):
        imgs, targets, paths, ni = self.trainer.batch
        if ni < 3:
            plot_images(imgs, targets, paths, self.save_dir / f'train_batch{ni}.jpg', self.names)


class ImageWeights(Hook):
    """--image-weights: each epoch's images drawn by class weights and the last per-class mAPs (every rank)."""

    def __init__(self, dataset, class_weights, seed):
        self.dataset, self.class_weights, self.seed = dataset, class_weights, seed

    def before_epoch(self):
        t = self.trainer
        t.epoch_images = image_order(self.dataset, self.class_weights, t.state.maps, self.seed, t.state.epoch,
                                     t.rank, t.device)


class BeatingLoader:
    """The validation loader, reporting each batch to the watchdog (an evaluation is progress, not a hang) and
    ending the evaluation when a stop signal arrives (a COCO evaluation takes minutes; a scheduler's grace
    period before SIGKILL is often 30 s)."""

    def __init__(self, loader, trainer):
        self.loader, self.trainer = loader, trainer

    def __iter__(self):
        for n, batch in enumerate(self.loader):
            if self.trainer.signal:
                raise EvaluationInterrupted
            self.trainer.beat('evaluation', f'batch {n}')
            yield batch

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)


class Evaluation(Hook):
    """At each epoch's end (or only the last with --notest): the EMA model evaluated by `evaluate` (test.test's
    signature); the results, the results line and the best fitness are kept in the run state (what a resume
    continues from), and the epoch's metrics and fitness are published in the run's EventStorage."""

    def __init__(self, evaluate, loader, every_epoch=True):
        self.evaluate, self.loader, self.every_epoch = evaluate, loader, every_epoch

    def after_epoch(self):
        t = self.trainer
        final = t.state.epoch == t.recipe.epochs
        if self.every_epoch or final:
            results, maps, _ = self.evaluate(model=t.ema.ema, dataloader=BeatingLoader(self.loader, t), plots=final,
                                             compute_loss=t.loss_fn)
            t.state.results, t.state.maps = tuple(results), [float(x) for x in maps]
        t.state.results_lines.append(t.ended.row + '%10.4g' * 7 % tuple(t.state.results))
        fit = float(fitness(np.array(t.state.results).reshape(1, -1))[0])
        t.state.best_fitness = max(t.state.best_fitness, fit)
        t.storage.put(t.ended.epoch, {**dict(zip(EVAL_TAGS, t.state.results)), 'fitness': fit})


class EpochCheckpoint(Hook):
    """last.pt at each epoch's end with the epoch's fitness as published (best.pt too when it is the best), in the
    background but for the last epoch's; with --nosave only the last epoch's."""

    def __init__(self, checkpoints, every_epoch=True):
        self.checkpoints, self.every_epoch = checkpoints, every_epoch

    def after_epoch(self):
        t = self.trainer
        final = t.state.epoch == t.recipe.epochs
        if self.every_epoch or final:
            fit = t.storage.get('fitness')
            self.checkpoints.save(t.state_dict(fitness=fit), best=t.state.best_fitness == fit, background=not final)


class ResultsFile(Hook):
    """results.txt: the run's lines as of its checkpoint when training starts (a line written after it is
    dropped), then each epoch's line once the checkpoint that carries it is on disk."""

    def __init__(self, path, checkpoints):
        self.path, self.checkpoints = path, checkpoints

    def before_train(self):
        tmp = self.path.with_suffix('.tmp')
        tmp.write_text(''.join(line + '\n' for line in self.trainer.state.results_lines))
        tmp.replace(self.path)

    def after_epoch(self):
        line = self.trainer.state.results_lines[-1]

        def append():
            with open(self.path, 'a') as f:
                f.write(line + '\n')
        self.checkpoints.writer.then(append)


class FinishRun(Hook):
    """A completed run: results.png, and final.pt (the float16 EMA weights of best.pt, or last.pt)."""

    def __init__(self, paths):
        self.paths = paths
        self.t0 = self.start_epoch = None

    def before_train(self):
        self.t0, self.start_epoch = time.time(), self.trainer.state.epoch

    def after_train(self):
        if self.trainer.completed:
            finish_run(self.paths)
            LOGGER.info('%g epochs completed in %.3f hours. Results in %s', self.trainer.state.epoch - self.start_epoch,
                        (time.time() - self.t0) / 3600, self.paths.save_dir)


def finish_run(paths):
    """results.png, and final.pt: the float16 EMA weights of best.pt (or last.pt) for inference."""
    from models.checkpoint import strip_optimizer
    plot_results(paths.save_dir)
    src = paths.best if paths.best.exists() else paths.last
    if src.exists():
        strip_optimizer(src, paths.final)


class SafeCallback(Hook):
    """A user's callback (or a tracker), which cannot end a run: its first failure is one warning, and it is not
    called again."""
    EVENTS = ('before_train', 'after_train', 'before_epoch', 'after_epoch', 'before_step', 'after_step')

    def __init__(self, callback):
        self.callback, self.failed = callback, False

    @property
    def state_key(self):
        return getattr(self.callback, 'name', None) or type(self.callback).__name__

    def __getattribute__(self, name):
        if name in SafeCallback.EVENTS:
            return lambda: self._call(name)
        return super().__getattribute__(name)

    def _call(self, event):
        fn = getattr(self.callback, event, None)
        if self.failed or fn is None:
            return
        self.callback.trainer = self.trainer
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - a callback must not break the run
            self.failed = True
            name = getattr(self.callback, 'name', type(self.callback).__name__)
            LOGGER.warning('WARNING: callback %s failed in %s (%s: %s); training goes on without it', name, event,
                           type(e).__name__, ' '.join(str(e).split())[:300])

    def state_dict(self):
        try:
            return dict(self.callback.state_dict()) if hasattr(self.callback, 'state_dict') else {}
        except Exception:  # noqa: BLE001
            return {}

    def load_state_dict(self, state):
        if hasattr(self.callback, 'load_state_dict'):
            self.callback.trainer = self.trainer
            self._load(state)

    def _load(self, state):
        try:
            self.callback.load_state_dict(state)
        except Exception as e:  # noqa: BLE001
            LOGGER.warning('WARNING: callback %s could not restore its state (%s)', type(self.callback).__name__, e)
