"""Pascal VOC XML (VOC itself, LabelImg) read straight into training labels and COCO-style ground truth.

Sources: a VOC root (VOCdevkit/VOC2007: Annotations/, JPEGImages/), a list in its ImageSets/Main/ (trainval.txt:
one image id a line), or a folder of XML files beside their images (LabelImg). Class indices follow the data
yaml's `names` (by default the 20 VOC classes).

Coordinates: VOC numbers pixels from 1 and a box's xmax, ymax are the last pixel inside it (the devkit's width is
xmax - xmin + 1). In the continuous frame used here (pixel i covers [i, i + 1) from 0) the box is
[xmin - 1, ymin - 1, xmax, ymax]: the same width and height as the devkit's. docs/fidelity.md says more.
`difficult` objects are left out of the training targets by default and are ignored in evaluation (as iscrowd in
the COCO-style ground truth: a detection on them neither counts nor costs), as the VOC protocol does.

The XML is parsed with xml.etree after a guard: a file that declares a DTD or entities (<!DOCTYPE, <!ENTITY) is
refused, so entity expansion ("billion laughs") or external entities never reach the parser.
"""
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from utils.label_cache import IMG_FORMATS, img2label_paths
from utils.label_formats.common import LabelFormatError, check_images, normalised_labels, readable_images

VOC_NAMES = ['aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'diningtable',
             'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor']
_HOSTILE = re.compile(rb'<!\s*(DOCTYPE|ENTITY)', re.IGNORECASE)


def voc_pairs(path):
    """[(xml file, image file or None)] of a VOC source, or None when `path` is not one."""
    p = Path(path)
    if p.is_file() and p.suffix == '.txt' and p.parent.name == 'Main' and p.parent.parent.name == 'ImageSets':
        root = p.parents[2]
        ids = [x.split()[0] for x in p.read_text().splitlines() if x.strip()]
        return [(root / 'Annotations' / f'{i}.xml', _image_beside(root / 'JPEGImages', i)) for i in ids]
    if p.is_dir() and (p / 'Annotations').is_dir():
        return [(x, _image_beside(p / 'JPEGImages', x.stem)) for x in sorted((p / 'Annotations').glob('*.xml'))]
    if p.is_dir() and not _has_yolo_labels(p) and next(p.glob('*.xml'), None) is not None:
        return [(x, _image_beside(p, x.stem)) for x in sorted(p.glob('*.xml'))]
    return None


def _has_yolo_labels(folder):
    """A folder of images whose YOLO labels folder exists stays a YOLO dataset, XML files beside or not."""
    labels = Path(img2label_paths([str(folder / 'x.jpg')])[0]).parent
    return labels != folder and labels.is_dir()


def _image_beside(folder, stem):
    for ext in IMG_FORMATS:
        for e in (ext, ext.upper()):
            f = folder / f'{stem}{e}'
            if f.is_file():
                return f
    return None


def read_xml(path):
    """The XML root of a VOC annotation, parsed safely; LabelFormatError for a hostile or malformed file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise LabelFormatError(f'{path}: cannot be read ({e.strerror or e}): restore the file or remove its image '
                               f'from the list') from None
    if _HOSTILE.search(data):
        raise LabelFormatError(f'{path}: refused: it declares a DTD or entities (<!DOCTYPE or <!ENTITY), which can '
                               f'expand without bound; VOC annotations need neither: remove the declaration')
    try:
        return ET.fromstring(data)
    except ET.ParseError as e:
        raise LabelFormatError(f'{path}: malformed XML ({e}): fix or re-export the annotation') from None


def parse_annotation(path):
    """(filename or None, (width, height) or None, [(name, difficult, xmin, ymin, xmax, ymax)]) of a VOC XML, the
    coordinates as written (1-based)."""
    root = read_xml(path)
    if root.tag != 'annotation':
        raise LabelFormatError(f'{path}: not a VOC annotation (root element <{root.tag}>, expected <annotation>)')
    try:
        w, h = (float(root.findtext(f'size/{k}') or 0) for k in ('width', 'height'))
        objects = []
        for o in root.iter('object'):
            b = o.find('bndbox')
            objects.append((o.findtext('name', '').strip(), int(float(o.findtext('difficult') or 0)),
                            *(float(b.findtext(k)) for k in ('xmin', 'ymin', 'xmax', 'ymax'))))
    except (TypeError, ValueError, AttributeError):
        raise LabelFormatError(f'{path}: an object lacks a numeric bndbox (xmin, ymin, xmax, ymax) or size: fix or '
                               f're-export the annotation') from None
    return root.findtext('filename'), ((w, h) if w > 0 and h > 0 else None), objects


def voc_box(xmin, ymin, xmax, ymax):
    """VOC's 1-based inclusive pixel box -> continuous corners x1, y1, x2, y2 (module docstring)."""
    return xmin - 1, ymin - 1, xmax, ymax


