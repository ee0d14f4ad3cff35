"""Exported models run like ours: TorchScript, ONNX (ONNX Runtime) and OpenVINO behind one module.

    model = load_exported('runs/train/exp/weights/best.onnx')   # or .torchscript.pt, _openvino_model/, .xml
    pred = model(img)[0]          # decoded (batch, boxes, 5 + nc), as a YAML model in eval mode; then NMS

Class names, strides, the input size and the precision travel in each file's metadata (models/export.py writes
them), so nothing else is passed. A static-shape export (every export but --dynamic) takes exactly its input
size; batches of another size are run in pieces of its batch. The runtimes are optional: a missing one is one
line saying what to install.
"""
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from utils.errors import UserError

LOGGER = logging.getLogger(__name__)
FORMAT = 'scaled-yolov4-export'
OPENVINO_HINTS = {'fp32': 'f32', 'bf16': 'bf16', 'int8': 'f32'}  # int8: QDQ layers run as int8, the rest in f32


class BackendError(UserError, RuntimeError):
    """An exported model that cannot be run here (missing runtime, not a model, no metadata)."""


def export_kind(path):
    """'torchscript', 'onnx', 'openvino' or None (a checkpoint of ours, darknet .weights)."""
    path = Path(path)
    name = path.name
    if name.endswith('_openvino_model') or path.suffix == '.xml':
        return 'openvino'
    if path.suffix == '.onnx':
        return 'onnx'
    if name.endswith(('.torchscript.pt', '.torchscript')):
        return 'torchscript'
    if path.suffix == '.pt' and path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any(n.split('/', 2)[1:2] == ['code'] for n in z.namelist()):
                return 'torchscript'
    return None


def metadata(names, stride, img_size, batch_size, dynamic, precision, nms=None):
    """The metadata every export carries (strings, for ONNX's metadata_props)."""
    return {'format': FORMAT, 'version': '1', 'names': json.dumps(list(names)), 'nc': str(len(names)),
            'stride': json.dumps([float(s) for s in stride]), 'img_size': json.dumps(list(img_size)),
            'batch': str(batch_size), 'dynamic': str(bool(dynamic)), 'precision': precision,
            'nms': json.dumps(nms)}


def add_onnx_metadata(onnx, path, meta):
    """Write `meta` into the ONNX file's metadata_props (in place)."""
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))


def _require(module, kind, path):
    try:
        return __import__(module)
    except ImportError:
        raise BackendError(f'{path}: running a {kind} model needs the {module} package: pip install {module} (or '
                           f'pip install -r requirements-test.txt)') from None


def _check_meta(meta, path):
    if meta.get('format') != FORMAT:
        raise BackendError(f'{path}: not an export of this project (no {FORMAT} metadata): export it with '
                           f'python models/export.py --weights CHECKPOINT')
    return meta


class ExportedModel(nn.Module):
    """An exported model behind the interface test.py, detect.py and hubconf use: names, nc, stride, and
    forward(img) -> (decoded predictions, None). `.to()`, `.float()`, `.half()` and `.fuse()` change nothing."""

    def __init__(self, run, meta, path, kind, input_shape, keep=()):
        super().__init__()
        self.keep_alive = keep  # the runtime's objects, released together with this module (OpenVINO: core first
        # would unload the plugin under its compiled model)
        self.register_buffer('device_marker', torch.zeros(0), persistent=False)  # follows .to(device)
        self.run, self.path, self.kind = run, str(path), kind
        self.names = json.loads(meta['names'])
        self.nc = int(meta['nc'])
        self.stride = torch.tensor(json.loads(meta['stride']))
        self.precision = meta.get('precision', 'fp32')
        self.nms = json.loads(meta.get('nms') or 'null')
        self.static_shape = None if meta.get('dynamic') == 'True' else tuple(int(d) for d in input_shape)

    def fuse(self):
        return self

    def describe(self):
        shape = 'dynamic shapes' if self.static_shape is None else \
            'static input ' + 'x'.join(map(str, self.static_shape))
        return f'{self.kind} {self.precision}, {shape}'

    def forward(self, img, augment=False):
        if augment:
            raise BackendError(f'{self.path}: --augment (test-time augmentation) needs the PyTorch model: an '
                               f'exported model runs as exported')
        x = img.detach().float().cpu().contiguous().numpy()
        if self.static_shape is None:
            out = self.run(x)
        else:
            b, _, h, w = self.static_shape
            if x.shape[2:] != (h, w):
                raise BackendError(f'{self.path} takes {h}x{w} images (a static export), not {x.shape[2]}x'
                                   f'{x.shape[3]}: give --img {h} (or export with --dynamic)')
            pieces = []
            for i in range(0, len(x), b):
                chunk = x[i:i + b]
                n = len(chunk)
                if n < b:
                    chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), np.float32)])
                pieces.append(self.run(chunk)[:n])
            out = np.concatenate(pieces)
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(img.device), None


