"""Memory traded for compute: activation checkpointing gives the gradients and BatchNorm statistics of the step
without it, on YAML and darknet models, and in train.py."""
import contextlib
import copy
from pathlib import Path

import pytest
import torch

from conftest import COCO8_YAML, ROOT, tiny_cfg


def _models():
    from models.darknet import DarknetModel
    from models.yolo import Model
    torch.manual_seed(0)
    return {'yaml P5': Model(tiny_cfg('yolov4-p5', nc=3)), 'darknet yolov4-tiny': DarknetModel('yolov4-tiny.cfg', nc=3)}


def _step(model, x):
    """Forward and backward of a loss on every output; returns the bytes of the tensors the forward pass kept for
    backward outside checkpoints (the activations that stay in memory until backward)."""
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = model(x)
    sum(o.float().pow(2).mean() for o in outputs).backward()
    return sum(kept.values())


@pytest.mark.parametrize('name', ['yaml P5', 'darknet yolov4-tiny'])
def test_checkpointing_gives_the_same_gradients_and_statistics(name, monkeypatch):
    """Gradients and BatchNorm statistics equal to the step without checkpointing, with a quarter of the activations
    kept or less; on the YAML model, with the three plans of models/activation_checkpointing.py in use (the
    high-resolution runs, the deep CSP blocks checkpointed per bottleneck, and plain runs)."""
    import models.activation_checkpointing as ac
    plans, plan = [], ac.plan
    monkeypatch.setattr(ac, 'plan', lambda *a: plans.append(plan(*a)) or plans[-1])
    wrapped, checkpointed = set(), ac.checkpointed  # what the pieces wrapped from outside checkpoint
    monkeypatch.setattr(ac, 'checkpointed', lambda fn, m, *t: wrapped.add(type(m).__name__) or checkpointed(fn, m, *t))
    plain = _models()[name].train()
    ckpt = copy.deepcopy(plain)
    ckpt.activation_checkpointing = True
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    kept_plain, kept_ckpt = _step(plain, x), _step(ckpt, x)
    assert kept_ckpt < kept_plain / 4
    assert set(plans) == ({'run', 'run+each', 'each'} if name == 'yaml P5' else set())
    assert wrapped == ({'ModuleList', 'Conv', 'Bottleneck', 'BottleneckCSP'} if name == 'yaml P5' else {'DarknetConv'})
    assert not [m for m in ckpt.modules() if {'forward', 'join'} & vars(m).keys()]  # no wrapper left on a module
    for (k, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=k)  # measured: equal to the bit
    for k, v in plain.state_dict().items():  # running means, variances and batch counts: updated once
        assert torch.equal(ckpt.state_dict()[k], v), k


def test_checkpointing_under_bfloat16_autocast_gives_the_same_gradients():
    """Under autocast (here the CPU's bfloat16, as train.py --amp-dtype bfloat16) the recomputation runs with the
    autocast of the forward pass, so the gradients and statistics are those of the autocast step without
    checkpointing; the running statistics stay float32."""
    plain = _models()['yaml P5'].train()
    ckpt = copy.deepcopy(plain)
    ckpt.activation_checkpointing = True
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    for model in (plain, ckpt):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            _step(model, x)
    for (k, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=k)  # measured: equal to the bit
    for k, v in plain.state_dict().items():
        assert v.dtype != torch.bfloat16 and torch.equal(ckpt.state_dict()[k], v), k


def test_the_recomputation_would_update_batchnorm_twice(monkeypatch):
    """The guard is needed: without it, the recomputation in backward moves the running statistics again."""
    import models.activation_checkpointing as ac
    monkeypatch.setattr(ac, 'running_stats_kept', lambda bns: contextlib.nullcontext())
    plain = _models()['yaml P5'].train()
    ckpt = copy.deepcopy(plain)
    ckpt.activation_checkpointing = True
    x = torch.rand(2, 3, 128, 128)
    _step(plain, x)
    _step(ckpt, x)
    differ = [k for k, v in plain.state_dict().items() if 'running' in k and not torch.equal(ckpt.state_dict()[k], v)]
    assert differ


