"""Train Scaled-YOLOv4 with the paper's recipe (docs/architecture.md, "Training") on one or many GPUs, or on CPUs.

    python train.py --cfg models/yolov4-p5.yaml --data data/coco.yaml --weights '' --img 896 896 --batch-size 64
    torchrun --nproc_per_node 4 train.py ... --sync-bn          (or python -m torch.distributed.launch ...)
    python train.py --resume [runs/train/exp] [--epochs 450 --hyp data/hyp.finetune.yaml]

The stages, each a function: build the model (build_model) and optimizer (smart_optimizer), the loaders
(build_train_loader), restore a resumed run (restore_training_state), then per epoch train_one_epoch and
end_of_epoch (evaluate, log, save). main() turns flags (or a resumed run's saved options) into those inputs.
"""
import argparse
import datetime
import logging
import math
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
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import test as tester  # test.py
from models.checkpoint import (CheckpointError, checkpoint_header, load_checkpoint, model_from_checkpoint,
                               model_payload, remove_stale_temp_files, save_checkpoint, strip_optimizer)
from models.yolo import Model
from utils.autoanchor import check_anchors
from utils.data_config import load_data_config
from utils.datasets import check_label_classes, create_dataloader
from utils.errors import ArgumentError, ArgumentParser, UserError, check_at_least, run_cli
from utils.general import check_img_size, increment_path, options_from_kwargs, set_logging
from utils.loss import ComputeLoss
from utils.metrics import fitness
from utils.plots import plot_images, plot_labels, plot_results
from utils.torch_utils import EMA_ATTRIBUTES, ModelEMA, de_parallel, intersect_dicts, select_device
from utils.optim import cosine_lr, set_epoch_lr, smart_optimizer, warmup_iterations, warmup_step
from utils.train_utils import (EVOLVE_META, class_weights_from_labels, image_weights_from_labels, load_hyp,
                               mutate_hyp, rng_state, set_rng_state)

LOGGER = logging.getLogger('train')
MAX_BAD_STEPS = 10  # consecutive non-finite losses before the run stops


class TrainingStopped(RuntimeError):
    """Training ended early (signal or non-finite losses); exit_code is what train.py exits with."""

    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code


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
    rank: int = -1
    world_size: int = 1
    amp_dtype: str = 'float16'  # autocast dtype: float16 (CUDA only, as published), bfloat16, or none
    channels_last: bool = False
    plot_dir: Path = None  # where train_batch*.jpg go (None: not plotted)
    names: list = field(default_factory=list)


def _plain(v):
    """Options as plain data for weights_only checkpoints and yaml."""
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_run_folder(paths, hyp, opt):
    """Create the run folder, remove temp files a killed save left behind, write hyp.yaml and opt.yaml."""
    paths.last.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(paths.last.parent)  # a run killed while saving leaves .last.pt.<pid>.tmp behind
    with open(paths.save_dir / 'hyp.yaml', 'w') as f:
        yaml.safe_dump(hyp, f, sort_keys=False)
    with open(paths.save_dir / 'opt.yaml', 'w') as f:
        yaml.safe_dump({k: _plain(v) for k, v in vars(opt).items()}, f, sort_keys=False)


def build_model(opt, nc, device, ckpt=None, verbose=True):
    """The model to train: restored from a resumed checkpoint, transferred from --weights, or new from --cfg;
    the first --freeze layers frozen."""
    if ckpt is not None:
        model = Model(ckpt['model']['yaml'], ch=3, nc=nc).to(device)
        model.load_state_dict(ckpt['model']['state_dict'])
    elif opt.weights:
        src = model_from_checkpoint(load_checkpoint(opt.weights), opt.weights, prefer_ema=True)
        model = Model(opt.cfg or src.yaml, ch=3, nc=nc, verbose=verbose).to(device)
        sd = intersect_dicts(src.float().state_dict(), model.state_dict(), exclude=['anchor'] if opt.cfg else [])
        model.load_state_dict(sd, strict=False)
        LOGGER.info('Transferred %g/%g items from %s', len(sd), len(model.state_dict()), opt.weights)
    else:
        model = Model(opt.cfg, ch=3, nc=nc, verbose=verbose).to(device)
    for k, v in model.named_parameters():
        v.requires_grad = not any(k.startswith(f'model.{j}.') for j in range(opt.freeze))
    return model


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


