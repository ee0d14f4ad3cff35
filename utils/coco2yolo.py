"""Convert a COCO instances JSON to YOLO label files (docs/architecture.md, "Data").

    python -m utils.coco2yolo ANNOTATIONS_JSON OUTPUT_LABELS_DIR [--list IMAGES_LIST --images-prefix PREFIX]

One file per image: `class x_center y_center width height`, normalised by the image size, 6 decimals,
80-class index; crowd boxes (iscrowd 1) are left out; images without boxes get an empty file.
"""
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path

from utils.coco_ids import coco80_to_coco91_class
from utils.errors import ArgumentParser

LOGGER = logging.getLogger(__name__)


def convert(ann_file, out_dir):
    """Write the label files; returns a summary dict."""
    with open(ann_file) as f:
        data = json.load(f)
    coco91_to_80 = {c: i for i, c in enumerate(coco80_to_coco91_class())}
    images = {im['id']: im for im in data['images']}
    per_image = defaultdict(list)
    skipped_crowd = skipped_other = 0
    for a in data['annotations']:
        if a.get('iscrowd', 0):
            skipped_crowd += 1
            continue
        im = images.get(a['image_id'])
        x, y, w, h = a['bbox']
        if im is None or a['category_id'] not in coco91_to_80 or w <= 0 or h <= 0:
            skipped_other += 1
            continue
        iw, ih = im['width'], im['height']
        xc, yc = min(max((x + w / 2) / iw, 0), 1), min(max((y + h / 2) / ih, 0), 1)
        per_image[a['image_id']].append((coco91_to_80[a['category_id']], xc, yc, min(w / iw, 1), min(h / ih, 1)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_boxes = 0
    for img_id, im in images.items():
        rows = per_image.get(img_id, [])
        n_boxes += len(rows)
        with open(out_dir / (Path(im['file_name']).stem + '.txt'), 'w') as f:
            f.writelines(f'{c} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}\n' for c, xc, yc, w, h in rows)
    empty = sum(1 for i in images if not per_image.get(i))
    return {'images': len(images), 'boxes': n_boxes, 'empty': empty, 'crowd_skipped': skipped_crowd,
            'other_skipped': skipped_other}


def write_image_list(ann_file, list_file, images_prefix):
    """A .txt list of the JSON's images as `images_prefix/file_name` lines (e.g. ./images/val2017)."""
    with open(ann_file) as f:
        data = json.load(f)
    names = sorted(im['file_name'] for im in data['images'])
    Path(list_file).write_text(''.join(f'{images_prefix.rstrip("/")}/{n}\n' for n in names))
    return len(names)


def main(argv=None):
    parser = ArgumentParser(prog='python -m utils.coco2yolo', description=__doc__.split('\n\n')[0])
    parser.add_argument('annotations', help='COCO instances JSON, e.g. annotations/instances_val2017.json')
    parser.add_argument('output', help='folder for the label files, e.g. labels/val2017')
    parser.add_argument('--list', help='also write this .txt list of the images')
    parser.add_argument('--images-prefix', default='./images', help='prefix of the image paths in --list')
    opt = parser.parse_args(argv)
    if not Path(opt.annotations).is_file():
        sys.exit(f'error: annotations file {opt.annotations} not found')
    try:
        s = convert(opt.annotations, opt.output)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        sys.exit(f'error: {opt.annotations} is not a COCO instances JSON ({type(e).__name__}: {e})')
    print(f"{opt.annotations}: {s['images']} images, {s['boxes']} boxes written to {opt.output}, "
          f"{s['empty']} images without boxes (empty files), {s['crowd_skipped']} crowd boxes skipped, "
          f"{s['other_skipped']} other boxes skipped")
    if opt.list:
        n = write_image_list(opt.annotations, opt.list, opt.images_prefix)
        print(f'{opt.list}: {n} images listed')
    return s


if __name__ == '__main__':
    main()
