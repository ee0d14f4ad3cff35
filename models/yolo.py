"""YOLOv4-P5/P6/P7/CSP: the Detect head, the YAML parser and the Model (docs/architecture.md, "Model").

Run as a script to print a config's layer table and summary:
    python models/yolo.py --cfg yolov4-p5.yaml
"""
import logging
import math
import sys
from copy import deepcopy
from pathlib import Path

import torch
import torch.nn as nn

if __package__ in (None, ''):  # `python models/yolo.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import activation_checkpointing  # noqa: E402
from models.common import Bottleneck, BottleneckCSP, BottleneckCSP2, Concat, Conv, Split, SPPCSP  # noqa: E402
from utils.errors import ArgumentParser, UserError, check_at_least, run_cli  # noqa: E402
from utils.general import make_divisible  # noqa: E402
from utils.torch_utils import (fuse_conv_and_bn, initialize_weights, model_info, scale_img,  # noqa: E402
                               select_device)

LOGGER = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).resolve().parent
TEST_SIZES = {'yolov4-p5': 896, 'yolov4-p6': 1280, 'yolov4-p7': 1536, 'yolov4-csp': 640,
              'yolov4-tiny': 416}  # paper test sizes


def decode_level(x, grid, stride, anchor_grid, exp_wh=False, s=2.0):
    """One level's raw map x (bs, na, ny, nx, 5 + nc) decoded in float32 (float16 steps are 1 px above 1024):
    xy = (sigmoid * s - (s - 1) / 2 + cell) * stride; wh = (2 sigmoid)^2 * anchor (Scaled-YOLOv4, s = 2) or
    exp(t) * anchor (darknet's YOLOv4 and tiny); objectness and classes sigmoid."""
    y = x.float().sigmoid()
    xy = (y[..., :2] * s - 0.5 * (s - 1) + grid.to(y.dtype)) * stride
    anchor = anchor_grid.to(y.dtype)
    wh = torch.exp(x[..., 2:4].float()) * anchor if exp_wh else (y[..., 2:4] * 2) ** 2 * anchor
    return torch.cat((xy, wh, y[..., 4:]), -1)


def grid_boxes(t, anchors, exp_wh=False, s=2.0):
    """decode_level's boxes in grid units (x, y relative to the cell) for raw predictions t (n, 4+) at matched
    cells, as the loss takes them; exp(t) is clamped so that it cannot overflow."""
    xy = t[:, :2].sigmoid() * s - 0.5 * (s - 1)
    wh = torch.exp(t[:, 2:4].clamp(max=EXP_CLAMP)) * anchors if exp_wh else (t[:, 2:4].sigmoid() * 2) ** 2 * anchors
    return torch.cat((xy, wh), 1)


class Head(nn.Module):
    """What Detect and darknet's head (models/darknet.py, DarknetHead) share: each level's raw map (bs, na * no,
    ny, nx) viewed as (bs, na, ny, nx, no). Training returns these; inference also decodes them to pixels
    (decode_level, as `level_decoding(i)` says) and returns (decoded, raw), or the decoded tensor only when
    `export`. A subclass sets nl, na, no, stride, grid and anchor_grid, and says level_decoding(i)."""

    export = False  # when True, forward returns the decoded tensor only (TorchScript/ONNX export)

    def level_decoding(self, i):
        """(exp_wh, s) of level i: wh = exp(t) * anchor (darknet's YOLOv4) or (2 sigmoid)^2 * anchor; xy's scale s."""
        raise NotImplementedError

    def level_map(self, i, x):
        """Level i's raw map from the head's input (Detect: its 1x1 conv; darknet's head: the input itself)."""
        return x

    def forward(self, x):
        z = []  # inference output
        x = list(x)
        for i in range(self.nl):
            x[i] = self.level_map(i, x[i])
            bs, _, ny, nx = x[i].shape  # x(bs,255,20,20) to x(bs,3,20,20,85)
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training:
                z.append(decode_level(x[i], self._grid(i, nx, ny, x[i].device), self.stride[i], self.anchor_grid[i],
                                      *self.level_decoding(i)).view(bs, -1, self.no))
        if self.training:
            return x
        return torch.cat(z, 1) if self.export else (torch.cat(z, 1), x)

    def _grid(self, i, nx, ny, device):
        if self.export:  # computed in the graph, so exported models accept other sizes
            return self._make_grid(nx, ny).to(device)
        if self.grid[i].shape[2:4] != (ny, nx) or self.grid[i].device != device:
            self.grid[i] = self._make_grid(nx, ny).to(device)
        return self.grid[i]

    def train_box(self, i, t, anchors):
        """Boxes (n, 4) in grid units (x, y relative to the cell) of raw predictions t (n, 4+) at level i."""
        return grid_boxes(t, anchors, *self.level_decoding(i))

    def cell_reach(self, i):
        """How far past its cell level i's centres reach ((s - 1) / 2: 0.5 for Scaled-YOLOv4's xy in (-0.5, 1.5)):
        targets also train the neighbour cell that can reach them."""
        return 0.5 * (self.level_decoding(i)[1] - 1)

    @staticmethod
    def _make_grid(nx=20, ny=20):
        yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing='ij')
        return torch.stack((xv, yv), 2).view((1, 1, ny, nx, 2)).float()


