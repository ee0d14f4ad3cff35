"""Benchmarks: inference latency/throughput, training-step throughput and memory, data-pipeline speed.

    python -m utils.benchmarks --mode infer --cfg models/yolov4-p5.yaml --img 896 --batch-size 1 32 --device 0 \
        --dtype float16 --memory-format channels_last --runner eager graph
    python -m utils.benchmarks --cfg models/yolov4-p5.yaml --img 640 --batch-size 1 --device cpu \
        --backend pytorch onnxruntime openvino     (exports run by each runtime, in each of its precisions)
    python -m utils.benchmarks --mode train --cfg models/yolov4-p5.yaml --img 896 --batch-size 16 --device 0 \
        --mish native auto
    python -m utils.benchmarks --mode data --img 640 896 --source path/to/coco128  (or a data yaml, or an images folder)
    python -m utils.benchmarks --mode checkpoint --cfg models/yolov4-p5.yaml --img 640 --batch-size 2 --device cpu
    python -m utils.benchmarks --cfg models/yolov4-csp.yaml --img 128 --batch-size 1 --device cpu --quick
    python -m utils.benchmarks --mode test --cfg models/yolov4-p5.yaml --img 320 --batch-size 8 --device cpu \
        --source path/to/data16.yaml      (test.py on the early-training evaluation workload: its time split,
                                           then `python test.py` end to end; --memory-format to compare,
                                           --compare-nms to time the published NMS on the same predictions)
    python -m utils.benchmarks --mode scale --device cpu   (a COCO-sized dataset from the bundled images: label scan,
                                           loader workers' memory over epochs, test.py on 5,000 images; see
                                           utils/benchmarks/scale.py)
    python -m utils.benchmarks --mode train --cfg models/yolov4-p7.yaml --img 1536 --batch-size 1 --device cpu \
        --checkpointing off on --iters 1 --warmup 1     (activation checkpointing: peak memory and step time)

Every combination of the listed options is one row (infer: each with and without NMS). Timings are taken
after warm-up and synchronised on CUDA. TFLOP/s counts the model's multiply-adds x 2 per image
(utils.torch_utils.count_flops) and is set against the GPU's dense float16 peak for float16/bfloat16 rows.
"""
import copy
import functools
import itertools
import json
import logging
import os
import random
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import yaml

from utils.benchmarks.common import (bench_model, evaluation_workload_weights, peak_memory_mb, reset_peak_memory,
                                     return_freed_memory, sync, table)
from utils.benchmarks.tensor_peak import TensorPeak, storage_bytes

LOGGER = logging.getLogger('benchmarks')
ROOT = Path(__file__).resolve().parents[2]


# Dense float16 tensor-core peaks (TFLOP/s, no sparsity) for the "% peak" column; --peak-tflops overrides.
# More specific names first: the first substring found in the device name wins.
FP16_PEAK_TFLOPS = (('H100 PCIe', 756.0), ('H100 NVL', 835.0), ('H100', 989.4), ('H200', 989.4), ('GH200', 989.4),
                    ('A100', 312.0), ('A10G', 70.0), ('L40S', 362.0), ('L4', 121.0), ('V100', 125.0),
                    ('RTX 4090', 165.2), ('RTX 3090', 71.0), ('T4', 65.0))


def fp16_peak_tflops(device_name):
    """The dense float16 tensor-core peak of a GPU by name, or None when it is not in FP16_PEAK_TFLOPS."""
    return next((peak for key, peak in FP16_PEAK_TFLOPS if key in device_name), None)


@contextmanager
def mish_implementation(mode):
    """YOLO_MISH=mode inside the block (models.activations reads it per call)."""
    old = os.environ.get('YOLO_MISH')
    os.environ['YOLO_MISH'] = mode
    try:
        yield
    finally:
        if old is None:
            os.environ.pop('YOLO_MISH', None)
        else:
            os.environ['YOLO_MISH'] = old