def restore_training_state(ckpt, optimizer, scaler, ema, hyp, hyp_changed, rank):
    """Load optimizer, scaler, EMA and RNG states of a resumed run; returns (start epoch, best fitness, results
    lines). With a new --hyp (fine-tune) its lr0, momentum and weight decay take effect on every group."""
    optimizer.load_state_dict(ckpt['optimizer'])
    if ckpt.get('scaler'):
        scaler.load_state_dict(ckpt['scaler'])
    if ema and ckpt.get('ema'):
        ema.ema.load_state_dict(ckpt['ema']['state_dict'])
        ema.updates = ckpt['ema_updates']
    if hyp_changed:
        for j, g in enumerate(optimizer.param_groups):
            g['initial_lr'] = hyp['lr0']
            g['momentum'] = hyp['momentum']
            if j == 1:
                g['weight_decay'] = hyp['weight_decay']
    set_rng_state(ckpt.get('rng'), rank)
    return ckpt['epoch'] + 1, ckpt['best_fitness'], list(ckpt.get('results') or [])


def rewrite_results(results_file, lines):
    """results.txt as of the checkpoint: a line written after it (killed in between) goes."""
    tmp = results_file.with_suffix('.tmp')
    tmp.write_text(''.join(line + '\n' for line in lines))
    os.replace(tmp, results_file)


def maybe_sync_bn(model, sync_bn, rank, device):
    if sync_bn and rank == -1:
        LOGGER.info('--sync-bn: one process, so plain BatchNorm (the same statistics) is used')
    elif sync_bn and device.type != 'cpu':
        LOGGER.info('Using SyncBatchNorm')
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model).to(device)
    elif sync_bn:
        LOGGER.warning('WARNING: --sync-bn needs CUDA; ignored on CPU')
    return model


def first_run_checks(dataset, model, hyp, imgsz, opt, save_dir, names):
    """Label statistics plot and the autoanchor check (new runs only, main process)."""
    labels = np.concatenate([x for x in dataset.labels if len(x)] or [np.zeros((0, 5))], 0)
    if len(labels):
        plot_labels(labels, save_dir, names)
    if not opt.noautoanchor:
        check_anchors(dataset, model, thr=hyp['anchor_t'], imgsz=imgsz, seed=opt.seed)


def wrap_ddp(model, rank, local_rank, device):
    """Under DDP: every rank starts from rank 0's anchors, and the model is wrapped."""
    if rank == -1:
        return model
    head = de_parallel(model).model[-1]
    dist.broadcast(head.anchors, 0)
    dist.broadcast(head.anchor_grid, 0)
    cuda = device.type != 'cpu'
    return DDP(model, device_ids=[local_rank] if cuda else None, output_device=local_rank if cuda else None)


def training_checkpoint(epoch, best_fitness, model, ema, optimizer, scaler, opt, hyp, results_lines, fitness_=None):
    """Everything a resume needs, as plain data (loadable with weights_only=True); hyp as given, unscaled."""
    return dict(checkpoint_header(epoch, best_fitness),
                model=model_payload(de_parallel(model)), ema=model_payload(ema.ema), ema_updates=ema.updates,
                optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                opt={k: _plain(v) for k, v in vars(opt).items()}, hyp=hyp, rng=rng_state(),
                results=list(results_lines), fitness=fitness_, torch=str(torch.__version__))


def sample_image_weights(dataset, class_weights, maps, nc, rank, device):
    """--image-weights: draw this epoch's images by class weights (rank 0 draws, the others follow)."""
    if rank in (-1, 0):
        w = class_weights * (1 - maps) ** 2
        dataset.indices = random.choices(range(dataset.n), weights=image_weights_from_labels(dataset.labels, nc, w),
                                         k=dataset.n)
    if rank != -1:
        indices = torch.tensor(dataset.indices if rank == 0 else [0] * dataset.n, device=device)
        dist.broadcast(indices, 0)
        dataset.indices = indices.cpu().tolist()