class Detect(Head):
    """Per-level 1x1 prediction convs; in inference mode also decodes boxes to pixels (Head)."""

    stride = None  # strides computed during build

    decoding, scale_xy = 'scaled', 2.0  # class defaults: released pickles predate them

    def __init__(self, nc=80, anchors=(), ch=(), decoding='scaled', scale_xy=2.0):
        super().__init__()
        if decoding not in DECODINGS:
            raise ConfigError(f'Detect decoding {decoding!r} is not one of {", ".join(DECODINGS)}')
        self.decoding, self.scale_xy = decoding, float(scale_xy)
        self.nc = nc  # number of classes
        self.no = nc + 5  # outputs per anchor
        self.nl = len(anchors)  # number of detection levels
        self.na = len(anchors[0]) // 2  # anchors per level
        self.grid = [torch.zeros(1)] * self.nl
        a = torch.tensor(anchors).float().view(self.nl, -1, 2)
        self.register_buffer('anchors', a)  # (nl, na, 2), grid units after build
        self.register_buffer('anchor_grid', a.clone().view(self.nl, 1, -1, 1, 1, 2))  # (nl,1,na,1,1,2) pixels
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)

    def level_map(self, i, x):
        return self.m[i](x)

    def level_decoding(self, i):
        return self.decoding == 'yolov4', self.scale_xy


class Model(nn.Module):
    """A detector built from a YAML config (path or dict). `nc` overrides the config's class count."""

    def __init__(self, cfg='yolov4-p5.yaml', ch=3, nc=None, verbose=False):
        super().__init__()
        if isinstance(cfg, dict):
            self.yaml = deepcopy(cfg)
        else:
            self.yaml_file = Path(cfg).name
            self.yaml = load_config(cfg)
        if nc and nc != self.yaml['nc']:
            LOGGER.info('Overriding %s nc=%g with nc=%g', getattr(self, 'yaml_file', 'model'), self.yaml['nc'], nc)
            self.yaml['nc'] = nc
        self.model, self.save = parse_model(deepcopy(self.yaml), ch=[ch], verbose=verbose)
        self.nc = self.yaml['nc']
        self.names = [str(i) for i in range(self.nc)]

        m = self.model[-1]
        if isinstance(m, Detect):
            s = 256  # 2x the largest stride of P5; every level of P7 still has >= 2 cells
            with torch.no_grad():
                m.stride = torch.tensor([s / x.shape[-2] for x in self.forward(torch.zeros(1, ch, s, s))])
            check_anchor_order(m)  # on the pixel anchors, before they become grid units per level
            m.anchors /= m.stride.view(-1, 1, 1)
            self.stride = m.stride
            self._initialize_biases()
        initialize_weights(self)
        if 'bn_eps' in self.yaml:  # darknet's 1e-5 (YOLOv4-tiny), for its .weights to load exactly
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eps = float(self.yaml['bn_eps'])

    def forward(self, x, augment=False, profile=False):
        if augment:
            return self._forward_augment(x)
        return self.forward_once(x, profile)

    def _forward_augment(self, x):
        """Test-time augmentation: scales 1, 0.83 (left-right flipped), 0.67; outputs mapped back."""
        img_size = x.shape[-2:]  # height, width
        y = []
        for si, fi in zip((1, 0.83, 0.67), (None, 3, None)):  # flips: 2 up-down, 3 left-right
            xi = scale_img(x.flip(fi) if fi else x, si)
            yi = self.forward_once(xi)[0]
            yi[..., :4] /= si  # de-scale
            if fi == 2:
                yi[..., 1] = img_size[0] - yi[..., 1]  # de-flip up-down
            elif fi == 3:
                yi[..., 0] = img_size[1] - yi[..., 0]  # de-flip left-right
            y.append(yi)
        return torch.cat(y, 1), None

    def forward_once(self, x, profile=False):
        if activation_checkpointing.active(self, x) and not profile:
            return self._forward_checkpointed(x)
        y = []  # outputs kept for later rows
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            if profile:
                _profile_layer(m, x)
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    def _forward_checkpointed(self, x):
        """forward_once with activation checkpointing, each run of rows (models/activation_checkpointing.py,
        checkpoint_runs) as its plan says; the Detect head runs as usual."""
        y, area = [], x.shape[-2] * x.shape[-1]
        for run in activation_checkpointing.checkpoint_runs(self.model, self.save):
            first = run[0]
            if first.f != -1:
                x = y[first.f] if isinstance(first.f, int) else [x if j == -1 else y[j] for j in first.f]
            x = first(x) if isinstance(first, Detect) else activation_checkpointing.checkpointed_rows(run, x, area)
            y += [None] * (len(run) - 1) + [x if run[-1].i in self.save else None]
        return x

    def _initialize_biases(self):
        """Objectness prior of 8 objects per 640x640 image, class prior 0.6 / (nc - 0.99), as published."""
        m = self.model[-1]
        for mi, s in zip(m.m, m.stride):
            b = mi.bias.view(m.na, -1).detach().clone()
            b[:, 4] += math.log(8 / (640 / s) ** 2)
            b[:, 5:] += math.log(0.6 / (m.nc - 0.99))
            mi.bias = nn.Parameter(b.view(-1), requires_grad=True)

    def fuse(self):
        """Fold every Conv's BatchNorm into its convolution (in place); returns self."""
        LOGGER.info('Fusing layers...')
        for m in self.model.modules():
            if type(m) is Conv and isinstance(m.bn, nn.BatchNorm2d):
                m.conv = fuse_conv_and_bn(m.conv, m.bn)
                m.bn = nn.Identity()
        return self

    def info(self, verbose=False, img_size=640):
        """Log layers, parameters and GFLOPs at img_size; returns (layers, parameters, gflops)."""
        return model_info(self, verbose=verbose, img_size=img_size)


