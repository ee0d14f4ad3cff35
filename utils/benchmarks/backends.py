"""The inference benchmark across runtimes: PyTorch eager against the project's exports run by ONNX Runtime and
OpenVINO, each in its precisions, in one process on the same input (python -m utils.benchmarks --backend ...).

Every runtime runs with the same thread count as PyTorch. The exports are written to a temporary folder by
models/export.py's own functions (static shapes, as models/export.py writes them by default); INT8 is calibrated
on the training images of --source. Rows time model(x) as test.py and detect.py call it (an exported model's
call includes the numpy hand-over), without NMS.
"""
import copy
import logging
import tempfile
import time
from pathlib import Path

import torch

from utils.benchmarks.common import bench_model, cpu_description

LOGGER = logging.getLogger('benchmarks')
BACKENDS = ('pytorch', 'onnxruntime', 'openvino')
PRECISIONS = {'pytorch': ('float32', 'bfloat16'), 'onnxruntime': ('float32', 'int8'),
              'openvino': ('float32', 'bfloat16', 'int8')}
def _exports(model, img, bs, folder, wanted, source, calib_images):
    """{(backend, precision): path} of the exports the rows need, written into folder by models/export.py."""
    from models.backends import metadata
    from models.export import prepare_for_export, write_exports
    meta = metadata(model.names, model.stride.tolist(), img.shape[2:], bs, False, 'fp32')
    files = write_exports(prepare_for_export(copy.deepcopy(model)), img, meta, str(folder / f'b{bs}'),
                          ('onnx', 'openvino') if any(b == 'openvino' for b, _ in wanted) else ('onnx',),
                          int8=any(p == 'int8' for _, p in wanted), data=source, calib_images=calib_images)
    return {('onnxruntime', 'float32'): files['onnx'], ('onnxruntime', 'int8'): files.get('onnx-int8'),
            ('openvino', 'float32'): files.get('openvino'), ('openvino', 'bfloat16'): files.get('openvino'),
            ('openvino', 'int8'): files.get('openvino-int8')}


def _runner(backend, precision, model, path, threads):
    """A function x -> predictions for one row."""
    from models.backends import load_exported
    if backend == 'pytorch':
        if precision == 'bfloat16':
            return lambda x: _autocast_bf16(model, x)
        return lambda x: model(x)[0]
    names = {'float32': 'fp32', 'bfloat16': 'bf16', 'int8': 'int8'}
    exported = load_exported(path, threads=threads, precision=names[precision] if backend == 'openvino' else None)
    return lambda x: exported(x)[0]


def _autocast_bf16(model, x):
    with torch.autocast('cpu', dtype=torch.bfloat16):
        return model(x)[0].float()


def _time(run, x, warmup, iters):
    for _ in range(max(warmup, 1)):
        run(x)
    t = time.perf_counter()
    for _ in range(iters):
        run(x)
    return (time.perf_counter() - t) / iters * 1000


def bench_backends(opt, device):
    """Rows (backend, precision, batch, ms/batch, images/s, speed-up over PyTorch float32) on the CPU."""
    from models.export import quiet_exporters
    if device.type != 'cpu':
        raise SystemExit('benchmarks: --backend rows run on the CPU: give --device cpu')
    model = bench_model(opt, device).float().eval()
    if not opt.weights:
        model.fuse()
    wanted = [(b, p) for b in opt.backend for p in PRECISIONS[b] if p in opt.precision]
    threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode(), quiet_exporters():
        for bs in opt.batch_size:
            x = torch.rand(bs, 3, opt.img, opt.img)
            paths = _exports(model, x, bs, Path(tmp), [w for w in wanted if w[0] != 'pytorch'], opt.source,
                             opt.calib_images) if any(b != 'pytorch' for b, _ in wanted) else {}
            base = None
            for backend, precision in [('pytorch', 'float32')] + [w for w in wanted if w != ('pytorch', 'float32')]:
                ms = _time(_runner(backend, precision, model, paths.get((backend, precision)), threads), x,
                           opt.warmup, opt.iters)
                base = base or ms
                rows.append([backend, precision, bs, f'{ms:.1f}', f'{bs * 1000 / ms:.2f}', f'{base / ms:.2f}x'])
    return rows, ['backend', 'precision', 'batch', 'ms/batch', 'images/s', 'vs pytorch float32'], \
        f'{cpu_description()}; {threads} threads for every runtime; {opt.img}x{opt.img} input'