def autocast(device, amp_dtype):
    """Mixed precision for the forward pass and loss: float16 on CUDA (published), bfloat16 on CUDA or CPU."""
    enabled = amp_dtype == 'bfloat16' or (amp_dtype == 'float16' and device.type == 'cuda')
    dtype = torch.bfloat16 if amp_dtype == 'bfloat16' else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def random_rescale(imgs, imgsz, stride):
    """--multi-scale: the batch resized to a random multiple of the stride in [0.5, 1.5] x imgsz."""
    sz = random.randrange(int(imgsz * 0.5), int(imgsz * 1.5) + stride) // stride * stride
    sf = sz / max(imgs.shape[2:])
    if sf != 1:
        ns = [math.ceil(x * sf / stride) * stride for x in imgs.shape[2:]]
        imgs = F.interpolate(imgs, size=ns, mode='bilinear', align_corners=False)
    return imgs


def agree_across_ranks(loop, finite, stop):
    """Under DDP all ranks agree on skipping a step and on stopping, or they would wait on each other."""
    if loop.rank == -1:
        return finite
    flags = torch.tensor([0. if finite else 1., float(stop['signal'] or 0)], device=loop.device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    stop['signal'] = int(flags[1].item()) or None
    return flags[0].item() == 0


def train_one_epoch(loop, epoch, accumulate, bad_steps, stop, last):
    """One pass over the training data. Returns (mean losses [box, obj, cls, total], progress row, accumulation,
    consecutive non-finite steps); stops early, with stop['signal'] set, on SIGINT/SIGTERM."""
    model, optimizer, device = loop.model, loop.optimizer, loop.device
    main_proc, cuda, nb = loop.rank in (-1, 0), device.type != 'cpu', len(loop.loader)
    model.train()
    mloss, row = torch.zeros(4, device=device), ''
    batches = enumerate(loop.loader)
    if main_proc:
        LOGGER.info(('\n' + '%10s' * 8), 'Epoch', 'gpu_mem', 'box', 'obj', 'cls', 'total', 'targets', 'img_size')
        batches = tqdm(batches, total=nb, leave=False)
    optimizer.zero_grad()
    for i, (imgs, targets, paths, _) in batches:
        ni = i + nb * epoch  # iterations since the start of training
        imgs = imgs.to(device, non_blocking=True).float() / 255.0
        if loop.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        if ni <= loop.warmup_iters:
            accumulate = warmup_step(optimizer, ni, loop.warmup_iters, loop.nominal_accumulate, loop.lr_lambda(epoch),
                                     loop.hyp['momentum'])
        if loop.multi_scale:
            imgs = random_rescale(imgs, loop.imgsz, loop.stride)
        with autocast(device, loop.amp_dtype):
            loss, loss_items = loop.loss_fn(model(imgs), targets.to(device))
            if loop.rank != -1:
                loss *= loop.world_size  # gradients are averaged across ranks
        finite = agree_across_ranks(loop, bool(torch.isfinite(loss).all()), stop)
        if stop['signal']:
            break
        if not finite:
            bad_steps += 1
            LOGGER.warning('WARNING: non-finite loss %s at epoch %g batch %g: step skipped', loss_items.tolist(),
                           epoch, i)
            optimizer.zero_grad()
            if bad_steps >= MAX_BAD_STEPS:
                raise TrainingStopped(f'{bad_steps} non-finite losses in a row: training stopped; the last good '
                                      f'checkpoint is {last}. Lower lr0 or check the labels.')
            continue
        bad_steps = 0
        loop.scaler.scale(loss).backward()
        if ni % accumulate == 0:
            loop.scaler.step(optimizer)
            loop.scaler.update()
            optimizer.zero_grad()
            if loop.ema:
                loop.ema.update(model)
        if main_proc:
            mloss = (mloss * i + loss_items) / (i + 1)
            mem = '%.3gG' % (torch.cuda.memory_reserved() / 1E9 if cuda else 0)
            row = ('%10s' * 2 + '%10.4g' * 6) % (f'{epoch}/{loop.epochs - 1}', mem, *mloss, targets.shape[0],
                                                 imgs.shape[-1])
            batches.set_description(row)
            if ni < 3 and loop.plot_dir is not None:
                plot_images(imgs, targets, paths, loop.plot_dir / f'train_batch{ni}.jpg', loop.names)
    return mloss, row, accumulate, bad_steps


TB_TAGS = ['train/box_loss', 'train/obj_loss', 'train/cls_loss', 'metrics/precision', 'metrics/recall',
           'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95', 'val/box_loss', 'val/obj_loss', 'val/cls_loss',
           'x/lr0', 'x/lr1', 'x/lr2']


def end_of_epoch(loop, epoch, row, mloss, lr, state, paths, opt, data, testloader, imgsz_test, tb_writer, hyp_given):
    """Main process, after each epoch: evaluate the EMA, log, save last.pt/best.pt, then append to results.txt.

    state holds best_fitness and results_lines (updated in place); returns (results, per-class mAPs).
    """
    loop.ema.update_attr(de_parallel(loop.model), include=EMA_ATTRIBUTES)
    final_epoch = epoch + 1 == loop.epochs
    results, maps = state['results'], state['maps']
    if not opt.notest or final_epoch:
        results, maps, _ = tester.test(data, batch_size=opt.batch_size, imgsz=imgsz_test, model=loop.ema.ema,
                                       single_cls=opt.single_cls, dataloader=testloader, save_dir=paths.save_dir,
                                       plots=final_epoch, compute_loss=loop.loss_fn)
    state['results_lines'].append(row + '%10.4g' * 7 % tuple(results))
    epoch_fitness = float(fitness(np.array(results).reshape(1, -1))[0])
    state['best_fitness'] = max(state['best_fitness'], epoch_fitness)
    if tb_writer:
        for x, tag in zip(list(mloss[:-1].tolist()) + list(results) + lr, TB_TAGS):
            tb_writer.add_scalar(tag, x, epoch)
    if not opt.nosave or final_epoch:  # checkpoint first: it carries the results lines
        ck = training_checkpoint(epoch, state['best_fitness'], loop.model, loop.ema, loop.optimizer, loop.scaler,
                                 opt, hyp_given, state['results_lines'], epoch_fitness)
        save_checkpoint(ck, paths.last)
        if state['best_fitness'] == epoch_fitness:
            save_checkpoint(ck, paths.best)
    with open(paths.results, 'a') as f:
        f.write(state['results_lines'][-1] + '\n')
    return results, maps


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

    start_epoch, best_fitness, results_lines = 0, 0.0, []
    if ckpt is not None:
        start_epoch, best_fitness, results_lines = restore_training_state(ckpt, optimizer, scaler, ema, hyp,
                                                                          opt.hyp_changed, rank)
        if main_proc:
            rewrite_results(paths.results, results_lines)
        LOGGER.info('Resuming %s from epoch %g to %g', paths.save_dir, start_epoch, opt.epochs)
        if start_epoch >= opt.epochs:
            raise ArgumentError(f'{opt.weights} has already trained {start_epoch} epochs: give --epochs above '
                                f'that to extend the run (e.g. the paper\'s fine-tune to 450)')
    scheduler.last_epoch = start_epoch - 1
    if ckpt is not None:
        set_epoch_lr(optimizer, lr_lambda, start_epoch)

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
                     rank, opt.world_size, opt.amp_dtype, opt.channels_last,
                     paths.save_dir if main_proc and ckpt is None else None, names)
    LOGGER.info('Image sizes %g train, %g test; %g dataloader workers; logging to %s; training for %g epochs',
                imgsz, imgsz_test, loader.num_workers, paths.save_dir, opt.epochs)
    state = {'best_fitness': best_fitness, 'results_lines': results_lines, 'results': (0,) * 7, 'maps': np.zeros(nc)}
    t0 = time.time()
    run_epochs(loop, start_epoch, scheduler, state, paths, opt, data, testloader, imgsz_test, tb_writer, hyp_given,
               dataset, class_weights)
    if main_proc:
        finish_run(paths)
        LOGGER.info('%g epochs completed in %.3f hours. Results in %s', opt.epochs - start_epoch,
                    (time.time() - t0) / 3600, paths.save_dir)
    return state['results']