def _profile_layer(m, x):
    import time
    t = time.perf_counter()
    for _ in range(10):
        m(x)
    LOGGER.info('%10.1f ms  %s', (time.perf_counter() - t) * 100, m.type)


def check_anchor_order(m):
    """Reverse the level order of the anchors when their areas are not ordered like the strides. Levels are
    compared by mean area (published: the first and last anchor, which tie for YOLOv4-tiny's 81,82)."""
    a = m.anchor_grid.prod(-1).view(m.nl, -1).mean(1)
    da = a[-1] - a[0]
    ds = m.stride[-1] - m.stride[0]
    if da != 0 and da.sign() != ds.sign():
        LOGGER.info('Reversing anchor order')
        m.anchors[:] = m.anchors.flip(0)
        m.anchor_grid[:] = m.anchor_grid.flip(0)


# The YAML parser resolves names through these tables only: nothing in a config is evaluated.
MODULES = {
    'Conv': Conv, 'Bottleneck': Bottleneck, 'BottleneckCSP': BottleneckCSP, 'BottleneckCSP2': BottleneckCSP2,
    'SPPCSP': SPPCSP, 'Concat': Concat, 'Detect': Detect, 'Split': Split,
    'nn.Upsample': nn.Upsample, 'Upsample': nn.Upsample,
    'nn.Conv2d': nn.Conv2d, 'nn.BatchNorm2d': nn.BatchNorm2d, 'nn.MaxPool2d': nn.MaxPool2d,
    'nn.Identity': nn.Identity,
}
WIDTH_MODULES = (nn.Conv2d, Conv, Bottleneck, BottleneckCSP, BottleneckCSP2, SPPCSP)  # first arg is c2
CSP_MODULES = (BottleneckCSP, BottleneckCSP2, SPPCSP)  # take the repeat count n as 3rd argument
STRING_LITERALS = {'nearest', 'bilinear', 'bicubic', 'trilinear', 'linear', 'area', 'nearest-exact',
                   'leaky', 'mish', 'scaled', 'yolov4'}  # Upsample modes, Conv activations, Detect decodings
DECODINGS = ('scaled', 'yolov4')  # Scaled-YOLOv4's head; darknet's YOLOv4/tiny head (exp wh, scale_x_y)
EXP_CLAMP = 8.0  # 'yolov4' training: wh = exp(t) * anchor with t clamped, so that exp cannot overflow


class ConfigError(UserError, ValueError):
    """A model YAML that cannot be built; the message names the row and what is wrong."""


class ConfigNotFoundError(ConfigError, FileNotFoundError):
    """A model yaml that does not exist."""


def find_config(cfg):
    """A model config path as given, else the file of that name in models/ when only that exists."""
    path = Path(cfg)
    return CONFIG_DIR / path.name if not path.exists() and (CONFIG_DIR / path.name).exists() else path


def load_config(cfg):
    """Read a model YAML; a bare name (e.g. 'yolov4-p5.yaml') is also looked up in models/."""
    import yaml
    path = find_config(cfg)
    if not path.exists():
        raise ConfigNotFoundError(f'model config {cfg} not found (looked in . and {CONFIG_DIR}): give a path to a '
                                  f'model yaml, or one of the names in models/')
    with open(path) as f:
        d = yaml.safe_load(f)
    if not isinstance(d, dict):
        raise ConfigError(f'{path}: not a model config (expected a mapping)')
    missing = [k for k in ('nc', 'depth_multiple', 'width_multiple', 'anchors', 'backbone', 'head') if k not in d]
    if missing:
        raise ConfigError(f'{path}: missing keys {missing}')
    return d


