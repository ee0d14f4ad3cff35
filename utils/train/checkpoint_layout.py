"""A training checkpoint's layout, owned here: `TrainingCheckpoint` is the typed, versioned form of the dict that
train.py writes (last.pt, best.pt, last-previous.pt), with `to_dict()` (what is saved) and `from_dict()` (what was
loaded, of this layout or an older one). No other module of train.py or utils/train/ reads a checkpoint's keys
(tests/test_layers.py enforces it); models/checkpoint.py reads and writes the files and the released pickles.

Hooks and callbacks keep their state under one key of the file's own, HOOKS_KEY, one entry per hook, named by the
hook (`Hook.state_key`). A hook's state can therefore never replace a key of the run's own (epoch, model,
optimizer, ...), whatever its `state_dict()` returns.

Older layouts still load: a checkpoint written before HOOKS_KEY merged each hook's keys into the top level
(`hook_states` reads those), and one written before a run's options were kept apart from the project's decisions
saved one rank's share of the batch as `batch_size` beside `global_rank` (`user_options` reads the total).
"""
from dataclasses import dataclass, field

from models.checkpoint import FORMAT, FORMAT_VERSION, CheckpointError, checkpoint_header, load_checkpoint

HOOKS_KEY = 'hooks'
# the run's own keys (models.checkpoint's header and payloads, utils.train.trainer's training state)
RUN_KEYS = frozenset({'format', 'version', 'epoch', 'best_fitness', 'date', 'model', 'ema', 'ema_updates',
                      'optimizer', 'scaler', 'gradients', 'progress', 'opt', 'hyp', 'rng', 'results', 'fitness',
                      'torch', HOOKS_KEY})
_LEGACY = {'mlflow': {'run_id': 'mlflow_run_id'}}  # a built-in hook's key in the older, merged layout
NO_RESULTS = (0,) * 7  # P, R, mAP@.5, mAP@.5:.95, val losses before any evaluation


