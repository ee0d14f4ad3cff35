"""Export a checkpoint to TorchScript (traced), ONNX, OpenVINO and darknet files, next to the weights.

    python models/export.py --weights weights/yolov4-p5.pt --img-size 896 896 --batch-size 1 [--dynamic]
    python models/export.py --weights best.pt --include onnx openvino --int8 --data data/coco.yaml
    python models/export.py --weights runs/train/exp/weights/best.pt --include darknet   # best.cfg, best.weights

TorchScript, ONNX and OpenVINO output the decoded prediction tensor (batch, boxes, 5 + nc) that
non_max_suppression takes, and carry the model's names, strides and input size (models/backends.py runs them in
test.py, detect.py and hubconf). Mish is exported as standard ops (x * tanh(softplus(x))). Each file is run where
its runtime is installed, and its largest difference from PyTorch is printed. Darknet files
(models/darknet_convert.py) are read back and run against the checkpoint, and that difference is printed too.
--nms adds an end-to-end ONNX file with NMS inside (models/end2end.py).
"""
import json
import logging
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.activations import Mish  # noqa: E402
from models.backends import add_onnx_metadata  # noqa: E402
from models.darknet import DarknetModel  # noqa: E402
from models.experimental import attempt_load  # noqa: E402
from models.yolo import Detect  # noqa: E402
from utils.errors import ArgumentError, ArgumentParser, check_at_least, check_fraction, run_cli  # noqa: E402
from utils.general import check_img_size  # noqa: E402

LOGGER = logging.getLogger('export')


class MishExport(nn.Module):
    """Mish written with standard ops, so every exporter and runtime understands it."""

    def forward(self, x):
        return x * torch.tanh(F.softplus(x))