def _resolve_arg(a, row, names):
    if not isinstance(a, str):
        return a
    if a in names:
        return names[a]
    if a in STRING_LITERALS:
        return a
    raise ConfigError(f'row {row}: unknown argument name {a!r} (known: {sorted(names)})')


def parse_model(d, ch, verbose=True):
    """Build the layers of config dict d; ch is [input channels]. Returns (nn.Sequential, save list).

    With verbose the layer table (index, from, n, params, module, arguments) is logged at INFO.
    """
    log = LOGGER.info if verbose else LOGGER.debug
    anchors, nc, gd, gw = d['anchors'], d['nc'], d['depth_multiple'], d['width_multiple']
    na = (len(anchors[0]) // 2) if isinstance(anchors, list) else anchors
    no = na * (nc + 5)
    names = {'nc': nc, 'anchors': anchors, 'None': None, 'True': True, 'False': False}
    log('\n%3s%18s%3s%10s  %-40s%-30s', '', 'from', 'n', 'params', 'module', 'arguments')

    c_in = ch[0]
    widths = []  # output width of each row
    layers, save = [], []
    rows = list(d['backbone']) + list(d['head'])
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or len(row) != 4:
            raise ConfigError(f'row {i}: expected [from, number, module, args], got {row!r}')
        f, n, name, args = row
        if name not in MODULES:
            raise ConfigError(f'row {i}: unknown module {name!r} (known: {sorted(MODULES)})')
        m = MODULES[name]
        args = [_resolve_arg(a, i, names) for a in (args or [])]
        for j in ([f] if isinstance(f, int) else f):
            if j != -1 and not (-i <= j < i):
                raise ConfigError(f'row {i}: from index {j} does not name an earlier row')

        def width(j):  # output width of row j (-1: the previous row, or the input for row 0)
            if j == -1:
                return widths[-1] if widths else c_in
            return widths[j]

        n = max(round(n * gd), 1) if n > 1 else n
        if m in WIDTH_MODULES:
            c1, c2 = width(f), args[0]
            c2 = make_divisible(c2 * gw, 8) if c2 != no else c2
            args = [c1, c2, *args[1:]]
            if m in CSP_MODULES:
                args.insert(2, n)
                n = 1
        elif m is nn.BatchNorm2d:
            c2 = width(f)
            args = [c2]
        elif m is Concat:
            c2 = sum(width(x) for x in f)
        elif m is Split:
            c2 = width(f) // (args[0] if args else 2)
        elif m is Detect:
            args.insert(2, [width(x) for x in f])
            if isinstance(args[1], int):  # number of anchors given instead of a list
                args[1] = [list(range(args[1] * 2))] * len(f)
            c2 = no
        else:
            c2 = width(f)

        m_ = nn.Sequential(*[m(*args) for _ in range(n)]) if n > 1 else m(*args)
        t = f'{m.__module__}.{m.__qualname__}'  # module type
        np_ = sum(x.numel() for x in m_.parameters())
        m_.i, m_.f, m_.type, m_.np = i, f, t, np_
        log('%3s%18s%3s%10.0f  %-40s%-30s', i, f, n, np_, t, args)
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(m_)
        widths.append(c2)
    return nn.Sequential(*layers), sorted(set(save))


def main(argv=None):
    parser = ArgumentParser(prog='models/yolo.py',
                            description='Build a model from its YAML and print its layers and size.')
    parser.add_argument('--cfg', type=str, default='yolov4-p5.yaml', help='model.yaml (path or name in models/)')
    parser.add_argument('--img-size', '--img', type=int, default=None, help='size for the GFLOPs figure')
    parser.add_argument('--device', default='cpu', help='cuda device, i.e. 0 or 0,1,2,3 or cpu')
    parser.add_argument('--nc', type=int, default=None, help='override the number of classes')
    opt = parser.parse_args(argv)
    check_at_least('--img-size', opt.img_size, 32)
    check_at_least('--nc', opt.nc, 1)
    logging.basicConfig(format='%(message)s', level=logging.INFO)
    device = select_device(opt.device)
    model = Model(opt.cfg, nc=opt.nc, verbose=True).to(device)
    img_size = opt.img_size if opt.img_size is not None else TEST_SIZES.get(Path(opt.cfg).stem, 640)
    model.info(verbose=False, img_size=img_size)
    return model


if __name__ == '__main__':
    # Run main() of the importable module so that classes are models.yolo.*, not __main__.* (pickling, isinstance).
    from models.yolo import main as _main
    run_cli(_main, 'models/yolo.py')
