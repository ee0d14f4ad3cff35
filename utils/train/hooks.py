"""The hooks of the training loop (utils.train.trainer): each does one thing around the epochs and steps.

A hook overrides any of the Trainer's events (before_train, before_epoch, before_step, after_step,
evaluate_epoch, after_epoch, after_train); it reads the run through `self.trainer`, and what it measures it
publishes in `trainer.storage` (utils.train.events), not in the trainer's attributes. state_dict() returns its own
state, which the checkpoint keeps under hooks/<state_key> (utils.train.checkpoint_layout), and
load_state_dict(state) gets it back on resume. train.py assembles them in the order they must run
(train.build_trainer); users add their own with train.run(callbacks=[...]), wrapped in SafeCallback so that a failing
one cannot end a run, and seeing the trainer through a read-only TrainerView.
"""
import logging
import time
import weakref

from utils.plots import plot_images, plot_results
from utils.progress import progress
from utils.torch_utils import EMA_ATTRIBUTES, de_parallel
from utils.train.checkpoint_writer import CheckpointWriter
from utils.train.events import EVAL_TAGS
from utils.train.trainer import EVENTS, EvaluationInterrupted, TrainerView

LOGGER = logging.getLogger('train')


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

    def evaluate_epoch(self):
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


class WatchdogHook(Hook):
    """Runs the watchdog (utils.train.watchdog) that the Trainer beats: started with the loop, armed once the first
    batch is done (start-up and torch.compile's first step are not timed), stopped with the loop."""

    def __init__(self, watchdog):
        self.watchdog = watchdog

    def before_train(self):
        self.watchdog.start()

    def after_step(self):
        self.watchdog.arm()

    def after_train(self):
        self.watchdog.stop()


class Checkpoints(Hook):
    """Rank 0's last.pt (and best.pt): written in the background, one at a time and in order. Periodic ones come
    every period_min minutes and/or period_steps optimizer steps, at an optimizer-step boundary; the end-of-epoch
    one is EpochCheckpoint's. A stop's is written in the foreground: the Trainer holds this hook as its
    `checkpointer` and calls save_now."""

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

    def then(self, fn):
        """Call fn() once the checkpoints asked for so far are on disk."""
        self.writer.then(fn)

    def after_train(self):
        self.writer.wait()


class EMAHook(Hook):
    """The EMA of the weights: updated after each optimizer step, its attributes (names, strides) copied at each
    epoch's end before it is evaluated (its weights and update count are the run's own state: the Trainer keeps
    them in the checkpoint)."""

    def after_step(self):
        if self.trainer.stepped:
            self.trainer.ema.update(self.trainer.model)

    def evaluate_epoch(self):
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
        self.trainer.beat('evaluation metrics', f'after {len(self.loader)} batches')  # a slow phase: no batches

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)


class Evaluation(Hook):
    """At each epoch's end (or only the last with --notest): the EMA model evaluated by `evaluate` (test.test's
    signature), its metrics, validation losses and per-class mAPs published in the run's EventStorage (the Trainer
    records them in the run state)."""

    def __init__(self, evaluate, loader, every_epoch=True):
        self.evaluate, self.loader, self.every_epoch = evaluate, loader, every_epoch

    def evaluate_epoch(self):
        t = self.trainer
        final = t.in_last_epoch()
        if self.every_epoch or final:
            results, maps, _ = self.evaluate(model=t.ema.ema, dataloader=BeatingLoader(self.loader, t), plots=final,
                                             compute_loss=t.loss_fn)
            t.storage.put(t.state.epoch, dict(zip(EVAL_TAGS, results)))
            t.storage.put_array(t.state.epoch, 'maps', maps)


class EpochCheckpoint(Hook):
    """last.pt at each epoch's end with the epoch's fitness as published (best.pt too when it is the best), in the
    background but for the last epoch's; with --nosave only the last epoch's."""

    def __init__(self, checkpoints, every_epoch=True):
        self.checkpoints, self.every_epoch = checkpoints, every_epoch

    def after_epoch(self):
        t = self.trainer
        final = t.in_last_epoch()
        if self.every_epoch or final:
            fit = t.storage.get('fitness')
            self.checkpoints.save(t.state_dict(fitness=fit), best=t.state.best_fitness == fit, background=not final)


class ResultsFile(Hook):
    """results.txt: the run's lines as of its checkpoint when training starts (a line written after it is
    dropped), then each epoch's line once the checkpoint that carries it is on disk (`after_writes`:
    Checkpoints.then)."""

    def __init__(self, path, after_writes):
        self.path, self.after_writes = path, after_writes

    def before_train(self):
        tmp = self.path.with_suffix('.tmp')
        tmp.write_text(''.join(line + '\n' for line in self.trainer.state.results_lines))
        tmp.replace(self.path)

    def after_epoch(self):
        line = self.trainer.state.results_lines[-1]

        def append():
            with open(self.path, 'a') as f:
                f.write(line + '\n')
        self.after_writes(append)


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
    called again. It sees the trainer through a TrainerView (read-only), so it cannot change the run's state."""

    def __init__(self, callback):
        self.callback, self.failed, self.view = callback, False, None

    @property
    def state_key(self):
        return getattr(self.callback, 'name', None) or type(self.callback).__name__

    def __getattribute__(self, name):
        if name in EVENTS:
            return lambda: self._call(name)
        return super().__getattribute__(name)

    def _call(self, event):
        fn = getattr(self.callback, event, None)
        if self.failed or fn is None:
            return
        self.callback.trainer = self.trainer_view()
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

    def trainer_view(self):
        if self.view is None:
            self.view = TrainerView(weakref.proxy(self.trainer))
        return self.view

    def load_state_dict(self, state):
        if hasattr(self.callback, 'load_state_dict'):
            self.callback.trainer = self.trainer_view()
            self._load(state)

    def _load(self, state):
        try:
            self.callback.load_state_dict(state)
        except Exception as e:  # noqa: BLE001
            LOGGER.warning('WARNING: callback %s could not restore its state (%s)', type(self.callback).__name__, e)