def run_epochs(loop, start_epoch, scheduler, state, paths, opt, data, testloader, imgsz_test, tb_writer, hyp_given,
               dataset, class_weights):
    """The epoch loop, with SIGINT/SIGTERM saving last.pt (the interrupted epoch is redone on resume)."""
    main_proc, stop = loop.rank in (-1, 0), {'signal': None}

    def on_signal(signum, frame):
        stop['signal'] = signum
    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    accumulate, bad_steps = max(round(loop.nominal_accumulate), 1), 0
    try:
        for epoch in range(start_epoch, loop.epochs):
            if opt.image_weights:
                sample_image_weights(dataset, class_weights, state['maps'], len(class_weights), loop.rank, loop.device)
            if loop.rank != -1:
                loop.loader.sampler.set_epoch(epoch)
            mloss, row, accumulate, bad_steps = train_one_epoch(loop, epoch, accumulate, bad_steps, stop, paths.last)
            if stop['signal']:
                if main_proc:
                    save_checkpoint(training_checkpoint(epoch - 1, state['best_fitness'], loop.model, loop.ema,
                                                        loop.optimizer, loop.scaler, opt, hyp_given,
                                                        state['results_lines']), paths.last)
                what = f'{paths.last} saved; continue with python train.py --resume {paths.last}' if main_proc \
                    else f'rank {loop.rank} stopping (rank 0 saves {paths.last})'
                raise TrainingStopped(f'{signal.Signals(stop["signal"]).name} received: {what}',
                                      exit_code=128 + stop['signal'])
            lr = [g['lr'] for g in loop.optimizer.param_groups]
            scheduler.step()
            if main_proc:
                state['results'], state['maps'] = end_of_epoch(loop, epoch, row, mloss, lr, state, paths, opt, data,
                                                               testloader, imgsz_test, tb_writer, hyp_given)
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)


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
    p.add_argument('--hyp', type=str, default=None, help='hyperparameters path (default data/hyp.scratch.yaml)')
    p.add_argument('--epochs', type=int, default=None, help='total epochs (default 300)')
    p.add_argument('--batch-size', type=int, default=16, help='total batch size across all processes')
    p.add_argument('--img-size', '--img', nargs='+', type=int, default=[640, 640], help='train, test sizes')
    p.add_argument('--rect', action='store_true', help='rectangular training')
    p.add_argument('--resume', nargs='?', const=True, default=False, help='resume the latest or given last.pt')
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
    p.add_argument('--device', default='', help='cuda device, i.e. 0 or 0,1,2,3 or cpu')
    p.add_argument('--multi-scale', action='store_true', help='vary img-size +/- 50%%')
    p.add_argument('--single-cls', action='store_true', help='train as single-class dataset')
    p.add_argument('--adam', action='store_true', help='use torch.optim.Adam() optimizer')
    p.add_argument('--sync-bn', action='store_true', help='use SyncBatchNorm, only available in DDP mode')
    p.add_argument('--local_rank', '--local-rank', type=int, default=-1, help='DDP parameter, do not modify')
    p.add_argument('--workers', type=int, default=8, help='maximum dataloader workers')
    p.add_argument('--freeze', type=int, default=0, help='freeze the first N layers')
    p.add_argument('--seed', type=int, default=0, help='random seed')
    p.add_argument('--ddp-timeout', type=int, default=1800, help='seconds before a stuck DDP collective fails')
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


