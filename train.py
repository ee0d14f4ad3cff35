"""Train Scaled-YOLOv4 with the paper's recipe (docs/architecture.md, "Training") on one or many GPUs, or on CPUs.

    python train.py --cfg models/yolov4-p5.yaml --data data/coco.yaml --weights '' --img 896 896 --batch-size 64
    torchrun --nproc_per_node 4 --max-restarts 3 train.py ... --sync-bn      (or python -m torch.distributed.launch ...)
    python train.py --resume [runs/train/exp] [--epochs 450 --hyp data/hyp.finetune.yaml]
    python train.py ... --name p5 --resume auto      (continue runs/train/p5 if it has a checkpoint, else start it)

The stages, each a function: main() holds the stop signals for the whole process (utils.train.signals);
run_job() plans where the run writes and what it resumes (utils.train.run_dir.plan_run) and resolve_config() turns
the flags (or a resumed run's saved options) and that plan into the run's read-only configuration
(utils.train.config), once; train() builds the model, loaders, optimizer and schedule (build_parts), and the
Trainer (utils.train.trainer) with its hooks in their order (build_trainer), whose loop calls them: checkpoints
every --save-period-min minutes or --save-period-steps optimizer steps and at each epoch's end, evaluation,
results.txt, trackers, the watchdog (a signal stops the run at a batch boundary with a checkpoint). From Python,
run(..., callbacks=[...]) adds hooks of yours (docs/architecture.md, "Callbacks").
"""
import logging
import os
import random
import signal
import sys
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

import test as tester  # test.py
from models.checkpoint import remove_stale_temp_files
from models.yolo import find_config
from utils.data_config import load_data_config
from utils.datasets import check_label_classes, create_dataloader, stop_loader_workers
from utils.distributed import init_distributed, process_group_store
from utils.errors import ArgumentError, ArgumentParser, UserError, check_at_least, run_cli
from utils.general import check_img_size, options_from_kwargs, set_logging
from utils.metrics import fitness
from utils.plots import plot_labels
from utils.torch_utils import EMA_ATTRIBUTES, ModelEMA, de_parallel, select_device, set_bn_momentum
from utils.train.autoanchor import check_anchors
from utils.train.hooks import (Checkpoints, EMAHook, EpochCheckpoint, Evaluation, FinishRun, Progress, ResultsFile,
                               SafeCallback, TrainBatchPlots, WatchdogHook, finish_run)
from utils.train.model import build_loss, build_model, maybe_sync_bn, wrap_ddp
from utils.train.optim import cosine_lr, smart_optimizer, warmup_iterations
from utils.train import resume
from utils.train.autobatch import auto_batch_size
from utils.train.hyp import EVOLVE_META, load_hyp, mutate_hyp
from utils.train.image_weights import class_weights_from_labels, image_order
from utils.train.run_dir import (PREVIOUS_NAME, agree_on_plan, elastic_restart, how_to_continue, load_newest_intact,
                                 release_run, resume_path, run_folder_of)
from utils.train.checkpoint_layout import TrainingCheckpoint, load_training_checkpoint
from utils.train.signals import StopSignals
from utils.train.config import Options, ProcessLayout, RunConfig
from utils.train.trackers import MLflow, TensorBoard, TrackerHook, mlflow_available
from utils.train.trainer import Recipe, Trainer, TrainingStopped, TrainParts
from utils.train.watchdog import Watchdog

LOGGER = logging.getLogger('train')
DEFAULT_HYP = Path(__file__).resolve().parent / 'data' / 'hyp.scratch.yaml'  # the paper's recipe


