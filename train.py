"""Train Scaled-YOLOv4 with the paper's recipe (docs/architecture.md, "Training") on one or many GPUs, or on CPUs.

    python train.py --cfg models/yolov4-p5.yaml --data data/coco.yaml --weights '' --img 896 896 --batch-size 64
    torchrun --nproc_per_node 4 --max-restarts 3 train.py ... --sync-bn      (or python -m torch.distributed.launch ...)
    python train.py --resume [runs/train/exp] [--epochs 450 --hyp data/hyp.finetune.yaml]
    python train.py ... --name p5 --resume auto      (continue runs/train/p5 if it has a checkpoint, else start it)

The stages, each a function: build the model (build_model) and optimizer (smart_optimizer), the loaders
(build_train_loader), restore a resumed run (utils.train_state), then per epoch train_one_epoch and end_of_epoch
(evaluate, log, save). main() decides where the run writes and what it resumes (utils.run_dir), turns flags (or a
resumed run's saved options) into those inputs, and guards the run: signals stop it at a batch boundary with a
checkpoint, a watchdog turns hangs into failures, and checkpoints come every --save-period-min minutes or
--save-period-steps optimizer steps as well as at each epoch's end.
"""
import argparse
import logging
import os
import random
import signal
import sys
import time
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

import test as tester  # test.py
from models.checkpoint import load_checkpoint, remove_stale_temp_files, strip_optimizer
from models.yolo import find_config
from utils.autoanchor import check_anchors
from utils.data_config import load_data_config
from utils.datasets import check_label_classes, create_dataloader, loader_failure, stop_loader_workers
from utils.errors import ArgumentError, ArgumentParser, UserError, check_at_least, run_cli
from utils.general import check_img_size, options_from_kwargs, set_logging
from utils.loss import ComputeLoss
from utils.metrics import fitness
from utils.optim import cosine_lr, set_epoch_lr, smart_optimizer, step_schedule, warmup_iterations, warmup_step
from utils.plots import plot_images, plot_labels, plot_results
from utils.progress import progress
from utils.distributed import init_distributed, process_group_store
from utils.run_dir import agree_on_plan, elastic_restart, release_run, resume_path, run_folder_of
from utils.run_guard import BeatingLoader, EvaluationInterrupted, Guard
from utils.sampling import batch_rng
from utils.torch_utils import EMA_ATTRIBUTES, ModelEMA, de_parallel, random_rescale, select_device, set_bn_momentum
from utils.train_state import RunState, plain, restore_training_state, training_checkpoint
from utils.train_model import build_model, maybe_sync_bn, wrap_ddp
from utils.train_utils import EVOLVE_META, class_weights_from_labels, image_order, load_hyp, mutate_hyp
from utils.watchdog import Watchdog

LOGGER = logging.getLogger('train')
DEFAULT_HYP = Path(__file__).resolve().parent / 'data' / 'hyp.scratch.yaml'  # the paper's recipe
MAX_BAD_STEPS = 10  # consecutive non-finite losses before the run stops


class TrainingStopped(RuntimeError):
    """Training ended early (signal, non-finite losses, a failed data loader); exit_code is what train.py exits
    with; save: whether rank 0 saves the state reached (a batch boundary) before exiting."""

    def __init__(self, message, exit_code=1, save=False):
        super().__init__(message)
        self.exit_code, self.save = exit_code, save


@dataclass(frozen=True)
class RunPaths:
    """Where a run writes: the run folder, its weights and results.txt."""
    save_dir: Path
    last: Path
    best: Path
    final: Path
    results: Path

    @classmethod
    def of(cls, save_dir):
        save_dir = Path(save_dir)
        w = save_dir / 'weights'
        return cls(save_dir, w / 'last.pt', w / 'best.pt', w / 'final.pt', save_dir / 'results.txt')


