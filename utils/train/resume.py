"""What a resume may change: this command's flags set against the options the run was started with.

A requeued or restarted job passes the run's own command again, and nothing differs. A flag given with another
value is named in one line: refused when it changes the model, the data or the recipe (the run would no longer
be the run its checkpoints and results.txt describe), accepted and applied otherwise. docs/training.md, "What a
resume may change", lists the decision for each flag.
"""
import argparse
from pathlib import Path

from utils.errors import ArgumentError

# change the model, the data or the recipe: a resume refuses another value
REFUSED = ('weights', 'cfg', 'data', 'img_size', 'batch_size', 'single_cls', 'rect', 'image_weights', 'multi_scale',
           'adam', 'freeze', 'seed', 'sync_bn')
# may change between the parts of a run: taken, and named
ACCEPTED = ('epochs', 'hyp', 'device', 'workers', 'watchdog', 'save_period_min', 'save_period_steps', 'ddp_timeout',
            'nosave', 'notest', 'cache_images', 'noautoanchor', 'amp_dtype', 'channels_last', 'compile',
            'optimizer_impl', 'mlflow', 'activation_checkpointing')
# say which run to resume, or how this process runs: not compared
NOT_COMPARED = ('resume', 'project', 'name', 'exist_ok', 'local_rank', 'evolve')


def given_flags(parser, argv):
    """The option names (dests) given on the command line `argv`, whatever their values: a flag given with its
    default value is given too."""
    quiet = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:  # the same flags, every default suppressed
        if action.option_strings and action.dest != 'help':
            kwargs = {'dest': action.dest, 'default': argparse.SUPPRESS}
            if action.nargs == 0:
                kwargs['action'] = 'store_const'
                kwargs['const'] = action.const
            else:
                kwargs['nargs'] = action.nargs
            quiet.add_argument(*action.option_strings, **kwargs)
    namespace, _ = quiet.parse_known_args(argv)
    return set(vars(namespace))


def written_by_a_resume(weights, run, saved_run=None):
    """Whether a run's saved --weights is one of its own checkpoints, which a resume of versions before the options
    and the project's decisions were kept apart wrote there in place of the user's value (the run folder `run`, or
    `saved_run` where it was when that was written). That value is lost: such a run's --weights is not compared,
    and the command's value is taken."""
    if not weights or Path(weights).suffix != '.pt':
        return False
    folders = {Path(run), Path(run) / 'weights'}
    if saved_run:
        folders |= {Path(saved_run), Path(saved_run) / 'weights'}
    return Path(weights).parent in folders


def _flag(dest):
    return '--' + dest.replace('_', '-')


def _same_path(a, b, find=None):
    if not a or not b:
        return (a or '') == (b or '')
    pa, pb = (Path(find(x) if find else x) for x in (a, b))
    return pa == pb or (pa.exists() and pb.exists() and pa.resolve() == pb.resolve())


def _img(v):
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return [int(x) for x in v + v[-1:] * (2 - len(v))]


def differs(dest, given, saved, hyp_changed, find_config):
    """Whether the value given for dest is not the run's."""
    if dest == 'hyp':
        return hyp_changed  # the values, not the file's path: the same hyp copied elsewhere is no change
    if dest == 'cfg':
        return not _same_path(given, saved, find_config)
    if dest in ('data', 'weights'):
        return not _same_path(given, saved)
    if dest == 'img_size':
        return _img(given) != _img(saved)
    if dest == 'batch_size' and given == -1:
        return False  # automatic: the batch the run chose (opt.yaml) goes on
    return given != saved


def compare(given, opt, saved, run, hyp_changed=False, find_config=None):
    """Check this command's given flags (names in `given`, values in `opt`) against the run's saved options:
    an ArgumentError naming every refused difference; else [(dest, new value, run's value)] of accepted ones.
    The batch size compares with the run's total batch."""
    refused, accepted = [], []
    auto = getattr(opt, 'resume', None) == 'auto'
    for dest in sorted(given - set(NOT_COMPARED)):
        run_value = saved.get('total_batch_size', saved.get(dest)) if dest == 'batch_size' else saved.get(dest)
        if dest not in saved and dest != 'batch_size':
            continue  # an option newer than the run: its default applies
        if not differs(dest, getattr(opt, dest), run_value, hyp_changed, find_config):
            continue
        change = (dest, getattr(opt, dest), run_value)
        (refused if dest in REFUSED or (dest == 'hyp' and auto) else accepted).append(change)
    if refused:
        raise ArgumentError(
            f'--resume{" auto" if auto else ""}: {run} was trained with other values of '
            f'{describe(refused)}, which change the model, the data or the recipe: give another --name to start a '
            f'new run with them, or leave them out to continue this one')
    return accepted


def describe(changes):
    """'--cfg models/yolov4-csp.yaml (the run's: models/yolov4-p5-tiny.yaml), --epochs 4 (the run's: 3)'."""
    def show(v):
        return ' '.join(map(str, v)) if isinstance(v, (list, tuple)) else str(v) if v not in ('', None) else "''"
    return ', '.join(f'{_flag(d)} {show(new)} (the run\'s: {show(old)})' for d, new, old in changes)
