"""Experiment trackers: a run's parameters, per-epoch metrics and final weights, logged on rank 0 only.

TensorBoard is on for every run, as published (events in the run folder). MLflow is off unless asked for with
--mlflow [TRACKING_URI] and the mlflow package installed (pip install mlflow-skinny).

A tracker never holds up training: `TrackerHook` takes what the tracker logs on the training thread (a snapshot of
numbers), and makes the tracker's calls on a thread of its own, in order. A call that fails (a server down at the
start or going down mid-run) is one warning, and the tracker is left out from then on; a call that has not returned
when the run ends is given up after TrackerHook.FINISH_S seconds, with one warning. MLflow's own HTTP retries and
timeout are set low (MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT, unless the environment sets them),
so a server that does not answer is known within seconds.
"""
import importlib.util
import logging
import os
import queue
import threading
import time
from pathlib import Path

from utils.train.events import TAGS
from utils.train.hooks import Hook

LOGGER = logging.getLogger('train')
MLFLOW_HTTP_DEFAULTS = {'MLFLOW_HTTP_REQUEST_MAX_RETRIES': '0', 'MLFLOW_HTTP_REQUEST_TIMEOUT': '10'}


def epoch_metrics(storage):
    """{tag: value} of the epoch that just ended, as published in the run's EventStorage: its mean training losses,
    the evaluation, the learning rates (the published tags, in their order)."""
    latest = storage.latest()
    return {tag: latest[tag] for tag in TAGS if tag in latest}


class TrackerHook(Hook):
    """Runs a tracker (start, log_epoch, finish; state_dict and load_state_dict for a resume) off the training
    thread: the hook's events only queue the tracker's calls, with the numbers they log taken now."""
    FINISH_S = 60.0  # how long the end of a run waits for the tracker's last calls (final.pt's upload)

    def __init__(self, tracker):
        self.tracker, self.name = tracker, tracker.name
        self.calls, self.failed, self.thread = queue.Queue(), False, None

    def before_train(self):
        self.thread = threading.Thread(target=self._serve, name=f'tracker-{self.name}', daemon=True)
        self.thread.start()
        self.calls.put(('before_train', self.tracker.start, ()))

    def after_epoch(self):
        t = self.trainer
        self.calls.put(('after_epoch', self.tracker.log_epoch, (t.epoch, epoch_metrics(t.storage))))

    def after_train(self):
        if self.thread is None:
            return
        t = self.trainer
        status = 'FINISHED' if t.completed else 'KILLED' if t.signal else 'FAILED'
        self.calls.put(('after_train', self.tracker.finish, (status,)))
        self.calls.put(None)
        self.thread.join(self.FINISH_S)
        if self.thread.is_alive():
            LOGGER.warning('WARNING: tracker %s did not answer within %g s at the end of the run; its last calls are '
                           'given up', self.name, self.FINISH_S)

    def _serve(self):
        while (call := self.calls.get()) is not None:
            event, fn, args = call
            if self.failed:
                continue
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - a tracker must not break the run
                self.failed = True
                LOGGER.warning('WARNING: callback %s failed in %s (%s: %s); training goes on without it', self.name,
                               event, type(e).__name__, ' '.join(str(e).split())[:300])

    def state_dict(self):
        return self.tracker.state_dict()

    def load_state_dict(self, state):
        self.tracker.load_state_dict(state)


class TensorBoard:
    """Scalars of each epoch in the run folder's TensorBoard events (the published tags)."""
    name = 'tensorboard'

    def __init__(self, log_dir):
        self.log_dir, self.writer = log_dir, None

    def start(self):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_epoch(self, epoch, metrics):
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, epoch)

    def finish(self, status):
        if self.writer is not None:
            self.writer.close()

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def mlflow_available():
    return importlib.util.find_spec('mlflow') is not None


class MLflow:
    """An MLflow run per training run: the options and hyperparameters as params, each epoch's metrics (step = the
    epoch), the final weights (final.pt) and results.txt as artifacts. A resumed run continues its MLflow run (the
    run id travels in the checkpoint). tracking_uri None: MLflow's own (MLFLOW_TRACKING_URI, or its default)."""
    name = 'mlflow'

    def __init__(self, tracking_uri, experiment, run_name, params, paths):
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.params, self.paths = params, paths
        self.client = self.run_id = None

    def start(self):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient
        for k, v in MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(k, v)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        if self.run_id is not None:  # a resume: the same MLflow run goes on
            self.client.update_run(self.run_id, status='RUNNING')
            return
        exp = self.client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(self.experiment)
        self.run_id = self.client.create_run(exp_id, run_name=self.run_name).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in sorted(self.params.items())]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        LOGGER.info('MLflow: run %s in experiment %r at %s', self.run_id, self.experiment,
                    self.client.tracking_uri)

    def log_epoch(self, epoch, metrics):
        from mlflow.entities import Metric
        ms = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, ms, epoch) for k, v in metrics.items()])

    def finish(self, status):
        if self.client is None or self.run_id is None:
            return
        if status == 'FINISHED':
            for f, folder in ((self.paths.final, 'weights'), (self.paths.results, None)):
                if Path(f).exists():
                    self.client.log_artifact(self.run_id, str(f), folder)
        self.client.set_terminated(self.run_id, status)

    def state_dict(self):
        return {'run_id': self.run_id} if self.run_id else {}

    def load_state_dict(self, state):
        self.run_id = state.get('run_id') or None
