"""Train Scaled-YOLOv4 with the paper's recipe (SPEC section 11) on one or many GPUs, or on CPUs.

    python train.py --cfg models/yolov4-p5.yaml --data data/coco.yaml --weights '' --img 896 896 --batch-size 64
    torchrun --nproc_per_node 4 train.py ... --sync-bn          (or python -m torch.distributed.launch ...)
    python train.py --resume [runs/train/exp/weights/last.pt] [--epochs 450 --hyp data/hyp.finetune.yaml]
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
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import test as tester  # test.py
from models.yolo import Model
from utils.autoanchor import check_anchors
from utils.checkpoint import (CheckpointError, load_checkpoint, model_from_checkpoint, model_payload,
                              remove_stale_temp_files, save_checkpoint, FORMAT, FORMAT_VERSION)
from utils.data_config import load_data_config
from utils.datasets import check_label_classes, create_dataloader
from utils.errors import ArgumentError, ArgumentParser, UserError, check_at_least, run_cli
from utils.general import check_img_size, increment_path, options_from_kwargs, set_logging
from utils.loss import compute_loss
from utils.metrics import fitness
from utils.plots import plot_images, plot_labels, plot_results
from utils.torch_utils import ModelEMA, de_parallel, intersect_dicts, select_device
from utils.train_utils import (EVOLVE_META, class_weights_from_labels, image_weights_from_labels, mutate_hyp,
                               rng_state, set_rng_state)

LOGGER = logging.getLogger('train')
NBS = 64  # nominal batch size
MAX_BAD_STEPS = 10  # consecutive non-finite losses before the run stops


class TrainingStopped(RuntimeError):
    """Training ended early (signal or non-finite losses); exit_code is what train.py exits with."""

    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code


def _plain(v):
    """Options as plain data for weights_only checkpoints and yaml."""
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def build_optimizer(model, hyp, adam=False):
    """Three groups (SPEC 11): BatchNorm and other non-decayed weights, conv weights (decay), biases."""
    pg0, pg1, pg2 = [], [], []
    for k, v in model.named_parameters():
        if not v.requires_grad:
            continue
        if '.bias' in k:
            pg2.append(v)
        elif '.weight' in k and '.bn' not in k:
            pg1.append(v)
        else:
            pg0.append(v)
    if adam:
        optimizer = torch.optim.Adam(pg0, lr=hyp['lr0'], betas=(hyp['momentum'], 0.999))
    else:
        optimizer = torch.optim.SGD(pg0, lr=hyp['lr0'], momentum=hyp['momentum'], nesterov=True)
    optimizer.add_param_group({'params': pg1, 'weight_decay': hyp['weight_decay']})
    optimizer.add_param_group({'params': pg2})
    LOGGER.info('Optimizer groups: %g .bias, %g conv.weight, %g other', len(pg2), len(pg1), len(pg0))
    return optimizer


def train(hyp, opt, device, tb_writer=None, ckpt=None):
    """Train with options `opt` (train.py's argparse namespace); returns the final test results."""
    rank, local_rank, world_size = opt.global_rank, opt.local_rank, opt.world_size
    main_proc = rank in (-1, 0)
    save_dir = Path(opt.save_dir)
    wdir = save_dir / 'weights'
    last, best = wdir / 'last.pt', wdir / 'best.pt'
    results_file = save_dir / 'results.txt'
    epochs, batch_size, total_batch_size = opt.epochs, opt.batch_size, opt.total_batch_size
    cuda = device.type != 'cpu'
    hyp_given, hyp = dict(hyp), dict(hyp)  # checkpoints keep the hyperparameters as given, unscaled
    if main_proc:
        wdir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(wdir)  # a run killed while saving leaves .last.pt.<pid>.tmp behind
        with open(save_dir / 'hyp.yaml', 'w') as f:
            yaml.safe_dump(hyp, f, sort_keys=False)
        with open(save_dir / 'opt.yaml', 'w') as f:
            yaml.safe_dump({k: _plain(v) for k, v in vars(opt).items()}, f, sort_keys=False)

    seed = opt.seed + 1 + max(rank, 0)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    data = load_data_config(opt.data, required=('nc', 'train', 'val'))
    nc = 1 if opt.single_cls else data['nc']
    names = ['item'] if opt.single_cls else data['names']

    # Model
    pretrained = ckpt is None and bool(opt.weights)
    if ckpt is not None:  # resume
        model = Model(ckpt['model']['yaml'], ch=3, nc=nc).to(device)
        model.load_state_dict(ckpt['model']['state_dict'])
    elif pretrained:
        wckpt = load_checkpoint(opt.weights)
        src = model_from_checkpoint(wckpt, opt.weights, prefer_ema=True)
        model = Model(opt.cfg or src.yaml, ch=3, nc=nc, verbose=main_proc).to(device)
        sd = intersect_dicts(src.float().state_dict(), model.state_dict(), exclude=['anchor'] if opt.cfg else [])
        model.load_state_dict(sd, strict=False)
        LOGGER.info('Transferred %g/%g items from %s', len(sd), len(model.state_dict()), opt.weights)
        del wckpt, src
    else:
        model = Model(opt.cfg, ch=3, nc=nc, verbose=main_proc).to(device)
    for i, (k, v) in enumerate(model.named_parameters()):
        v.requires_grad = not any(k.startswith(f'model.{j}.') for j in range(opt.freeze))

    gs = int(model.stride.max())
    imgsz, imgsz_test = [check_img_size(x, gs) for x in opt.img_size]
    dataloader, dataset = create_dataloader(data['train'], imgsz, batch_size, gs, single_cls=opt.single_cls,
                                            hyp=hyp, augment=True, cache=opt.cache_images, rect=opt.rect,
                                            rank=rank, world_size=world_size, workers=opt.workers,
                                            image_weights=opt.image_weights, prefix='train: ', shuffle=True,
                                            seed=opt.seed)
    check_label_classes(dataset, nc)
    if dataloader.batch_size * world_size != total_batch_size:  # fewer images than the batch asked for
        LOGGER.warning('WARNING: --batch-size %d is more than the %d training images: batches of %d are used, '
                       'and weight decay and accumulation follow that', total_batch_size, len(dataset),
                       dataloader.batch_size * world_size)
        total_batch_size = dataloader.batch_size * world_size
    accumulate = max(round(NBS / total_batch_size), 1)
    hyp['weight_decay'] *= total_batch_size * accumulate / NBS
    optimizer = build_optimizer(model, hyp, opt.adam)
    lf = lambda x: ((1 + math.cos(x * math.pi / epochs)) / 2) * 0.8 + 0.2  # noqa: E731 cosine 1 -> 0.2
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
    scaler = torch.amp.GradScaler('cuda', enabled=cuda)
    ema = ModelEMA(model) if main_proc else None

    start_epoch, best_fitness, results_lines = 0, 0.0, []
    if ckpt is not None:
        optimizer.load_state_dict(ckpt['optimizer'])
        if ckpt.get('scaler'):
            scaler.load_state_dict(ckpt['scaler'])
        if ema and ckpt.get('ema'):
            ema.ema.load_state_dict(ckpt['ema']['state_dict'])
            ema.updates = ckpt['ema_updates']
        best_fitness = ckpt['best_fitness']
        start_epoch = ckpt['epoch'] + 1
        results_lines = list(ckpt.get('results') or [])
        if opt.hyp_changed:  # fine-tune: new hyperparameters take effect on every group
            for j, g in enumerate(optimizer.param_groups):
                g['initial_lr'] = hyp['lr0']
                g['momentum'] = hyp['momentum']
                if j == 1:
                    g['weight_decay'] = hyp['weight_decay']
        set_rng_state(ckpt.get('rng'), rank)
        if main_proc:  # results.txt as of the checkpoint: a line written after it (killed in between) goes
            tmp = results_file.with_suffix('.tmp')
            tmp.write_text(''.join(line + '\n' for line in results_lines))
            os.replace(tmp, results_file)
        LOGGER.info('Resuming %s from epoch %g to %g', save_dir, start_epoch, epochs)
        if start_epoch >= epochs:
            raise ArgumentError(f'{opt.weights} has already trained {start_epoch} epochs: give --epochs above '
                                f'that to extend the run (e.g. the paper\'s fine-tune to 450)')
    scheduler.last_epoch = start_epoch - 1
    if ckpt is not None:  # the resumed epoch's rate on the (possibly extended) schedule
        for g in optimizer.param_groups:
            g['lr'] = g['initial_lr'] * lf(start_epoch)

    if opt.sync_bn and rank == -1:
        LOGGER.info('--sync-bn: one process, so plain BatchNorm (the same statistics) is used')
    elif opt.sync_bn:
        if cuda:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model).to(device)
            LOGGER.info('Using SyncBatchNorm')
        else:
            LOGGER.warning('WARNING: --sync-bn needs CUDA; ignored on CPU')

    nb = len(dataloader)
    testloader = None
    if main_proc:
        testloader = create_dataloader(data['val'], imgsz_test, batch_size, gs, single_cls=opt.single_cls,
                                       hyp=hyp, cache=opt.cache_images and not opt.notest, rect=True, rank=-1,
                                       world_size=world_size, workers=opt.workers, pad=0.5, prefix='val: ')[0]
        if ckpt is None:
            labels = np.concatenate([x for x in dataset.labels if len(x)] or [np.zeros((0, 5))], 0)
            if len(labels):
                plot_labels(labels, save_dir, names)
            if not opt.noautoanchor:
                check_anchors(dataset, model, thr=hyp['anchor_t'], imgsz=imgsz, seed=opt.seed)
    if rank != -1:  # every rank starts from rank 0's anchors
        dist.broadcast(de_parallel(model).model[-1].anchors, 0)
        dist.broadcast(de_parallel(model).model[-1].anchor_grid, 0)
        model = DDP(model, device_ids=[local_rank] if cuda else None, output_device=local_rank if cuda else None)

    hyp['cls'] *= nc / 80.
    m = de_parallel(model)
    m.nc, m.hyp, m.gr, m.names = nc, hyp, 1.0, names
    m.class_weights = class_weights_from_labels(dataset.labels, nc).to(device)
    if ema:
        ema.update_attr(m, include=('nc', 'hyp', 'gr', 'names', 'yaml', 'stride'))

    nw = max(3 * nb, 1000)  # warm-up iterations
    maps = np.zeros(nc)
    results = (0, 0, 0, 0, 0, 0, 0)
    stop = {'signal': None}

    def on_signal(signum, frame):
        stop['signal'] = signum
    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def checkpoint(epoch, fi=None):
        return {'format': FORMAT, 'version': FORMAT_VERSION, 'epoch': epoch, 'best_fitness': float(best_fitness),
                'model': model_payload(de_parallel(model)), 'ema': model_payload(ema.ema), 'ema_updates': ema.updates,
                'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict(),
                'opt': {k: _plain(v) for k, v in vars(opt).items()}, 'hyp': hyp_given, 'rng': rng_state(),
                'results': list(results_lines), 'fitness': fi,
                'date': datetime.datetime.now().isoformat(timespec='seconds'), 'torch': str(torch.__version__)}

    LOGGER.info('Image sizes %g train, %g test; %g dataloader workers; logging to %s; training for %g epochs',
                imgsz, imgsz_test, dataloader.num_workers, save_dir, epochs)
    t0 = time.time()
    bad_steps = 0
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, epochs):
            model.train()
            if opt.image_weights:
                if main_proc:
                    w = m.class_weights.cpu().numpy() * (1 - maps) ** 2
                    iw = image_weights_from_labels(dataset.labels, nc, w)
                    dataset.indices = random.choices(range(dataset.n), weights=iw, k=dataset.n)
                if rank != -1:
                    indices = torch.tensor(dataset.indices if main_proc else [0] * dataset.n, device=device)
                    dist.broadcast(indices, 0)
                    dataset.indices = indices.cpu().tolist()
            if rank != -1:
                dataloader.sampler.set_epoch(epoch)
            mloss = torch.zeros(4, device=device)
            pbar = enumerate(dataloader)
            if main_proc:
                LOGGER.info(('\n' + '%10s' * 8), 'Epoch', 'gpu_mem', 'GIoU', 'obj', 'cls', 'total', 'targets',
                            'img_size')
                pbar = tqdm(pbar, total=nb, leave=False)
            optimizer.zero_grad()
            for i, (imgs, targets, paths, _) in pbar:
                ni = i + nb * epoch
                imgs = imgs.to(device, non_blocking=True).float() / 255.0
                if ni <= nw:  # warm-up
                    xi = [0, nw]
                    accumulate = max(1, int(np.interp(ni, xi, [1, NBS / total_batch_size]).round()))
                    for j, x in enumerate(optimizer.param_groups):
                        x['lr'] = float(np.interp(ni, xi, [0.1 if j == 2 else 0.0, x['initial_lr'] * lf(epoch)]))
                        if 'momentum' in x:
                            x['momentum'] = float(np.interp(ni, xi, [0.9, hyp['momentum']]))
                if opt.multi_scale:
                    sz = random.randrange(int(imgsz * 0.5), int(imgsz * 1.5) + gs) // gs * gs
                    sf = sz / max(imgs.shape[2:])
                    if sf != 1:
                        ns = [math.ceil(x * sf / gs) * gs for x in imgs.shape[2:]]
                        imgs = F.interpolate(imgs, size=ns, mode='bilinear', align_corners=False)
                with torch.autocast(device_type='cuda', enabled=cuda):
                    pred = model(imgs)
                    loss, loss_items = compute_loss(pred, targets.to(device), model)
                    if rank != -1:
                        loss *= world_size  # gradients are averaged across ranks
                finite = bool(torch.isfinite(loss).all())
                if rank != -1:  # all ranks agree on skipping and stopping, or they would wait on each other
                    flags = torch.tensor([0. if finite else 1., float(stop['signal'] or 0)], device=device)
                    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                    finite, stop['signal'] = flags[0].item() == 0, int(flags[1].item()) or None
                if stop['signal']:
                    break
                if not finite:
                    bad_steps += 1
                    LOGGER.warning('WARNING: non-finite loss %s at epoch %g batch %g: step skipped',
                                   loss_items.tolist(), epoch, i)
                    optimizer.zero_grad()
                    if bad_steps >= MAX_BAD_STEPS:
                        raise TrainingStopped(f'{bad_steps} non-finite losses in a row: training stopped; the last '
                                              f'good checkpoint is {last}. Lower lr0 or check the labels.')
                    continue
                bad_steps = 0
                scaler.scale(loss).backward()
                if ni % accumulate == 0:
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad()
                    if ema:
                        ema.update(model)
                if main_proc:
                    mloss = (mloss * i + loss_items) / (i + 1)
                    mem = '%.3gG' % (torch.cuda.memory_reserved() / 1E9 if cuda else 0)
                    s = ('%10s' * 2 + '%10.4g' * 6) % (f'{epoch}/{epochs - 1}', mem, *mloss, targets.shape[0],
                                                       imgs.shape[-1])
                    pbar.set_description(s)
                    if ni < 3 and ckpt is None:
                        plot_images(imgs, targets, paths, save_dir / f'train_batch{ni}.jpg', names)
            if stop['signal']:
                if main_proc:  # the interrupted epoch is redone on resume
                    save_checkpoint(checkpoint(epoch - 1), last)
                what = f'{last} saved; continue with python train.py --resume {last}' if main_proc else \
                    f'rank {rank} stopping (rank 0 saves {last})'
                raise TrainingStopped(f'{signal.Signals(stop["signal"]).name} received: {what}',
                                      exit_code=128 + stop['signal'])

            lr = [x['lr'] for x in optimizer.param_groups]
            scheduler.step()
            if main_proc:
                ema.update_attr(m, include=('nc', 'hyp', 'gr', 'names', 'yaml', 'stride', 'class_weights'))
                final_epoch = epoch + 1 == epochs
                if not opt.notest or final_epoch:
                    results, maps, _ = tester.test(data, batch_size=batch_size, imgsz=imgsz_test, model=ema.ema,
                                                   single_cls=opt.single_cls, dataloader=testloader,
                                                   save_dir=save_dir, plots=final_epoch)
                results_lines.append(s + '%10.4g' * 7 % tuple(results))
                fi = float(fitness(np.array(results).reshape(1, -1))[0])
                if fi > best_fitness:
                    best_fitness = fi
                if tb_writer:
                    tags = ['train/giou_loss', 'train/obj_loss', 'train/cls_loss', 'metrics/precision',
                            'metrics/recall', 'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95', 'val/giou_loss',
                            'val/obj_loss', 'val/cls_loss', 'x/lr0', 'x/lr1', 'x/lr2']
                    for x, tag in zip(list(mloss[:-1].tolist()) + list(results) + lr, tags):
                        tb_writer.add_scalar(tag, x, epoch)
                if not opt.nosave or final_epoch:  # checkpoint first: it carries the results lines
                    ck = checkpoint(epoch, fi)
                    save_checkpoint(ck, last)
                    if best_fitness == fi:
                        save_checkpoint(ck, best)
                    del ck
                with open(results_file, 'a') as f:
                    f.write(results_lines[-1] + '\n')
    finally:
        for s_, h in old_handlers.items():
            signal.signal(s_, h)

    if main_proc:
        plot_results(save_dir)
        src = best if best.exists() else last
        if src.exists():
            strip_optimizer(src, wdir / 'final.pt')
        LOGGER.info('%g epochs completed in %.3f hours. Results in %s', epochs - start_epoch,
                    (time.time() - t0) / 3600, save_dir)
    return results