def _mish_used(mode, device, memory_format='contiguous'):
    """The Mish implementation a forward pass really runs under YOLO_MISH=mode (`auto` may fall back; channels_last
    activations always run PyTorch's)."""
    from models.activations import extension_for
    used = extension_for(mode, device.type == 'cuda', memory_format == 'contiguous')
    return 'native' if used is None else 'cuda'


def _cuda_graph(model, x, warmup):
    """A function replaying one CUDA graph of model(x)[0]: one launch instead of hundreds at small batch."""
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up on a side stream, as CUDA graph capture requires
        for _ in range(max(warmup, 2)):
            model(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = model(static_x)[0]

    def run(inp):
        static_x.copy_(inp)
        graph.replay()
        return static_y
    return run


def _runner(kind, model, x, warmup):
    """model(x)[0] as eager PyTorch, one replayed CUDA graph, or torch.compile (with CUDA graphs on CUDA)."""
    if kind == 'eager':
        return lambda inp: model(inp)[0]
    if kind == 'graph':
        return _cuda_graph(model, x, warmup)
    compiled = torch.compile(model, mode='reduce-overhead' if x.is_cuda else 'default', dynamic=False)
    return lambda inp: compiled(inp)[0]


def bench_infer(opt, device):
    """Latency and throughput per batch size, precision, memory format, runner and Mish, with and without NMS."""
    from utils.nms import non_max_suppression
    from utils.torch_utils import count_flops
    model = bench_model(opt, device).float().eval()
    if not opt.weights:
        model.fuse()
    gflops = count_flops(model, opt.img)  # per image, multiply-adds x 2
    peak = opt.peak_tflops or (fp16_peak_tflops(torch.cuda.get_device_name(device)) if device.type == 'cuda'
                               else None)
    rows, seen = [], set()
    for bs, dt, fmt, runner, mish in itertools.product(opt.batch_size, opt.dtype, opt.memory_format, opt.runner,
                                                       opt.mish):
        used = _mish_used(mish, device, fmt)
        if (bs, dt, fmt, runner, used) in seen:  # channels_last runs PyTorch's Mish whatever --mish says
            continue
        seen.add((bs, dt, fmt, runner, used))
        dtype = getattr(torch, dt)
        mf = torch.channels_last if fmt == 'channels_last' else torch.contiguous_format
        m = copy.deepcopy(model).to(dtype=dtype, memory_format=mf)
        x = torch.rand(bs, 3, opt.img, opt.img, device=device).to(dtype).contiguous(memory_format=mf)
        with mish_implementation(mish), torch.inference_mode():
            run = _runner(runner, m, x, opt.warmup)
            for _ in range(max(opt.warmup, 2)):  # every row warmed up, NMS included, before it is timed
                non_max_suppression(run(x), 0.001, 0.65)
            for nms in (False, True):
                sync(device)
                t = time.perf_counter()
                for _ in range(opt.iters):
                    y = run(x)
                    if nms:
                        non_max_suppression(y, 0.001, 0.65)
                sync(device)
                ms = (time.perf_counter() - t) / opt.iters * 1000
                tflops = gflops * bs / ms  # GFLOP per ms = TFLOP/s
                rows.append([bs, dt, fmt, runner, used, 'yes' if nms else 'no', f'{ms:.2f}',
                             f'{bs * 1000 / ms:.1f}', f'{tflops:.1f}' if tflops >= 10 else f'{tflops:.3f}',
                             f'{100 * tflops / peak:.1f}' if peak and dt != 'float32' else '-'])
        del run, m, x
        if runner == 'compile':
            torch._dynamo.reset()
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    columns = ['batch', 'dtype', 'memory format', 'runner', 'mish', 'NMS', 'ms/batch', 'images/s', 'TFLOP/s',
               '% fp16 peak']
    note = f'{gflops:.1f} GFLOPs per image at {opt.img}' + (f'; fp16 peak {peak:g} TFLOP/s' if peak else '')
    return rows, columns, note


def _train_step(model, loss_fn, optimizer, scaler, x, targets, device, dtype, ema=None):
    """One training step as train.py takes it: autocast forward and loss, (scaled) backward, optimizer step, and
    the EMA's update when given."""
    enabled = dtype == 'bfloat16' or (dtype == 'float16' and device.type == 'cuda')
    with torch.autocast(device_type=device.type, dtype=getattr(torch, dtype), enabled=enabled):
        loss, _ = loss_fn(model(x), targets)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update(model)


def _synthetic_batch(bs, img, nc, device, seed=0):
    """A random image batch and 8 random boxes per image, as train.py's targets."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(bs, 3, img, img, generator=g).to(device)
    n = 8 * bs
    targets = torch.cat((torch.arange(bs).repeat_interleave(8)[:, None].float(),
                         torch.randint(0, nc, (n, 1), generator=g).float(),
                         torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05),
                        1).to(device)
    return x, targets


def bench_checkpoint(opt, device):
    """The cost of a training checkpoint as train.py takes it (model, EMA, SGD momentum, RunState): its size,
    a synchronous save, and a background save (the pause to copy the state into host memory, the write, and
    the training steps taken meanwhile), with the overhead at the periodic-save default (--save-period-min)."""

    from utils.loss import ComputeLoss
    from utils.torch_utils import ModelEMA
    from utils.train.checkpoint_writer import CheckpointWriter
    from utils.train.hooks import EMAHook
    from utils.train.optim import smart_optimizer
    from utils.train.trainer import Recipe, Trainer, TrainParts
    model = bench_model(opt, device).float().train()
    with open(ROOT / 'data' / 'hyp.scratch.yaml') as f:
        hyp = yaml.safe_load(f)
    optimizer, hyp, _ = smart_optimizer(model, hyp, 64)
    ema, scaler = ModelEMA(model), torch.amp.GradScaler('cuda', enabled=device.type == 'cuda')
    loss_fn = ComputeLoss(model, hyp)
    bs = opt.batch_size[0]
    x, targets = _synthetic_batch(bs, opt.img, model.nc, device)

    def step():
        _train_step(model, loss_fn, optimizer, scaler, x, targets, device, 'float16' if device.type == 'cuda'
                    else 'float32')
        ema.update(model)
    for _ in range(max(opt.warmup, 1)):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(opt.iters):
        step()
    sync(device)
    step_s = (time.perf_counter() - t) / opt.iters
    parts = TrainParts(model=model, optimizer=optimizer, scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer,
                       lambda e: 1.0), scaler=scaler, loss_fn=loss_fn, loader=None, device=device, ema=ema)
    recipe = Recipe(epochs=1, hyp=hyp, hyp_given=hyp, lr_lambda=None, warmup_iters=0, nominal_accumulate=1,
                    imgsz=opt.img, stride=32, options={})
    ckpt = Trainer(parts, recipe, [EMAHook()]).state_dict()  # as train.py takes it
    writer = CheckpointWriter()
    with tempfile.TemporaryDirectory(dir=opt.save_dir or None) as tmp:
        path = Path(tmp) / 'last.pt'
        t = time.perf_counter()
        writer.write(ckpt, [path], background=False)
        sync_s = time.perf_counter() - t
        size = path.stat().st_size
        t = time.perf_counter()
        writer.write(ckpt, [path])
        steps = 0
        while writer.busy():
            step()
            steps += 1
        sync(device)
        during_s = time.perf_counter() - t - writer.copy_s
        writer.wait()
    extra_s = max(during_s - steps * step_s, 0.0)  # steps slowed down by the write, beyond their usual time
    overhead = (writer.copy_s + extra_s) / (opt.save_period_min * 60) * 100
    row = [bs, opt.img, f'{size / 2 ** 20:.0f}', f'{sync_s:.2f}', f'{writer.copy_s:.2f}', f'{writer.write_s:.2f}',
           f'{step_s:.2f}', steps, f'{extra_s:.2f}', f'{overhead:.3f}%']
    return [row], ['batch', 'img', 'MiB', 'sync save s', 'pause s', 'background write s', 's/step',
                   'steps during write', 'steps slowed by s', f'overhead every {opt.save_period_min:g} min'], (
        'pause: training stops while the state is copied to host memory; the write then runs beside training. '
        'Overhead: (pause + the slowdown of the steps taken during the write) / the period')


def _held_tensors(model, ema, optimizer, *batch):
    """What a training step starts from: the model, its EMA, the optimizer's state and the batch."""
    state = [v for group in optimizer.state.values() for v in group.values() if isinstance(v, torch.Tensor)]
    return [*model.parameters(), *model.buffers(), *ema.ema.parameters(), *ema.ema.buffers(), *state, *batch]


def _tensor_peak_mb(step, held):
    """Peak live tensor MiB through one call of step() on the CPU, the tensors in held included."""
    with TensorPeak(storage_bytes(held)) as counter:
        step()
    return counter.peak / 2 ** 20


def bench_train(opt, device):
    """Training-step throughput (forward, loss, backward, SGD step, EMA update) and peak memory for each combination of
    batch size, precision (float32; AMP float16 on CUDA; AMP bfloat16), memory format, runner (eager or
    torch.compile), optimizer step implementation and Mish. On the CPU an extra untimed step after warm-up counts
    the peak of live tensor bytes, the counterpart of CUDA's max_memory_allocated."""
    from utils.loss import ComputeLoss
    from utils.torch_utils import ModelEMA
    from utils.train.optim import optimizer_kwargs
    cuda = device.type == 'cuda'
    if not cuda:
        return_freed_memory()
    with open(ROOT / 'data' / 'hyp.scratch.yaml') as f:
        hyp = yaml.safe_load(f)
    rows, seen = [], set()
    for bs, dtype, fmt, runner, impl, mish, ckpt in itertools.product(
            opt.batch_size, opt.dtype or (['float16'] if cuda else ['float32']), opt.memory_format,
            opt.runner or ['eager'], opt.optimizer_impl, opt.mish, opt.checkpointing):
        used = _mish_used(mish, device, fmt)
        if (bs, dtype, fmt, runner, impl, used, ckpt) in seen:  # as in the inference table
            continue
        seen.add((bs, dtype, fmt, runner, impl, used, ckpt))
        if dtype == 'float16' and not cuda:
            raise SystemExit('benchmarks: --mode train --dtype float16 needs CUDA (float16 AMP with a scaler, as '
                             'train.py uses it); on CPU use float32 or bfloat16')
        mf = torch.channels_last if fmt == 'channels_last' else torch.contiguous_format
        torch.manual_seed(0)  # the same weights in every row; the process holds what train.py does: model and EMA
        model = bench_model(opt, device).float().train().to(memory_format=mf)
        model.activation_checkpointing = ckpt == 'on'
        ema = ModelEMA(model)
        loss_fn = ComputeLoss(model, hyp)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True,
                                    **optimizer_kwargs(impl))
        scaler = torch.amp.GradScaler('cuda', enabled=cuda and dtype == 'float16')
        run = torch.compile(model) if runner == 'compile' else model
        x, targets = _synthetic_batch(bs, opt.img, model.nc, device)
        x = x.contiguous(memory_format=mf)
        step = functools.partial(_train_step, run, loss_fn, optimizer, scaler, x, targets, device, dtype, ema)
        with mish_implementation(mish):
            for _ in range(max(opt.warmup, 2 if runner == 'compile' else 1)):
                step()
            tensors = '-'
            if not cuda and runner == 'eager':  # untimed; a dispatch mode would slow the timed steps
                tensors = f'{_tensor_peak_mb(step, _held_tensors(model, ema, optimizer, x, targets)):.0f}'
            sync(device)
            reset_peak_memory(device)  # after warm-up: the steady state, optimizer buffers included
            t = time.perf_counter()
            for _ in range(opt.iters):
                step()
            sync(device)
        dt = (time.perf_counter() - t) / opt.iters
        precision = 'float32' if dtype == 'float32' else f'AMP {dtype}'
        rows.append([bs, opt.img, precision, used, f'{dt * 1000:.1f}', f'{bs / dt:.2f}',
                     f'{peak_memory_mb(device):.0f}', *([] if cuda else [tensors]), fmt, runner, impl, ckpt])
        del run, model, optimizer, ema, step
        if runner == 'compile':
            torch._dynamo.reset()
    memory = 'peak MiB: torch.cuda.max_memory_allocated' if cuda else (
        'peak MiB: the process\'s peak RSS over the timed steps (model, EMA, optimizer state, activations, Python); '
        'tensor MiB: the peak of live tensor bytes in an untimed step, the counterpart of max_memory_allocated '
        '(eager runner only)')
    return rows, ['batch', 'img', 'precision', 'mish', 'ms/step', 'images/s', 'peak MiB',
                  *([] if cuda else ['tensor MiB']), 'memory format', 'runner', 'optimizer step',
                  'checkpointing'], memory


