"""The scalars a run publishes, in one place (detectron2's EventStorage, kept per epoch).

The loop puts each ended epoch's mean training losses and learning rates; Evaluation puts the epoch's metrics, its
validation losses and its per-class mAPs (an array); the Trainer's record of the epoch puts the results it keeps and
the epoch's fitness. Trackers and the epoch checkpoint read them here, not from the trainer's or each other's
attributes; a callback reads them the same way (`self.trainer.storage.latest()`, a StorageReader).
"""
# the published TensorBoard tags, in results.txt's order
TRAIN_TAGS = ('train/box_loss', 'train/obj_loss', 'train/cls_loss')
EVAL_TAGS = ('metrics/precision', 'metrics/recall', 'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95', 'val/box_loss',
             'val/obj_loss', 'val/cls_loss')
LR_TAGS = ('x/lr0', 'x/lr1', 'x/lr2')
TAGS = TRAIN_TAGS + EVAL_TAGS + LR_TAGS


class EventStorage:
    """{name: value} per epoch, as published; `latest()` is the newest epoch's. Arrays (per-class values) are kept
    apart, so that `latest()` holds only scalars."""

    def __init__(self):
        self.epochs = {}  # epoch -> {name: value}
        self.arrays = {}  # epoch -> {name: [values]}

    def put(self, epoch, scalars):
        """Publish `scalars` ({name: number}) of `epoch`; a name published again for the epoch is replaced."""
        self.epochs.setdefault(epoch, {}).update({k: float(v) for k, v in scalars.items()})

    def put_array(self, epoch, name, values):
        """Publish the array `name` (numbers) of `epoch`."""
        self.arrays.setdefault(epoch, {})[name] = [float(x) for x in values]

    def epoch(self, epoch):
        """The scalars of `epoch` ({} when none), a copy."""
        return dict(self.epochs.get(epoch, {}))

    def array(self, epoch, name):
        """The array `name` of `epoch` (a list), or None."""
        values = self.arrays.get(epoch, {}).get(name)
        return None if values is None else list(values)

    def latest(self):
        """The newest epoch's scalars ({} before any), a copy."""
        return dict(self.epochs[max(self.epochs)]) if self.epochs else {}

    def get(self, name, default=None):
        """The newest epoch's value of `name`."""
        return self.latest().get(name, default)


class StorageReader:
    """An EventStorage to read only (what callbacks get)."""

    def __init__(self, storage):
        self._storage = storage

    def latest(self):
        return self._storage.latest()

    def get(self, name, default=None):
        return self._storage.get(name, default)

    def epoch(self, epoch):
        return self._storage.epoch(epoch)

    def array(self, epoch, name):
        return self._storage.array(epoch, name)
