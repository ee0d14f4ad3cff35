"""Benchmarks: inference latency/throughput, training-step throughput and memory, data-pipeline speed.

    python -m utils.benchmarks --mode infer --cfg models/yolov4-p5.yaml --img 896 --batch-size 1 32 --device 0
    python -m utils.benchmarks --mode train --cfg models/yolov4-p5.yaml --img 896 --batch-size 16 --device 0
    python -m utils.benchmarks --mode data --img 640 896 --source ../shared/datasets/coco128
    python -m utils.benchmarks --cfg models/yolov4-csp.yaml --img 128 --batch-size 1 --device cpu --quick

Timings are synchronised (CUDA), after warm-up, and reported as a table.
"""
import argparse
import json
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

LOGGER = logging.getLogger('benchmarks')
ROOT = Path(__file__).resolve().parents[1]


def _table(rows, columns):
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]
    lines = ['  '.join(str(c).rjust(w) for c, w in zip(columns, widths))]
    lines += ['  '.join(str(v).rjust(w) for v, w in zip(r, widths)) for r in rows]
    return '\n'.join(lines)


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def _peak_memory_mb(device):
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB (process peak RSS)


def _model(opt, device):
    from models.experimental import attempt_load
    from models.yolo import Model
    if opt.weights:
        return attempt_load(opt.weights, map_location=device)
    return Model(opt.cfg).to(device)


def bench_infer(opt, device):
    """Latency and throughput per batch size, precision, memory format, with and without NMS."""
    from utils.general import non_max_suppression
    model = _model(opt, device).eval()
    if not opt.weights:
        model.fuse()
    rows = []
    dtypes = ['float32'] + (['float16'] if device.type == 'cuda' else [])
    formats = ['contiguous', 'channels_last'] if not opt.quick else ['contiguous']
    for bs in opt.batch_size:
        for dt in dtypes:
            for fmt in formats:
                m = model.half() if dt == 'float16' else model.float()
                mf = torch.channels_last if fmt == 'channels_last' else torch.contiguous_format
                m = m.to(memory_format=mf)
                x = torch.rand(bs, 3, opt.img, opt.img, device=device, dtype=torch.float16 if dt == 'float16'
                               else torch.float32).contiguous(memory_format=mf)
                with torch.inference_mode():
                    for _ in range(opt.warmup):
                        m(x)
                    for nms in (False, True):
                        _sync(device)
                        t = time.perf_counter()
                        for _ in range(opt.iters):
                            y = m(x)[0]
                            if nms:
                                non_max_suppression(y, 0.001, 0.65)
                        _sync(device)
                        dt_ms = (time.perf_counter() - t) / opt.iters * 1000
                        rows.append([bs, dt, fmt, 'yes' if nms else 'no', f'{dt_ms:.2f}', f'{bs * 1000 / dt_ms:.1f}'])
    model.float()
    return _table(rows, ['batch', 'dtype', 'memory format', 'NMS', 'ms/batch', 'images/s'])


def bench_train(opt, device):
    """Training-step throughput (forward, loss, backward, SGD step; AMP on CUDA) and peak memory."""
    from utils.loss import compute_loss
    model = _model(opt, device).train()
    with open(ROOT / 'data' / 'hyp.scratch.yaml') as f:
        model.hyp = yaml.safe_load(f)
    model.gr = 1.0
    cuda = device.type == 'cuda'
    opt_ = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    scaler = torch.amp.GradScaler('cuda', enabled=cuda)
    rows = []
    for bs in opt.batch_size:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(bs, 3, opt.img, opt.img, generator=g).to(device)
        n = 8 * bs  # 8 boxes per image
        targets = torch.cat((torch.arange(bs).repeat_interleave(8)[:, None].float(),
                             torch.randint(0, model.nc, (n, 1), generator=g).float(),
                             torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05),
                            1).to(device)
        if cuda:
            torch.cuda.reset_peak_memory_stats()

        def step():
            with torch.autocast(device_type='cuda', enabled=cuda):
                loss, _ = compute_loss(model(x), targets, model)
            scaler.scale(loss).backward()
            scaler.step(opt_)
            scaler.update()
            opt_.zero_grad(set_to_none=True)
        for _ in range(opt.warmup):
            step()
        _sync(device)
        t = time.perf_counter()
        for _ in range(opt.iters):
            step()
        _sync(device)
        dt = (time.perf_counter() - t) / opt.iters
        rows.append([bs, opt.img, 'AMP' if cuda else 'float32', f'{dt * 1000:.1f}', f'{bs / dt:.2f}',
                     f'{_peak_memory_mb(device):.0f}'])
    return _table(rows, ['batch', 'img', 'precision', 'ms/step', 'images/s', 'peak MiB'])


def _coco_labels(source, tmp):
    """A YOLO-format copy (symlinked images + labels) of a COCO folder with images/ and annotations/*.json."""
    from utils.coco2yolo import convert
    source = Path(source)
    if (source / 'labels').exists():
        return source / 'images'
    ann = next((source / 'annotations').glob('instances_*.json'))
    imgs = next(p for p in (source / 'images').iterdir() if p.is_dir())
    (tmp / 'images').mkdir(parents=True)
    for p in imgs.iterdir():
        (tmp / 'images' / p.name).symlink_to(p.resolve())
    convert(ann, tmp / 'labels')
    return tmp / 'images'