@dataclass(frozen=True, kw_only=True)
class RunPaths:
    """Where a run writes: the run folder, its weights (last.pt and the one before it, best.pt, final.pt) and
    results.txt."""
    save_dir: Path
    last: Path
    previous: Path
    best: Path
    final: Path
    results: Path

    @classmethod
    def of(cls, save_dir):
        save_dir = Path(save_dir)
        w = save_dir / 'weights'
        return cls(save_dir=save_dir, last=w / 'last.pt', previous=w / PREVIOUS_NAME, best=w / 'best.pt',
                   final=w / 'final.pt', results=save_dir / 'results.txt')


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_run_folder(paths, hyp, cfg):
    """Create the weights folder, remove temp files a killed save left behind, write hyp.yaml and opt.yaml."""
    paths.last.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(paths.last.parent)  # a run killed while saving leaves .last.pt.<pid>.tmp behind
    with open(paths.save_dir / 'hyp.yaml', 'w') as f:
        yaml.safe_dump(hyp, f, sort_keys=False)
    with open(paths.save_dir / 'opt.yaml', 'w') as f:
        yaml.safe_dump(cfg.saved_options(), f, sort_keys=False)


def build_train_loader(cfg, data, hyp, imgsz, stride, nc):
    """(loader, dataset, total batch size used): the batch is the one asked for, or all images when fewer."""
    opt = cfg.opt
    loader, dataset = create_dataloader(data['train'], imgsz, cfg.batch_size, stride, single_cls=opt.single_cls,
                                        hyp=hyp, augment=True, cache=opt.cache_images, rect=opt.rect,
                                        rank=cfg.rank, world_size=cfg.world_size, workers=opt.workers,
                                        image_weights=opt.image_weights, prefix='train: ', shuffle=True,
                                        seed=opt.seed)
    check_label_classes(dataset, nc)
    used = loader.batch_size * cfg.world_size
    if used != cfg.total_batch_size:  # fewer images than the batch asked for
        LOGGER.warning('WARNING: --batch-size %d is more than the %d training images: batches of %d are used, '
                       'and weight decay and accumulation follow that', cfg.total_batch_size, len(dataset), used)
    return loader, dataset, used


def first_run_checks(dataset, model, hyp, imgsz, opt, save_dir, names):
    """Label statistics plot and the autoanchor check (new runs only, main process)."""
    labels = np.concatenate([x for x in dataset.labels if len(x)] or [np.zeros((0, 5))], 0)
    if len(labels):
        plot_labels(labels, save_dir, names)
    if not opt.noautoanchor:
        check_anchors(dataset, model, thr=hyp['anchor_t'], imgsz=imgsz, seed=opt.seed)


def build_parts(cfg, data, nc, device, ckpt):
    """(TrainParts without the loss, Recipe, dataset, test image size): the model (restored, transferred or
    new), the loader, the optimizer and its schedule, the gradient scaler and the EMA."""
    opt, main_proc, hyp = cfg.opt, cfg.main, dict(cfg.hyp)
    model = build_model(opt, nc, device, ckpt, verbose=main_proc)
    if 'bn_momentum' in hyp:  # published: 0.03, which needs thousands of steps to forget the initial statistics
        set_bn_momentum(model, hyp['bn_momentum'])
    gs = int(model.stride.max())
    imgsz, imgsz_test = [check_img_size(x, gs) for x in opt.img_size]
    loader, dataset, total_batch_size = build_train_loader(cfg, data, hyp, imgsz, gs, nc)
    optimizer, hyp, nominal_accumulate = smart_optimizer(model, hyp, total_batch_size, opt.adam, opt.optimizer_impl)
    lr_lambda = cosine_lr(opt.epochs, hyp.get('lrf', 0.2))
    recipe = Recipe(epochs=opt.epochs, hyp=hyp, hyp_given=dict(cfg.hyp), lr_lambda=lr_lambda,
                    warmup_iters=warmup_iterations(len(loader), hyp), nominal_accumulate=nominal_accumulate,
                    imgsz=imgsz, stride=gs, multi_scale=opt.multi_scale, seed=opt.seed, amp_dtype=opt.amp_dtype,
                    channels_last=opt.channels_last, options=cfg.saved_options(), save_dir=cfg.save_dir)
    parts = TrainParts(model=model, optimizer=optimizer, loader=loader, device=device, loss_fn=None,
                       scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lr_lambda),
                       scaler=torch.amp.GradScaler('cuda', enabled=device.type != 'cpu' and opt.amp_dtype == 'float16'),
                       ema=ModelEMA(model) if main_proc else None)
    return parts, recipe, dataset, imgsz_test


