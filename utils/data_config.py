"""Reading a data yaml (train/val/test sources, nc, names, val_annotations) with clear errors.

A split may name YOLO images (a folder, a .txt list, a glob), a COCO instances JSON or a Pascal VOC source, with
`images:` (a folder, or one per split) and `path:` (a root for the relative paths) beside it (docs/labels.md).
"""
from pathlib import Path

import yaml

from utils.errors import UserError
from utils.label_formats import label_source, register

PATH_KEYS = ('train', 'val', 'test', 'val_annotations', 'images')
SPLITS = ('train', 'val', 'test')


class DataConfigError(UserError, ValueError):
    """A data yaml that is missing, unreadable or lacks required keys; the message names the file."""


def _resolve(p, base):
    """Relative paths are taken from the working directory as published, else from the yaml's folder."""
    if not isinstance(p, str) or Path(p).is_absolute() or Path(p).exists():
        return p
    alt = base / p
    return str(alt) if alt.exists() else p


def load_data_config(path, required=('nc', 'val'), existing=()):
    """The data yaml as a dict with paths resolved, `names` checked against `nc`, and `yaml_file` set. The image
    sources named in `existing` (say 'train', 'val') must exist: the error names the yaml and the key."""
    path = Path(path)
    if not path.is_file():
        raise DataConfigError(f'data yaml {path} not found')
    try:
        with open(path) as f:
            d = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise DataConfigError(f'data yaml {path} is not valid YAML: {e}') from None
    if not isinstance(d, dict):
        raise DataConfigError(f'data yaml {path} must be a mapping with keys {", ".join(required)}')
    base = path.resolve().parent
    if d.get('path') is not None:  # a root for the relative paths (as in other YOLO projects' data yamls)
        base = Path(_resolve(str(d['path']), base)).resolve()
    for k in PATH_KEYS:
        if k in d and d[k] is not None:
            d[k] = _resolve_all(d[k], base)
    _names_from_labels(d, path)
    missing = [k for k in required if k not in d]
    if missing:
        raise DataConfigError(f'data yaml {path} lacks required keys: {", ".join(missing)}')
    if 'nc' in d:
        try:
            d['nc'] = int(d['nc'])
        except (TypeError, ValueError):
            raise DataConfigError(f'data yaml {path}: nc must be an integer, got {d["nc"]!r}') from None
        names = d.get('names') or [str(i) for i in range(d['nc'])]
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names)]
        if len(names) != d['nc']:
            raise DataConfigError(f'data yaml {path}: {len(names)} names for nc={d["nc"]}')
        d['names'] = [str(x) for x in names]
    d['yaml_file'] = str(path)
    _register_label_sources(d, path)
    for k in existing:
        for p in d[k] if isinstance(d.get(k), list) else [d.get(k)]:
            if isinstance(p, str) and not Path(p).exists() and not any(c in p for c in '*?['):
                raise DataConfigError(f'data yaml {path}: {k}: {p} does not exist (a folder of images, a .txt list '
                                      f'of them or a glob; relative paths are taken from the working directory or '
                                      f'the yaml\'s folder)')
    return d


def _resolve_all(v, base):
    if isinstance(v, dict):  # images: {train: ..., val: ...}
        return {k: _resolve_all(x, base) for k, x in v.items()}
    return [_resolve(x, base) for x in v] if isinstance(v, list) else _resolve(v, base)


def _names_from_labels(d, path):
    """Without names, a COCO JSON's categories (in its order) or VOC's 20 classes give them (and nc, which must
    agree when given). The names, given or taken, are what every COCO / VOC split's categories map to, by name."""
    if d.get('names'):
        d.setdefault('nc', len(d['names']))
        return
    for k in SPLITS:
        v = d.get(k)
        kind = label_source(v) if isinstance(v, (str, list)) else None
        if kind == 'coco' and Path(v).is_file():
            from utils.label_formats.coco_json import read_categories
            names, where = [n for _, n in read_categories(v)], f'the categories of {v}'
        elif kind == 'voc':
            from utils.label_formats.voc import VOC_NAMES
            names, where = list(VOC_NAMES), 'the 20 VOC classes'
        else:
            continue
        if 'nc' in d and str(d['nc']) != str(len(names)):
            raise DataConfigError(f'data yaml {path}: nc={d["nc"]} but {where} are {len(names)}: give names (the '
                                  f'classes to train, matched to categories by name) or the right nc')
        d['names'], d['nc'] = names, len(names)
        return


def _register_label_sources(d, path):
    """Tell utils.label_formats what the yaml says beside each COCO / VOC split: its images folder, the class
    names its categories map to, whether VOC difficult objects are trained on."""
    images = d.get('images')
    for k in SPLITS:
        v = d.get(k)
        if not isinstance(v, (str, list)) or not label_source(v):
            continue
        folder = images.get(k) if isinstance(images, dict) else images
        if isinstance(images, dict) and folder is None:
            raise DataConfigError(f'data yaml {path}: images has no {k!r} entry for {k}: {v}')
        register(v[0] if isinstance(v, list) else v, images=folder, names=d.get('names'),
                 train_difficult=bool(d.get('train_difficult', False)))