def test_train_with_checkpointing_is_the_same_run(tmp_path):
    import train
    common = dict(cfg=str(ROOT / 'models' / 'yolov4-p5-tiny.yaml'), data=str(COCO8_YAML), img_size=[64, 64],
                  batch_size=4, device='cpu', workers=0, noautoanchor=True, epochs=1, notest=True,
                  project=str(tmp_path))
    train.run(name='plain', **common)
    train.run(name='ckpt', activation_checkpointing=True, **common)
    a, b = (torch.load(tmp_path / n / 'weights' / 'last.pt', weights_only=True) for n in ('plain', 'ckpt'))
    for key in ('model', 'ema'):
        for k, v in a[key]['state_dict'].items():
            torch.testing.assert_close(b[key]['state_dict'][k], v, rtol=1e-5, atol=1e-6, msg=k)


# --- checks before caching images ----------------------------------------------------------------------------
def _cache_run(tmp_path, mode):
    import train
    return train.run(cfg=str(ROOT / 'models' / 'yolov4-p5-tiny.yaml'), data=str(tmp_path / 'data.yaml'),
                     img_size=[64, 64], batch_size=4, device='cpu', workers=0, noautoanchor=True, epochs=1,
                     notest=True, cache_images=mode, project=str(tmp_path / 'runs'), name='c')


def _copied_coco8(tmp_path):
    import shutil
    shutil.copytree(ROOT / 'data' / 'coco8' / 'images', tmp_path / 'images')
    shutil.copytree(ROOT / 'data' / 'coco8' / 'labels', tmp_path / 'labels')
    (tmp_path / 'data.yaml').write_text(f'train: {tmp_path / "images"}\nval: {tmp_path / "images"}\nnc: 80\n')


def test_ram_cache_that_does_not_fit_is_refused_before_anything_is_cached(tmp_path, monkeypatch):
    """The 8 images at 64 take 68.9 kB (exact, from the scanned sizes); with 50 kB of memory available, the run
    is refused in one line with the numbers and the alternative, and leaves no run folder."""
    import utils.cache_check as cc
    from utils.cache_check import CacheTooLarge
    _copied_coco8(tmp_path)
    monkeypatch.setattr(cc, 'available_memory', lambda: 50_000)
    with pytest.raises(CacheTooLarge) as e:
        _cache_run(tmp_path, 'ram')
    assert str(e.value) == ('train: --cache-images ram: 8 images at 64 take 68.9 kB in memory (one process), more '
                            'than 80% of the 50.0 kB available: cache them on disk with --cache-images disk (68.9 kB '
                            'next to the images), or train without --cache-images')
    assert not (tmp_path / 'runs').exists() or not any((tmp_path / 'runs').iterdir())


def test_ram_cache_counts_every_process_of_the_node(monkeypatch):
    import utils.cache_check as cc
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '4')
    monkeypatch.setattr(cc, 'available_memory', lambda: 250_000_000)  # 80%: 200 MB
    shapes = [[1000, 500]] * 100  # 640 x 320 x 3 = 614,400 bytes each at 640
    cc.check_image_cache('ram', shapes, 640, rank=-1)  # one process (an evaluation loader): 61 MB fits
    with pytest.raises(cc.CacheTooLarge, match=r'take 245\.8 MB in memory \(4 processes on this node x 61\.4 MB\)'):
        cc.check_image_cache('ram', shapes, 640, rank=0)