def _coco_labels(source, tmp):
    """The images to benchmark the data pipeline on: a data yaml's train images, a YOLO images folder (labels
    beside it in ../labels, or none), or a COCO folder with images/<split>/ and annotations/instances_*.json
    (converted to YOLO labels in tmp)."""
    from utils.coco2yolo import convert
    from utils.data_config import load_data_config
    source = Path(source)
    if source.suffix in ('.yaml', '.yml'):
        return load_data_config(source, required=('train',))['train']
    if not source.is_dir():
        raise SystemExit(f'benchmarks: --source {source} not found: give a data yaml, an images folder or a COCO '
                         f'folder (images/, annotations/)')
    anns = sorted((source / 'annotations').glob('instances_*.json')) if (source / 'annotations').is_dir() else []
    splits = [p for p in (source / 'images').iterdir() if p.is_dir()] if (source / 'images').is_dir() else []
    if (source / 'labels').exists() or not anns or not splits:
        return source / 'images' if (source / 'images').is_dir() and not splits else source
    (tmp / 'images').mkdir(parents=True)
    for p in splits[0].iterdir():
        (tmp / 'images' / p.name).symlink_to(p.resolve())
    convert(anns[0], tmp / 'labels')
    return tmp / 'images'


def bench_data(opt, device=None):
    """Mosaic samples per second in one process (no loader workers), read as a training loader reads them
    (SampleKey: each sample seeded from (seed, epoch, position)) and by plain index (no per-sample seeding)."""
    import cv2

    from utils.datasets import LoadImagesAndLabels
    from utils.sampling import SampleKey
    cv2.setNumThreads(0)
    with open(ROOT / 'data' / 'hyp.scratch.yaml') as f:
        hyp = yaml.safe_load(f)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        images = _coco_labels(opt.source, Path(tmp))
        for size in opt.img_sizes:
            dataset = LoadImagesAndLabels(str(images), img_size=size, augment=True, hyp=hyp)
            n = min(opt.iters * 8, 400) if not opt.quick else 8
            for variant, key in (('per-sample seeds', lambda i: SampleKey(0, i, i)), ('plain index', int)):
                np.random.seed(0)
                random.seed(0)
                dataset[key(0)]
                t = time.perf_counter()
                for i in range(n):
                    dataset[key(i % len(dataset))]
                dt = time.perf_counter() - t
                rows.append([size, variant, n, f'{n / dt:.1f}'])
    return rows, ['img', 'items', 'samples', 'mosaics/s per worker'], 'one process, no loader workers'


