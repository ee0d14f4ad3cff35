"""The data pipeline and test.py at COCO's size (python -m utils.benchmarks --mode scale).

A COCO-sized dataset is made in a temporary folder from the bundled images: 118,287 training and 5,000 validation
images by default (--scale-images), each a symlink to one of data/coco8's images with a copy of its label file,
and a COCO annotations file for the validation split. Measured:
- the label scan cold (no label cache: every image is verified) and warm (the cache read), and the dataset's RSS;
- the loader workers' USS (their private memory) after each of --epochs short epochs of the real training loader:
  Python objects that workers read are copied into them page by page (copy-on-write touched by reference
  counts, pytorch/pytorch#13246), and a USS that grows epoch after epoch would end in the OOM killer;
- test.py on the validation images at --conf 0.001 with --save-json, split into the model, NMS, metrics, the
  JSON and COCO scoring, with its peak RSS;
- a COCO train2017-sized instances JSON over the training images read straight as labels, cold and warm, with
  its peak RSS and json.load's for scale (utils/benchmarks/coco_json_scale.py).
"""
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from utils.benchmarks.coco_json_scale import coco_json_rows
from utils.benchmarks.common import (SCALE_SOURCE as SOURCE, evaluation_workload_weights, make_split, peak_memory_mb,
                                     reset_peak_memory, return_freed_memory)

ROOT = Path(__file__).resolve().parents[2]


def _rss_mb():
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
    return 0.0


def uss_mb(pid):
    """A process's unique set size (private clean + dirty pages), from /proc/<pid>/smaps_rollup."""
    total = 0
    for line in Path(f'/proc/{pid}/smaps_rollup').read_text().splitlines():
        if line.startswith(('Private_Clean:', 'Private_Dirty:')):
            total += int(line.split()[1])
    return total / 1024


def make_annotations(path, names, source_json):
    """A COCO annotations file for the split: each image's annotations copied from its source image's."""
    src = json.loads(source_json.read_text())
    by_file = {im['file_name']: im for im in src['images']}
    anns = {}
    for a in src['annotations']:
        anns.setdefault(a['image_id'], []).append(a)
    images, annotations = [], []
    for i, (name, src_name) in enumerate(names):
        im = by_file[src_name]
        images.append(dict(im, id=i + 1, file_name=name))
        for a in anns.get(im['id'], []):
            annotations.append(dict(a, id=len(annotations) + 1, image_id=i + 1))
    path.write_text(json.dumps({'images': images, 'annotations': annotations, 'categories': src['categories']}))
    return len(annotations)


def build_dataset(tmp, n_train, n_val):
    """(data yaml, validation boxes) of a dataset of n_train + n_val images made from data/coco8."""
    images = sorted(p.resolve() for p in (SOURCE / 'images').iterdir())
    labels = {p.stem: p.read_text() for p in (SOURCE / 'labels').glob('*.txt')}
    make_split(tmp / 'train', n_train, images, labels)
    names = make_split(tmp / 'val', n_val, images, labels)
    boxes = make_annotations(tmp / 'instances_val.json', names, SOURCE / 'annotations' / 'instances.json')
    data = tmp / 'data.yaml'
    data.write_text(yaml.safe_dump({'train': str(tmp / 'train' / 'images'), 'val': str(tmp / 'val' / 'images'),
                                    'val_annotations': str(tmp / 'instances_val.json'), 'nc': 80}))
    return data, boxes


def scan_times(data, img, hyp):
    """(cold s, warm s, dataset MB of RSS, the dataset) of the training split's label scan."""
    from utils.datasets import LoadImagesAndLabels
    train = yaml.safe_load(Path(data).read_text())['train']
    t = time.perf_counter()
    LoadImagesAndLabels(train, img_size=img, augment=True, hyp=hyp)
    cold = time.perf_counter() - t
    before = _rss_mb()
    t = time.perf_counter()
    dataset = LoadImagesAndLabels(train, img_size=img, augment=True, hyp=hyp)
    warm = time.perf_counter() - t
    return cold, warm, _rss_mb() - before, dataset