@dataclass
class EpochLoop:
    """What one training epoch works with; built once by train(), passed to train_one_epoch()."""
    model: torch.nn.Module
    loader: object
    optimizer: torch.optim.Optimizer
    scaler: object
    ema: object  # ModelEMA on the main process, else None
    loss_fn: ComputeLoss
    device: torch.device
    hyp: dict
    lr_lambda: object  # epoch -> learning-rate factor
    warmup_iters: int
    nominal_accumulate: float  # nominal batch / total batch
    epochs: int
    imgsz: int
    stride: int
    multi_scale: bool
    seed: int = 0
    rank: int = -1
    world_size: int = 1
    amp_dtype: str = 'float16'  # autocast dtype: float16 (CUDA only, as published), bfloat16, or none
    channels_last: bool = False
    plot_dir: Path = None  # where train_batch*.jpg go (None: not plotted)
    names: list = field(default_factory=list)
    opt: argparse.Namespace = None  # the run's options and hyperparameters as given: saved in checkpoints
    hyp_given: dict = None


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_run_folder(paths, hyp, opt):
    """Create the weights folder, remove temp files a killed save left behind, write hyp.yaml and opt.yaml."""
    paths.last.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(paths.last.parent)  # a run killed while saving leaves .last.pt.<pid>.tmp behind
    with open(paths.save_dir / 'hyp.yaml', 'w') as f:
        yaml.safe_dump(hyp, f, sort_keys=False)
    with open(paths.save_dir / 'opt.yaml', 'w') as f:
        yaml.safe_dump({k: plain(v) for k, v in vars(opt).items()}, f, sort_keys=False)


def build_train_loader(opt, data, hyp, imgsz, stride, nc):
    """(loader, dataset, total batch size used): the batch is the one asked for, or all images when fewer."""
    loader, dataset = create_dataloader(data['train'], imgsz, opt.batch_size, stride, single_cls=opt.single_cls,
                                        hyp=hyp, augment=True, cache=opt.cache_images, rect=opt.rect,
                                        rank=opt.global_rank, world_size=opt.world_size, workers=opt.workers,
                                        image_weights=opt.image_weights, prefix='train: ', shuffle=True,
                                        seed=opt.seed)
    check_label_classes(dataset, nc)
    used = loader.batch_size * opt.world_size
    if used != opt.total_batch_size:  # fewer images than the batch asked for
        LOGGER.warning('WARNING: --batch-size %d is more than the %d training images: batches of %d are used, '
                       'and weight decay and accumulation follow that', opt.total_batch_size, len(dataset), used)
    return loader, dataset, used


def rewrite_results(results_file, lines):
    """results.txt as of the checkpoint: a line written after it (killed in between) goes."""
    tmp = results_file.with_suffix('.tmp')
    tmp.write_text(''.join(line + '\n' for line in lines))
    os.replace(tmp, results_file)


def first_run_checks(dataset, model, hyp, imgsz, opt, save_dir, names):
    """Label statistics plot and the autoanchor check (new runs only, main process)."""
    labels = np.concatenate([x for x in dataset.labels if len(x)] or [np.zeros((0, 5))], 0)
    if len(labels):
        plot_labels(labels, save_dir, names)
    if not opt.noautoanchor:
        check_anchors(dataset, model, thr=hyp['anchor_t'], imgsz=imgsz, seed=opt.seed)


