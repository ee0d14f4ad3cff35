"""COCO instances JSON (COCO itself, CVAT, Label Studio, Roboflow's COCO export) read straight into training labels.

The JSON is streamed (utils/label_formats/json_stream.py): only each image's id, file name and size, and each
annotation's image, category, box and crowd flag are kept, in flat arrays, so COCO train2017's 450 MB JSON is read
without building its Python objects. Category ids become class indices in the JSON's category order, or by name
when the data yaml gives `names`. Crowd boxes (`iscrowd: 1`) are left out of the training targets (COCO's
protocol; test.py scores against the JSON itself, where pycocotools ignores detections on them). Boxes of zero or
negative size are dropped and boxes reaching outside the image clipped, both counted; annotations of unknown
images or categories are dropped and counted; duplicate image ids and a JSON that is not COCO instances are
errors naming the file.
"""
import logging
import os
from array import array
from pathlib import Path

import numpy as np

from utils.label_formats.common import LabelFormatError, check_images, normalised_labels, readable_images
from utils.label_formats.json_stream import JSONStreamError, stream_object

LOGGER = logging.getLogger(__name__)


def _not_coco(path, what):
    return LabelFormatError(f'{path} is not a COCO instances JSON ({what}): give the instances JSON of an object '
                            f'detection export (with images, annotations and categories), or YOLO labels')


class _Columns:
    """Handlers for stream_object that keep the few fields needed, in compact arrays."""

    def __init__(self, path):
        self.path = path
        self.img_id, self.width, self.height, self.file_names = array('q'), array('d'), array('d'), []
        self.ann_img, self.ann_cat, self.box, self.crowd = array('q'), array('q'), array('d'), array('b')
        self.categories = []

    def image(self, im):
        try:
            self.img_id.append(int(im['id']))
            self.file_names.append(str(im['file_name']))
            self.width.append(float(im['width']))
            self.height.append(float(im['height']))
        except (KeyError, TypeError, ValueError) as e:
            raise _not_coco(self.path, f'image entry {len(self.file_names)} lacks or has a bad {e}') from None

    def annotation(self, a):
        try:
            x, y, w, h = (float(v) for v in a['bbox'])
            self.ann_img.append(int(a['image_id']))
            self.ann_cat.append(int(a['category_id']))
        except (KeyError, TypeError, ValueError) as e:
            raise _not_coco(self.path, f'annotation {len(self.ann_img)} lacks or has a bad {e}: a bbox of 4 '
                                       f'numbers, an image_id and a category_id are needed') from None
        self.box.extend((x, y, w, h))
        self.crowd.append(1 if a.get('iscrowd') else 0)

    def category(self, c):
        try:
            self.categories.append((int(c['id']), str(c['name'])))
        except (KeyError, TypeError, ValueError) as e:
            raise _not_coco(self.path, f'category {len(self.categories)} lacks or has a bad {e}') from None


def read_instances(path):
    """The fields of a COCO instances JSON that training needs, as a dict of numpy arrays: img_id, width, height,
    file_names (list), ann_img, ann_cat, box (n, 4) x y w h, crowd, categories [(id, name)]."""
    cols = _Columns(path)
    handlers = {'images': cols.image, 'annotations': cols.annotation, 'categories': cols.category}
    try:
        with open(path, encoding='utf-8') as f:
            top = stream_object(f, handlers)
    except JSONStreamError as e:
        if str(e).startswith("expected '{' at character 0, found '['"):
            raise _not_coco(path, 'a list at its top level, not an object: a detections file?') from None
        raise LabelFormatError(f'{path} is not valid JSON ({e}): export the annotations again') from None
    except UnicodeDecodeError as e:
        raise LabelFormatError(f'{path} is not UTF-8 text ({e.reason} at byte {e.start}): is it a JSON file?') \
            from None
    missing = [k for k in handlers if not isinstance(top.get(k), int)]
    if missing:
        raise _not_coco(path, f'no {" / ".join(missing)} array')
    return {'img_id': np.frombuffer(cols.img_id, np.int64), 'width': np.frombuffer(cols.width, np.float64),
            'height': np.frombuffer(cols.height, np.float64), 'file_names': cols.file_names,
            'ann_img': np.frombuffer(cols.ann_img, np.int64), 'ann_cat': np.frombuffer(cols.ann_cat, np.int64),
            'box': np.frombuffer(cols.box, np.float64).reshape(-1, 4),
            'crowd': np.frombuffer(cols.crowd, np.int8).astype(bool), 'categories': cols.categories}


