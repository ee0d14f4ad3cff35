"""General helpers: logging setup, options from keywords, run folders, image-size checks.

The box helpers and NMS live in utils.boxes and utils.nms; the published import locations are kept here.
"""
import glob
import logging
import math
import re
from pathlib import Path


from utils.boxes import box_iou, clip_coords, scale_coords, xywh2xyxy, xyxy2xywh  # noqa: F401  (published names)
from utils.nms import non_max_suppression  # noqa: F401  (published name)

LOGGER = logging.getLogger(__name__)


def set_logging(rank=-1, verbose=True):
    """Plain-message logging on rank -1/0, warnings only on the other DDP ranks."""
    logging.basicConfig(format='%(message)s',
                        level=logging.INFO if (verbose and rank in (-1, 0)) else logging.WARNING, force=True)


def options_from_kwargs(parse_opt, kwargs, prog):
    """A script's parsed defaults updated with keyword arguments named like its flags (underscores)."""
    opt = parse_opt([])
    unknown = set(kwargs) - set(vars(opt))
    if unknown:
        raise TypeError(f'{prog}: unknown options {sorted(unknown)}')
    vars(opt).update(kwargs)
    return opt


def make_divisible(x, divisor):
    """Smallest multiple of divisor that is >= x."""
    return math.ceil(x / divisor) * divisor


def check_img_size(img_size, s=32):
    """img_size rounded up to a multiple of the stride s, with a warning when it changes."""
    new_size = make_divisible(img_size, int(s))
    if new_size != img_size:
        LOGGER.warning('WARNING: --img-size %g must be a multiple of max stride %g, updating to %g',
                       img_size, s, new_size)
    return new_size


def increment_path(path, exist_ok=False, sep='', mkdir=False):
    """runs/exp -> runs/exp, runs/exp2, runs/exp3, ... : the first that does not exist (or path if exist_ok).

    Never deletes or reuses an existing run folder unless exist_ok.
    """
    path = Path(path)
    if path.exists() and not exist_ok:
        dirs = glob.glob(f'{path}{sep}*')
        matches = [re.fullmatch(rf'{re.escape(path.name)}{re.escape(sep)}(\d+)', Path(d).name) for d in dirs]
        n = max([int(m.group(1)) for m in matches if m] + [1]) + 1
        path = Path(f'{path}{sep}{n}')
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path