def _published_nms(prediction, conf_thres, iou_thres, time_limit=10.0, max_det=300):
    """The published NMS, as the baseline of --compare-nms: torchvision's full NMS over every class candidate;
    after `time_limit` seconds the remaining images of the batch are dropped. Returns (detections of the images
    it processed, each (n, 6)), so a short list means dropped images."""
    import torchvision
    from utils.boxes import xywh2xyxy
    t, output = time.time(), []
    for x in prediction:
        x = x[x[:, 4] > conf_thres]
        x[:, 5:] *= x[:, 4:5]
        i, j = (x[:, 5:] > conf_thres).nonzero(as_tuple=False).T
        x = torch.cat((xywh2xyxy(x[:, :4])[i], x[i, j + 5, None], j[:, None].float()), 1)
        output.append(x[torchvision.ops.nms(x[:, :4] + x[:, 5:6] * 4096, x[:, 4], iou_thres)[:max_det]])
        if time.time() - t > time_limit:
            break
    return output


def compare_nms(weights, data, opt, bs, device):
    """Seconds of the published NMS over the evaluation loader's batches (float32 predictions), the most class
    candidates of an image, the count of images it scored and of those whose detections equal ours exactly."""
    from models.experimental import attempt_load
    from utils.datasets import create_dataloader
    from utils.nms import non_max_suppression
    model = attempt_load(str(weights), map_location=device).eval()
    loader = create_dataloader(data['val'], opt.img, bs, int(model.stride.max()), rect=True, pad=0.5, workers=0)[0]
    out = {'published': 0., 'scored': 0, 'identical': 0, 'candidates': 0}
    for imgs, *_ in loader:
        with torch.no_grad():
            pred = model(imgs.to(device).float() / 255)[0]
        ours = non_max_suppression(pred.clone(), 0.001, 0.65)
        sync(device)
        t = time.perf_counter()
        published = _published_nms(pred.clone(), 0.001, 0.65)
        sync(device)
        out['published'] += time.perf_counter() - t
        out['candidates'] = max(out['candidates'], int(((pred[..., 5:] * pred[..., 4:5]) > 0.001).sum((1, 2)).max()))
        out['scored'] += len(published)
        out['identical'] += sum(torch.equal(a, b) for a, b in zip(ours, published))
    return out


