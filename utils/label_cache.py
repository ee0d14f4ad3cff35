"""Scanning, verifying and caching a YOLO-format dataset's images and labels.

Each image is checked (readable, really an image, not truncated, at least 10 px) and its label file parsed
(5 numeric columns, integer class >= 0, coordinates in 0-1, duplicate rows dropped). Bad files are left out
and named once with the reason; the run goes on. Results are cached next to the labels in a numpy archive
(no pickle: loading a cache never runs code) with a format version and a hash of the files' paths, sizes and
modification times, so the cache is rebuilt by itself when the data changed, is unreadable, or comes from
another version or program.
"""
import hashlib
import io
import json
import logging
import os
import zipfile
import zlib
from multiprocessing.pool import ThreadPool
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from utils.packed import RaggedArrays
from utils.progress import progress

LOGGER = logging.getLogger(__name__)

CACHE_PROGRAM = 'scaled-yolov4-reimpl label cache'
CACHE_VERSION = 1
IMG_FORMATS = ('.bmp', '.jpg', '.jpeg', '.png', '.tif', '.tiff', '.dng', '.webp')
VID_FORMATS = ('.mov', '.avi', '.mp4', '.mpg', '.mpeg', '.m4v', '.wmv', '.mkv')
NUM_THREADS = min(8, max(1, os.cpu_count() or 1))
_ORIENTATION = next((k for k, v in ExifTags.TAGS.items() if v == 'Orientation'), 274)


def img2label_paths(img_paths):
    """Label path of each image: the last /images/ folder -> /labels/, extension -> .txt (published)."""
    sa, sb = f'{os.sep}images{os.sep}', f'{os.sep}labels{os.sep}'
    return [sb.join(x.rsplit(sa, 1)).rsplit('.', 1)[0] + '.txt' for x in img_paths]


def exif_size(img):
    """(width, height) of a PIL image after its EXIF rotation, as cv2.imread will deliver it."""
    s = img.size
    try:
        rotation = img.getexif().get(_ORIENTATION)
        if rotation in (5, 6, 7, 8):  # transposed, rotated 270, transversed, rotated 90: width <-> height
            s = (s[1], s[0])
    except (AttributeError, KeyError, IndexError, TypeError, ValueError, OSError):
        pass
    return s


def _check_image(im_file):
    """(width, height) of a valid image, else raise ValueError with the reason."""
    try:
        with Image.open(im_file) as im:  # PIL: verify() must come directly after open(), and leaves the
            im.verify()                  # image unusable, so size and EXIF need a second open
        with Image.open(im_file) as im:
            shape = exif_size(im)
            fmt = im.format
    except UnidentifiedImageError:
        raise ValueError('not an image file') from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f'corrupt image ({e})') from None
    if shape[0] < 10 or shape[1] < 10:
        raise ValueError(f'image size {shape[0]}x{shape[1]} is under 10 pixels')
    if fmt == 'JPEG':  # verify() does not decode
        truncated = jpeg_truncation(im_file)
        if truncated:
            raise ValueError(truncated)
    return shape


def jpeg_truncation(im_file):
    """'truncated JPEG (reason)' when a JPEG file does not decode to its end, else None: a file ending in the
    end-of-image marker is whole; one that does not (cut off, or with bytes after the marker) is decoded fully."""
    with open(im_file, 'rb') as f:
        f.seek(-2, 2)
        if f.read() == b'\xff\xd9':
            return None
    try:
        with Image.open(im_file) as im:
            im.load()
    except (OSError, SyntaxError, ValueError) as e:
        return f'truncated JPEG ({e})'
    return None


def _parse_labels(lb_file):
    """(labels (n, 5) float32, duplicates dropped) from a label file; raise ValueError with the reason."""
    with open(lb_file) as f:
        rows = [x.split() for x in f.read().strip().splitlines() if x.strip()]
    if not rows:
        return np.zeros((0, 5), dtype=np.float32), 0
    bad = [i + 1 for i, r in enumerate(rows) if len(r) != 5]
    if bad:
        raise ValueError(f'label row {bad[0]} has {len(rows[bad[0] - 1])} columns, expected 5 '
                         f'(class x_center y_center width height)')
    try:
        lb = np.array(rows, dtype=np.float32)
    except ValueError:
        raise ValueError('label file holds non-numeric values') from None
    if not np.isfinite(lb).all():
        raise ValueError('label file holds non-finite values')
    if (lb < 0).any():
        r = int(np.nonzero((lb < 0).any(1))[0][0]) + 1
        raise ValueError(f'negative class or coordinate in label row {r}')
    if (lb[:, 1:] > 1).any():
        r = int(np.nonzero((lb[:, 1:] > 1).any(1))[0][0]) + 1
        raise ValueError(f'coordinate > 1 in label row {r} (labels must be normalised to 0-1)')
    if (lb[:, 0] != np.round(lb[:, 0])).any():
        raise ValueError('non-integer class id')
    _, keep = np.unique(lb, axis=0, return_index=True)
    n_dup = len(lb) - len(keep)
    if n_dup:
        lb = lb[np.sort(keep)]
    return lb, n_dup