def test_disk_cache_that_does_not_fit_is_refused(tmp_path, monkeypatch):
    import utils.cache_check as cc
    from utils.cache_check import CacheTooLarge
    _copied_coco8(tmp_path)
    monkeypatch.setattr(cc, 'free_disk', lambda path: 10_000)
    with pytest.raises(CacheTooLarge, match=r'--cache-images disk: 8 images at 64 take 70\.0 kB on the disk of '
                                            f'{tmp_path / "images"} \\(next to the images\\), more than its 10\\.0 kB'):
        _cache_run(tmp_path, 'disk')
    assert not list((tmp_path / 'images').glob('*.npy'))


def test_cache_bytes_are_exact():
    """The estimate is what caching takes: at 100 and 640, the bytes of the cached arrays."""
    from utils.cache_check import resized_bytes
    from utils.datasets import LoadImagesAndLabels
    for size in (100, 640):
        ds = LoadImagesAndLabels(str(ROOT / 'data' / 'coco8' / 'images'), img_size=size, cache_images='ram')
        assert int(resized_bytes(ds.shapes, size).sum()) == sum(im.nbytes for im in ds.imgs)


def _private_dirty_kb():
    for line in open('/proc/self/smaps_rollup'):
        if line.startswith('Private_Dirty:'):
            return int(line.split()[1])
    raise AssertionError('no Private_Dirty in /proc/self/smaps_rollup')


