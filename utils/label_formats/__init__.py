"""Labels straight from annotation tools' formats: COCO instances JSON and Pascal VOC XML (docs/labels.md).

A data yaml's `train:`, `val:` or `test:` may name a COCO JSON (utils/label_formats/coco_json.py) or a VOC
source (utils/label_formats/voc.py) instead of YOLO images and labels. `label_source(path)` tells which;
`scan_labels` reads it, through a label cache next to it keyed on the JSON's content (or the VOC files' paths,
sizes and times) and checked against the images' paths, sizes and times, so a warm start reads no JSON.

What the data yaml says beside a split (its images folder, class names, whether VOC difficult objects are
trained on) reaches the dataset through `register`, called by utils.data_config.load_data_config: train.py and
test.py hand the dataset only the split's path.
"""
import hashlib
import logging
from pathlib import Path

import numpy as np

from utils.label_cache import files_hash, load_cache, save_cache
from utils.label_formats.common import LabelFormatError  # noqa: F401  (re-exported)

LOGGER = logging.getLogger(__name__)

_OPTIONS = {}  # resolved split path -> {'images': folder, 'names': [...], 'train_difficult': bool}
FORMAT_VERSION = 1  # part of every cache key: bump when the labels read from the same files change


def _key(path):
    return str(Path(path).resolve())


def register(path, **options):
    """Remember what the data yaml says about the labels at `path` (images, names, train_difficult)."""
    _OPTIONS[_key(path)] = {k: v for k, v in options.items() if v is not None}


def label_source(path):
    """'coco' (a .json file), 'voc' (a VOC root, ImageSets list or folder of XML files) or None (YOLO)."""
    from utils.label_formats.voc import voc_pairs
    if isinstance(path, (list, tuple)):
        kinds = {label_source(p) for p in path}
        if 'coco' in kinds:
            raise LabelFormatError(f'{", ".join(str(p) for p in path)}: a split names one COCO JSON (merge the JSON '
                                   f'files into one, or give the others as another split)')
        return 'voc' if kinds == {'voc'} else None
    if not isinstance(path, (str, Path)):
        return None
    if str(path).lower().endswith('.json'):
        return 'coco'
    return 'voc' if voc_pairs(path) is not None else None


def image_folders(json_path, images=None):
    """Folders to look for a COCO JSON's file names in, first match wins: the data yaml's `images`, else the
    JSON's own folder (Roboflow), then ROOT/images/SPLIT, ROOT/SPLIT and ROOT/images, where ROOT is the folder
    above the JSON's and SPLIT its name without 'instances_' (COCO: annotations/instances_val2017.json with
    images/val2017/ or val2017/; CVAT and Label Studio: annotations/x.json or x.json with images/)."""
    if images:
        return [str(images)]
    p = Path(json_path)
    root, split = p.parent.parent, p.stem.replace('instances_', '')
    return [str(x) for x in (p.parent, root / 'images' / split, root / split, root / 'images', p.parent / 'images')]