def _load_torchscript(path):
    files = {'config.txt': ''}
    model = torch.jit.load(str(path), map_location='cpu', _extra_files=files)
    meta = _check_meta(json.loads(files['config.txt'] or '{}'), path)

    def run(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    return ExportedModel(run, dict(meta, dynamic='True'), path, 'torchscript', ())


def _load_onnx(path, threads=0):
    ort = _require('onnxruntime', 'ONNX', path)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types for files it cannot read
        raise BackendError(f'{path}: not an ONNX model ONNX Runtime can load ({" ".join(str(e).split())[:200]})') \
            from None
    meta = _check_meta(session.get_modelmeta().custom_metadata_map, path)
    name = session.get_inputs()[0].name
    return ExportedModel(lambda x: session.run(None, {name: x})[0], meta, path, 'onnx',
                         session.get_inputs()[0].shape)


def openvino_files(path):
    """(model .xml, metadata.json) of an OpenVINO export given as its folder or its .xml."""
    path = Path(path)
    xml = next(iter(sorted(path.glob('*.xml'))), None) if path.is_dir() else path
    if xml is None or not xml.is_file():
        raise BackendError(f'{path}: no OpenVINO model (.xml) there: export one with python models/export.py '
                           f'--include openvino')
    return xml, xml.parent / 'metadata.json'


def _load_openvino(path, threads=0, precision=None):
    ov = _require('openvino', 'OpenVINO', path)
    xml, meta_file = openvino_files(path)
    meta = _check_meta(json.loads(meta_file.read_text()) if meta_file.is_file() else {}, path)
    core = ov.Core()
    try:
        model = core.read_model(str(xml))
    except RuntimeError as e:
        raise BackendError(f'{xml}: not an OpenVINO model ({" ".join(str(e).split())[:200]})') from None
    precision = precision or meta.get('precision', 'fp32')
    config = {'INFERENCE_PRECISION_HINT': OPENVINO_HINTS[precision], 'PERFORMANCE_HINT': 'LATENCY'}
    if threads:
        config['INFERENCE_NUM_THREADS'] = threads
    compiled = core.compile_model(model, 'CPU', config)
    request = compiled.create_infer_request()
    shape = model.inputs[0].get_partial_shape()
    dims = [d.get_length() if d.is_static else -1 for d in shape]
    model_out = compiled.outputs[0]
    meta = dict(meta, precision=precision)
    return ExportedModel(lambda x: request.infer({0: x})[model_out], meta, path, 'openvino', dims,
                         keep=(core, model, compiled, request))


def load_exported(path, threads=0, precision=None):
    """The ExportedModel of a TorchScript, ONNX or OpenVINO export. `threads`: the runtime's thread count (0: its
    default); `precision`: OpenVINO's inference precision ('fp32', 'bf16'), default the export's."""
    path = Path(path)
    if not path.exists():
        raise BackendError(f'{path} not found: export a checkpoint with python models/export.py --weights X.pt '
                           f'--include onnx openvino')
    kind = export_kind(path)
    if path.name.endswith('-nms.onnx'):
        raise BackendError(f'{path} has NMS inside (an end-to-end export for deployment, models/end2end.py): the '
                           f'scripts take the export without --nms, {path.name[:-len("-nms.onnx")]}.onnx')
    if kind == 'torchscript':
        model = _load_torchscript(path)
    elif kind == 'onnx':
        model = _load_onnx(path, threads)
    elif kind == 'openvino':
        model = _load_openvino(path, threads, precision)
    else:
        raise BackendError(f'{path}: not an exported model (.torchscript.pt, .onnx, _openvino_model/ or .xml)')
    LOGGER.info('Loaded %s (%s)', path, model.describe())
    return model.eval()


def input_size(model, imgsz):
    """(size to letterbox images to, whether batches may be rectangular) for `model`: its own square size for a
    static export, with rectangular batches off (said in one line), else imgsz rounded to the model's stride."""
    from utils.general import check_img_size
    shape = getattr(model, 'static_shape', None)
    if shape is None:
        return check_img_size(imgsz, s=int(model.stride.max())), True
    _, _, h, w = shape
    if h != w:
        raise BackendError(f'{model.path} takes {h}x{w} images only: the scripts letterbox to squares; export it '
                           f'with a square --img-size, or with --dynamic')
    LOGGER.info('%s has a static %dx%d input: images are letterboxed to %d and batches are not rectangular (export '
                'with --dynamic for those)', model.path, h, w, h)
    return h, False
