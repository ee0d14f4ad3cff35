"""What every benchmark mode shares: the model under test, the output table, synchronisation, peak memory, and
the CPU's name with the instruction sets that matter for its figures."""
import platform
import resource
from pathlib import Path

import torch

CPU_FLAGS = ('avx2', 'avx512f', 'avx512_vnni', 'avx_vnni', 'avx512_bf16', 'amx_bf16', 'amx_int8')


def cpu_description():
    """'model name (flags that matter here)' from /proc/cpuinfo, or the platform's processor string."""
    name, flags = platform.processor() or 'unknown CPU', set()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            key, _, value = line.partition(':')
            if key.strip() == 'model name':
                name = value.strip()
            elif key.strip() == 'flags':
                flags = set(value.split())
    except OSError:
        pass
    return f'{name} ({", ".join(f for f in CPU_FLAGS if f in flags) or "no AVX2"})'


def table(rows, columns):
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]
    lines = ['  '.join(str(c).rjust(w) for c, w in zip(columns, widths))]
    lines += ['  '.join(str(v).rjust(w) for v, w in zip(r, widths)) for r in rows]
    return '\n'.join(lines)


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def return_freed_memory():
    """On glibc, serve every allocation of 128 KiB or more with mmap and return it on free (mallopt
    M_MMAP_THRESHOLD, which also stops the threshold from growing): the RSS then follows the live tensors, and a
    peak after a warm-up step is the step's own, not memory the allocator kept from the one before."""
    try:
        import ctypes
        return ctypes.CDLL('libc.so.6').mallopt(-3, 128 * 1024) == 1  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def reset_peak_memory(device):
    """Start a new peak: CUDA's allocator statistics, or on Linux the process's peak RSS (VmHWM, reset by writing 5
    to /proc/self/clear_refs). Returns False where the CPU peak cannot be reset (the peak is then the process's)."""
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        Path('/proc/self/clear_refs').write_text('5')
        return True
    except OSError:
        return False


def peak_memory_mb(device):
    """Peak memory since reset_peak_memory: CUDA's max_memory_allocated, or the process's peak RSS (VmHWM)."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated() / 2 ** 20
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024  # KiB -> MiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB (process peak RSS)


def bench_model(opt, device):
    from models.experimental import attempt_load
    from models.yolo import Model
    if opt.weights:
        return attempt_load(opt.weights, map_location=device)
    return Model(opt.cfg).to(device)


def evaluation_workload_weights(cfg, images, path, img_size=320, obj_bias=-4.0, cls_bias=-4.0, seed=0):
    """A checkpoint for timing test.py as an early training run sees it: the model of `cfg` with BatchNorm
    statistics from real images and the detection head biased so that every image fills the 300-detection cap
    at conf 0.001 (on COCO images at 320, hundreds to tens of thousands of NMS candidates per image)."""
    from models.checkpoint import model_payload, save_checkpoint
    from models.yolo import Model
    from utils.datasets import create_dataloader
    torch.manual_seed(seed)
    model = Model(cfg)
    loader = create_dataloader(images, img_size, 8, int(model.stride.max()), rect=True, pad=0.5, workers=0)[0]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for imgs, *_ in loader:
            model(imgs.float() / 255)
    for m in bns:
        m.momentum = 0.03
    head = model.model[-1]
    for conv in head.m:
        b = conv.bias.detach().view(head.na, -1)
        b[:, 4] = obj_bias
        b[:, 5:] = cls_bias
    save_checkpoint({'model': model_payload(model.eval())}, path)
    return path


SCALE_SOURCE = Path(__file__).resolve().parents[2] / 'data' / 'coco8'  # the images the scale benchmarks repeat


def make_split(folder, n, images, labels):
    """folder/images/<i>.jpg (symlinks to the source images, in turn) and folder/labels/<i>.txt (their labels)."""
    (folder / 'images').mkdir(parents=True)
    (folder / 'labels').mkdir()
    names = []
    for i in range(n):
        src = images[i % len(images)]
        name = f'{i:012d}{src.suffix}'
        (folder / 'images' / name).symlink_to(src)
        label = labels.get(src.stem)
        if label is not None:
            (folder / 'labels' / f'{i:012d}.txt').write_text(label)
        names.append((name, src.name))
    return names