def resume_path(resume, project):
    """The last.pt to resume: the newest under --project for a bare --resume, a run folder's weights/last.pt,
    or the given file."""
    if resume is True:
        runs = sorted(Path(project).glob('**/last.pt'), key=lambda x: x.stat().st_mtime)
        if not runs:
            raise ArgumentError(f'--resume: no last.pt found under {project}: name the run folder or its '
                                f'weights/last.pt')
        return runs[-1]
    path = Path(resume)
    if path.is_dir():
        candidates = [path / 'weights' / 'last.pt', path / 'last.pt']
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ArgumentError(f'--resume {path}: a folder without weights/last.pt (looked for '
                                f'{candidates[0]}); was the run started with --nosave, or is this the project '
                                f'folder rather than a run folder?')
        return found
    if not path.is_file():
        raise ArgumentError(f'--resume {path}: no such file; give a run folder (runs/train/exp) or its '
                            f'weights/last.pt')
    return path


def resumed_options(opt, ckpt, path):
    """(options, hyp) of a resumed run: its saved options, with this command's --epochs, --hyp, --device and the
    process layout (rank, world size) taking precedence."""
    if ckpt.get('optimizer') is None:
        raise CheckpointError(f'{path} holds no training state (a stripped or released file): start a new run with '
                              f'--weights {path}')
    saved = argparse.Namespace(**{**vars(parse_opt([])), **ckpt['opt']})  # options added since: their defaults
    for k in ('local_rank', 'world_size', 'global_rank'):
        setattr(saved, k, getattr(opt, k))
    saved.device = opt.device or saved.device
    saved.epochs = opt.epochs or saved.epochs
    saved.hyp_changed = opt.hyp is not None
    saved.hyp = opt.hyp or saved.hyp
    saved.weights, saved.resume = str(path), True
    saved.save_dir = str(path.parent.parent)
    return saved, (ckpt['hyp'] if opt.hyp is None else load_hyp(opt.hyp))


