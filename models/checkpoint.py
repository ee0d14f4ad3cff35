"""Checkpoint reading and writing that never runs code from a file.

Two formats are read:

* released checkpoints (the paper's `yolov4-p5.pt` etc.): `torch.save` of a dict whose `model` is a whole
  pickled `Model` in float16, naming `mish_cuda.MishCuda` (or a community rebuild's spelling) for the
  activation. They are unpickled with `torch.load(weights_only=True)` and an explicit allow-list of the
  classes such a file needs; the Mish spellings map onto `models.activations.Mish`, so no `mish_cuda`
  package is required.
* the project's own checkpoints (written by `save_checkpoint`, i.e. train.py): plain data only. The
  `model` (and `ema`) entries are `model_payload` dicts: {'yaml': config dict (or 'darknet_cfg': the cfg
  text of a darknet model), 'state_dict': ..., 'names': [...], 'nc': int, and for a model trained from a COCO
  JSON or VOC XML 'category_ids': [...], each class's category id}. The header (`checkpoint_header`)
  and the training state (optimizer, scaler, RNG states, results, options, hyperparameters) are described in
  docs/architecture.md.

A file that asks for any other class or function is refused with `CheckpointError` naming the file and it.
"""
import _compat_pickle
import datetime
import logging
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from models import common
from models.activations import Mish
from models.darknet import DarknetModel
from models.yolo import Detect, Model
from utils.downloads import RELEASE_PAGE, RELEASES, DownloadError, download_release, release_destination
from utils.errors import UserError, write_error_reason

LOGGER = logging.getLogger(__name__)

FORMAT = 'scaled-yolov4-checkpoint'
FORMAT_VERSION = 1
MISH_SPELLINGS = ('mish_cuda.MishCuda', 'mish_mish.MishCuda', 'mc.build.lib.mish_mish.MishCuda')


class CheckpointError(UserError, RuntimeError):
    """A weights file that cannot or must not be loaded; the message names the file and the reason."""


def _numpy_globals():
    """numpy classes and helpers a released `best_fitness` (a numpy array or scalar) needs, under both
    numpy 1 (`numpy.core`) and numpy 2 (`numpy._core`) module paths."""
    core = getattr(np, '_core', None) or np.core
    multiarray = core.multiarray
    out = [np.ndarray, np.dtype]
    for mod in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        out += [(multiarray._reconstruct, f'{mod}._reconstruct'), (multiarray.scalar, f'{mod}.scalar')]
    dtypes = getattr(np, 'dtypes', None)  # numpy >= 1.25: dtype instances have classes of their own
    if dtypes is not None:
        for name in ('Float64DType', 'Float32DType', 'Float16DType', 'Int64DType', 'Int32DType', 'BoolDType'):
            if hasattr(dtypes, name):
                out.append(getattr(dtypes, name))
    return out


def safe_globals():
    """The allow-list: every class a released or project checkpoint may name."""
    allowed = [Model, Detect, common.Conv, common.Bottleneck, common.BottleneckCSP, common.BottleneckCSP2,
               common.SPPCSP, common.Concat, Mish,
               nn.Conv2d, nn.BatchNorm2d, nn.Sequential, nn.ModuleList, nn.Upsample, nn.MaxPool2d, nn.Identity,
               nn.LeakyReLU, nn.Hardswish, nn.SiLU]
    allowed += [(Mish, name) for name in MISH_SPELLINGS]
    allowed += _numpy_globals()
    return allowed


def missing_weights_message(path):
    return (f"weights file {path} not found. The checkpoints released with the paper ({', '.join(RELEASES)}) "
            f"are downloaded into weights/ when named, or fetched by hand from {RELEASE_PAGE}. "
            f"Or train one: python train.py --cfg models/yolov4-p5.yaml --data data/coco.yaml --weights ''")


def _python3_name(qualified):
    """'commands.Popen' -> 'subprocess.Popen': torch.save's pickle protocol 2 writes Python 2 module names."""
    module, _, name = qualified.rpartition('.')
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f'{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}'