def strip_optimizer(src, dst):
    """A float16 inference file of a checkpoint's EMA model (no optimizer or training state)."""
    ck = load_checkpoint(src)
    entry = ck.get('ema') or ck['model']
    out = {'format': FORMAT, 'version': FORMAT_VERSION, 'epoch': -1, 'best_fitness': ck.get('best_fitness'),
           'model': dict(entry, state_dict={k: v.half() if v.is_floating_point() else v
                                             for k, v in entry['state_dict'].items()}),
           'ema': None, 'optimizer': None, 'date': ck.get('date')}
    save_checkpoint(out, dst)
    LOGGER.info('Optimizer stripped from %s, float16 inference weights saved as %s (%.1f MB)', src, dst,
                Path(dst).stat().st_size / 1E6)


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
    if opt.batch_size % opt.world_size:
        raise ArgumentError(f'--batch-size {opt.batch_size} must be a multiple of the number of processes '
                            f'{opt.world_size}')

    ckpt = None
    if opt.resume:
        path = resume_path(opt.resume, opt.project)
        ckpt = load_checkpoint(path)
        if 'optimizer' not in ckpt or ckpt.get('optimizer') is None:
            raise CheckpointError(f'{path} holds no training state (a stripped or released file): use --weights')
        saved = argparse.Namespace(**ckpt['opt'])
        new_epochs, new_hyp, device_arg = opt.epochs, opt.hyp, opt.device
        local_rank, world_size, global_rank = opt.local_rank, opt.world_size, opt.global_rank
        opt = saved
        opt.local_rank, opt.world_size, opt.global_rank = local_rank, world_size, global_rank
        opt.device = device_arg or opt.device
        opt.epochs = new_epochs or opt.epochs
        opt.hyp_changed = new_hyp is not None
        opt.hyp = new_hyp or opt.hyp
        opt.weights, opt.resume = str(path), True
        opt.save_dir = str(path.parent.parent)
        if new_hyp is None:
            hyp = ckpt['hyp']
        else:
            with open(new_hyp) as f:
                hyp = yaml.safe_load(f)
    else:
        opt.hyp_changed = False
        opt.epochs = 300 if opt.epochs is None else opt.epochs
        opt.hyp = opt.hyp or 'data/hyp.scratch.yaml'
        if not opt.cfg and not opt.weights:
            raise ArgumentError('give --cfg (train from scratch) or --weights (fine-tune)')
        for f, what in ((opt.cfg, 'model cfg'), (opt.data, 'data yaml'), (opt.hyp, 'hyp yaml')):
            if f and not Path(f).exists() and not (what == 'model cfg' and (Path('models') / Path(f).name).exists()):
                raise ArgumentError(f'{what} {f} not found')
        with open(opt.hyp) as f:
            hyp = yaml.safe_load(f)
        opt.total_batch_size = opt.batch_size
        opt.save_dir = str(increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok or opt.evolve))

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
