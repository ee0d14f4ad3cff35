"""What the COCO and VOC readers share: pixel boxes to normalised YOLO rows, and the images' check."""
import logging
import os
from multiprocessing.pool import ThreadPool

import numpy as np

from utils.errors import UserError
from utils.label_cache import NUM_THREADS, _check_image
from utils.packed import RaggedArrays
from utils.progress import progress

LOGGER = logging.getLogger(__name__)


class LabelFormatError(UserError, ValueError):
    """Labels that cannot be read (not COCO instances, malformed or hostile XML, duplicate ids); the message names
    the file and what to do."""


def normalised_labels(n_images, img_index, cls, xyxy, size, stats):
    """RaggedArrays of each image's (k, 5) [class, x_center, y_center, width, height] rows normalised by the
    image's annotated size, from pixel corners `xyxy` of the boxes that belong to image `img_index` (in the
    boxes' order). Boxes of zero or negative size are dropped, boxes reaching outside the image clipped to it;
    stats['zero_size'] and stats['clipped'] count them."""
    xyxy = np.asarray(xyxy, np.float64).reshape(-1, 4)
    wh = size[img_index] if len(img_index) else np.zeros((0, 2))
    bad = ~((xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1]))
    clipped = np.concatenate((np.clip(xyxy[:, :2], 0, wh), np.clip(xyxy[:, 2:], 0, wh)), 1)
    moved = ~bad & (clipped != xyxy).any(1)
    gone = ~bad & ~((clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1]))  # wholly outside
    keep = ~bad & ~gone
    stats['zero_size'] = stats.get('zero_size', 0) + int(bad.sum())
    stats['outside'] = stats.get('outside', 0) + int(gone.sum())
    stats['clipped'] = stats.get('clipped', 0) + int((moved & keep).sum())
    b, wh, idx = clipped[keep], wh[keep], np.asarray(img_index)[keep]
    rows = np.stack((np.asarray(cls, np.float64)[keep], (b[:, 0] + b[:, 2]) / 2 / wh[:, 0],
                     (b[:, 1] + b[:, 3]) / 2 / wh[:, 1], (b[:, 2] - b[:, 0]) / wh[:, 0],
                     (b[:, 3] - b[:, 1]) / wh[:, 1]), 1).astype(np.float32)
    order = np.argsort(idx, kind='stable')  # grouped by image, each image's boxes in their given order
    counts = np.bincount(idx, minlength=n_images)
    return RaggedArrays(rows[order], np.concatenate(([0], np.cumsum(counts))).astype(np.int64))


def _check(path):
    try:
        if not os.path.isfile(path):
            return None, 'missing image file'
        return _check_image(path), ''
    except (ValueError, OSError) as e:
        return None, str(e)


def check_images(files, prefix=''):
    """[(width, height) or None, reason] of each image: verified as the YOLO scan does (readable, an image, not
    truncated, at least 10 px), in parallel."""
    with ThreadPool(NUM_THREADS) as pool:
        it = pool.imap(_check, files, chunksize=16)
        return list(progress(it, desc=f'{prefix}Checking images', total=len(files), disable=not files, leave=False))


def summarise_missing(label_file, bad, what='image files'):
    """One warning line for left-out images: the count, the first few names and what to do."""
    if not bad:
        return ''
    listing = '; '.join(f'{f} ({why})' for f, why in bad[:5]) + (f'; and {len(bad) - 5} more' if len(bad) > 5 else '')
    return (f'{label_file}: {len(bad)} {what} left out: {listing}: put the files in place (or fix the '
            f'images folder in the data yaml) and the next run reads them')


def readable_images(source, files, checked, stats, messages):
    """The indices of the images that check_images found readable, in the order of their paths; the others are
    counted in stats['left_out'] and named in one message of `messages`."""
    order = sorted(range(len(files)), key=files.__getitem__)
    good = [i for i in order if checked[i][0] is not None]
    bad = [(files[i], checked[i][1]) for i in order if checked[i][0] is None]
    stats['left_out'] = len(bad)
    if bad:
        messages.append(summarise_missing(source, bad))
    return good