def build_trainer(cfg, paths, parts, recipe, evaluation, names, stops, callbacks=()):
    """The Trainer of a run with its hooks, in the order they are called at each event. The order is the contract:
    - Progress first: its bar closes before the evaluation prints;
    - EMAHook before Checkpoints: a periodic checkpoint carries the EMA of its step; and, at the epoch's end
      (evaluate_epoch), it copies the model's attributes to the EMA before Evaluation evaluates it;
    - the epoch's checkpoint, results line and trackers come in after_epoch, once the Trainer has recorded the
      evaluation: the checkpoint carries the epoch's fitness and picks best.pt by it;
    - EpochCheckpoint before ResultsFile: an epoch's line is appended once the checkpoint that carries it is on
      disk, so that results.txt never runs ahead of last.pt;
    - Checkpoints (its after_train waits for the writes) before FinishRun, which strips best.pt into final.pt;
    - trackers and the user's callbacks last, each unable to break the run (SafeCallback); a tracker's calls run
      on a thread of its own, so a slow one cannot hold up training (TrackerHook).
    The Trainer also holds the process's stop signals, the watchdog it beats and (rank 0) the checkpoints it saves
    at a stop."""
    opt, rank = cfg.opt, cfg.rank
    watchdog = Watchdog(opt.watchdog, rank, cfg.world_size, process_group_store() if rank != -1 else None)
    hooks, checkpoints = [WatchdogHook(watchdog)], None
    if cfg.main:
        periods = (0, 0) if opt.nosave else (opt.save_period_min, opt.save_period_steps)
        checkpoints = Checkpoints(paths, *periods)
        hooks += [Progress()] + ([TrainBatchPlots(paths.save_dir, names)] if cfg.checkpoint is None else [])
        hooks += [EMAHook(), checkpoints, evaluation, EpochCheckpoint(checkpoints, not opt.nosave),
                  ResultsFile(paths.results, checkpoints.then), FinishRun(paths)]
        hooks += [SafeCallback(TrackerHook(t)) for t in build_trackers(cfg, paths)]
    hooks += [SafeCallback(c) for c in callbacks]
    return Trainer(parts, recipe, hooks, rank, cfg.world_size, stops=stops, watchdog=watchdog,
                   checkpointer=checkpoints)


def image_draw(dataset, nc, seed, rank, device):
    """--image-weights: each epoch's images drawn by class weights and the last per-class mAPs (on every rank)."""
    class_weights = class_weights_from_labels(dataset.labels, nc).numpy()
    return lambda epoch, maps: image_order(dataset, class_weights, maps, seed, epoch, rank, device)


def build_trackers(cfg, paths):
    """TensorBoard (not for --evolve's generations, as published) and MLflow when asked for (--mlflow)."""
    opt = cfg.opt
    trackers = [] if opt.evolve else [TensorBoard(paths.save_dir)]
    if opt.mlflow is not None:
        params = {**{f'opt/{k}': v for k, v in cfg.saved_options().items()},
                  **{f'hyp/{k}': v for k, v in cfg.hyp.items()}}
        trackers.append(MLflow(opt.mlflow or None, os.environ.get('MLFLOW_EXPERIMENT_NAME', 'scaled-yolov4'),
                               paths.save_dir.name, params, paths))
    return trackers


def resumed_finished(ckpt, cfg, paths):
    """Log where a resume starts; True when the run has already trained all its epochs (a restart or requeue of a
    finished job: nothing is left to do). A named resume of a finished run asks for more --epochs instead."""
    epoch, batch = ckpt.position()
    epochs = cfg.opt.epochs
    LOGGER.info('Resuming %s at epoch %g%s, to %g epochs', paths.save_dir, epoch, f' batch {batch}' if batch else '',
                epochs)
    if epoch < epochs:
        return False
    if not (elastic_restart() or cfg.opt.resume == 'auto'):
        raise ArgumentError(f'{cfg.checkpoint} has already trained {epoch} epochs: give --epochs above that to '
                            f'extend the run (e.g. the paper\'s fine-tune to 450)')
    LOGGER.info('%s has trained all %g epochs: nothing left to do', paths.save_dir, epochs)
    if cfg.main:
        finish_run(paths)
    return True