def new_run_options(opt):
    """Fill a new run's defaults and its numbered run folder (in place); returns its hyperparameters."""
    opt.hyp_changed = False
    opt.epochs = 300 if opt.epochs is None else opt.epochs
    opt.hyp = opt.hyp or 'data/hyp.scratch.yaml'
    if not opt.cfg and not opt.weights:
        raise ArgumentError('give --cfg (train from scratch) or --weights (fine-tune)')
    for f, what in ((opt.cfg, 'model cfg'), (opt.data, 'data yaml'), (opt.hyp, 'hyp yaml')):
        if f and not Path(f).exists() and not (what == 'model cfg' and (Path('models') / Path(f).name).exists()):
            raise ArgumentError(f'{what} {f} not found')
    hyp = load_hyp(opt.hyp)
    opt.total_batch_size = opt.batch_size
    opt.save_dir = str(increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok or opt.evolve))
    return hyp


def run(**kwargs):
    """train.py from Python: run(cfg='models/yolov4-p5.yaml', data='data/coco.yaml', epochs=300, ...).

    Keyword names are the command-line flags with underscores (img_size=[896, 896], batch_size=64, ...).
    """
    return main(opt=options_from_kwargs(parse_opt, kwargs, 'train.run'))


def main(argv=None, opt=None):
    opt = opt or parse_opt(argv)
    opt.local_rank = int(os.environ.get('LOCAL_RANK', opt.local_rank))
    opt.world_size = int(os.environ.get('WORLD_SIZE', 1))
    opt.global_rank = int(os.environ.get('RANK', -1)) if opt.world_size > 1 or 'RANK' in os.environ else -1
    if opt.world_size == 1:
        opt.global_rank = opt.local_rank = -1
    set_logging(opt.global_rank)
    check_options(opt)
    ckpt = None
    if opt.resume:
        path = resume_path(opt.resume, opt.project)
        ckpt = load_checkpoint(path)
        opt, hyp = resumed_options(opt, ckpt, path)
    else:
        hyp = new_run_options(opt)
    if opt.total_batch_size % opt.world_size:
        raise ArgumentError(f'--batch-size {opt.total_batch_size} must be a multiple of the number of processes '
                            f'{opt.world_size}')
    device = select_device(opt.device, batch_size=opt.batch_size if opt.world_size == 1 else None)
    if opt.global_rank != -1:
        if device.type != 'cpu':
            torch.cuda.set_device(opt.local_rank)
            device = torch.device('cuda', opt.local_rank)
        dist.init_process_group(backend='nccl' if device.type != 'cpu' else 'gloo',
                                timeout=datetime.timedelta(seconds=opt.ddp_timeout))
    opt.batch_size = opt.total_batch_size // opt.world_size

    try:
        if opt.evolve:
            return evolve(hyp, opt, device)
        tb_writer = None
        if opt.global_rank in (-1, 0):
            from torch.utils.tensorboard import SummaryWriter
            tb_writer = SummaryWriter(log_dir=opt.save_dir)
        return train(hyp, opt, device, tb_writer, ckpt)
    except TrainingStopped as e:
        LOGGER.error('%s', e)
        sys.exit(e.exit_code)
    except UserError:
        raise
    except (RuntimeError, dist.DistBackendError) as e:
        if opt.global_rank == -1:
            raise
        LOGGER.error('rank %d: distributed training failed (another rank died or hung?): %s', opt.global_rank,
                     str(e).splitlines()[0] if str(e) else type(e).__name__)
        sys.exit(1)
    finally:
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