def class_map(path, categories, names=None):
    """(category id of each class index, names, {category id: class index}). With `names`, categories are matched
    by name (those not in names are left out, with a warning); without, classes follow the JSON's category order."""
    ids = [c for c, _ in categories]
    if len(set(ids)) != len(ids):
        dup = next(c for c in ids if ids.count(c) > 1)
        raise LabelFormatError(f'{path}: category id {dup} is listed more than once: make category ids unique')
    if not names:
        return ids, [n for _, n in categories], {c: i for i, c in enumerate(ids)}
    by_name = {}
    for c, n in categories:
        by_name.setdefault(n, c)
    absent = [n for n in names if n not in by_name]
    if len(absent) == len(names):
        raise LabelFormatError(f'{path}: none of the data yaml\'s names is a category of this JSON (it has '
                               f'{", ".join(n for _, n in categories[:5])}...): fix names in the data yaml, or '
                               f'leave names out to take the JSON\'s categories')
    unused = [n for _, n in categories if n not in names]
    if unused:
        LOGGER.warning('WARNING: %s: %d categories not in the data yaml\'s names are left out: %s', path,
                       len(unused), ', '.join(unused[:10]))
    cat_ids = [by_name.get(n, -1) for n in names]  # -1: a name without a category in this JSON
    return cat_ids, list(names), {c: i for i, c in enumerate(cat_ids) if c >= 0}


def check_unique_ids(path, img_id):
    """Duplicate image ids make annotations ambiguous: refuse them, naming one and the count."""
    u, counts = np.unique(img_id, return_counts=True)
    if (counts > 1).any():
        raise LabelFormatError(f'{path}: image id {int(u[counts > 1][0])} appears {int(counts[counts > 1][0])} '
                               f'times ({int((counts > 1).sum())} duplicated ids): give every image a unique id')


def _annotation_classes(path, d, to_class, stats, messages):
    """(image index, class, crowd) of each annotation, -1 where the image or category is unknown (counted)."""
    order = np.argsort(d['img_id'], kind='stable')
    sorted_ids = d['img_id'][order]
    pos = np.clip(np.searchsorted(sorted_ids, d['ann_img']), 0, max(len(sorted_ids) - 1, 0))
    known_img = (sorted_ids[pos] == d['ann_img']) if len(sorted_ids) else np.zeros(len(d['ann_img']), bool)
    img_index = np.where(known_img, order[pos] if len(order) else 0, -1)
    cats = np.array(sorted(to_class), dtype=np.int64)
    cls_of = np.array([to_class[c] for c in cats], dtype=np.int64)
    cpos = np.clip(np.searchsorted(cats, d['ann_cat']), 0, max(len(cats) - 1, 0))
    known_cat = (cats[cpos] == d['ann_cat']) if len(cats) else np.zeros(len(d['ann_cat']), bool)
    cls = np.where(known_cat, cls_of[cpos] if len(cls_of) else 0, -1)
    listed = {c for c, _ in d['categories']}
    stats['unknown_image'] = int((~known_img).sum())
    stats['unknown_category'] = int((known_img & ~known_cat & np.isin(d['ann_cat'], list(listed), invert=True)).sum())
    stats['not_in_names'] = int((known_img & ~known_cat).sum()) - stats['unknown_category']
    for key, what in (('unknown_image', 'of image ids not in its images'),
                      ('unknown_category', 'of category ids not in its categories')):
        if stats[key]:
            bad = d['ann_img'] if key == 'unknown_image' else d['ann_cat']
            mask = ~known_img if key == 'unknown_image' else (known_img & ~known_cat)
            messages.append(f'{path}: {stats[key]} annotations {what} left out (e.g. id {int(bad[mask][0])}): fix '
                            f'the export, or ignore this if they belong to images you removed')
    return img_index, cls