def train(cfg, device, ckpt=None, callbacks=(), stops=None):
    """Train the run `cfg` (a RunConfig from resolve_config), from checkpoint `ckpt` when it resumes; returns the
    final test results. `stops`: the process's StopSignals (train.main's), else train() holds its own."""
    if stops is None:
        with StopSignals() as stops:
            return train(cfg, device, ckpt, callbacks, stops)
    opt, rank, main_proc = cfg.opt, cfg.rank, cfg.main
    paths = RunPaths.of(cfg.save_dir)
    if main_proc:
        prepare_run_folder(paths, cfg.hyp, cfg)
    ckpt = None if ckpt is None else TrainingCheckpoint.from_dict(ckpt)  # train() from Python may pass its dict
    if ckpt is not None and resumed_finished(ckpt, cfg, paths):
        return ckpt.last_results()
    seed_everything(opt.seed + 1 + max(rank, 0))
    data = load_data_config(opt.data, required=('nc', 'train', 'val'))
    nc = 1 if opt.single_cls else data['nc']
    names = ['item'] if opt.single_cls else data['names']
    parts, recipe, dataset, imgsz_test = build_parts(cfg, data, nc, device, ckpt)
    model = maybe_sync_bn(parts.model, opt.sync_bn, rank, device)
    testloader = None
    if main_proc:
        testloader = create_dataloader(data['val'], imgsz_test, cfg.batch_size, recipe.stride,
                                       single_cls=opt.single_cls, hyp=recipe.hyp, cache=opt.cache_images and not
                                       opt.notest, rect=True, rank=-1, world_size=cfg.world_size,
                                       workers=opt.workers, pad=0.5, prefix='val: ')[0]
        if ckpt is None:
            first_run_checks(dataset, model, recipe.hyp, recipe.imgsz, opt, paths.save_dir, names)
    parts.model = wrap_ddp(model, rank, cfg.layout.local_rank, device)
    if opt.compile:
        parts.model = torch.compile(parts.model)
    m = de_parallel(parts.model)
    m.nc, m.names = nc, names
    m.category_ids = None if opt.single_cls else (dataset.label_source or {}).get('category_ids')  # COCO / VOC
    if parts.ema:
        parts.ema.update_attr(m, include=EMA_ATTRIBUTES)
    parts.loss_fn = build_loss(parts.model, recipe.hyp, nc)
    evaluation = Evaluation(partial(tester.test, data, batch_size=cfg.batch_size, imgsz=imgsz_test,
                                    single_cls=opt.single_cls, save_dir=paths.save_dir), testloader, not opt.notest)
    if opt.image_weights:
        parts.image_draw = image_draw(dataset, len(names), opt.seed, rank, device)
    trainer = build_trainer(cfg, paths, parts, recipe, evaluation, names, stops, callbacks)
    if ckpt is not None:
        trainer.load_state_dict(ckpt, cfg.hyp_changed)
    LOGGER.info('Image sizes %g train, %g test; %g dataloader workers; logging to %s; training for %g epochs',
                recipe.imgsz, imgsz_test, parts.loader.num_workers, paths.save_dir, opt.epochs)
    try:
        return trainer.train()
    finally:
        stop_loader_workers(parts.loader, testloader)