def load_checkpoint(path, map_location='cpu', download=True):
    """torch.load a checkpoint with weights_only=True and the allow-list; clear errors for bad files.

    A released checkpoint (utils.downloads.RELEASES) that is not on disk is downloaded first (weights/ for a
    bare name), unless download is False.
    """
    path = Path(path)
    if not path.is_file() and download and path.name in RELEASES:
        path = release_destination(path)
        if not path.is_file():
            try:
                download_release(path.name, path, validate=lambda p: _check_release(p, path.name))
            except DownloadError as e:
                raise CheckpointError(str(e)) from None
    if not path.is_file():
        raise CheckpointError(missing_weights_message(path))
    try:
        with torch.serialization.safe_globals(safe_globals()):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        m = re.search(r'GLOBAL (\S+)', msg) or re.search(r'unrecognized function (.+?)(?: which|$)', msg)
        if m:
            raise CheckpointError(f'{path}: refused to load: it asks for {_python3_name(m.group(1))!r}, which is not '
                                  f'a class a checkpoint may contain; nothing from the file was run') from None
        detail = re.search(r'WeightsUnpickler error:\s*(\S[^\n]*)', msg)
        detail = detail.group(1) if detail else 'not a pickle'
        raise CheckpointError(f'{path}: not a readable PyTorch checkpoint (truncated or another kind of file): '
                              f'{detail[:200]}') from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError) as e:
        raise CheckpointError(f'{path}: not a readable PyTorch checkpoint (truncated or another kind of file): '
                              f'{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}') from None
    if not isinstance(ckpt, dict) or 'model' not in ckpt:
        raise CheckpointError(f"{path}: not a Scaled-YOLOv4 checkpoint (no 'model' entry)")
    return ckpt


RELEASE_LEVELS = {'yolov4-p5': 3, 'yolov4-p6': 4, 'yolov4-p7': 5}  # detection levels of each released model


def _check_release(path, name):
    """A downloaded release must load safely and be the model its name says (P5/P6/P7: 3/4/5 output levels)."""
    model = model_from_checkpoint(load_checkpoint(path, download=False), path)
    levels = RELEASE_LEVELS[name.split('_')[0].removesuffix('.pt')]
    if model.model[-1].nl != levels:
        raise CheckpointError(f'it holds a model with {model.model[-1].nl} output levels, not the {levels} of {name}')


def half_state_dict(state_dict):
    """The state_dict with floating tensors in float16 (inference files)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}


def model_payload(model, half=False):
    """Plain-data description of a Model (its YAML config) or DarknetModel (its cfg text): config, state_dict,
    class names, class count."""
    sd = model.state_dict()
    config = {'darknet_cfg': model.to_cfg()} if isinstance(model, DarknetModel) else {'yaml': model.yaml}
    out = dict(config, state_dict=half_state_dict(sd) if half else sd, names=list(model.names), nc=model.nc)
    if getattr(model, 'category_ids', None) is not None:  # trained from a COCO JSON / VOC: class -> category id
        out['category_ids'] = [int(c) for c in model.category_ids]
    return out


def checkpoint_header(epoch, best_fitness, date=None):
    """The entries every project checkpoint starts with: format, version, epoch, best fitness, date."""
    return {'format': FORMAT, 'version': FORMAT_VERSION, 'epoch': epoch,
            'best_fitness': None if best_fitness is None else float(best_fitness),
            'date': date or datetime.datetime.now().isoformat(timespec='seconds')}


def strip_optimizer(src, dst):
    """Write dst: the float16 EMA model of checkpoint src, without optimizer or other training state."""
    ck = load_checkpoint(src)
    entry = ck.get('ema') or ck['model']
    best = ck.get('best_fitness')
    out = dict(checkpoint_header(-1, None if best is None else float(np.asarray(best).max()), ck.get('date')),
               model=dict(entry, state_dict=half_state_dict(entry['state_dict'])), ema=None, optimizer=None)
    save_checkpoint(out, dst)
    LOGGER.info('Inference weights (float16 EMA, no optimizer) of %s saved as %s (%.1f MB)', src, dst,
                Path(dst).stat().st_size / 1E6)
    return dst


def model_from_payload(payload, path='checkpoint'):
    """Rebuild a float32 Model or DarknetModel from `model_payload` data (an older file's 'hyp' entry is ignored)."""
    try:
        if 'darknet_cfg' in payload:
            model = DarknetModel(text=payload['darknet_cfg'], nc=payload.get('nc'))
        else:
            model = Model(payload['yaml'], nc=payload.get('nc'))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in payload['state_dict'].items()})
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f'{path}: model does not match its config: {str(e).splitlines()[0][:300]}') from None
    model.names = list(payload.get('names') or model.names)
    if payload.get('category_ids') is not None:
        model.category_ids = list(payload['category_ids'])
    return model