def prepare_for_export(model):
    """Swap every Mish for MishExport and make Detect return the decoded tensor only (in place)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, Mish):
                setattr(parent, name, MishExport())
    for m in model.modules():
        if isinstance(m, (Detect, DarknetModel)):
            m.export = True
    return model


FORMATS = ('torchscript', 'onnx', 'openvino', 'darknet')


def export(weights, img_size=(640, 640), batch_size=1, dynamic=False, opset=13, device='cpu', cfg=None,
           include=('torchscript', 'onnx'), bf16=False, int8=False, data='data/coco8.yaml', calib_images=100,
           nms=None):
    """Write the formats in `include` next to `weights`: <stem>.torchscript.pt, <stem>.onnx, <stem>_openvino_model/;
    with int8 also <stem>-int8.onnx (and <stem>-int8_openvino_model/), calibrated on up to `calib_images` training
    images of `data`; with nms (a dict of conf_thres, iou_thres, max_det) also <stem>-nms.onnx, images in and
    final detections out (models/end2end.py). bf16: the OpenVINO model runs in bfloat16. Each file carries the
    model's names, strides, input size and precision (models/backends.py reads them). `cfg`: the darknet cfg of
    .weights (default: the cfg of the same name in models/).

    Returns ({format: path}, {format: largest |output - PyTorch's| on a random batch, None when its runtime is not
    installed}). Without the onnx package only the TorchScript file is written (one warning says how to get onnx).
    PyTorch's tracer and deprecation warnings about these exporters are silenced: they concern the exporter, not
    the exported model, whose output is checked against PyTorch.
    """
    if bf16 and 'openvino' not in include:
        raise ArgumentError('--bf16 is an OpenVINO precision: add --include openvino')
    with quiet_exporters():
        model, img, meta = _prepared(weights, img_size, batch_size, dynamic, device, cfg)
        files = write_exports(model, img, meta, str(Path(weights).with_suffix('')), include, dynamic, opset, bf16,
                              int8, data, calib_images, nms)
        return files, _differences({k: v for k, v in files.items() if k != 'onnx-nms'}, model, img)


def write_exports(model, img, meta, stem, include, dynamic=False, opset=13, bf16=False, int8=False,
                  data='data/coco8.yaml', calib_images=100, nms=None):
    """{format: path} of the files export() describes, written as <stem>.* from a model prepared for export
    (prepare_for_export), its example input `img` and its metadata (models.backends.metadata)."""
    files = {}
    if 'torchscript' in include:
        files['torchscript'] = export_torchscript(model, img, Path(stem + '.torchscript.pt'), meta)
    if not {'onnx', 'openvino'} & set(include) and not int8:
        return files
    if not _have('onnx'):
        if 'openvino' in include or int8:
            raise ArgumentError('--include openvino and --int8 go through ONNX: pip install onnx (or pip '
                                'install -r requirements-test.txt)')
        LOGGER.warning('ONNX not written: the onnx package is not installed (pip install onnx onnxruntime, or '
                       'pip install -r requirements-test.txt); the TorchScript file above is complete')
        return files
    onnx_file = export_onnx(model, img, Path(stem + '.onnx'), meta, dynamic, opset)
    if 'onnx' in include:
        files['onnx'] = onnx_file
    if nms:
        files['onnx-nms'] = export_end2end(model, img, Path(stem + '-nms.onnx'), meta, dynamic, opset, nms)
    if int8:
        from models.quantize import quantize_onnx
        from utils.calibration import CalibrationImages
        files['onnx-int8'] = quantize_onnx(onnx_file, Path(stem + '-int8.onnx'),
                                           CalibrationImages.sample(data, img.shape[2:], calib_images),
                                           dict(meta, precision='int8'))
    if 'openvino' in include:
        files['openvino'] = export_openvino(onnx_file, Path(stem + '_openvino_model'),
                                            dict(meta, precision='bf16' if bf16 else 'fp32'))
        if int8:
            files['openvino-int8'] = export_openvino(files['onnx-int8'], Path(stem + '-int8_openvino_model'),
                                                     dict(meta, precision='int8'))
    if 'onnx' not in include:
        onnx_file.unlink()  # only the way to OpenVINO or INT8
        if int8 and 'openvino' in include:
            files.pop('onnx-int8').unlink()
    return files


@contextmanager
def quiet_exporters():
    """PyTorch's tracer and deprecation warnings about the exporters off (they concern the exporter, not the
    exported model, whose output is checked), and onnxruntime's quantizer's per-op notes."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.simplefilter('ignore', FutureWarning)
        warnings.simplefilter('ignore', DeprecationWarning)
        warnings.filterwarnings('ignore', 'Constant folding', UserWarning)  # a slice it leaves to the runtime
        root = logging.getLogger()  # the quantizer logs through logging.warning(): the root logger itself
        quiet = logging.Filter('no record passes')  # a name no record has
        root.addFilter(quiet)
        try:
            yield
        finally:
            root.removeFilter(quiet)


def _prepared(weights, img_size, batch_size, dynamic, device, cfg):
    """(model ready to trace, example input, metadata) of a checkpoint."""
    from models.backends import metadata
    model = attempt_load(weights, map_location=device, cfg=cfg)
    gs = int(model.stride.max())
    img_size = [check_img_size(x, gs) for x in img_size]
    model = prepare_for_export(model).eval()
    img = torch.zeros(batch_size, 3, *img_size, device=device)
    with torch.no_grad():
        y = model(img)
    LOGGER.info('Output shape %s: (batch, boxes, 5 + nc) for non_max_suppression', tuple(y.shape))
    return model, img, metadata(model.names, model.stride.tolist(), img_size, batch_size, dynamic, 'fp32')