def build_parser():
    p = ArgumentParser(prog='train.py', description='Train Scaled-YOLOv4.')
    p.add_argument('--weights', type=str, default='', help='initial weights path ("" to train from scratch)')
    p.add_argument('--cfg', type=str, default='', help='model.yaml path')
    p.add_argument('--data', type=str, default='data/coco.yaml', help='data.yaml path')
    p.add_argument('--hyp', type=str, default=None, help='hyperparameters path (default: data/hyp.scratch.yaml)')
    p.add_argument('--epochs', type=int, default=None, help='total epochs (default: 300)')
    p.add_argument('--batch-size', type=int, default=16,
                   help='total batch size across all processes; -1: the largest that fits the GPUs (measured)')
    p.add_argument('--img-size', '--img', nargs='+', type=int, default=[640, 640], help='train, test sizes')
    p.add_argument('--rect', action='store_true', help='rectangular training')
    p.add_argument('--resume', nargs='?', const=True, default=False,
                   help='resume the latest run, a given run folder or last.pt, or "auto": continue <project>/<name> '
                        'if it has a checkpoint, else start it there (for jobs that are restarted or requeued)')
    p.add_argument('--nosave', action='store_true', help='only save the final checkpoint')
    p.add_argument('--notest', action='store_true', help='only test the final epoch')
    p.add_argument('--noautoanchor', action='store_true', help='disable the autoanchor check')
    p.add_argument('--evolve', nargs='?', const=300, type=int, default=0,
                   help='evolve hyperparameters for N generations')
    p.add_argument('--cache-images', nargs='?', const='ram', default=False, choices=['ram', 'disk'],
                   help='cache decoded images in RAM (default) or on disk')
    p.add_argument('--image-weights', action='store_true', help='sample images by class weights')
    p.add_argument('--name', default='exp', help='run name: runs go to <project>/<name>')
    p.add_argument('--project', default='runs/train', help='runs go to <project>/<name>')
    p.add_argument('--exist-ok', action='store_true', help='reuse <project>/<name> instead of numbering')
    p.add_argument('--device', default='', help='cuda device, i.e. 0 or 0,1,2,3 or cpu '
                      '(default: the GPU when there is one, else cpu)')
    p.add_argument('--multi-scale', action='store_true', help='vary img-size +/- 50%%')
    p.add_argument('--single-cls', action='store_true', help='train as single-class dataset')
    p.add_argument('--adam', action='store_true', help='use torch.optim.Adam() optimizer')
    p.add_argument('--sync-bn', action='store_true', help='use SyncBatchNorm, only available in DDP mode')
    p.add_argument('--local_rank', '--local-rank', type=int, default=-1, help='DDP parameter, do not modify')
    p.add_argument('--workers', type=int, default=8, help='maximum dataloader workers')
    p.add_argument('--freeze', type=int, default=0, help='freeze the first N layers')
    p.add_argument('--seed', type=int, default=0, help='random seed')
    p.add_argument('--ddp-timeout', type=int, default=1800, help='seconds before a stuck DDP collective fails')
    p.add_argument('--save-period-min', type=float, default=30,
                   help='also save last.pt every this many minutes, at an optimizer step inside the epoch (0: off)')
    p.add_argument('--save-period-steps', type=int, default=0,
                   help='also save last.pt every this many optimizer steps inside the epoch (0: off)')
    p.add_argument('--watchdog', type=float, default=300,
                   help='seconds without progress on any rank before the job ends with a line naming the rank and '
                        'what it was doing, so that torchrun can restart it (0: off)')
    p.add_argument('--amp-dtype', default='float16', choices=['float16', 'bfloat16', 'none'],
                   help='mixed precision: float16 with a gradient scaler on CUDA (published; no AMP on CPU), bfloat16 '
                        'on CUDA or a CPU that supports it, none for float32')
    p.add_argument('--channels-last', action='store_true', help='channels_last memory format for model and images')
    p.add_argument('--compile', action='store_true', help='torch.compile the model for training')
    p.add_argument('--activation-checkpointing', action='store_true',
                   help='recompute the activations of each block in backward instead of keeping them: less memory '
                        'for more time (the same gradients; docs/memory.md)')
    p.add_argument('--optimizer-impl', default='default', choices=['default', 'foreach', 'fused'],
                   help="PyTorch's optimizer step: default, multi-tensor foreach, or fused")
    p.add_argument('--mlflow', nargs='?', const='', default=None, metavar='TRACKING_URI',
                   help='also log to MLflow (pip install mlflow-skinny): params, per-epoch metrics and final.pt, at '
                        'TRACKING_URI or MLflow\'s own default (MLFLOW_TRACKING_URI); experiment: '
                        'MLFLOW_EXPERIMENT_NAME or scaled-yolov4')
    return p