def autocast(device, amp_dtype):
    """Mixed precision for the forward pass and loss: float16 on CUDA (published), bfloat16 on CUDA or CPU."""
    enabled = amp_dtype == 'bfloat16' or (amp_dtype == 'float16' and device.type == 'cuda')
    dtype = torch.bfloat16 if amp_dtype == 'bfloat16' else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def agree_across_ranks(loop, finite, guard):
    """(finite, stop): under DDP all ranks agree on skipping a step and on stopping, or they would wait on
    each other; one small all-reduce per batch."""
    if loop.rank == -1:
        return finite, guard.signal is not None
    guard.beat('all-reduce', 'agreeing on the step', waiting=True)
    flags = torch.tensor([0. if finite else 1., float(guard.signal or 0)], device=loop.device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    guard.signal = int(flags[1].item()) or None
    return flags[0].item() == 0, guard.signal is not None


def next_batch(batches, guard, where, worker_pids):
    """The next (i, batch) or None at the end; a failed data loader becomes TrainingStopped."""
    guard.beat('loading data', f'{where}; data-loader workers {worker_pids or "none (in process)"}')
    try:
        return next(batches)
    except StopIteration:
        return None
    except (RuntimeError, UserError, OSError) as e:
        reason = loader_failure(e) or (' '.join(str(e).split()) if isinstance(e, UserError) else None)
        if reason is None:
            raise
        raise TrainingStopped(f'data loader failed at {where}: {reason}', save=True) from None


def train_one_epoch(loop, state, guard):
    """Train epoch state.epoch from batch state.batch on. Updates state at each batch (mean losses, progress
    row, accumulation, steps); saves periodic checkpoints through guard. Returns True when a stop was agreed."""
    main_proc, nb = loop.rank in (-1, 0), len(loop.loader)
    loop.model.train()
    it = iter(loop.loader)
    worker_pids = [w.pid for w in getattr(it, '_workers', [])]
    batches = enumerate(it, start=state.batch)
    pbar = None
    if main_proc:
        LOGGER.info(('\n' + '%10s' * 8), 'Epoch', 'gpu_mem', 'box', 'obj', 'cls', 'total', 'targets', 'img_size')
        pbar = progress(total=nb, initial=state.batch, leave=False)
    try:
        while (item := next_batch(batches, guard, f'epoch {state.epoch} batch {state.batch}', worker_pids)):
            if train_batch(loop, state, guard, item, pbar):
                return True
            guard.watchdog.arm()  # after this process's first batch (start-up and torch.compile are not timed)
    finally:
        if pbar is not None:
            pbar.close()
    return False


def train_batch(loop, state, guard, item, pbar):
    """One batch: forward, the ranks' agreement, backward and (at accumulation boundaries) an optimizer step,
    progress, and a periodic checkpoint when due. Returns whether a stop was agreed."""
    model, optimizer, device = loop.model, loop.optimizer, loop.device
    i, (imgs, targets, paths, _) = item
    guard.beat('forward/backward', f'epoch {state.epoch} batch {i}', waiting=loop.rank != -1)  # DDP syncs inside
    ni = i + len(loop.loader) * state.epoch  # iterations since the start of training
    imgs = imgs.to(device, non_blocking=True).float() / 255.0
    if loop.channels_last:
        imgs = imgs.contiguous(memory_format=torch.channels_last)
    if ni <= loop.warmup_iters:
        state.accumulate = warmup_step(optimizer, ni, loop.warmup_iters, loop.nominal_accumulate,
                                       loop.lr_lambda(state.epoch), loop.hyp['momentum'])
    if loop.multi_scale:
        imgs = random_rescale(imgs, loop.imgsz, loop.stride, batch_rng(loop.seed, state.epoch, i, loop.rank))
    with autocast(device, loop.amp_dtype):
        loss, loss_items = loop.loss_fn(model(imgs), targets.to(device))
        if loop.rank != -1:
            loss *= loop.world_size  # gradients are averaged across ranks
    finite, stop = agree_across_ranks(loop, bool(torch.isfinite(loss).all()), guard)
    stepped = finite and optimizer_step(loop, state, loss, ni, guard)
    if not finite:
        skip_step(loop, state, loss_items, i, guard)
    state.batch = i + 1
    if pbar is not None and finite:
        state.mloss = (state.mloss * i + loss_items.detach().cpu()) / (i + 1)
        mem = '%.3gG' % (torch.cuda.memory_reserved() / 1E9 if device.type != 'cpu' else 0)
        state.row = ('%10s' * 2 + '%10.4g' * 6) % (f'{state.epoch}/{loop.epochs - 1}', mem, *state.mloss,
                                                   targets.shape[0], imgs.shape[-1])
        pbar.set_description(state.row)
        if ni < 3 and loop.plot_dir is not None:
            plot_images(imgs, targets, paths, loop.plot_dir / f'train_batch{ni}.jpg', loop.names)
    if pbar is not None:
        pbar.update(1)
    if stepped and not stop and guard.due(state.steps):
        guard.save(training_checkpoint(state, model, loop.ema, optimizer, loop.scaler, loop.opt, loop.hyp_given))
    return stop


def optimizer_step(loop, state, loss, ni, guard):
    """Backward, and an optimizer step (with the EMA update) at each accumulation boundary; returns whether it
    stepped."""
    state.bad_steps = 0
    loop.scaler.scale(loss).backward()
    if ni % state.accumulate:
        return False
    guard.beat('optimizer step')
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    loop.optimizer.zero_grad()
    if loop.ema:
        loop.ema.update(loop.model)
    state.steps += 1
    return True


def skip_step(loop, state, loss_items, i, guard):
    """A non-finite loss: the step is skipped (accumulated gradients dropped); 10 in a row stop the run."""
    state.bad_steps += 1
    LOGGER.warning('WARNING: non-finite loss %s at epoch %g batch %g: step skipped', loss_items.tolist(),
                   state.epoch, i)
    loop.optimizer.zero_grad()
    if state.bad_steps >= MAX_BAD_STEPS:
        raise TrainingStopped(f'{state.bad_steps} non-finite losses in a row: training stopped; the last good '
                              f'checkpoint is {guard.paths.last}. Lower lr0 or check the labels.')


TB_TAGS = ['train/box_loss', 'train/obj_loss', 'train/cls_loss', 'metrics/precision', 'metrics/recall',
           'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95', 'val/box_loss', 'val/obj_loss', 'val/cls_loss',
           'x/lr0', 'x/lr1', 'x/lr2']


def end_of_epoch(loop, state, lr, paths, opt, data, testloader, imgsz_test, tb_writer, guard):
    """Main process, after each epoch: evaluate the EMA, log, save last.pt/best.pt, then append to results.txt.

    Updates state (results, maps, best fitness, results lines) and moves it to the next epoch. Returns False,
    with state unchanged, when a stop signal ended the evaluation."""
    epoch = state.epoch
    loop.ema.update_attr(de_parallel(loop.model), include=EMA_ATTRIBUTES)
    final_epoch = epoch + 1 == loop.epochs
    if not opt.notest or final_epoch:
        try:
            results, maps, _ = tester.test(data, batch_size=opt.batch_size, imgsz=imgsz_test, model=loop.ema.ema,
                                           single_cls=opt.single_cls, dataloader=BeatingLoader(testloader, guard),
                                           save_dir=paths.save_dir, plots=final_epoch, compute_loss=loop.loss_fn)
        except EvaluationInterrupted:
            return False
        state.results, state.maps = tuple(results), [float(x) for x in maps]
    line = state.row + '%10.4g' * 7 % tuple(state.results)
    state.results_lines.append(line)
    epoch_fitness = float(fitness(np.array(state.results).reshape(1, -1))[0])
    state.best_fitness = max(state.best_fitness, epoch_fitness)
    if tb_writer:
        for x, tag in zip(list(state.mloss[:-1].tolist()) + list(state.results) + lr, TB_TAGS):
            tb_writer.add_scalar(tag, x, epoch)
    state.start_epoch(epoch + 1)

    def append_line():
        with open(paths.results, 'a') as f:
            f.write(line + '\n')
    if opt.nosave and not final_epoch:
        append_line()
    else:  # the checkpoint first (it carries the results lines), then the line, once the checkpoint is on disk
        ck = training_checkpoint(state, loop.model, loop.ema, loop.optimizer, loop.scaler, opt, loop.hyp_given,
                                 epoch_fitness)
        guard.save(ck, best=state.best_fitness == epoch_fitness, background=not final_epoch, then=append_line)
    return True


def train(hyp, opt, device, tb_writer=None, ckpt=None):
    """Train with options `opt` (train.py's argparse namespace); returns the final test results."""
    rank, main_proc = opt.global_rank, opt.global_rank in (-1, 0)
    paths, hyp_given = RunPaths.of(opt.save_dir), dict(hyp)
    if main_proc:
        prepare_run_folder(paths, hyp, opt)
    seed_everything(opt.seed + 1 + max(rank, 0))
    data = load_data_config(opt.data, required=('nc', 'train', 'val'))
    nc = 1 if opt.single_cls else data['nc']
    names = ['item'] if opt.single_cls else data['names']

    model = build_model(opt, nc, device, ckpt, verbose=main_proc)
    if 'bn_momentum' in hyp:  # published: 0.03, which needs thousands of steps to forget the initial statistics
        set_bn_momentum(model, hyp['bn_momentum'])
    gs = int(model.stride.max())
    imgsz, imgsz_test = [check_img_size(x, gs) for x in opt.img_size]
    loader, dataset, total_batch_size = build_train_loader(opt, data, hyp, imgsz, gs, nc)
    if opt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, hyp, nominal_accumulate = smart_optimizer(model, hyp, total_batch_size, opt.adam, opt.optimizer_impl)
    lr_lambda = cosine_lr(opt.epochs, hyp.get('lrf', 0.2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lr_lambda)
    scaler = torch.amp.GradScaler('cuda', enabled=device.type != 'cpu' and opt.amp_dtype == 'float16')
    ema = ModelEMA(model) if main_proc else None

    state = RunState(accumulate=max(round(nominal_accumulate), 1))
    if ckpt is not None:
        state = restore_training_state(ckpt, model, optimizer, scaler, ema, hyp, opt.hyp_changed, rank,
                                       state.accumulate)
        LOGGER.info('Resuming %s at epoch %g%s, to %g epochs', paths.save_dir, state.epoch,
                    f' batch {state.batch}' if state.batch else '', opt.epochs)
        if state.epoch >= opt.epochs:
            if not (elastic_restart() or opt.resume == 'auto'):
                raise ArgumentError(f'{opt.weights} has already trained {state.epoch} epochs: give --epochs above '
                                    f'that to extend the run (e.g. the paper\'s fine-tune to 450)')
            # a restart or requeue of a finished job (killed after its last checkpoint): nothing is left to train
            LOGGER.info('%s has trained all %g epochs: nothing left to do', paths.save_dir, opt.epochs)
            if main_proc:
                finish_run(paths)
            return state.results
    if main_proc:
        rewrite_results(paths.results, state.results_lines)
    scheduler.last_epoch = state.epoch - 1  # as published: epoch e (> 0) runs at lambda(e - 1)
    if ckpt is not None and (opt.hyp_changed or ckpt['opt'].get('epochs') != opt.epochs):
        set_epoch_lr(optimizer, lr_lambda, max(state.epoch - 1, 0))  # a new schedule (fine-tune, more epochs)

    model = maybe_sync_bn(model, opt.sync_bn, rank, device)
    testloader = None
    if main_proc:
        testloader = create_dataloader(data['val'], imgsz_test, opt.batch_size, gs, single_cls=opt.single_cls,
                                       hyp=hyp, cache=opt.cache_images and not opt.notest, rect=True, rank=-1,
                                       world_size=opt.world_size, workers=opt.workers, pad=0.5, prefix='val: ')[0]
        if ckpt is None:
            first_run_checks(dataset, model, hyp, imgsz, opt, paths.save_dir, names)
    model = wrap_ddp(model, rank, opt.local_rank, device)
    if opt.compile:
        model = torch.compile(model)
    m = de_parallel(model)
    m.nc, m.names = nc, names
    if ema:
        ema.update_attr(m, include=EMA_ATTRIBUTES)
    loss_fn = ComputeLoss(model, dict(hyp, cls=hyp['cls'] * nc / 80.))  # class loss gain scaled to nc
    class_weights = class_weights_from_labels(dataset.labels, nc).numpy()

    loop = EpochLoop(model, loader, optimizer, scaler, ema, loss_fn, device, hyp, lr_lambda,
                     warmup_iterations(len(loader), hyp), nominal_accumulate, opt.epochs, imgsz, gs, opt.multi_scale,
                     opt.seed, rank, opt.world_size, opt.amp_dtype, opt.channels_last,
                     paths.save_dir if main_proc and ckpt is None else None, names, opt, hyp_given)
    LOGGER.info('Image sizes %g train, %g test; %g dataloader workers; logging to %s; training for %g epochs',
                imgsz, imgsz_test, loader.num_workers, paths.save_dir, opt.epochs)
    t0, start_epoch = time.time(), state.epoch
    watchdog = Watchdog(opt.watchdog, rank, opt.world_size, process_group_store() if rank != -1 else None)
    periods = (0, 0) if opt.nosave else (opt.save_period_min, opt.save_period_steps)
    try:
        with Guard(paths, *periods, watchdog, main_proc) as guard:
            run_epochs(loop, state, scheduler, paths, opt, data, testloader, imgsz_test, tb_writer, dataset,
                       class_weights, guard)
    finally:
        stop_loader_workers(loader, testloader)
    if main_proc:
        finish_run(paths)
        LOGGER.info('%g epochs completed in %.3f hours. Results in %s', opt.epochs - start_epoch,
                    (time.time() - t0) / 3600, paths.save_dir)
    return state.results


def run_epochs(loop, state, scheduler, paths, opt, data, testloader, imgsz_test, tb_writer, dataset, class_weights,
               guard):
    """The epoch loop. A stop signal (SIGINT, SIGTERM, SIGUSR1) or a failed data loader ends it at a batch
    boundary with last.pt saved there: --resume continues with the next batch."""
    main_proc = loop.rank in (-1, 0)
    try:
        for epoch in range(state.epoch, loop.epochs):
            images = image_order(dataset, class_weights, state.maps, loop.seed, epoch, loop.rank, loop.device) \
                if opt.image_weights else None
            loop.loader.sampler.set_epoch(epoch, state.batch * loop.loader.batch_size, images)
            stopped = train_one_epoch(loop, state, guard)
            if not stopped:
                lr = [g['lr'] for g in loop.optimizer.param_groups]
                step_schedule(scheduler)
                if main_proc:  # a stop during its evaluation saves with every batch of the epoch done
                    stopped = not end_of_epoch(loop, state, lr, paths, opt, data, testloader, imgsz_test,
                                               tb_writer, guard)
                else:
                    state.start_epoch(epoch + 1)
            if guard.signal and (stopped or loop.rank == -1):  # under DDP a stop is agreed inside the epoch
                raise TrainingStopped(f'{signal.Signals(guard.signal).name} received', 128 + guard.signal,
                                      save=True)
    except TrainingStopped as e:
        if not e.save:
            raise
        if not main_proc:
            raise TrainingStopped(f'rank {loop.rank}: {e} (rank 0 saves {paths.last})', e.exit_code) from None
        guard.save(training_checkpoint(state, loop.model, loop.ema, loop.optimizer, loop.scaler, opt,
                                       loop.hyp_given), background=False)
        where = f'epoch {state.epoch} batch {state.batch}' if state.batch else f'the start of epoch {state.epoch}'
        raise TrainingStopped(f'{e}: {paths.last} saved at {where}; continue with python train.py --resume '
                              f'{paths.save_dir}', e.exit_code) from None
    except RuntimeError as e:  # the loader's SIGCHLD handler raises wherever this thread is: no save then
        if guard.signal and not main_proc:  # rank 0 stopped in its evaluation and left this rank's collective
            raise TrainingStopped(f'rank {loop.rank}: {signal.Signals(guard.signal).name} received (rank 0 saves '
                                  f'{paths.last})', 128 + guard.signal) from None
        reason = loader_failure(e)
        if reason is None:
            raise
        raise TrainingStopped(f'data loader failed: {reason}; the last checkpoint is {paths.last}') from None


def finish_run(paths):
    """results.png, and final.pt: the float16 EMA weights of best.pt (or last.pt) for inference."""
    plot_results(paths.save_dir)
    src = paths.best if paths.best.exists() else paths.last
    if src.exists():
        strip_optimizer(src, paths.final)


def parse_opt(argv=None):
    p = ArgumentParser(prog='train.py', description='Train Scaled-YOLOv4.')
    p.add_argument('--weights', type=str, default='', help='initial weights path ("" to train from scratch)')
    p.add_argument('--cfg', type=str, default='', help='model.yaml path')
    p.add_argument('--data', type=str, default='data/coco.yaml', help='data.yaml path')
    p.add_argument('--hyp', type=str, default=None, help='hyperparameters path (default: data/hyp.scratch.yaml)')
    p.add_argument('--epochs', type=int, default=None, help='total epochs (default: 300)')
    p.add_argument('--batch-size', type=int, default=16, help='total batch size across all processes')
    p.add_argument('--img-size', '--img', nargs='+', type=int, default=[640, 640], help='train, test sizes')
    p.add_argument('--rect', action='store_true', help='rectangular training')
    p.add_argument('--resume', nargs='?', const=True, default=False,
                   help='resume the latest run, a given run folder or last.pt, or "auto": continue <project>/<name> '
                        'if it has a checkpoint, else start it there (for jobs that are restarted or requeued)')
    p.add_argument('--nosave', action='store_true', help='only save the final checkpoint')
    p.add_argument('--notest', action='store_true', help='only test the final epoch')
    p.add_argument('--noautoanchor', action='store_true', help='disable the autoanchor check')
    p.add_argument('--evolve', nargs='?', const=300, type=int, default=0, help='evolve hyperparameters for N generations')
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
    p.add_argument('--optimizer-impl', default='default', choices=['default', 'foreach', 'fused'],
                   help="PyTorch's optimizer step: default, multi-tensor foreach, or fused")
    opt = p.parse_args(argv)
    opt.img_size.extend([opt.img_size[-1]] * (2 - len(opt.img_size)))
    return opt


def check_options(opt):
    """Refuse flag values that make no sense, naming the flag (before anything is written)."""
    check_at_least('--epochs', opt.epochs, 1)
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


def resumed_options(opt, ckpt, path):
    """(options, hyp) of a resumed run: its saved options, with this command's --epochs, --hyp, --device and the
    process layout (rank, world size) taking precedence."""
    saved = argparse.Namespace(**{**vars(parse_opt([])), **ckpt['opt']})  # options added since: their defaults
    for k in ('local_rank', 'world_size', 'global_rank'):
        setattr(saved, k, getattr(opt, k))
    saved.device = opt.device or saved.device
    saved.epochs = opt.epochs or saved.epochs
    hyp = ckpt['hyp'] if opt.hyp is None else load_hyp(opt.hyp)
    saved.hyp_changed = hyp != ckpt['hyp']  # the same --hyp again (a restart, --resume auto) is no change
    saved.hyp = opt.hyp or saved.hyp
    saved.weights, saved.resume = str(path), 'auto' if getattr(opt, 'resume', None) == 'auto' else True  # a requeue
    saved.save_dir = str(run_folder_of(path))
    return saved, hyp


def new_run_options(opt):
    """Fill a new run's defaults (in place); returns its hyperparameters."""
    opt.hyp_changed = False
    opt.epochs = 300 if opt.epochs is None else opt.epochs
    opt.hyp = opt.hyp or str(DEFAULT_HYP)
    if not opt.cfg and not opt.weights:
        raise ArgumentError('give --cfg (train from scratch) or --weights (fine-tune)')
    for f, flag in ((opt.cfg, '--cfg'), (opt.data, '--data'), (opt.hyp, '--hyp')):
        if f and not (find_config(f) if flag == '--cfg' else Path(f)).exists():
            raise ArgumentError(f'{flag} {f}: file not found')
    load_data_config(opt.data, required=('nc', 'train', 'val'), existing=('train', 'val'))
    hyp = load_hyp(opt.hyp)
    opt.total_batch_size = opt.batch_size
    return hyp


def run(**kwargs):
    """train.py from Python: run(cfg='models/yolov4-p5.yaml', data='data/coco.yaml', epochs=300, ...).

    Keyword names are the command-line flags with underscores (img_size=[896, 896], batch_size=64, ...).
    """
    return main(opt=options_from_kwargs(parse_opt, kwargs, 'train.run'))


def named_resume(opt):
    """(path, loaded checkpoint) of a resume of a named (or the latest) checkpoint, else None: read before the
    run is planned for the device it was trained on, and handed on so that it is read only once."""
    if not opt.resume or opt.resume == 'auto':
        return None
    path = resume_path(opt.resume, opt.project)
    return path, load_checkpoint(path)


def check_world_size(total_batch_size, world_size):
    if total_batch_size % world_size:
        raise ArgumentError(f'--batch-size {total_batch_size} must be a multiple of the number of processes '
                            f'{world_size}')


def main(argv=None, opt=None):
    opt = opt or parse_opt(argv)
    opt.local_rank = int(os.environ.get('LOCAL_RANK', opt.local_rank))
    opt.world_size = int(os.environ.get('WORLD_SIZE', 1))
    opt.global_rank = int(os.environ.get('RANK', -1)) if opt.world_size > 1 or 'RANK' in os.environ else -1
    if opt.world_size == 1:
        opt.global_rank = opt.local_rank = -1
    set_logging(opt.global_rank)
    check_options(opt)
    if opt.resume in (False, 'auto'):  # may start a new run: its flags are checked before a folder is made
        new_run_options(deepcopy(opt))
        check_world_size(opt.batch_size, opt.world_size)
    preloaded = named_resume(opt)
    saved_device = (preloaded[1].get('opt') or {}).get('device', '') if preloaded else ''
    device = select_device(opt.device or saved_device, batch_size=opt.batch_size if opt.world_size == 1 else None)
    if opt.global_rank != -1:
        if device.type != 'cpu':
            torch.cuda.set_device(opt.local_rank)
            device = torch.device('cuda', opt.local_rank)
        init_distributed(device, opt.global_rank, opt.world_size, opt.ddp_timeout)
    lock, tb_writer, failed = None, None, True
    try:
        save_dir, checkpoint, ckpt, lock = agree_on_plan(opt, preloaded)
        if checkpoint:
            opt, hyp = resumed_options(opt, ckpt, Path(checkpoint))
        else:
            hyp = new_run_options(opt)
            opt.save_dir, opt.resume = save_dir, False
        check_world_size(opt.total_batch_size, opt.world_size)
        opt.batch_size = opt.total_batch_size // opt.world_size
        if opt.evolve:
            result = evolve(hyp, opt, device)
        else:
            if opt.global_rank in (-1, 0):
                from torch.utils.tensorboard import SummaryWriter
                tb_writer = SummaryWriter(log_dir=opt.save_dir)
            result = train(hyp, opt, device, tb_writer, ckpt)
        failed = False
        return result
    except TrainingStopped as e:
        LOGGER.error('%s', e)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # a second Ctrl+C
        LOGGER.error('\nInterrupted twice: stopped at once, without a checkpoint of this moment; continue from the '
                     'last one with python train.py --resume %s', getattr(opt, 'save_dir', opt.project))
        sys.exit(128 + signal.SIGINT)
    except UserError:
        raise
    except (RuntimeError, dist.DistBackendError) as e:
        if opt.global_rank == -1:
            raise
        LOGGER.error('rank %d: distributed training failed (another rank died or hung?): %s', opt.global_rank,
                     str(e).splitlines()[0] if str(e) else type(e).__name__)
        sys.exit(1)
    finally:
        if tb_writer is not None:
            tb_writer.close()
        if lock is not None:
            release_run(lock, failed)
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def evolve(hyp, opt, device):
    """Hyperparameter evolution: mutate the best earlier results, train, append to evolve.txt."""
    if opt.global_rank != -1:
        raise ArgumentError('--evolve runs in a single process (not under torchrun)')
    opt.notest, opt.nosave = True, True
    evolve_file = Path(opt.save_dir) / 'evolve.txt'
    keys = list(EVOLVE_META)
    base_hyp = deepcopy(hyp)
    for gen in range(opt.evolve):
        h = mutate_hyp(base_hyp, evolve_file, keys, seed=opt.seed + gen)
        gen_opt = deepcopy(opt)
        gen_opt.save_dir = str(Path(opt.save_dir) / f'gen{gen}')
        results = train(deepcopy(h), gen_opt, device)
        with open(evolve_file, 'a') as f:
            f.write(('%10.4g' * 7) % tuple(results) + ('%10.3g' * len(keys)) % tuple(h[k] for k in keys) + '\n')
        LOGGER.info('Evolution generation %d/%d: fitness %.4f', gen + 1, opt.evolve,
                    float(fitness(np.array(results).reshape(1, -1))[0]))
    return evolve_file


if __name__ == '__main__':
    run_cli(main, 'train.py')