@dataclass(frozen=True, kw_only=True)
class TrainingCheckpoint:
    """A training checkpoint (docs/architecture.md, "Checkpoint format"). `options` is the file's 'opt': the run's
    options as the user gave them, with the project's decisions (total_batch_size, save_dir, world_size) beside
    them; `hooks` None: a checkpoint of the older layout, whose hooks' keys are among `extra` (the top-level keys
    that are not the run's, written back as they were)."""
    model: object  # models.checkpoint.model_payload (a whole Model in a released pickle)
    epoch: int = -1  # the last completed epoch (-1 before the first ends)
    best_fitness: float = None
    fitness: object = None
    date: str = None
    torch_version: str = None  # the file's 'torch'
    version: int = FORMAT_VERSION
    ema: dict = None  # a model_payload; None: no EMA
    ema_updates: int = 0
    optimizer: dict = None  # None: no training state (final.pt, a stripped or released file)
    scaler: dict = None
    gradients: dict = field(default_factory=dict)  # accumulated since the last optimizer step
    progress: dict = field(default_factory=dict)  # utils.train.state.RunState but best fitness and results lines
    options: dict = field(default_factory=dict)
    hyp: dict = None  # as given (unscaled)
    rng: dict = None  # utils.train.rng.rng_state
    results: list = field(default_factory=list)  # the results.txt lines so far
    hooks: dict = None  # {hook key: its state}
    extra: dict = field(default_factory=dict)

    def to_dict(self):
        """The checkpoint as saved: plain data, the keys in the order train.py has always written them."""
        d = dict(checkpoint_header(self.epoch, self.best_fitness, self.date), version=self.version,
                 model=self.model, optimizer=self.optimizer, scaler=self.scaler, gradients=self.gradients,
                 progress=self.progress, opt=self.options, hyp=self.hyp, rng=self.rng, results=self.results,
                 fitness=self.fitness, torch=self.torch_version)
        if self.ema is not None:
            d.update(ema=self.ema, ema_updates=self.ema_updates)
        d.update(self.extra)
        if self.hooks is not None:
            d[HOOKS_KEY] = self.hooks
        return d

    @classmethod
    def from_dict(cls, d, path='checkpoint'):
        """The checkpoint of a loaded dict (of this layout or an older one); a TrainingCheckpoint is returned as
        it is. A file of a later format version than this code knows is refused with CheckpointError."""
        if isinstance(d, cls):
            return d
        version = d.get('version', FORMAT_VERSION)
        if d.get('format', FORMAT) == FORMAT and isinstance(version, int) and version > FORMAT_VERSION:
            raise CheckpointError(f'{path}: checkpoint format version {version}, newer than this code reads '
                                  f'({FORMAT_VERSION}): update the code')
        hooks = d.get(HOOKS_KEY)
        return cls(model=d.get('model'), epoch=d.get('epoch', -1), best_fitness=d.get('best_fitness'),
                   fitness=d.get('fitness'), date=d.get('date'), torch_version=d.get('torch'), version=version,
                   ema=d.get('ema') or None, ema_updates=d.get('ema_updates') or 0, optimizer=d.get('optimizer'),
                   scaler=d.get('scaler'), gradients=dict(d.get('gradients') or {}),
                   progress=dict(d.get('progress') or {}), options=dict(d.get('opt') or {}), hyp=d.get('hyp'),
                   rng=d.get('rng'), results=list(d.get('results') or []), hooks=None if hooks is None else dict(hooks),
                   extra={k: v for k, v in d.items() if k not in RUN_KEYS})

    # --- what the rest of the code asks of a checkpoint --------------------------------------------------------
    @property
    def resumable(self):
        """Whether it holds a training state (not final.pt, a stripped or a released file)."""
        return self.optimizer is not None

    def position(self):
        """(epoch in progress, batches of it done) that the weights stand at; a checkpoint without `progress`
        (older, or epoch-only) stands at the start of the epoch after its label."""
        return self.progress.get('epoch', self.epoch + 1), self.progress.get('batch', 0)

    def last_results(self):
        """The last evaluation's results (P, R, mAP@.5, mAP@.5:.95, val losses)."""
        return tuple(self.progress.get('results') or NO_RESULTS)

    @property
    def ema_state_dict(self):
        """The EMA model's state_dict, or None."""
        return self.ema['state_dict'] if self.ema else None

    def option(self, name, default=None):
        """One saved option (or decision of the project: total_batch_size, save_dir, world_size)."""
        return self.options.get(name, default)

    def user_options(self, known):
        """The run's options as the user gave them, among the names `known` (the project's decisions saved beside
        them are not). An older file's batch_size was one rank's share: its total is taken."""
        users = {k: v for k, v in self.options.items() if k in known}
        if 'global_rank' in self.options:  # written before options and decisions were apart
            users['batch_size'] = self.options.get('total_batch_size', self.options.get('batch_size'))
        return users

    def hook_states(self, keys):
        """{key: state} for the hook keys `keys`. A checkpoint of the older, merged layout gives the built-in hooks
        their state from their old keys, and every other hook the keys that are not the run's."""
        if self.hooks is not None:
            return {k: self.hooks.get(k) or {} for k in keys}
        states = {}
        for key in keys:
            legacy = _LEGACY.get(key)
            states[key] = ({new: self.extra[old] for new, old in legacy.items() if old in self.extra} if legacy
                           else dict(self.extra))
        return states


def load_training_checkpoint(path, download=True):
    """The TrainingCheckpoint of file `path` (models.checkpoint.load_checkpoint's errors for a bad file)."""
    return TrainingCheckpoint.from_dict(load_checkpoint(path, download=download), path)


def unique_keys(hooks):
    """{key: hook} with each hook's state_key, made unique in order of the hooks ('Name', 'Name#2', ...)."""
    keyed = {}
    for hook in hooks:
        base = str(hook.state_key)
        key, n = base, 1
        while key in keyed:
            n += 1
            key = f'{base}#{n}'
        keyed[key] = hook
    return keyed


def hook_states_of(keyed_hooks):
    """{key: state} of each hook's non-empty state_dict() (as plain dicts): a checkpoint's `hooks`."""
    states = {}
    for key, hook in keyed_hooks.items():
        state = hook.state_dict()
        if state:
            states[key] = dict(state)
    return states