def parse_opt(argv=None):
    """train.py's options (read-only) from the command line `argv`."""
    return _options(build_parser().parse_args(argv))


def _options(namespace):
    """Read-only options from argparse's namespace; the image size always has a train and a test size."""
    sizes = list(namespace.img_size) if isinstance(namespace.img_size, (list, tuple)) else [namespace.img_size]
    return Options(**{**vars(namespace), 'img_size': sizes + sizes[-1:] * (2 - len(sizes))})


def check_options(opt):
    """Refuse flag values that make no sense, naming the flag (before anything is written)."""
    if opt.epochs is not None:
        check_at_least('--epochs', opt.epochs, 1)
    if opt.batch_size != -1:  # -1: chosen by measuring the GPUs
        check_at_least('--batch-size', opt.batch_size, 1)
    check_at_least('--img-size', opt.img_size, 1)
    check_at_least('--workers', opt.workers, 0)
    check_at_least('--freeze', opt.freeze, 0)
    check_at_least('--evolve', opt.evolve, 0)
    check_at_least('--ddp-timeout', opt.ddp_timeout, 1)
    check_at_least('--seed', opt.seed, 0)
    check_at_least('--save-period-min', opt.save_period_min, 0)
    check_at_least('--save-period-steps', opt.save_period_steps, 0)
    check_at_least('--watchdog', opt.watchdog, 0)
    if opt.resume and opt.evolve:
        raise ArgumentError('--resume and --evolve: evolution runs its generations anew; give one of them')
    if opt.mlflow is not None and not mlflow_available():
        raise ArgumentError('--mlflow needs the mlflow package: pip install mlflow-skinny')


def resumed_options(opt, ckpt, path, given=()):
    """(options, hyp, hyp changed) of a resumed run: its saved options, with the flags this command gives (names
    in `given`) that a resume may change. A flag that changes the model, the data or the recipe is refused
    (utils.train.resume). --epochs, --device and --hyp count as given when set. The options are the user's
    throughout: what the project decided (the run folder, the checkpoint, the measured batch) is not among them."""
    defaults = vars(parse_opt([]))  # options added since the run started: their defaults
    ckpt = TrainingCheckpoint.from_dict(ckpt)
    run_options = ckpt.user_options(defaults)  # not the project's decisions saved beside
    hyp = ckpt.hyp if opt.hyp is None else load_hyp(opt.hyp)
    hyp_changed = hyp != ckpt.hyp  # the same --hyp again (a restart, --resume auto) is no change
    given = set(given) | {k for k in ('epochs', 'device', 'hyp') if getattr(opt, k, None)}
    run = run_folder_of(path)
    if resume.written_by_a_resume(run_options.get('weights'), run, ckpt.option('save_dir')):  # by an older resume
        given, run_options['weights'] = given - {'weights'}, getattr(opt, 'weights', '')
    changes = resume.compare(given, opt, dict(ckpt.options, **run_options), run, hyp_changed, find_config)
    if changes:
        LOGGER.warning('WARNING: resuming %s with %s', run, resume.describe(changes))
    options = Options(**{**defaults, **run_options, **{dest: value for dest, value, _ in changes},
                         'resume': getattr(opt, 'resume', True) or True})  # how this command resumed
    return options, hyp, hyp_changed


def new_run_options(opt):
    """(options, hyp) of a new run: the defaults filled in, the files checked."""
    opt = opt.replace(epochs=300 if opt.epochs is None else opt.epochs, hyp=opt.hyp or str(DEFAULT_HYP))
    if not opt.cfg and not opt.weights:
        raise ArgumentError('give --cfg (train from scratch) or --weights (fine-tune)')
    for f, flag in ((opt.cfg, '--cfg'), (opt.data, '--data'), (opt.hyp, '--hyp')):
        if f and not (find_config(f) if flag == '--cfg' else Path(f)).exists():
            raise ArgumentError(f'{flag} {f}: file not found')
    load_data_config(opt.data, required=('nc', 'train', 'val'), existing=('train', 'val'))
    if opt.evolve:  # generations are scored on their last epoch only, and keep no checkpoints (as published)
        opt = opt.replace(notest=True, nosave=True)
    return opt, load_hyp(opt.hyp)


