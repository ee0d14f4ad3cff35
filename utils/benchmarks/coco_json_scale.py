"""A COCO train2017-sized instances JSON read straight as labels, against the YOLO label scan of the same images.

    python -m utils.benchmarks.coco_json_scale [--images 118287] [--annotations 860001] [--dir TMP]

(also part of `python -m utils.benchmarks --mode scale`). The JSON is generated: --images entries (the training
split's symlinked images) and --annotations annotations, each a copy of one of data/coco8's (with its polygon, so
the file is about COCO's 450 MB), its box kept inside its image. Each scan runs in a fresh process, so its peak RSS
(ru_maxrss) is its own: the JSON scan cold (streamed, every image verified, cache written) and warm (from the
cache), the YOLO label scan of the same images cold, and, for scale, `json.load` of the JSON, which is what holding
the whole JSON as Python objects costs.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / 'data' / 'coco8'

_MEASURE = r'''
import json, resource, sys, time
sys.path.insert(0, {root!r})
from utils.datasets import LoadImagesAndLabels
def rss():
    return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) / 1024
base = rss()
t = time.perf_counter()
if {load!r}:
    with open({path!r}) as f:
        d = json.load(f)
    n = len(d['annotations'])
else:
    n = len(LoadImagesAndLabels({path!r}, 640).labels.data)
print(json.dumps({{'s': time.perf_counter() - t, 'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  'base_mb': base, 'boxes': n}}))
'''


def measure(path, load=False):
    """{s, peak_mb, base_mb (after imports), boxes} of a dataset scan (or json.load) of `path`, in a fresh process."""
    out = subprocess.run([sys.executable, '-c', _MEASURE.format(root=str(ROOT), path=str(path), load=load)],
                         capture_output=True, text=True, check=True, env=dict(os.environ, TQDM_DISABLE='1'))
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_instances(path, image_files, n_annotations, seed=0):
    """Write a COCO instances JSON over image_files [(file name, source file name)]: n_annotations annotations,
    copies of data/coco8's in turn (boxes clipped to their image), written as a stream. Returns the file's MB."""
    src = json.loads((SOURCE / 'annotations' / 'instances.json').read_text())
    sizes = {im['file_name']: (im['width'], im['height']) for im in src['images']}
    pool = src['annotations']
    rng = random.Random(seed)
    per_image = [n_annotations // len(image_files)] * len(image_files)
    for i in rng.sample(range(len(image_files)), n_annotations % len(image_files)):
        per_image[i] += 1
    with open(path, 'w') as f:
        f.write('{"info": {"description": "generated, COCO train2017-sized"}, "images": [')
        f.write(','.join(json.dumps({'id': i + 1, 'file_name': name, 'width': sizes[s][0], 'height': sizes[s][1]})
                         for i, (name, s) in enumerate(image_files)))
        f.write('], "annotations": [')
        k = 0
        for i, (_, s) in enumerate(image_files):
            w, h = sizes[s]
            for _ in range(per_image[i]):
                a = pool[k % len(pool)]
                x, y, bw, bh = a['bbox']
                x, y = min(x, w - 2), min(y, h - 2)
                box = [x, y, min(bw, w - x), min(bh, h - y)]
                f.write(('' if k == 0 else ',') + json.dumps(dict(a, id=k + 1, image_id=i + 1, bbox=box)))
                k += 1
        f.write('], "categories": ' + json.dumps(src['categories']) + '}')
    return Path(path).stat().st_size / 1e6


def coco_json_rows(split_dir, n_annotations=860001):
    """Rows (measure, value) for the JSON of a split made by utils.benchmarks.scale.make_split (images/*.jpg
    linked to data/coco8's): its size, the JSON scan cold and warm, their peak RSS, and json.load's."""
    images = sorted((split_dir / 'images').iterdir())
    image_files = [(p.name, Path(os.readlink(p)).name) for p in images]
    ann = split_dir / 'annotations' / 'instances_train.json'
    ann.parent.mkdir(exist_ok=True)
    t = time.perf_counter()
    mb = make_instances(ann, image_files, n_annotations)
    made = time.perf_counter() - t
    cold, warm, load = measure(ann), measure(ann), measure(ann, load=True)
    return [['COCO JSON (images, annotations)', f'{mb:.0f} MB ({len(images)}, {n_annotations}), made in {made:.0f} s'],
            ['COCO JSON scan, cold s (streamed, images verified)', f'{cold["s"]:.1f}'],
            ['COCO JSON scan, warm (cache) s', f'{warm["s"]:.2f}'],
            ['COCO JSON scan peak RSS MB (after imports)', f'{cold["peak_mb"]:.0f} ({cold["base_mb"]:.0f})'],
            ['json.load of the JSON: s, peak RSS MB', f'{load["s"]:.1f}, {load["peak_mb"]:.0f}'],
            ['COCO JSON training boxes', cold['boxes']]]


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m utils.benchmarks.coco_json_scale', description=__doc__.split('\n')[0])
    p.add_argument('--images', type=int, default=118287)
    p.add_argument('--annotations', type=int, default=860001)
    p.add_argument('--dir', default=None, help='folder for the temporary dataset (default: the system temp folder)')
    opt = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(dir=opt.dir))
    try:
        rows = _standalone(tmp, opt)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for k, v in rows:
        print(f'{k:55s} {v}')
    return rows


def _standalone(tmp, opt):
    from utils.benchmarks.common import SCALE_SOURCE as YOLO_SOURCE, make_split
    images = sorted(q.resolve() for q in (YOLO_SOURCE / 'images').iterdir())
    labels = {q.stem: q.read_text() for q in (YOLO_SOURCE / 'labels').glob('*.txt')}
    make_split(tmp / 'train', opt.images, images, labels)
    yolo = measure(tmp / 'train' / 'images')
    rows = [['YOLO label scan, cold s (same images)', f'{yolo["s"]:.1f}'],
            ['YOLO label scan peak RSS MB (after imports)', f'{yolo["peak_mb"]:.0f} ({yolo["base_mb"]:.0f})']]
    return rows + coco_json_rows(tmp / 'train', opt.annotations)


if __name__ == '__main__':
    main()
