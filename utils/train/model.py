"""The model a run trains: restored from a resumed checkpoint, transferred from --weights (a checkpoint of ours,
a released file or darknet .weights), or new from --cfg (a YAML or a darknet cfg); then SyncBatchNorm and DDP
for the run's processes."""
import logging

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from models.checkpoint import load_checkpoint, model_from_checkpoint, model_from_payload
from models.darknet import DarknetModel
from models.darknet_convert import load_darknet_model
from models.yolo import Model
from utils.train.checkpoint_layout import TrainingCheckpoint
from utils.loss import ComputeLoss
from utils.torch_utils import de_parallel, intersect_dicts

LOGGER = logging.getLogger('train')


def build_model(opt, nc, device, ckpt=None, verbose=True):
    """The model to train: restored from a resumed checkpoint, transferred from --weights (a .pt, or darknet
    .weights), or new from --cfg (a YAML, or a darknet .cfg); the first --freeze layers frozen; with the run's
    activation checkpointing and memory format."""
    if ckpt is not None:
        model = model_from_payload(TrainingCheckpoint.from_dict(ckpt).model, opt.weights).to(device)
    elif opt.weights:
        if str(opt.weights).endswith('.weights'):  # with its darknet cfg, or the YAML that describes it
            src = load_darknet_model(opt.weights, opt.cfg or None)
        else:
            src = model_from_checkpoint(load_checkpoint(opt.weights), opt.weights, prefer_ema=True)
        if opt.cfg:
            model = new_model(opt.cfg, nc, verbose)
        elif isinstance(src, DarknetModel):
            model = DarknetModel(text=src.to_cfg(), nc=nc).initialize_biases()
        else:
            model = Model(src.yaml, ch=3, nc=nc, verbose=verbose)
        model = model.to(device)
        sd = intersect_dicts(src.float().state_dict(), model.state_dict(), exclude=['anchor'] if opt.cfg else [])
        model.load_state_dict(sd, strict=False)
        LOGGER.info('Transferred %g/%g items from %s', len(sd), len(model.state_dict()), opt.weights)
    else:
        model = new_model(opt.cfg, nc, verbose).to(device)
    for k, v in model.named_parameters():
        v.requires_grad = not any(k.startswith(f'model.{j}.') for j in range(opt.freeze))
    model.activation_checkpointing = opt.activation_checkpointing
    if opt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_loss(model, hyp, nc):
    """The training loss of `model` for `nc` classes: its class gain scaled by nc / 80, as published."""
    return ComputeLoss(model, dict(hyp, cls=hyp['cls'] * nc / 80.))


def new_model(cfg, nc, verbose):
    """A model with fresh weights from --cfg: a YAML, or a darknet .cfg (path, or name in models/)."""
    if str(cfg).endswith('.cfg'):
        return DarknetModel(cfg, nc=nc).initialize_biases()
    return Model(cfg, ch=3, nc=nc, verbose=verbose)


def maybe_sync_bn(model, sync_bn, rank, device):
    if sync_bn and rank == -1:
        LOGGER.info('--sync-bn: one process, so plain BatchNorm (the same statistics) is used')
    elif sync_bn and device.type != 'cpu':
        LOGGER.info('Using SyncBatchNorm')
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model).to(device)
    elif sync_bn:
        LOGGER.warning('WARNING: --sync-bn needs CUDA; ignored on CPU')
    return model


def wrap_ddp(model, rank, local_rank, device):
    """Under DDP: every rank starts from rank 0's anchors, and the model is wrapped."""
    if rank == -1:
        return model
    head = de_parallel(model).model[-1]
    dist.broadcast(head.anchors, 0)
    dist.broadcast(head.anchor_grid, 0)
    cuda = device.type != 'cpu'
    return DDP(model, device_ids=[local_rank] if cuda else None, output_device=local_rank if cuda else None)