def _have(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def export_torchscript(model, img, path, meta):
    """A traced TorchScript file; the metadata as its extra file config.txt."""
    with torch.no_grad():
        ts = torch.jit.trace(model, img, strict=False)
    ts.save(str(path), _extra_files={'config.txt': json.dumps(meta)})
    LOGGER.info('TorchScript export success, saved as %s', path)
    return path


def export_onnx(model, img, path, meta, dynamic, opset):
    """An ONNX file (input 'images', output 'output'), the metadata in its metadata_props."""
    import onnx
    dynamic_axes = {'images': {0: 'batch', 2: 'height', 3: 'width'}, 'output': {0: 'batch', 1: 'boxes'}} \
        if dynamic else None
    torch.onnx.export(model, (img,), str(path), opset_version=opset, input_names=['images'],
                      output_names=['output'], dynamic_axes=dynamic_axes, dynamo=False, do_constant_folding=True)
    add_onnx_metadata(onnx, path, meta)
    LOGGER.info('ONNX export success, saved as %s', path)
    return path


def export_end2end(model, img, path, meta, dynamic, opset, nms):
    """An ONNX file with NMS inside (models/end2end.py): 'images' in; num_dets, boxes, scores, classes out."""
    import onnx
    from models.end2end import EndToEnd
    outputs = ['num_dets', 'boxes', 'scores', 'classes']
    axes = {'images': {0: 'batch', 2: 'height', 3: 'width'}, **{k: {0: 'batch'} for k in outputs}} if dynamic else None
    torch.onnx.export(EndToEnd(model, **nms).eval(), (img,), str(path), opset_version=max(opset, 11),
                      input_names=['images'], output_names=outputs, dynamic_axes=axes, dynamo=False,
                      do_constant_folding=True)
    add_onnx_metadata(onnx, path, dict(meta, nms=json.dumps(nms)))
    LOGGER.info('End-to-end ONNX export success (NMS inside: %s), saved as %s', nms, path)
    return path


def export_openvino(onnx_file, folder, meta):
    """An OpenVINO IR (folder/<name>.xml, .bin) converted from the ONNX file, with folder/metadata.json."""
    try:
        import openvino as ov
    except ImportError:
        raise ArgumentError('--include openvino needs the openvino package: pip install openvino (or pip install '
                            '-r requirements-test.txt)') from None
    folder.mkdir(parents=True, exist_ok=True)
    xml = folder / (folder.name[:-len('_openvino_model')] + '.xml')
    ov.save_model(ov.convert_model(str(onnx_file)), str(xml), compress_to_fp16=False)
    (folder / 'metadata.json').write_text(json.dumps(meta, indent=1))
    LOGGER.info('OpenVINO export success (%s), saved as %s', meta['precision'], folder)
    return folder


def _differences(files, model, img):
    """{format: largest |exported output - PyTorch's|} on a random batch; None where the runtime is missing."""
    from models.backends import BackendError, load_exported
    x = torch.rand_like(img)
    with torch.no_grad():
        ref = model.float().cpu()(x.cpu())
    diffs = {}
    for fmt, path in files.items():
        try:
            out = load_exported(path)(x)[0]
        except BackendError as e:
            LOGGER.info('%s not run: %s', path, e)
            diffs[fmt] = None
            continue
        diffs[fmt] = float((out - ref).abs().max())
        LOGGER.info('%s: %s output %s, largest difference from PyTorch %.3g', path, fmt, tuple(out.shape),
                    diffs[fmt])
    return diffs


def export_darknet(weights, img_size=640, cfg=None):
    """Write <weights>.cfg and <weights>.weights: a checkpoint of ours (YAML or darknet model) as darknet files
    (models/darknet_convert.py). They are read back and run against the checkpoint; returns ((cfg path, weights
    path), largest difference of the decoded outputs)."""
    from models.checkpoint import load_checkpoint, model_from_checkpoint
    from models.darknet import load_darknet_weights
    from models.darknet_convert import load_darknet_model
    from models.darknet_convert import write_darknet
    if str(weights).endswith('.weights'):
        model = load_darknet_model(weights, cfg)
        stem = Path(weights).with_name(Path(weights).stem + '-copy')  # never over the file read
    else:
        model = model_from_checkpoint(load_checkpoint(weights), weights)
        stem = Path(weights).with_suffix('')
    model = model.float().eval()
    img_size = check_img_size(img_size, int(model.stride.max()))  # darknet's [net] size
    cfg_file, weights_file = write_darknet(model, f'{stem}.cfg', f'{stem}.weights', img_size=img_size)
    back = DarknetModel(cfg_file)
    load_darknet_weights(back, weights_file)
    x = torch.rand(1, 3, img_size, img_size)
    with torch.no_grad():
        diff = float((back.eval()(x)[0] - model(x)[0]).abs().max())
    LOGGER.info('Darknet export success, saved as %s and %s; read back, largest output difference %.3g px',
                cfg_file, weights_file, diff)
    return (Path(cfg_file), Path(weights_file)), diff


def main(argv=None):
    p = ArgumentParser(prog='models/export.py', description='Export to TorchScript, ONNX, OpenVINO and darknet files.')
    p.add_argument('--weights', type=str, default='weights/yolov4-p5.pt', help='.pt or darknet .weights path')
    p.add_argument('--cfg', type=str, default=None, help='darknet cfg of --weights X.weights (default: models/X.cfg)')
    p.add_argument('--img-size', '--img', nargs='+', type=int, default=[640, 640], help='image size (h, w)')
    p.add_argument('--batch-size', type=int, default=1, help='batch size')
    p.add_argument('--dynamic', action='store_true', help='ONNX/OpenVINO: dynamic batch and image size')
    p.add_argument('--opset', type=int, default=13, help='ONNX opset (12 or later; --int8 needs 13)')
    p.add_argument('--include', nargs='+', default=['torchscript', 'onnx'], choices=FORMATS,
                   help='formats to write (darknet: X.cfg and X.weights, at the first --img-size)')
    p.add_argument('--bf16', action='store_true', help='OpenVINO: run in bfloat16 (CPUs with AVX-512 BF16 or AMX)')
    p.add_argument('--int8', action='store_true',
                   help='also X-int8.onnx (and X-int8_openvino_model/): post-training quantization')
    p.add_argument('--data', type=str, default='data/coco8.yaml', help='--int8: data yaml of the calibration images')
    p.add_argument('--calib-images', type=int, default=100, help='--int8: how many training images calibrate')
    p.add_argument('--nms', action='store_true', help='also X-nms.onnx: images in, final detections out')
    p.add_argument('--conf-thres', type=float, default=0.25, help='--nms: score threshold')
    p.add_argument('--iou-thres', type=float, default=0.45, help='--nms: NMS IoU threshold')
    p.add_argument('--max-det', type=int, default=300, help='--nms: detections kept per image')
    opt = p.parse_args(argv)
    opt.img_size *= 2 if len(opt.img_size) == 1 else 1
    check_at_least('--img-size', opt.img_size, 1)
    check_at_least('--batch-size', opt.batch_size, 1)
    check_at_least('--opset', opt.opset, 13 if opt.int8 else 12)
    check_at_least('--calib-images', opt.calib_images, 1)
    check_fraction('--conf-thres', opt.conf_thres)
    check_fraction('--iou-thres', opt.iou_thres, allow_zero=False)
    check_at_least('--max-det', opt.max_det, 1)
    nms = dict(conf_thres=opt.conf_thres, iou_thres=opt.iou_thres, max_det=opt.max_det) if opt.nms else None
    if opt.nms and 'onnx' not in opt.include:
        raise ArgumentError('--nms writes an ONNX file: add --include onnx')
    logging.basicConfig(format='%(message)s', level=logging.INFO)
    result = None
    if set(opt.include) - {'darknet'}:
        result = export(opt.weights, opt.img_size, opt.batch_size, opt.dynamic, opt.opset, cfg=opt.cfg,
                        include=opt.include, bf16=opt.bf16, int8=opt.int8, data=opt.data,
                        calib_images=opt.calib_images, nms=nms)
    elif opt.bf16 or opt.int8:
        raise ArgumentError('--bf16 and --int8 apply to --include onnx/openvino')
    if 'darknet' in opt.include:
        export_darknet(opt.weights, opt.img_size[0], cfg=opt.cfg)
    return result


if __name__ == '__main__':
    from models.export import main as _main  # classes as models.*, not __main__.*
    run_cli(_main, 'models/export.py')