def _test_cli_seconds(weights, opt, bs, channels_last, save_dir):
    """Wall time of `python test.py ...` in a fresh process, as a user runs it (imports, loader workers and
    plots included)."""
    import subprocess
    cmd = [sys.executable, str(ROOT / 'test.py'), '--weights', str(Path(weights).resolve()), '--data',
           str(Path(opt.source).resolve()), '--img', str(opt.img), '--batch', str(bs), '--conf', '0.001', '--iou',
           '0.65', '--save-json', '--project', str(save_dir), '--device', str(opt.device)]
    cmd += ['--channels-last'] if channels_last else []
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=save_dir)
    if proc.returncode:
        raise SystemExit(f'benchmarks: {" ".join(cmd)} failed: {(proc.stderr or proc.stdout).strip()[-500:]}')
    return time.perf_counter() - t


def bench_test(opt, device):
    """test.py on the evaluation workload (see evaluation_workload_weights): in this process without plots, with
    its time split (inference, NMS, COCO JSON and scoring, the rest: loader, model loading, matching), then end
    to end as a command in a fresh process."""
    import test as test_script
    from utils.data_config import load_data_config
    data = load_data_config(opt.source)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = opt.weights or evaluation_workload_weights(opt.cfg, data['val'], Path(tmp) / 'workload.pt', opt.img)
        for bs, fmt in itertools.product(opt.batch_size, opt.memory_format):
            timings, channels_last = {}, fmt == 'channels_last'
            t = time.perf_counter()
            res, _, _ = test_script.test(data, weights, batch_size=bs, imgsz=opt.img, conf_thres=0.001,
                                         iou_thres=0.65, save_json=True, save_dir=Path(tmp) / f'b{bs}{fmt}',
                                         device=str(opt.device), workers=0, plots=False, timings=timings,
                                         channels_last=channels_last)
            total = time.perf_counter() - t
            rest = total - timings['inference'] - timings['nms'] - timings['coco']
            cli = _test_cli_seconds(weights, opt, bs, channels_last, Path(tmp))
            rows.append([bs, fmt, timings['images'], f'{total:.2f}', f'{timings["inference"]:.2f}',
                         f'{timings["nms"]:.2f}', f'{timings["coco"]:.2f}', f'{rest:.2f}', f'{res[3]:.4f}',
                         f'{cli:.2f}'])
            if opt.compare_nms:
                c = compare_nms(weights, data, opt, bs, device)
                rows[-1] += [c['candidates'], f'{c["published"]:.2f}', c['scored'], c['identical']]
    columns = ['batch', 'memory format', 'images', 'total s', 'inference s', 'NMS s', 'COCO JSON+eval s',
               'loader+stats+rest s', 'mAP@.5:.95', 'python test.py s']
    if opt.compare_nms:
        columns += ['max candidates', 'published NMS s', 'published scored', 'identical']
    return rows, columns, (f'test.py --img {opt.img} --conf 0.001 --iou 0.65 --save-json on {opt.source}: in this '
                           'process (no loader workers, no plots), then as a command (default workers, plots)' +
                           ('; then the published NMS on the same predictions (images it scored before its 10 s '
                            'limit per batch, and of those, images with detections identical to ours)'
                            if opt.compare_nms else ''))


