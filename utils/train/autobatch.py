"""--batch-size -1: the largest batch that fits the GPUs (yolov5's AutoBatch convention, with the optimizer state
counted and every rank agreeing).

On CUDA, a few batch sizes of the run's own model, image size and precision each take two training steps
(forward, loss, backward and an SGD step, so the momentum buffers exist); the peak memory of each is measured,
a line memory = a + b * batch is fitted, and the largest batch whose line stays within FRACTION of the GPU's free
memory (taken before the measurement) is chosen. Under DDP every rank measures its own GPU and all take the
smallest choice. --batch-size keeps the paper's meaning: the total over all processes (per-GPU batch x world
size), from which the nominal accumulation and weight-decay scaling follow; opt.yaml records the total chosen,
and a resume uses it.
"""
import logging

import numpy as np
import torch
import torch.distributed as dist

from utils.errors import UserError

LOGGER = logging.getLogger('train')
FRACTION = 0.8  # of each GPU's free memory; the rest for the evaluation, the allocator's fragmentation, cuDNN
PROBE_BATCHES = (1, 2, 4, 8, 16)
CPU_BATCH = 16  # train.py's default, used where nothing can be measured


class AutoBatchError(UserError):
    """No batch could be chosen; the message says what to give instead."""


def fit_batch(points, free_bytes, fraction=FRACTION):
    """The largest batch whose fitted memory (a + b * batch, least squares over points [(batch, bytes)]) is at
    most fraction * free_bytes; 0 when not even a batch of 1 fits."""
    batches, used = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
    b, a = np.polyfit(batches, used, 1)
    if b <= 0:  # memory that does not grow with the batch: the measurements are noise, the largest probe fits
        return int(batches.max())
    return max(int(np.floor((fraction * free_bytes - a) / b + 1e-6)), 0)  # 1e-6: the fit's rounding


def agree_min(batch, device):
    """The smallest of every rank's batch (the others' GPUs may have less free memory)."""
    if not (dist.is_available() and dist.is_initialized()):
        return batch
    t = torch.tensor([batch], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def step_peak_bytes(model, loss_fn, batch, imgsz, device, amp_dtype):
    """Peak CUDA memory of two training steps at `batch` (images and targets of the run's size)."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6, momentum=0.9,
                                nesterov=True)
    scaler = torch.amp.GradScaler('cuda', enabled=amp_dtype == 'float16')
    dtype = torch.bfloat16 if amp_dtype == 'bfloat16' else torch.float16
    x = torch.rand(batch, 3, imgsz, imgsz, device=device)
    n = 8 * batch
    targets = torch.cat((torch.arange(batch).repeat_interleave(8)[:, None].float(), torch.zeros(n, 1),
                         torch.rand(n, 2) * 0.6 + 0.2, torch.rand(n, 2) * 0.3 + 0.05), 1).to(device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):
        with torch.autocast('cuda', dtype=dtype, enabled=amp_dtype != 'none'):
            loss, _ = loss_fn(model(x), targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del optimizer, x, targets, loss
    return peak


def measure_curve(model, loss_fn, imgsz, device, amp_dtype, measure=step_peak_bytes):
    """[(batch, peak bytes)] of the probe batches, up to the first that runs out of memory."""
    points = []
    for batch in PROBE_BATCHES:
        try:
            points.append((batch, measure(model, loss_fn, batch, imgsz, device, amp_dtype)))
        except torch.OutOfMemoryError:
            break
        finally:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    return points


def auto_batch_size(model, loss_fn, imgsz, device, amp_dtype='float16', world_size=1, measure=step_peak_bytes,
                    free_bytes=None):
    """The total batch for --batch-size -1 (per-GPU batch agreed by every rank, times world_size); one line says
    what was chosen and from what."""
    if device.type != 'cuda':
        LOGGER.info('--batch-size -1: %d (no GPU to measure: automatic batch size measures CUDA memory; give '
                    '--batch-size N to choose)', CPU_BATCH * world_size)
        return CPU_BATCH * world_size
    free = torch.cuda.mem_get_info(device)[0] if free_bytes is None else free_bytes
    points = measure_curve(model, loss_fn, imgsz, device, amp_dtype, measure)
    per_gpu = fit_batch(points, free) if len(points) >= 2 else 0
    per_gpu = agree_min(per_gpu, device)
    if per_gpu < 1:
        raise AutoBatchError(f'--batch-size -1: no batch fits in {FRACTION:.0%} of the {free / 2 ** 30:.1f} GiB free '
                             f'on {_gpu_name(device)} at --img {imgsz} (measured: '
                             f'{_curve(points) or "a batch of 1 ran out of memory"}): try --activation-checkpointing, '
                             f'a smaller --img, or give --batch-size N')
    LOGGER.info('--batch-size -1: %d per GPU x %d = %d (%s; %.0f%% of %.1f GiB free)', per_gpu, world_size,
                per_gpu * world_size, _curve(points), FRACTION * 100, free / 2 ** 30)
    return per_gpu * world_size


def _gpu_name(device):
    try:
        return torch.cuda.get_device_name(device)
    except (RuntimeError, AssertionError):
        return str(device)


def _curve(points):
    return ', '.join(f'batch {b}: {m / 2 ** 30:.2f} GiB' for b, m in points)