def bench_data(opt, device=None):
    """Mosaic samples per second in one process (one worker): this pipeline, and with the published HSV
    augmentation swapped in (the rest of the pipeline is the published one already)."""
    import cv2

    import utils.datasets as ds_mod
    from utils.datasets import LoadImagesAndLabels
    cv2.setNumThreads(0)
    with open(ROOT / 'data' / 'hyp.scratch.yaml') as f:
        hyp = yaml.safe_load(f)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        images = _coco_labels(opt.source, Path(tmp))
        for size in opt.img_sizes:
            dataset = LoadImagesAndLabels(str(images), img_size=size, augment=True, hyp=hyp)
            n = min(opt.iters * 8, 400) if not opt.quick else 8
            for variant in ('published', 'this project'):
                real_hsv = ds_mod.augment_hsv
                if variant == 'published':  # HSV by split, three LUTs, merge
                    ds_mod.augment_hsv = _published_augment_hsv
                try:
                    np.random.seed(0)
                    import random
                    random.seed(0)
                    dataset[0]
                    t = time.perf_counter()
                    for i in range(n):
                        dataset[i % len(dataset)]
                    dt = time.perf_counter() - t
                finally:
                    ds_mod.augment_hsv = real_hsv
                rows.append([size, variant, n, f'{n / dt:.1f}'])
    return _table(rows, ['img', 'pipeline', 'samples', 'mosaics/s per worker'])


def _published_augment_hsv(img, hgain=0.5, sgain=0.5, vgain=0.5):
    """The published HSV augmentation (three LUTs on split channels), for the data benchmark's baseline."""
    import cv2
    r = np.random.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(0, 256, dtype=np.int16)
    lut_hue = ((x * r[0]) % 180).astype(img.dtype)
    lut_sat = np.clip(x * r[1], 0, 255).astype(img.dtype)
    lut_val = np.clip(x * r[2], 0, 255).astype(img.dtype)
    img_hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val))).astype(img.dtype)
    cv2.cvtColor(img_hsv, cv2.COLOR_HSV2BGR, dst=img)


def parse_opt(argv=None):
    p = argparse.ArgumentParser(prog='python -m utils.benchmarks', description=__doc__.split('\n\n')[0])
    p.add_argument('--mode', choices=['infer', 'train', 'data'], default='infer')
    p.add_argument('--cfg', default='models/yolov4-p5.yaml', help='model config (when no --weights)')
    p.add_argument('--weights', default='', help='checkpoint to benchmark instead of a fresh model')
    p.add_argument('--img', '--img-size', type=int, nargs='+', default=None, help='image size(s)')
    p.add_argument('--batch-size', type=int, nargs='+', default=None, help='batch size(s)')
    p.add_argument('--device', default='', help='cuda device, i.e. 0, or cpu')
    p.add_argument('--iters', type=int, default=20, help='timed iterations')
    p.add_argument('--warmup', type=int, default=3, help='untimed iterations first')
    p.add_argument('--source', default=str(ROOT.parent / 'shared' / 'datasets' / 'coco128'),
                   help='data mode: a COCO folder (images/, annotations/) or a YOLO images folder')
    p.add_argument('--quick', action='store_true', help='a tiny CPU run (tests)')
    p.add_argument('--json', default='', help='also write the table rows as JSON here')
    opt = p.parse_args(argv)
    if opt.quick:
        opt.device, opt.iters, opt.warmup = 'cpu', 2, 1
        if opt.mode != 'data':
            opt.cfg = opt.cfg if 'tiny' in opt.cfg or opt.cfg.endswith('csp.yaml') else 'models/yolov4-p5-tiny.yaml'
    opt.img_sizes = opt.img or ([640, 896] if opt.mode == 'data' else [640])
    opt.img = opt.img_sizes[0]
    opt.batch_size = opt.batch_size or ([1, 32] if opt.mode == 'infer' else [16])
    return opt


def main(argv=None):
    logging.basicConfig(format='%(message)s', level=logging.WARNING)
    opt = parse_opt(argv)
    from utils.torch_utils import select_device
    device = select_device(opt.device)
    fn = {'infer': bench_infer, 'train': bench_train, 'data': bench_data}[opt.mode]
    what = f'{opt.cfg if not opt.weights else opt.weights}' if opt.mode != 'data' else opt.source
    name = torch.cuda.get_device_name(0) if device.type == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'
    with torch.set_grad_enabled(opt.mode == 'train'):
        table = fn(opt, device)
    header = f'{opt.mode} benchmark: {what} on {name}, torch {torch.__version__}'
    print(header)
    print(table)
    if opt.json:
        Path(opt.json).write_text(json.dumps({'header': header, 'table': table}))
    return table


if __name__ == '__main__':
    sys.exit(0 if main() is not None else 1)