def _read_all(pairs, names, source):
    """Parse every XML: (xml files, image files, annotated sizes or None, rows [(i, class, difficult, x1, y1, x2,
    y2)], stats, messages); objects whose name is not in names are left out and counted."""
    index = {n: i for i, n in enumerate(names)}
    xmls, imgs, sizes, rows, unknown = [], [], [], [], {}
    for xml, img in pairs:
        filename, size, objects = parse_annotation(xml)
        if img is None:
            folder = Path(xml).parent.parent / 'JPEGImages' if Path(xml).parent.name == 'Annotations' \
                else Path(xml).parent
            img = folder / (filename or f'{Path(xml).stem}.jpg')
        i = len(xmls)
        xmls.append(str(xml))
        imgs.append(str(img))
        sizes.append(size)
        for name, difficult, *box in objects:
            if name in index:
                rows.append((i, index[name], difficult, *voc_box(*box)))
            else:
                unknown[name] = unknown.get(name, 0) + 1
    stats, messages = {'images': len(xmls), 'annotations': len(rows) + sum(unknown.values())}, []
    stats['not_in_names'] = sum(unknown.values())
    if unknown:
        messages.append(f'{source}: {stats["not_in_names"]} objects of classes not in the data yaml\'s names left '
                        f'out ({", ".join(sorted(unknown)[:10])}): add them to names to train on them')
    return xmls, imgs, sizes, rows, stats, messages


def scan_voc(pairs, names=None, keep_difficult=False, source='', prefix=''):
    """The label scan of VOC annotations: a dict as utils.label_cache.scan_dataset returns (files sorted by
    path, labels, shapes, stats, messages), plus arrays={'image_ids', 'label_files'} and extra={'category_ids',
    'names'}; `difficult` objects are left out of the labels unless keep_difficult."""
    names = list(names or VOC_NAMES)
    xmls, imgs, sizes, rows, stats, messages = _read_all(pairs, names, source)
    checked = check_images(imgs, prefix)
    size = np.array([s or c[0] or (1, 1) for s, c in zip(sizes, checked)], dtype=np.float64).reshape(-1, 2)
    r = np.array(rows, dtype=np.float64).reshape(-1, 7)
    difficult = r[:, 2] > 0
    stats['difficult'] = int(difficult.sum())
    train = np.ones(len(r), bool) if keep_difficult else ~difficult
    labels = normalised_labels(len(xmls), r[train, 0].astype(np.int64), r[train, 1], r[train, 3:], size, stats)
    good = readable_images(source, imgs, checked, stats, messages)
    return {'files': [imgs[i] for i in good], 'labels': labels.take(good),
            'shapes': np.array([checked[i][0] for i in good], dtype=np.float64).reshape(-1, 2), 'stats': stats,
            'messages': messages, 'arrays': {'image_ids': np.arange(1, len(good) + 1, dtype=np.int64),
                                             'label_files': np.array([xmls[i] for i in good] or [''])[:len(good)]},
            'extra': {'category_ids': list(range(1, len(names) + 1)), 'names': names}}


def ground_truth(xml_files, image_ids, names):
    """COCO-style ground truth of VOC annotations for pycocotools: boxes in the continuous frame (voc_box),
    difficult objects as iscrowd 1 (ignored), category id = class index + 1."""
    index = {n: i for i, n in enumerate(names)}
    images, annotations = [], []
    for xml, img_id in zip(xml_files, image_ids):
        filename, size, objects = parse_annotation(xml)
        w, h = size or (0, 0)
        images.append({'id': int(img_id), 'file_name': filename or Path(xml).stem, 'width': w, 'height': h})
        for name, difficult, *box in objects:
            if name not in index:
                continue
            x1, y1, x2, y2 = voc_box(*box)
            annotations.append({'id': len(annotations) + 1, 'image_id': int(img_id), 'category_id': index[name] + 1,
                                'bbox': [x1, y1, x2 - x1, y2 - y1], 'area': (x2 - x1) * (y2 - y1),
                                'iscrowd': int(difficult > 0)})
    return {'images': images, 'annotations': annotations,
            'categories': [{'id': i + 1, 'name': n} for i, n in enumerate(names)]}