def parse_opt(argv=None):
    from models.activations import mish_mode
    from utils.errors import ArgumentParser
    p = ArgumentParser(prog='python -m utils.benchmarks', description=__doc__.split('\n\n')[0])
    p.add_argument('--mode', choices=['infer', 'train', 'data', 'test', 'checkpoint', 'scale'], default='infer')
    p.add_argument('--cfg', default='models/yolov4-p5.yaml', help='model config (when no --weights)')
    p.add_argument('--weights', default='', help='checkpoint to benchmark instead of a fresh model')
    p.add_argument('--img', '--img-size', type=int, nargs='+', default=None, help='image size(s)')
    p.add_argument('--batch-size', type=int, nargs='+', default=None, help='batch size(s)')
    p.add_argument('--device', default='', help='cuda device, i.e. 0, or cpu '
                      '(default: the GPU when there is one, else cpu)')
    p.add_argument('--dtype', nargs='+', choices=['float32', 'float16', 'bfloat16'], default=None,
                   help='precisions (infer default: float32, and float16 on CUDA; train: float32 on CPU, AMP '
                        'float16 on CUDA; bfloat16 is AMP bfloat16 in training)')
    p.add_argument('--memory-format', nargs='+', choices=['contiguous', 'channels_last'], default=None,
                   help='memory formats (default both; contiguous with --quick)')
    p.add_argument('--runner', nargs='+', choices=['eager', 'graph', 'compile'], default=None,
                   help='eager PyTorch, one replayed CUDA graph (infer, CUDA only), torch.compile '
                        '(default eager, and graph on CUDA for infer)')
    p.add_argument('--mish', nargs='+', choices=['native', 'cuda', 'auto'], default=None,
                   help='Mish implementations to compare (default: $YOLO_MISH, else native)')
    p.add_argument('--checkpointing', nargs='+', choices=['off', 'on'], default=['off'],
                   help='--mode train: activation checkpointing (train.py --activation-checkpointing) off and/or on')
    p.add_argument('--optimizer-impl', nargs='+', choices=['default', 'foreach', 'fused'], default=['default'],
                   help="train: PyTorch's optimizer step implementations to compare")
    p.add_argument('--backend', nargs='+', choices=['pytorch', 'onnxruntime', 'openvino'], default=None,
                   help='infer: runtimes side by side on the CPU, each in its --precision '
                        '(utils/benchmarks/backends.py)')
    p.add_argument('--precision', nargs='+', choices=['float32', 'bfloat16', 'int8'],
                   default=['float32', 'bfloat16', 'int8'], help='--backend: the precisions of each runtime to time')
    p.add_argument('--calib-images', type=int, default=32, help='--backend int8: calibration images from --source')
    p.add_argument('--peak-tflops', type=float, default=None,
                   help='infer: the GPU\'s dense float16 peak, for the %% column (default: looked up by name)')
    p.add_argument('--iters', type=int, default=20, help='timed iterations')
    p.add_argument('--warmup', type=int, default=3, help='untimed iterations first')
    p.add_argument('--source', default=str(ROOT / 'data' / 'coco8.yaml'),
                   help='data mode: a data yaml (its train images), an images folder, or a COCO folder (images/, '
                        'annotations/)')
    p.add_argument('--compare-nms', action='store_true',
                   help='test: also run the published NMS on the same predictions (one more inference pass)')
    p.add_argument('--save-period-min', type=float, default=30,
                   help="checkpoint: the period the overhead is given for (train.py's default)")
    p.add_argument('--save-dir', default='', help='checkpoint: the folder written to (default: a temporary folder)')
    p.add_argument('--scale-images', type=int, nargs=2, default=[118287, 5000], metavar=('TRAIN', 'VAL'),
                   help='scale: training and validation images of the dataset made (default: COCO\'s)')
    p.add_argument('--epochs', type=int, default=3, help='scale: epochs of the loader whose workers are measured')
    p.add_argument('--workers', type=int, default=2, help='scale: loader workers')
    p.add_argument('--quick', action='store_true', help='a tiny CPU run (tests)')
    p.add_argument('--json', default='', help='also append the table as one JSON line to this file')
    opt = p.parse_args(argv)
    if opt.quick:
        opt.device, opt.iters, opt.warmup = 'cpu', 2, 1
        if opt.mode != 'data':
            opt.cfg = opt.cfg if 'tiny' in opt.cfg or opt.cfg.endswith('csp.yaml') else 'models/yolov4-p5-tiny.yaml'
    opt.img_sizes = opt.img or ([640, 896] if opt.mode == 'data' else [128] if opt.mode == 'scale' else [640])
    if opt.mode == 'scale' and opt.cfg == 'models/yolov4-p5.yaml':
        opt.cfg = 'models/yolov4-p5-tiny.yaml'  # the evaluation's figures are those of the pipeline, not of a model
    opt.img = opt.img_sizes[0]
    opt.batch_size = opt.batch_size or {'infer': [1, 32], 'test': [8], 'checkpoint': [2]}.get(opt.mode, [16])
    opt.mish = opt.mish or [mish_mode()]
    opt.memory_format = opt.memory_format or (['contiguous'] if opt.quick or opt.mode != 'infer' else
                                              ['contiguous', 'channels_last'])
    return opt