def scan_coco(path, images_dir, names=None, prefix=''):
    """The label scan of a COCO instances JSON whose file names are under images_dir: a dict as
    utils.label_cache.scan_dataset returns (files sorted by path, labels, shapes, stats, messages), plus
    arrays={'image_ids'} and extra={'category_ids', 'names'} for evaluation and checkpoints."""
    d = read_instances(path)
    check_unique_ids(path, d['img_id'])
    cat_ids, names, to_class = class_map(path, d['categories'], names)
    stats, messages = {'images': len(d['img_id']), 'annotations': len(d['ann_img']), 'crowd': 0}, []
    img_index, cls = _annotation_classes(path, d, to_class, stats, messages)
    usable = (img_index >= 0) & (cls >= 0)
    crowd = usable & d['crowd']
    stats['crowd'] = int(crowd.sum())
    train = usable & ~d['crowd']
    xyxy = d['box'][train].copy()
    xyxy[:, 2:] += xyxy[:, :2]
    size = np.stack((d['width'], d['height']), 1)
    labels = normalised_labels(len(d['img_id']), img_index[train], cls[train], xyxy, size, stats)
    images_dir = pick_folder(path, images_dir, d['file_names']) if isinstance(images_dir, list) else images_dir
    files = [os.path.join(images_dir, f) for f in d['file_names']]
    checked = check_images(files, prefix)
    good = readable_images(path, files, checked, stats, messages)
    _note_size_mismatch(path, [files[i] for i in good], size[good], [checked[i][0] for i in good], messages)
    shapes = np.array([checked[i][0] for i in good], dtype=np.float64).reshape(-1, 2)
    return {'files': [files[i] for i in good], 'labels': labels.take(good), 'shapes': shapes, 'stats': stats,
            'messages': messages, 'arrays': {'image_ids': d['img_id'][good].copy()},
            'extra': {'category_ids': [int(c) for c in cat_ids], 'names': list(names)}}


def pick_folder(json_path, folders, file_names):
    """Of the candidate folders, the one that holds most of the JSON's first 20 file names; an error naming the
    JSON and the folders tried when none holds any."""
    probe = file_names[:20]
    if len(folders) == 1 or not probe:
        return folders[0]
    hits = [sum((Path(folder) / f).is_file() for f in probe) for folder in folders]
    if max(hits):
        return folders[hits.index(max(hits))]
    raise LabelFormatError(f'{json_path}: its images (e.g. {probe[0]}) are in none of {", ".join(folders)}: give '
                           f'the folder that holds them as images: FOLDER (or images: {{train: ..., val: ...}}) in '
                           f'the data yaml')


def _note_size_mismatch(path, files, annotated, actual, messages):
    """Labels are normalised by the JSON's width and height (the frame they were drawn in); an image of another
    size (resized since, or turned by EXIF orientation) gets one warning line with the count."""
    if not files:
        return
    off = np.nonzero((np.asarray(actual, np.float64).reshape(-1, 2) != annotated).any(1))[0]
    if len(off):
        i = int(off[0])
        messages.append(f'{path}: {len(off)} images differ in size from their width and height in the JSON (e.g. '
                        f'{files[i]}: {actual[i][0]}x{actual[i][1]}, JSON {annotated[i][0]:g}x{annotated[i][1]:g}):'
                        f' boxes are scaled with the image; check that the JSON belongs to these images')


def read_categories(path):
    """[(id, name)] of a COCO JSON without reading the rest: its "categories" array is found by a search of the
    bytes (COCO puts it last, after 450 MB of annotations) and decoded alone; else the JSON is streamed."""
    import json
    import mmap
    try:
        with open(path, 'rb') as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            at = m.rfind(b'"categories"')
            while at >= 0:
                colon = m.find(b':', at + 12)
                start = m.find(b'[', colon)
                if colon >= 0 and m[at + 12:colon].strip() == b'' and m[colon + 1:start].strip() == b'':
                    end = m.find(b']', start)
                    while end >= 0:  # the array ends at the first ']' after which it decodes
                        try:
                            cats = json.loads(m[start:end + 1].decode('utf-8'))
                            cols = _Columns(path)
                            for c in cats:
                                cols.category(c)
                            return cols.categories
                        except (ValueError, UnicodeDecodeError):
                            end = m.find(b']', end + 1)
                at = m.rfind(b'"categories"', 0, at)
    except (OSError, ValueError):
        pass  # an empty file cannot be mapped: read_instances says what is wrong
    return read_instances(path)['categories']