def resolve_config(opt, given, plan, layout, device):
    """The run's configuration (RunConfig), resolved once from the command's options `opt` (names in `given`),
    the run plan (a new run, or the checkpoint it resumes) and the process layout. Nothing changes it later."""
    if plan.checkpoint:
        options, hyp, hyp_changed = resumed_options(opt, plan.ckpt, plan.checkpoint, given or ())
        total = plan.ckpt.option('total_batch_size', options.batch_size)
    else:
        (options, hyp), hyp_changed = new_run_options(opt), False
        total = options.batch_size
        if total == -1:  # measured now, recorded in opt.yaml: a resume uses it
            total = choose_batch_size(options, hyp, device, layout.world_size)
    check_world_size(total, layout.world_size)
    return RunConfig(opt=options, hyp=hyp, hyp_changed=hyp_changed, save_dir=Path(plan.save_dir),
                     checkpoint=Path(plan.checkpoint) if plan.checkpoint else None, total_batch_size=total,
                     batch_size=total // layout.world_size, layout=layout)


def run(callbacks=(), **kwargs):
    """train.py from Python: run(cfg='models/yolov4-p5.yaml', data='data/coco.yaml', epochs=300, ...).

    Keyword names are the command-line flags with underscores (img_size=[896, 896], batch_size=64, ...).
    callbacks: hooks of yours (utils.train.hooks.Hook), called after the run's own at each event; one that fails
    is a warning and is not called again (docs/architecture.md, "Callbacks").
    """
    options = _options(options_from_kwargs(build_parser().parse_args, kwargs, 'train.run'))
    return main(opt=options, callbacks=callbacks, given=set(kwargs))


def named_resume(opt):
    """(path, loaded checkpoint, damaged path or None) of a resume of a named run or checkpoint (or the latest
    run), else None: read before the run is planned for the device it was trained on, and handed on so that it is
    read only once. A run's newest intact checkpoint is taken when its last.pt is unreadable; a file the user named
    is not swapped for another."""
    if not opt.resume or opt.resume == 'auto':
        return None
    path = resume_path(opt.resume, opt.project)
    if opt.resume is not True and Path(opt.resume).is_file():
        return path, load_training_checkpoint(path), None
    return load_newest_intact(path.parent, run_folder_of(path) / 'results.txt')


def check_world_size(total_batch_size, world_size):
    if total_batch_size % world_size:
        raise ArgumentError(f'--batch-size {total_batch_size} must be a multiple of the number of processes '
                            f'{world_size}')


def choose_batch_size(opt, hyp, device, world_size):
    """--batch-size -1: the total batch that fits the GPUs, measured with the run's model, image size, precision
    and memory options (utils.train.autobatch)."""
    data = load_data_config(opt.data, required=('nc', 'train', 'val'))
    nc = 1 if opt.single_cls else data['nc']
    model = build_model(opt, nc, device, verbose=False).train()
    imgsz = check_img_size(opt.img_size[0], int(model.stride.max()))
    try:
        return auto_batch_size(model, build_loss(model, hyp, nc), imgsz, device, opt.amp_dtype, world_size)
    finally:
        del model
        if device.type == 'cuda':
            torch.cuda.empty_cache()


def process_layout(local_rank=-1):
    """This process's rank, local rank and the world size, from torchrun's environment (the published launcher's
    --local_rank flag where LOCAL_RANK is not set)."""
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    if world_size == 1:
        return ProcessLayout()
    return ProcessLayout(rank=int(os.environ.get('RANK', -1)),
                         local_rank=int(os.environ.get('LOCAL_RANK', local_rank)), world_size=world_size)


def start_device(opt, preloaded, layout):
    """The device this process trains on (a named resume's saved device unless --device says otherwise), with the
    process group started under DDP."""
    saved_device = TrainingCheckpoint.from_dict(preloaded[1]).option('device', '') if preloaded else ''
    device = select_device(opt.device or saved_device,
                           batch_size=opt.batch_size if layout.world_size == 1 and opt.batch_size > 0 else None)
    if layout.rank != -1:
        if device.type != 'cpu':
            torch.cuda.set_device(layout.local_rank)
            device = torch.device('cuda', layout.local_rank)
        init_distributed(device, layout.rank, layout.world_size, opt.ddp_timeout)
    return device


def main(argv=None, opt=None, callbacks=(), given=None):
    """train.py: argv (default sys.argv[1:]), or options already parsed with the names of those given (`given`,
    which a resume compares with the run's; run() passes both). A stop signal at any moment ends the process with
    128 + the signal (utils.train.signals.StopSignals)."""
    if opt is None:
        argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
        opt, given = parse_opt(argv), resume.given_flags(build_parser(), argv)
    with StopSignals() as stops:
        result = run_job(opt, given, callbacks, stops)
        if stops.received:  # it came as the run ended, and the end was written first
            LOGGER.error('%s received as the run ended; it is complete, and the same command reports it so',
                         signal.Signals(stops.received).name)
            sys.exit(128 + stops.received)
        return result


def run_job(opt, given, callbacks, stops):
    """Check the options, plan the run (new, resumed or restarted; its folder locked), resolve its configuration
    and train (or evolve); a stop, a failed rank or a second Ctrl+C becomes its exit status and one line."""
    layout = process_layout(opt.local_rank)
    set_logging(layout.rank)
    plan, failed, cfg = None, True, None
    try:
        check_options(opt)
        if opt.resume in (False, 'auto'):  # may start a new run: its flags are checked before a folder is made
            new_run_options(opt)
            if opt.batch_size != -1:
                check_world_size(opt.batch_size, layout.world_size)
        preloaded = named_resume(opt)
        device = start_device(opt, preloaded, layout)
        plan = agree_on_plan(opt, layout, preloaded)
        cfg = resolve_config(opt, given, plan, layout, device)
        result = evolve(cfg, device, stops) if cfg.opt.evolve else train(cfg, device, plan.ckpt, callbacks, stops)
        failed = False
        return result
    except TrainingStopped as e:
        LOGGER.error('%s', e)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # a second Ctrl+C
        LOGGER.error('\nInterrupted twice: stopped at once, without a checkpoint of this moment; to continue from '
                     'the last one, %s', how_to_continue(opt.resume, cfg.save_dir if cfg else opt.project))
        sys.exit(128 + signal.SIGINT)
    except UserError:
        raise
    except (RuntimeError, dist.DistBackendError) as e:
        if layout.rank == -1:
            raise
        LOGGER.error('rank %d: distributed training failed (another rank died or hung?): %s', layout.rank,
                     str(e).splitlines()[0] if str(e) else type(e).__name__)
        sys.exit(1)
    finally:
        stops.finishing = True  # a signal from here on is the exit status once the lock is released
        if plan is not None and plan.lock is not None:
            release_run(plan.lock, failed)
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def evolve(cfg, device, stops):
    """Hyperparameter evolution: mutate the best earlier results, train, append to evolve.txt."""
    if cfg.rank != -1:
        raise ArgumentError('--evolve runs in a single process (not under torchrun)')
    evolve_file = cfg.save_dir / 'evolve.txt'
    keys = list(EVOLVE_META)
    for gen in range(cfg.opt.evolve):
        h = mutate_hyp(cfg.hyp, evolve_file, keys, seed=cfg.opt.seed + gen)
        results = train(replace(cfg, hyp=h, save_dir=cfg.save_dir / f'gen{gen}'), device, stops=stops)
        with open(evolve_file, 'a') as f:
            f.write(('%10.4g' * 7) % tuple(results) + ('%10.3g' * len(keys)) % tuple(h[k] for k in keys) + '\n')
        LOGGER.info('Evolution generation %d/%d: fitness %.4f', gen + 1, cfg.opt.evolve,
                    float(fitness(np.array(results).reshape(1, -1))[0]))
    return evolve_file


if __name__ == '__main__':
    run_cli(main, 'train.py')
