"""A run's configuration, resolved once (train.resolve_config) and read-only afterwards.

Two things are kept apart, because a resume compares the first and must never see the second:
- `Options`: what the user asked for, train.py's flags (or train.run's keywords) with their defaults filled in; for
  a resume, the run's saved options with the changes this command may make (utils.train.resume);
- `RunConfig`: those options with what the project decided around them: the run folder, the checkpoint it resumes,
  the batch (measured for --batch-size -1) and its share per rank, and this process's place in the job.

Both refuse assignment. A changed copy is made with `Options.replace` or `dataclasses.replace`, and only the resolver
makes one; the layering test (tests/test_layers.py) checks that no other code assigns to them.
"""
import argparse
from dataclasses import dataclass
from pathlib import Path

from utils.train.state import plain


class Options(argparse.Namespace):
    """argparse's namespace, read-only: options(weights=..., epochs=...). vars() and attribute reads work as on
    argparse's; setting an attribute raises."""

    def __init__(self, **kwargs):
        for k, v in kwargs.items():
            object.__setattr__(self, k, v)

    def __setattr__(self, name, value):
        raise AttributeError(f'the run\'s options are read-only (set {name} where they are resolved: '
                             f'train.resolve_config)')

    def __delattr__(self, name):
        raise AttributeError(f'the run\'s options are read-only (delete {name} where they are resolved)')

    def replace(self, **changes):
        """A copy with `changes`."""
        return Options(**{**vars(self), **changes})


@dataclass(frozen=True, kw_only=True)
class ProcessLayout:
    """This process's place in the job: torchrun's RANK, LOCAL_RANK and WORLD_SIZE (-1, -1, 1 alone)."""
    rank: int = -1
    local_rank: int = -1
    world_size: int = 1

    @property
    def main(self):
        """Whether this is the process that writes the run's files (rank 0, or the only one)."""
        return self.rank in (-1, 0)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything a run is built from: the user's options and the project's decisions, as separate fields."""
    opt: Options  # the run's options as the user gave them (never a path the project chose in their place)
    hyp: dict  # hyperparameters as given: the --hyp file's, or the resumed run's
    hyp_changed: bool  # a resume with hyperparameters of other values (a new schedule from here on)
    save_dir: Path  # the run folder
    checkpoint: Path = None  # the checkpoint this run resumes from, or None for a new run
    total_batch_size: int  # the batch across all processes (measured when --batch-size is -1)
    batch_size: int  # this process's share of it
    layout: ProcessLayout = ProcessLayout()

    @property
    def rank(self):
        return self.layout.rank

    @property
    def world_size(self):
        return self.layout.world_size

    @property
    def main(self):
        return self.layout.main

    def saved_options(self):
        """The options as a checkpoint and opt.yaml keep them (plain data): the user's, and the project's decisions
        that a resume needs again (the measured batch) or that a reader looks for (the run folder)."""
        options = {k: plain(v) for k, v in vars(self.opt).items()}
        return {**options, 'total_batch_size': self.total_batch_size, 'save_dir': str(self.save_dir),
                'world_size': self.layout.world_size}