def _upgrade_released_model(model):
    """Make a model unpickled from a release (PyTorch 1.6-era module state, an older train.py) run today. PyTorch's
    own __setstate__ restores what 1.6 lacked (Upsample.recompute_scale_factor, Conv2d.padding_mode); this adds
    the names and nc the model lacks and drops the Detect grids cached at another size."""
    for m in model.modules():
        if isinstance(m, Detect):
            m.grid = [torch.zeros(1)] * m.nl
    if not hasattr(model, 'names'):
        model.names = [str(i) for i in range(model.yaml['nc'])]
    if not hasattr(model, 'nc'):
        model.nc = model.yaml['nc']
    return model


def model_from_checkpoint(ckpt, path='checkpoint', prefer_ema=True):
    """The float32 Model of a loaded checkpoint of either format (the EMA when the file has one)."""
    entry = (ckpt.get('ema') if prefer_ema else None) or ckpt['model']
    if isinstance(entry, Model):
        return _upgrade_released_model(entry).float()
    if isinstance(entry, dict) and 'state_dict' in entry:
        return model_from_payload(entry, path)
    raise CheckpointError(f"{path}: 'model' entry is a {type(entry).__name__}, not a Scaled-YOLOv4 model")


def _temp_path(path, pid):
    return path.with_name(f'.{path.name}.{pid}.tmp')


def save_checkpoint(ckpt, path, previous=None):
    """Write atomically: a temporary file in the same folder, fsync, then rename over the target. With `previous`
    (a second slot, last-previous.pt), the file being replaced is kept there (a hard link: no copy, no space),
    so that a checkpoint damaged later (a failing disk, a truncated copy) leaves one intact behind it.

    A kill at any moment leaves the previous file whole. A full disk or a read-only folder raises
    CheckpointError naming the file (the previous file is kept).
    """
    path = Path(path)
    tmp = _temp_path(path, os.getpid())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, 'wb') as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.is_file():
            keep_previous(path, Path(previous))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        reason = write_error_reason(e)
        if reason is None:
            raise
        raise CheckpointError(f'{reason} on {_device_of(path.parent)} writing {path}: {_after_write_error(path)}') \
            from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def keep_previous(path, previous):
    """previous becomes (atomically) another name of path's current file."""
    tmp = _temp_path(previous, os.getpid())
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # a file system without hard links: a copy
        shutil.copyfile(path, tmp)
    os.replace(tmp, previous)


def _after_write_error(path):
    """What a failed checkpoint write leaves, and what to do: continue from the checkpoint kept, or, when the run
    has none yet, start it again (there is nothing to resume)."""
    if path.exists():
        return f'the previous {path.name} is kept; free space and continue with --resume'
    if any((path.parent / name).is_file() for name in ('last.pt', 'last-previous.pt')):
        return 'free space and continue with --resume (last.pt is kept)'
    return 'no checkpoint of this run was written, so there is nothing to resume: free space and start it again'


def _device_of(folder):
    """The mount point that holds folder (for messages about full or read-only disks)."""
    p = Path(folder).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return str(p)


def remove_stale_temp_files(folder):
    """Remove temporary checkpoint files (.NAME.PID.tmp) that killed processes left in folder.

    A file whose process is still alive (another run writing into the same folder) is left alone.
    Returns the removed paths.
    """
    removed = []
    for tmp in Path(folder).glob('.*.tmp'):
        parts = tmp.name.rsplit('.', 2)
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid != os.getpid() and _pid_alive(pid):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError as e:
            LOGGER.warning('WARNING: stale temporary file %s not removed: %s', tmp, e)
    if removed:
        LOGGER.info('Removed %d temporary checkpoint file(s) left by an interrupted run in %s', len(removed), folder)
    return removed


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True
