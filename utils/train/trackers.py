"""Experiment trackers: hooks that log a run's parameters, per-epoch metrics and final weights, on rank 0 only.

TensorBoard is on for every run, as published (events in the run folder). MLflow is off unless asked for with
--mlflow [TRACKING_URI] and the mlflow package installed (pip install mlflow-skinny). train.py wraps every
tracker in hooks.SafeCallback: a tracker that fails is one warning, and training goes on.
"""
import importlib.util
import logging
import time
from pathlib import Path

from utils.train.hooks import Hook

LOGGER = logging.getLogger('train')
TAGS = ['train/box_loss', 'train/obj_loss', 'train/cls_loss', 'metrics/precision', 'metrics/recall',
        'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95', 'val/box_loss', 'val/obj_loss', 'val/cls_loss',
        'x/lr0', 'x/lr1', 'x/lr2']


def epoch_metrics(trainer):
    """{tag: value} of the epoch that just ended: its mean training losses, the evaluation, the learning rates."""
    values = list(trainer.ended.mloss[:-1].tolist()) + list(trainer.state.results) + list(trainer.lr)
    return {tag: float(v) for tag, v in zip(TAGS, values)}


class TensorBoard(Hook):
    """Scalars of each epoch in the run folder's TensorBoard events (the published tags)."""
    name = 'tensorboard'

    def __init__(self, log_dir):
        self.log_dir, self.writer = log_dir, None

    def before_train(self):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def after_epoch(self):
        for tag, value in epoch_metrics(self.trainer).items():
            self.writer.add_scalar(tag, value, self.trainer.ended.epoch)

    def after_train(self):
        if self.writer is not None:
            self.writer.close()


def mlflow_available():
    return importlib.util.find_spec('mlflow') is not None


class MLflow(Hook):
    """An MLflow run per training run: the options and hyperparameters as params, each epoch's metrics (step = the
    epoch), the final weights (final.pt) and results.txt as artifacts. A resumed run continues its MLflow run (the
    run id travels in the checkpoint). tracking_uri None: MLflow's own (MLFLOW_TRACKING_URI, or its default)."""
    name = 'mlflow'

    def __init__(self, tracking_uri, experiment, run_name, params, paths):
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.params, self.paths = params, paths
        self.client = self.run_id = None

    def before_train(self):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient
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

    def after_epoch(self):
        from mlflow.entities import Metric
        ms = int(time.time() * 1000)
        epoch = self.trainer.ended.epoch
        metrics = [Metric(k, v, ms, epoch) for k, v in epoch_metrics(self.trainer).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def after_train(self):
        if self.client is None or self.run_id is None:
            return
        t = self.trainer
        if t.completed:
            for f, folder in ((self.paths.final, 'weights'), (self.paths.results, None)):
                if Path(f).exists():
                    self.client.log_artifact(self.run_id, str(f), folder)
        status = 'FINISHED' if t.completed else 'KILLED' if t.signal else 'FAILED'
        self.client.set_terminated(self.run_id, status)

    def state_dict(self):
        return {'mlflow_run_id': self.run_id} if self.run_id else {}

    def load_state_dict(self, ckpt):
        self.run_id = ckpt.get('mlflow_run_id') or None