def verify_image_label(args):
    """(im_file, labels or None, (w, h) or None, status, message). status is one of
    'found', 'missing' (no label file: background), 'empty' (background), 'corrupt'."""
    im_file, lb_file = args
    try:
        shape = _check_image(im_file)
        if not os.path.isfile(lb_file):
            return im_file, np.zeros((0, 5), dtype=np.float32), shape, 'missing', '', 0
        lb, n_dup = _parse_labels(lb_file)
        msg = f'{lb_file}: {n_dup} duplicate label rows dropped' if n_dup else ''
        return im_file, lb, shape, 'found' if len(lb) else 'empty', msg, n_dup
    except (ValueError, OSError) as e:
        return im_file, None, None, 'corrupt', f'{im_file}: left out: {e}', 0


def files_hash(paths):
    """Hash of paths, sizes and modification times: changes when any file is added, removed or edited."""
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f'{p}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
        except OSError:
            h.update(f'{p}\0missing\n'.encode())
    return h.hexdigest()


def load_cache(path, expected_hash):
    """The cached scan if it is ours, of this version and of these files; else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z['meta']))
            if (meta.get('program'), meta.get('version'), meta.get('hash')) != \
                    (CACHE_PROGRAM, CACHE_VERSION, expected_hash):
                return None
            files, labels = [str(x) for x in z['files']], RaggedArrays(z['labels'], z['offsets'])
            if len(labels) != len(files) or labels.offsets[-1] != len(labels.data):
                return None
            arrays = {k[len('extra_'):]: z[k] for k in z.files if k.startswith('extra_')}
            return {'files': files, 'shapes': z['shapes'], 'labels': labels, 'stats': meta['stats'],
                    'messages': meta['messages'], 'arrays': arrays, 'extra': meta.get('extra', {})}
    except (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, zipfile.BadZipFile, zlib.error):
        return None  # damaged (truncated, flipped bits), foreign or stale: rebuilt by the caller


def save_cache(path, scan, file_hash):
    """Write the scan next to the labels atomically; warn and go on if the folder is read-only."""
    labels = scan['labels']
    meta = {'program': CACHE_PROGRAM, 'version': CACHE_VERSION, 'hash': file_hash, 'stats': scan['stats'],
            'messages': scan['messages'], 'extra': scan.get('extra', {})}  # extra: COCO / VOC class mapping
    buf = io.BytesIO()
    arrays = {f'extra_{k}': v for k, v in scan.get('arrays', {}).items()}  # e.g. COCO image ids
    np.savez(buf, meta=np.array(json.dumps(meta)), files=np.array(scan['files']), shapes=scan['shapes'],
             labels=labels.data.astype(np.float32), offsets=labels.offsets, **arrays)
    tmp = Path(f'{path}.{os.getpid()}.tmp')
    try:
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)
        LOGGER.info('New label cache written: %s', path)
    except OSError as e:
        LOGGER.warning('WARNING: label cache not written to %s (%s): the dataset is used without it',
                       path, e.strerror or e)
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only file system refuses even removing a file that is not there
            pass


def scan_dataset(img_files, label_files, prefix=''):
    """Verify all images and labels in parallel; returns the scan dict (good files only) and logs a summary."""
    files, labels, shapes, messages = [], [], [], []
    stats = {'found': 0, 'missing': 0, 'empty': 0, 'corrupt': 0, 'duplicate': 0}
    desc = f'{prefix}Scanning images and labels'
    with ThreadPool(NUM_THREADS) as pool:
        it = pool.imap(verify_image_label, zip(img_files, label_files), chunksize=16)
        pbar = progress(it, desc=desc, total=len(img_files), disable=not img_files, leave=False)
        for im_file, lb, shape, status, msg, n_dup in pbar:
            stats[status] += 1
            stats['duplicate'] += n_dup
            if msg:
                messages.append(msg)
            if status != 'corrupt':
                files.append(im_file)
                labels.append(lb)
                shapes.append(shape)
            pbar.set_description(f"{desc}: {stats['found']} found, {stats['missing']} missing, "
                                 f"{stats['empty']} empty, {stats['corrupt']} corrupt", refresh=False)
    return {'files': files, 'labels': RaggedArrays.pack(labels, 5),
            'shapes': np.array(shapes, dtype=np.float64).reshape(-1, 2), 'stats': stats, 'messages': messages}


def cached_scan(img_files, label_files, cache_path, prefix='', write=True):
    """The scan of these files, from the cache when it is valid, else scanned now (and cached if `write`)."""
    h = files_hash(list(img_files) + list(label_files))
    scan = load_cache(cache_path, h)
    source = f'cache {cache_path}'
    if scan is None:
        scan = scan_dataset(img_files, label_files, prefix)
        source = 'scan'
        if write:
            save_cache(cache_path, scan, h)
    s = scan['stats']
    for msg in scan['messages']:
        LOGGER.warning('%sWARNING: %s', prefix, msg)
    LOGGER.info('%s%d images: %d labelled, %d missing labels, %d empty, %d corrupt, %d duplicate rows dropped '
                '(from %s)', prefix, len(img_files), s['found'], s['missing'], s['empty'], s['corrupt'],
                s['duplicate'], source)
    return scan