def content_hash(path):
    """sha256 of a file's bytes, read in 16 MB blocks: the key of a COCO JSON's label cache."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 24), b''):
            h.update(block)
    return h.hexdigest()


def cache_path_of(path):
    """Where the label cache of a source goes: next to it, as NAME.cache (a folder: FOLDER.cache)."""
    p = Path(path[0] if isinstance(path, (list, tuple)) else path)
    return p.with_suffix('.cache') if p.is_file() else p.parent / f'{p.name}.cache'


def _scan_key(kind, path, opts):
    """(cache key, function making the scan) of a source: its content or files, the options and FORMAT_VERSION."""
    from utils.label_formats import coco_json, voc
    names = opts.get('names')
    if kind == 'coco':
        folders = image_folders(path, opts.get('images'))
        parts = [content_hash(path), *folders]
        return parts + [repr(names)], lambda prefix: coco_json.scan_coco(path, folders, names, prefix)
    paths = path if isinstance(path, (list, tuple)) else [path]
    pairs = [pair for p in paths for pair in voc.voc_pairs(p)]
    keep = bool(opts.get('train_difficult'))
    flat = [str(x) for pair in pairs for x in pair if x is not None]
    source = ', '.join(str(p) for p in paths)
    return [files_hash(flat), repr(names), str(keep)], lambda prefix: voc.scan_voc(pairs, names, keep, source, prefix)


def scan_labels(path, prefix='', write=True):
    """The scan of a COCO or VOC source (a dict as utils.label_cache.scan_dataset returns, with 'arrays' and
    'extra'), from its cache when the cache is of these labels and images, else read now (and cached if
    `write`). The one or few lines of what was left out, dropped or clipped are logged each time."""
    kind = label_source(path)
    first = path[0] if isinstance(path, (list, tuple)) else path
    opts = _OPTIONS.get(_key(first), {})
    parts, make = _scan_key(kind, path, opts)
    key = hashlib.sha256('\0'.join([kind, str(FORMAT_VERSION), *parts]).encode()).hexdigest()
    cache = cache_path_of(path)
    scan = load_cache(cache, key)
    source = f'cache {cache}'
    if scan is not None and scan['extra'].get('images_hash') != files_hash(scan['files']):
        scan = None  # an image added, removed or changed since the cache was written
    if scan is None:
        scan = make(prefix)
        scan['extra']['images_hash'] = files_hash(scan['files'])
        source = 'read'
        if write:
            save_cache(cache, scan, key)
    _log_scan(kind, first, scan, source, prefix)
    return scan


def _log_scan(kind, path, scan, source, prefix):
    s = scan['stats']
    for msg in scan['messages']:
        LOGGER.warning('%sWARNING: %s', prefix, msg)
    n_boxes = len(scan['labels'].data)
    ignored = (f'{s.get("crowd", 0)} crowd boxes kept for evaluation only' if kind == 'coco' else
               f'{s.get("difficult", 0)} difficult objects')
    LOGGER.info('%s%s: %d images (%d left out), %d boxes for training, %s, %d dropped (zero size), %d outside the '
                'image, %d clipped to it (from %s)', prefix, path, len(scan['files']), s.get('left_out', 0), n_boxes,
                ignored, s.get('zero_size', 0), s.get('outside', 0), s.get('clipped', 0), source)
    if s.get('zero_size') or s.get('outside') or s.get('clipped'):
        LOGGER.warning('%sWARNING: %s: %d boxes of zero or negative size and %d wholly outside their image dropped, '
                       '%d clipped to the image: check the export if these are many', prefix, path,
                       s.get('zero_size', 0), s.get('outside', 0), s.get('clipped', 0))


def split_arrays(scan, path):
    """(image ids int64, label files) of a scan's images, in the scan's order."""
    n = len(scan['files'])
    ids = np.asarray(scan['arrays'].get('image_ids', np.arange(1, n + 1)), dtype=np.int64)
    files = scan['arrays'].get('label_files')
    files = [str(x) for x in files] if files is not None and len(files) == n else [str(path)] * n
    return ids, files


def ground_truth(dataset):
    """(COCO ground-truth dict, {image path: image id}, category ids scored, the file) of a dataset read from a
    COCO JSON (that JSON itself, read whole: a validation split's) or VOC XML (converted, utils/label_formats/voc.py),
    for pycocotools."""
    import json
    src = dataset.label_source
    ids = {f: int(i) for f, i in zip(dataset.img_files, dataset.image_ids)}
    cat_ids = [int(c) for c in src['category_ids'] if c >= 0]
    if src['kind'] == 'coco':
        with open(src['path'], encoding='utf-8') as f:
            return json.load(f), ids, cat_ids, src['path']
    from utils.label_formats.voc import ground_truth as voc_ground_truth
    return voc_ground_truth(list(dataset.label_files), dataset.image_ids, src['names']), ids, cat_ids, src['path']
