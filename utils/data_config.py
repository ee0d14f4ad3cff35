"""Reading a data yaml (train/val/test sources, nc, names, val_annotations) with clear errors."""
from pathlib import Path

import yaml

from utils.errors import UserError

PATH_KEYS = ('train', 'val', 'test', 'val_annotations')


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
    base = path.resolve().parent
    for k in PATH_KEYS:
        if k in d and d[k] is not None:
            d[k] = [_resolve(x, base) for x in d[k]] if isinstance(d[k], list) else _resolve(d[k], base)
    d['yaml_file'] = str(path)
    for k in existing:
        for p in d[k] if isinstance(d.get(k), list) else [d.get(k)]:
            if isinstance(p, str) and not Path(p).exists() and not any(c in p for c in '*?['):
                raise DataConfigError(f'data yaml {path}: {k}: {p} does not exist (a folder of images, a .txt list '
                                      f'of them or a glob; relative paths are taken from the working directory or '
                                      f'the yaml\'s folder)')
    return d