def _dirtied_by_reading_every_item(dataset):
    """kB of private memory that a fork of this process dirties by reading what a loader worker reads of each image
    (labels, paths, shape, cached image): pages copied because a read wrote a reference count. The fork first reads
    image 0 as often, so that the interpreter's and allocator's own first writes are not counted."""
    import gc
    import os

    def read(i):
        dataset.labels[i], dataset.img_files[i], dataset.label_files[i], dataset.shapes[i]
        dataset.load_image(i)

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a loader worker, as DataLoader forks one
        try:
            gc.disable()  # a collection would touch every object; measured here is what reading does
            for _ in range(dataset.n):
                read(0)
            before = _private_dirty_kb()
            for i in range(dataset.n):
                read(i)
            os.write(w, str(_private_dirty_kb() - before).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        grown = f.read()
    os.waitpid(pid, 0)
    return int(grown)


@pytest.mark.skipif(not Path('/proc/self/smaps_rollup').exists(), reason='reads /proc/self/smaps_rollup (Linux)')
def test_loader_workers_read_images_without_copying_the_dataset(tmp_path):
    """A DataLoader worker is a fork; reading a Python object there writes its reference count and copies its page
    (pytorch/pytorch#13246), so a worker holding a list of 118k label arrays and path strings grows epoch after
    epoch (the scale benchmark saw 4.5 MB per 20 batches). Reading all 8,000 images' labels, paths and RAM-cached
    images in a fork dirties 0.13 MB here (under 0.5 MB asserted); the dataset before, with a Python object per
    image (lists of arrays, strings and tuples), dirtied 5.0 MB."""
    import cv2
    import numpy as np

    from utils.benchmarks.scale import make_split
    from utils.datasets import LoadImagesAndLabels
    (tmp_path / 'src').mkdir()
    images = []
    for k in range(8):  # small images, quick to decode and cache
        images.append(tmp_path / 'src' / f'{k}.png')
        cv2.imwrite(str(images[-1]), np.full((24 + k, 32, 3), 30 * k, np.uint8))
    labels = {p.stem: p.read_text() for p in sorted((ROOT / 'data' / 'coco8' / 'labels').glob('*.txt'))}
    make_split(tmp_path / 'split', 8000, images, dict(zip(map(str, range(8)), labels.values())))
    dataset = LoadImagesAndLabels(str(tmp_path / 'split' / 'images'), img_size=16, cache_images='ram')
    assert dataset.n == 8000 and sum(map(len, dataset.labels)) > 8000 and dataset.imgs[7999] is not None
    assert _dirtied_by_reading_every_item(dataset) < 500


# --- --batch-size -1 -------------------------------------------------------------------------------------------
GiB = 2 ** 30


def _fake_gpu(a=2.0, b=1.5, oom_at=None):
    """A memory model of a GPU training step: a + b * batch GiB (model, optimizer state, activations), running out
    of memory from batch oom_at on."""
    def measure(model, loss_fn, batch, imgsz, device, amp_dtype):
        if oom_at is not None and batch >= oom_at:
            raise torch.OutOfMemoryError('CUDA out of memory')
        return int((a + b * batch) * GiB)
    return measure


def test_autobatch_picks_the_largest_batch_under_the_fraction():
    from utils.train.autobatch import auto_batch_size, fit_batch
    assert fit_batch([(1, 3.5 * GiB), (2, 5 * GiB), (4, 8 * GiB)], 40 * GiB) == 20  # (0.8 x 40 - 2) / 1.5
    cuda = torch.device('cuda', 0)  # the device is only named: the fake measures, and the free memory is given
    assert auto_batch_size(torch.nn.Identity(), None, 640, cuda, measure=_fake_gpu(), free_bytes=40 * GiB) == 20
    assert auto_batch_size(torch.nn.Identity(), None, 640, cuda, world_size=4, measure=_fake_gpu(oom_at=8),
                           free_bytes=40 * GiB) == 80  # fitted on batches 1, 2, 4; the total over 4 GPUs


def test_autobatch_says_what_to_give_when_nothing_fits():
    from utils.train.autobatch import AutoBatchError, auto_batch_size
    with pytest.raises(AutoBatchError, match=r'--batch-size -1: no batch fits in 80% of the 4\.0 GiB free .* '
                                             r'try --activation-checkpointing, a smaller --img, or give --batch-size'):
        auto_batch_size(torch.nn.Identity(), None, 1536, torch.device('cuda', 0), measure=_fake_gpu(a=3.0, b=1.0),
                        free_bytes=4 * GiB)


def _agree(rank, world, init, free, out):
    import torch.distributed as dist

    from utils.train.autobatch import agree_min, fit_batch
    dist.init_process_group('gloo', init_method=init, rank=rank, world_size=world)
    points = [(b, int((2.0 + 1.5 * b) * GiB)) for b in (1, 2, 4)]
    out.put((rank, agree_min(fit_batch(points, free[rank]), torch.device('cpu'))))
    dist.destroy_process_group()


def test_autobatch_ranks_agree_on_the_smallest(tmp_path):
    """Two ranks whose GPUs have 40 and 20 GiB free (batches 20 and 9) both train with 9."""
    import torch.multiprocessing as mp
    ctx = mp.get_context('spawn')
    out = ctx.Queue()
    init = (tmp_path / 'rendezvous').as_uri()
    procs = [ctx.Process(target=_agree, args=(r, 2, init, [40 * GiB, 20 * GiB], out)) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert sorted(out.get(timeout=10) for _ in procs) == [(0, 9), (1, 9)]


def test_autobatch_on_cpu_uses_the_default_and_records_it(tmp_path, capfd):
    import yaml

    import train
    train.run(cfg=str(ROOT / 'models' / 'yolov4-p5-tiny.yaml'), data=str(COCO8_YAML), img_size=[64, 64],
              batch_size=-1, device='cpu', workers=0, noautoanchor=True, epochs=1, notest=True,
              project=str(tmp_path), name='auto')
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith('--batch-size -1')]
    assert lines == ['--batch-size -1: 16 (no GPU to measure: automatic batch size measures CUDA memory; give '
                     '--batch-size N to choose)']
    saved = yaml.safe_load((tmp_path / 'auto' / 'opt.yaml').read_text())
    assert saved['batch_size'] == -1 and saved['total_batch_size'] == 16  # what was asked for, and what was chosen
    from utils.train.resume import compare
    import argparse
    assert compare({'batch_size'}, argparse.Namespace(batch_size=-1, resume='auto'), saved, tmp_path) == []
