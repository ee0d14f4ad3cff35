"""Export a checkpoint to TorchScript (traced), ONNX and darknet files, next to the weights.

    python models/export.py --weights weights/yolov4-p5.pt --img-size 896 896 --batch-size 1 [--dynamic]
    python models/export.py --weights runs/train/exp/weights/best.pt --include darknet   # best.cfg, best.weights

TorchScript and ONNX output the decoded prediction tensor (batch, boxes, 5 + nc) that non_max_suppression takes.
Mish is exported as standard ops (x * tanh(softplus(x))). When onnxruntime is installed, the ONNX file is run and
its largest difference from PyTorch is printed. Darknet files (models/darknet_convert.py) are read back and run
against the checkpoint, and that difference is printed too.
"""
import logging
import warnings
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.activations import Mish  # noqa: E402
from models.darknet import DarknetModel  # noqa: E402
from models.experimental import attempt_load  # noqa: E402
from models.yolo import Detect  # noqa: E402
from utils.errors import ArgumentParser, check_at_least, run_cli  # noqa: E402
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


FORMATS = ('torchscript', 'onnx', 'darknet')


def export(weights, img_size=(640, 640), batch_size=1, dynamic=False, opset=12, device='cpu', cfg=None,
           include=('torchscript', 'onnx')):
    """Write <weights>.torchscript.pt and <weights>.onnx (those in `include`); returns ((TorchScript path, ONNX
    path), max |onnx - torch| or None), None for what was not written. `cfg`: the darknet cfg of .weights
    (default: the cfg of the same name in models/).

    Without the onnx package only the TorchScript file is written (one warning says how to get onnx).
    PyTorch's tracer and deprecation warnings about these exporters are silenced: they concern the exporter,
    not the exported model, whose output is checked against PyTorch when onnxruntime is installed.
    """
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.simplefilter('ignore', FutureWarning)
        warnings.simplefilter('ignore', DeprecationWarning)
        warnings.filterwarnings('ignore', 'Constant folding', UserWarning)  # a slice it leaves to the runtime
        return _export(weights, img_size, batch_size, dynamic, opset, device, cfg, include)


def _export(weights, img_size, batch_size, dynamic, opset, device, cfg, include):
    model = attempt_load(weights, map_location=device, cfg=cfg)
    gs = int(model.stride.max())
    img_size = [check_img_size(x, gs) for x in img_size]
    model = prepare_for_export(model).eval()
    img = torch.zeros(batch_size, 3, *img_size, device=device)
    with torch.no_grad():
        y = model(img)
    stem = str(Path(weights).with_suffix(''))
    ts_file, onnx_file = Path(stem + '.torchscript.pt'), Path(stem + '.onnx')

    if 'torchscript' in include:
        with torch.no_grad():
            ts = torch.jit.trace(model, img, strict=False)
        ts.save(str(ts_file))
        LOGGER.info('TorchScript export success, saved as %s', ts_file)
    else:
        ts_file = None
    if 'onnx' not in include:
        return (ts_file, None), None
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError:
        LOGGER.warning('ONNX not written: the onnx package is not installed (pip install onnx onnxruntime, or '
                       'pip install -r requirements-test.txt); the TorchScript file above is complete')
        return (ts_file, None), None
    dynamic_axes = {'images': {0: 'batch', 2: 'height', 3: 'width'}, 'output': {0: 'batch', 1: 'boxes'}} \
        if dynamic else None
    torch.onnx.export(model, (img,), str(onnx_file), opset_version=opset, input_names=['images'],
                      output_names=['output'], dynamic_axes=dynamic_axes, dynamo=False, do_constant_folding=True)
    LOGGER.info('ONNX export success, saved as %s', onnx_file)

    diff = None
    try:
        import onnxruntime as ort
    except ImportError:
        LOGGER.info('onnxruntime not installed: the ONNX file was not run')
    else:
        sess = ort.InferenceSession(str(onnx_file), providers=['CPUExecutionProvider'])
        x = torch.rand(batch_size, 3, *img_size)
        with torch.no_grad():
            ref = model.float().cpu()(x)
        out = sess.run(None, {'images': x.numpy()})[0]
        diff = float((torch.from_numpy(out) - ref).abs().max())
        LOGGER.info('onnxruntime output %s, largest difference from PyTorch %.3g', tuple(out.shape), diff)
    LOGGER.info('Output shape %s: (batch, boxes, 5 + nc) for non_max_suppression', tuple(y.shape))
    return (ts_file, onnx_file), diff


def export_darknet(weights, img_size=640, cfg=None):
    """Write <weights>.cfg and <weights>.weights: a checkpoint of ours (YAML or darknet model) as darknet files
    (models/darknet_convert.py). They are read back and run against the checkpoint; returns ((cfg path, weights
    path), largest difference of the decoded outputs)."""
    from models.checkpoint import load_checkpoint, model_from_checkpoint
    from models.darknet import load_darknet_model, load_darknet_weights
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
    p = ArgumentParser(prog='models/export.py', description='Export to TorchScript, ONNX and darknet files.')
    p.add_argument('--weights', type=str, default='weights/yolov4-p5.pt', help='.pt or darknet .weights path')
    p.add_argument('--cfg', type=str, default=None, help='darknet cfg of --weights X.weights (default: models/X.cfg)')
    p.add_argument('--img-size', '--img', nargs='+', type=int, default=[640, 640], help='image size (h, w)')
    p.add_argument('--batch-size', type=int, default=1, help='batch size')
    p.add_argument('--dynamic', action='store_true', help='ONNX: dynamic batch and image size')
    p.add_argument('--opset', type=int, default=12, help='ONNX opset (12 or later)')
    p.add_argument('--include', nargs='+', default=['torchscript', 'onnx'], choices=FORMATS,
                   help='formats to write (darknet: X.cfg and X.weights, at the first --img-size)')
    opt = p.parse_args(argv)
    opt.img_size *= 2 if len(opt.img_size) == 1 else 1
    check_at_least('--img-size', opt.img_size, 1)
    check_at_least('--batch-size', opt.batch_size, 1)
    check_at_least('--opset', opt.opset, 12)
    logging.basicConfig(format='%(message)s', level=logging.INFO)
    result = None
    if {'torchscript', 'onnx'} & set(opt.include):
        result = export(opt.weights, opt.img_size, opt.batch_size, opt.dynamic, opt.opset, cfg=opt.cfg,
                        include=opt.include)
    if 'darknet' in opt.include:
        export_darknet(opt.weights, opt.img_size[0], cfg=opt.cfg)
    return result


if __name__ == '__main__':
    from models.export import main as _main  # classes as models.*, not __main__.*
    run_cli(_main, 'models/export.py')