def worker_uss(data, img, hyp, epochs, batches, workers):
    """[[USS MB of each loader worker] after each epoch] of the real training loader, `batches` batches an
    epoch (the workers persist across epochs, as in train.py)."""
    from utils.datasets import create_dataloader
    train = yaml.safe_load(Path(data).read_text())['train']
    loader, _ = create_dataloader(train, img, 16, 32, hyp=hyp, augment=True, workers=workers, shuffle=True)
    by_epoch = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        it = iter(loader)
        for _, _ in zip(range(batches), it):
            pass
        by_epoch.append([uss_mb(w.pid) for w in getattr(it, '_workers', [])])
    del it, loader
    return by_epoch


def test_split(data, cfg, img, tmp):
    """(timings, peak RSS MB) of test.py on the validation split at conf 0.001 with its COCO JSON scored."""
    import test as test_script
    weights = evaluation_workload_weights(cfg, yaml.safe_load(Path(data).read_text())['val'], tmp / 'w.pt', img)
    timings = {}
    reset_peak_memory_cpu = reset_peak_memory(_cpu())
    t = time.perf_counter()
    test_script.test(str(data), str(weights), batch_size=32, imgsz=img, conf_thres=0.001, iou_thres=0.65,
                     save_json=True, save_dir=tmp / 'test', device='cpu', workers=min(8, os.cpu_count() or 1),
                     plots=False, timings=timings)
    timings['total'] = time.perf_counter() - t
    return timings, peak_memory_mb(_cpu()) if reset_peak_memory_cpu else float('nan')


def _cpu():
    import torch
    return torch.device('cpu')


def bench_scale(opt, device=None):
    """Rows (measure, value) of the data pipeline and test.py on a dataset of --scale-images images."""
    return_freed_memory()
    n_train, n_val = opt.scale_images
    with open(ROOT / 'data' / 'hyp.scratch.yaml') as f:
        hyp = yaml.safe_load(f)
    tmp = Path(tempfile.mkdtemp(dir=opt.save_dir or None))
    try:
        t = time.perf_counter()
        data, boxes = build_dataset(tmp, n_train, n_val)
        built = time.perf_counter() - t
        cold, warm, dataset_mb, _ = scan_times(data, opt.img, hyp)
        uss = worker_uss(data, opt.img, hyp, opt.epochs, opt.iters, opt.workers)
        timings, peak = test_split(data, opt.cfg, opt.img, tmp)
        json_rows = coco_json_rows(tmp / 'train', round(n_train * 860001 / 118287))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [['training images', n_train], ['validation images (boxes)', f'{n_val} ({boxes})'],
            ['dataset built (symlinks) s', f'{built:.1f}'], ['label scan, cold s', f'{cold:.1f}'],
            ['label scan, warm (cache) s', f'{warm:.2f}'], ['dataset RSS MB', f'{dataset_mb:.0f}'],
            ['process RSS MB', f'{_rss_mb():.0f}']]
    for e, workers in enumerate(uss):
        rows.append([f'loader worker USS MB after epoch {e} ({opt.iters} batches)',
                     ', '.join(f'{u:.0f}' for u in workers) or 'no workers'])
    for key, label in (('total', 'test.py total s'), ('inference', '  model s'), ('nms', '  NMS s'),
                       ('metrics', '  metrics s'), ('json', '  COCO JSON s'), ('scoring', '  COCO scoring s')):
        rows.append([label, f'{timings.get(key, float("nan")):.1f}'])
    rows.append(['test.py peak RSS MB', f'{peak:.0f}'])
    rows += json_rows
    return rows, ['measure', 'value'], (f'{n_train} + {n_val} images made from data/coco8 at --img {opt.img}; '
                                        f'test.py with {opt.cfg} at conf 0.001, batch 32, on the CPU')