def _check_cuda_options(opt, device):
    """Fill the device-dependent defaults; refuse CUDA graphs on a CPU, naming the option."""
    cuda = device.type == 'cuda'
    if opt.mode == 'infer':
        opt.dtype = opt.dtype or (['float32', 'float16'] if cuda else ['float32'])
        opt.runner = opt.runner or (['eager', 'graph'] if cuda else ['eager'])
    elif opt.mode == 'train' and 'graph' in (opt.runner or []):
        raise SystemExit('benchmarks: --mode train takes --runner eager or compile')
    if not cuda and opt.mish != ['native']:
        LOGGER.warning('benchmarks: on CPU every Mish is PyTorch\'s (the extension is for CUDA tensors): '
                       'one row per setting, mish native')  # rows that ran the same are one row
    if not cuda and opt.mode == 'infer' and 'graph' in opt.runner:
        raise SystemExit('benchmarks: --runner graph needs a CUDA device (--device 0)')


def main(argv=None):
    logging.basicConfig(format='%(message)s', level=logging.WARNING)
    opt = parse_opt(argv)
    from utils.torch_utils import select_device
    device = select_device(opt.device)
    _check_cuda_options(opt, device)
    from utils.benchmarks.scale import bench_scale
    fn = {'infer': bench_infer, 'train': bench_train, 'data': bench_data, 'test': bench_test,
          'checkpoint': bench_checkpoint, 'scale': bench_scale}[opt.mode]
    if opt.backend:
        if opt.mode != 'infer':
            raise SystemExit('benchmarks: --backend is a dimension of --mode infer')
        from utils.benchmarks.backends import bench_backends
        fn = bench_backends
    what = f'{opt.cfg if not opt.weights else opt.weights}' if opt.mode not in ('data', 'test', 'scale') else \
        f'{opt.source} ({opt.weights or opt.cfg})'
    name = torch.cuda.get_device_name(0) if device.type == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'
    with torch.set_grad_enabled(opt.mode in ('train', 'checkpoint')):
        rows, columns, note = fn(opt, device)
    header = f'{opt.mode} benchmark: {what} on {name}, torch {torch.__version__}'
    text = table(rows, columns)
    print(f'{header}\n{note}\n{text}')
    if opt.json:
        with open(opt.json, 'a') as f:
            f.write(json.dumps({'header': header, 'note': note, 'columns': columns, 'rows': rows}) + '\n')
    return text
