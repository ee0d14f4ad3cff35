"""Where a training checkpoint keeps the state of hooks and callbacks: under one key of its own, HOOKS_KEY, one entry
per hook, named by the hook (`Hook.state_key`). A hook's state can therefore never replace a key of the run's own
(epoch, model, optimizer, ...), whatever its `state_dict()` returns.

Checkpoints written before this layout merged each hook's keys into the top level; `hook_states` reads those too.
"""
HOOKS_KEY = 'hooks'
# the run's own keys (models.checkpoint's header and payloads, utils.train.trainer's training state)
RUN_KEYS = frozenset({'format', 'version', 'epoch', 'best_fitness', 'date', 'model', 'ema', 'ema_updates',
                      'optimizer', 'scaler', 'gradients', 'progress', 'opt', 'hyp', 'rng', 'results', 'fitness',
                      'torch', HOOKS_KEY})
_LEGACY = {'mlflow': {'run_id': 'mlflow_run_id'}}  # a built-in hook's key in the older, merged layout


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


def with_hook_states(ckpt, keyed_hooks):
    """ckpt with HOOKS_KEY holding each hook's non-empty state_dict() (as plain dicts)."""
    states = {}
    for key, hook in keyed_hooks.items():
        state = hook.state_dict()
        if state:
            states[key] = dict(state)
    return {**ckpt, HOOKS_KEY: states}


def hook_states(ckpt, keys):
    """{key: state} for the hook keys `keys` from checkpoint ckpt. A checkpoint of the older, merged layout gives
    the built-in hooks their state from their old keys, and every other hook the keys that are not the run's."""
    if HOOKS_KEY in ckpt:
        return {k: ckpt[HOOKS_KEY].get(k) or {} for k in keys}
    extra = {k: v for k, v in ckpt.items() if k not in RUN_KEYS}
    states = {}
    for key in keys:
        legacy = _LEGACY.get(key)
        states[key] = {new: ckpt[old] for new, old in legacy.items() if old in ckpt} if legacy else dict(extra)
    return states
