"""Darknet models: a `.cfg` built as a PyTorch module, and `.weights` read and written exactly.

    model = DarknetModel('yolov4-tiny.cfg')
    load_darknet_weights(model, 'yolov4-tiny.weights')   # header, seen-images counter and every float checked
    save_darknet_weights(model, 'copy.weights')          # the same bytes back

The layers are darknet's (AlexeyAB/darknet, the producer of the released YOLOv4 and Scaled-YOLOv4 weights):
convolutional (batch norm, groups; mish, leaky, logistic, linear, swish, relu), route (layers, groups, group_id),
shortcut, maxpool (with darknet's padding, so the stride-1 SPP pools keep the size), upsample and yolo (mask,
anchors, scale_x_y, new_coords). Anything else is refused with one line naming the cfg's line. In eval mode the
model returns what our YAML models return, (decoded boxes in pixels (batch, n, 5 + nc), raw outputs), so that
test.py, detect.py and NMS take either.
"""
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models import activation_checkpointing
from models.activations import Mish
from models.yolo import CONFIG_DIR, Head, find_config
from utils.errors import UserError

LOGGER = logging.getLogger(__name__)
# AlexeyAB darknet's batch norm: (x - mean) / sqrt(variance + .00001f) in src/blas.c normalize_cpu, and
# sqrt(variance + .00001) in src/network.c fuse_conv_batchnorm, which darknet runs for inference. (pjreddie's original
# darknet and OpenCV's darknet importer use .000001f; the published yolov4-csp branch builds cfgs with eps 1e-4.)
BN_EPS = 1e-5
# darknet's activations (src/activations.h): leaky is x > 0 ? x : .1f * x; mish is x * tanh(softplus(x)) with
# softplus x above 20, as PyTorch's; a [convolutional] without activation= is logistic (parse_convolutional)
ACTIVATIONS = {'linear': nn.Identity, 'leaky': lambda: nn.LeakyReLU(0.1), 'logistic': nn.Sigmoid,
               'mish': Mish, 'swish': nn.SiLU, 'relu': nn.ReLU}
YOLO_CLASSES = 20  # a [yolo] layer's classes when its cfg gives none (parse_yolo in src/parser.c)
SECTIONS = ('net', 'network', 'convolutional', 'route', 'shortcut', 'maxpool', 'upsample', 'yolo')


class DarknetError(UserError, ValueError):
    """A .cfg or .weights file this project cannot read; the message names the file (and the cfg's line)."""


@dataclass
class Block:
    """One [section] of a cfg: its name, options as written, and the line it starts on."""
    kind: str
    line: int
    options: dict = field(default_factory=dict)
    path: str = ''

    def where(self):
        return f'{self.path}:{self.line} [{self.kind}]'

    def get(self, key, default=None, cast=int):
        if key not in self.options:
            if default is None:
                raise DarknetError(f'{self.where()}: {key}= is required')
            return default
        try:
            return cast(self.options[key])
        except ValueError:
            raise DarknetError(f'{self.where()}: {key}={self.options[key]} is not a {cast.__name__}') from None

    def ints(self, key, default=None):
        if key not in self.options and default is not None:
            return list(default)
        return [int(x) for x in self.get(key, cast=str).split(',') if x.strip()]

    def floats(self, key):
        return [float(x) for x in self.get(key, cast=str).split(',') if x.strip()]

    def anchors(self):
        """A [yolo] block's own anchors, (n, 2) float32 pixels: `anchors` picked by `mask` (default: all)."""
        every = np.array(self.floats('anchors'), dtype=np.float32).reshape(-1, 2)
        mask = self.ints('mask', default=range(len(every)))
        if any(not 0 <= k < len(every) for k in mask):
            raise DarknetError(f'{self.where()}: mask={self.options["mask"]} names anchors it does not have')
        return every[mask]


def format_anchors(pairs):
    """w,h pairs as a cfg's anchors= value, float32-exact (9 significant digits)."""
    return ', '.join(f'{x:.9g},{y:.9g}' for x, y in pairs)


def format_cfg(sections):
    """The cfg text of (section name, {option: value}) pairs, [net] first."""
    return '\n'.join(f'[{kind}]\n' + ''.join(f'{k}={v}\n' for k, v in options.items()) for kind, options in sections)


def find_cfg(cfg):
    """A cfg path as given, else by name in models/ ('yolov4-tiny.cfg')."""
    path = find_config(cfg)
    if not path.is_file():
        raise DarknetError(f'darknet cfg {cfg} not found (looked in . and {CONFIG_DIR}): give its path, or one of '
                           f'{", ".join(sorted(p.name for p in CONFIG_DIR.glob("*.cfg")))}')
    return path


def parse_cfg(path, text=None):
    """The [net] block and the layer blocks of a darknet cfg (a path, or a name in models/; or its `text`)."""
    if text is None:
        path = find_cfg(path)
        text = path.read_text(errors='replace')
    else:
        path = path or '<cfg text>'
    blocks = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split('#', 1)[0].split(';', 1)[0].strip()
        if not line:
            continue
        if line.startswith('['):
            kind = line.strip('[]').strip().lower()
            if not line.endswith(']') or kind not in SECTIONS:
                raise DarknetError(f'{path}:{n}: section {line} is not supported (this reader knows '
                                   f'{", ".join(SECTIONS[2:])})')
            blocks.append(Block(kind, n, path=str(path)))
        elif '=' in line and blocks:
            key, value = line.split('=', 1)
            blocks[-1].options[key.strip()] = value.strip()
        else:
            raise DarknetError(f'{path}:{n}: expected [section] or key=value, got {line!r}')
    if not blocks or blocks[0].kind not in ('net', 'network'):
        raise DarknetError(f'{path}: a darknet cfg starts with a [net] section')
    return blocks[0], blocks[1:]


class DarknetConv(nn.Module):
    """[convolutional]: conv, optional batch norm (its biases are then the norm's shifts), activation."""

    def __init__(self, block, c1):
        super().__init__()
        size, filters = block.get('size', 1), block.get('filters', 1)
        groups, stride = block.get('groups', 1), block.get('stride', 1)
        pad = size // 2 if block.get('pad', 0) else block.get('padding', 0)
        if block.get('dilation', 1) != 1 or block.get('stride_x', stride) != stride or 'xnor' in block.options:
            raise DarknetError(f'{block.where()}: dilation, stride_x/stride_y and xnor are not supported')
        act = block.get('activation', 'logistic', cast=str)
        if act not in ACTIVATIONS:
            raise DarknetError(f'{block.where()}: activation={act} is not supported ({", ".join(ACTIVATIONS)})')
        bn = self.batch_normalize = bool(block.get('batch_normalize', 0))
        self.conv = nn.Conv2d(c1, filters, size, stride, pad, groups=groups, bias=not bn)
        self.bn = nn.BatchNorm2d(filters, eps=BN_EPS, momentum=0.03) if bn else nn.Identity()  # as in training
        self.act = ACTIVATIONS[act]()

    def forward(self, x, outputs):
        return self.act(self.bn(self.conv(x)))


class Route(nn.Module):
    """[route]: the concatenation of earlier layers' outputs; with `groups`, of channel group `group_id` of each of
    them (darknet's forward_route_layer in src/route_layer.c takes the group of every layer, then concatenates)."""

    def __init__(self, block, index, widths):
        super().__init__()
        self.layers = [i if i >= 0 else index + i for i in block.ints('layers')]
        if any(not 0 <= i < index for i in self.layers):
            raise DarknetError(f'{block.where()}: layers={block.options["layers"]} points outside the layers before it')
        self.groups, self.group_id = block.get('groups', 1), block.get('group_id', 0)
        self.c2 = sum(widths[i] // self.groups for i in self.layers)

    def forward(self, x, outputs):
        parts = [outputs[i].chunk(self.groups, 1)[self.group_id] if self.groups > 1 else outputs[i]
                 for i in self.layers]
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]


class Shortcut(nn.Module):
    """[shortcut]: the previous output plus an earlier layer's (a residual connection)."""

    def __init__(self, block, index, widths):
        super().__init__()
        source = block.ints('from')[0]
        self.source = index + source if source < 0 else source
        if block.get('activation', 'linear', cast=str) != 'linear' or 'weights_type' in block.options:
            raise DarknetError(f'{block.where()}: only linear shortcuts without weights are supported')
        if not 0 <= self.source < index or widths[self.source] != widths[index - 1]:
            raise DarknetError(f'{block.where()}: from={source} must name an earlier layer with the same channels')

    def forward(self, x, outputs):
        return x + outputs[self.source]


class MaxPool(nn.Module):
    """Darknet's max pool: `padding` (default size - 1: parse_maxpool in src/parser.c) split with the smaller half
    left and top (forward_maxpool_layer's offset -pad / 2)."""

    def __init__(self, block):
        super().__init__()
        self.size, self.stride = block.get('size', block.get('stride', 1)), block.get('stride', 1)
        self.padding = block.get('padding', self.size - 1)

    def forward(self, x, outputs):
        h, w = x.shape[2:]
        left = self.padding // 2
        oh, ow = [(s + self.padding - self.size) // self.stride + 1 for s in (h, w)]
        right = (ow - 1) * self.stride + self.size - w - left
        bottom = (oh - 1) * self.stride + self.size - h - left
        x = F.pad(x, (left, right, left, bottom), value=float('-inf'))
        return F.max_pool2d(x, self.size, self.stride)


class Upsample(nn.Module):
    """[upsample]: nearest-neighbour by `stride` (darknet's `scale`, a factor on the values, must be 1)."""

    def __init__(self, block):
        super().__init__()
        self.stride = block.get('stride', 2)
        if block.get('scale', 1.0, cast=float) != 1 or self.stride < 0:
            raise DarknetError(f'{block.where()}: only an [upsample] with scale=1 and a positive stride is supported')

    def forward(self, x, outputs):
        return F.interpolate(x, scale_factor=self.stride, mode='nearest')


class YoloOutput(nn.Module):
    """[yolo]: marks its input (the conv before it) as detection level `level`; the model's DarknetHead decodes it.
    It passes its input on, as darknet's yolo layer does for later routes."""

    def __init__(self, level):
        super().__init__()
        self.level = level

    def forward(self, x, outputs):
        return x


class DarknetHead(Head):
    """The [yolo] layers of a cfg as one head with Detect's interface and forward (models/yolo.py, Head: `anchors`
    in grid units, `anchor_grid` in pixels, `stride`, `nl`, `na`, `nc`), so that the loss, autoanchor and DDP
    treat both kinds of model alike.

    Level i decodes as darknet does, with s = scale_x_y:
    new_coords=0 (YOLOv4, tiny): xy = (sigmoid(t) * s - (s - 1) / 2 + cell) * stride, wh = exp(t) * anchor;
    new_coords=1 (Scaled-YOLOv4): xy = (sigmoid(t) * s - (s - 1) / 2 + cell) * stride, wh = (2 sigmoid(t))^2 *
    anchor, where darknet's cfg puts the sigmoid in the conv before (activation=logistic): it is moved here, so
    that training sees logits (the same numbers at inference). Objectness and classes: sigmoid."""

    def __init__(self, yolo_blocks, nc):
        super().__init__()
        anchors, self.scale_xy, self.new_coords = [], [], []
        for b in yolo_blocks:
            anchors.append(b.anchors())
            self.scale_xy.append(b.get('scale_x_y', 1.0, cast=float))
            self.new_coords.append(bool(b.get('new_coords', 0)))
        if len({len(a) for a in anchors}) != 1:
            raise DarknetError(f'{yolo_blocks[0].path}: every [yolo] layer needs the same number of anchors (mask)')
        self.nl, self.na, self.nc, self.no = len(anchors), len(anchors[0]), nc, nc + 5
        a = torch.from_numpy(np.stack(anchors))
        self.register_buffer('anchors', a.clone())  # (nl, na, 2), grid units once the strides are known
        self.register_buffer('anchor_grid', a.clone().view(self.nl, 1, -1, 1, 1, 2))  # pixels
        self.stride = None
        self.grid = [torch.zeros(1)] * self.nl

    def set_strides(self, strides):
        self.stride = strides
        self.anchors.copy_(self.anchor_grid.view(self.nl, -1, 2) / strides.view(-1, 1, 1))

    def level_decoding(self, i):
        return not self.new_coords[i], self.scale_xy[i]


class DarknetModel(nn.Module):
    """A network built from a darknet cfg (a path, a name in models/, or `text=` the cfg itself). `nc` overrides
    the cfg's classes (and the filters of the convs before the [yolo] layers), as for fine-tuning.

    `model` holds the layers in cfg order and, last, the DarknetHead, as our YAML models hold theirs: eval mode
    returns (decoded detections in pixels, raw outputs), training mode the raw outputs; `stride` the strides of
    the yolo layers; `names` 0..nc-1 until set; `to_cfg()` the cfg back, with the anchors the model holds."""

    def __init__(self, cfg=None, nc=None, text=None):
        super().__init__()
        self.cfg_file = str(cfg or '<cfg text>')
        net, blocks = parse_cfg(cfg, text=text)
        if nc:
            _set_classes(blocks, nc)
        self.net, self.blocks = net, blocks
        self.net_size = (net.get('height', 416), net.get('width', 416))
        layers, widths, c = [], [], net.get('channels', 3)
        yolo_blocks = [b for b in blocks if b.kind == 'yolo']
        if not yolo_blocks:
            raise DarknetError(f'{self.cfg_file}: no [yolo] layer: not a detector this project can run')
        for i, b in enumerate(blocks):
            if b.kind == 'convolutional':
                layer = DarknetConv(b, c)
                c = layer.conv.out_channels
            elif b.kind == 'route':
                layer = Route(b, i, widths)
                c = layer.c2
            elif b.kind == 'shortcut':
                layer = Shortcut(b, i, widths)
            elif b.kind == 'maxpool':
                layer = MaxPool(b)
            elif b.kind == 'upsample':
                layer = Upsample(b)
            else:
                _check_before_yolo(b, layers[-1] if layers else None, c)
                layer = YoloOutput(sum(isinstance(m, YoloOutput) for m in layers))
            layers.append(layer)
            widths.append(c)
        self.yolo = [i for i, m in enumerate(layers) if isinstance(m, YoloOutput)]
        self.nc = yolo_blocks[0].get('classes', YOLO_CLASSES)
        if any(b.get('classes', YOLO_CLASSES) != self.nc for b in yolo_blocks):
            raise DarknetError(f'{self.cfg_file}: the [yolo] layers have different classes=')
        self.model = nn.ModuleList(layers + [DarknetHead(yolo_blocks, self.nc)])
        self.names = [str(i) for i in range(self.nc)]
        self.stride = self._strides()

    @property
    def export(self):
        return self.model[-1].export

    @export.setter
    def export(self, value):
        self.model[-1].export = value

    def _strides(self):
        s = 256  # a dry run of any net size: 256 has two cells or more up to stride 128 and costs little
        with torch.no_grad():
            raw = self.train().forward(torch.zeros(1, self.model[0].conv.in_channels, s, s))
        self.eval()
        strides = torch.tensor([s / r.shape[2] for r in raw])
        self.model[-1].set_strides(strides)
        return strides

    def forward(self, x, augment=False):
        if augment:
            raise DarknetError('augmented inference (--augment) is not available for darknet cfg models')
        outputs, levels = [], []
        for m in self.model[:-1]:
            if isinstance(m, DarknetConv) and activation_checkpointing.active(self, x):
                x = activation_checkpointing.checkpointed(lambda t, m=m: m(t, outputs), m, x)
            else:
                x = m(x, outputs)
            if isinstance(m, YoloOutput):
                levels.append(x)
            outputs.append(x)
        return self.model[-1](levels)

    def fuse(self):
        """Fold batch norms into their convolutions (in place); returns self."""
        from utils.torch_utils import fuse_conv_and_bn
        for m in self.model:
            if isinstance(m, DarknetConv) and isinstance(m.bn, nn.BatchNorm2d):
                m.conv, m.bn = fuse_conv_and_bn(m.conv, m.bn), nn.Identity()
        return self

    def initialize_biases(self):
        """The Scaled-YOLOv4 priors on the convs before the yolo layers, for training from scratch: objectness of
        8 objects per 640x640 image, classes 0.6 / (nc - 0.99)."""
        head = self.model[-1]
        with torch.no_grad():
            for i, s in zip(self.yolo, head.stride.tolist()):
                b = self.model[i - 1].conv.bias.view(head.na, -1)
                b[:, 4] += math.log(8 / (640 / s) ** 2)
                b[:, 5:] += math.log(0.6 / (head.nc - 0.99))
        return self

    def to_cfg(self):
        """The cfg text of this model: the cfg it was built from (classes as set), with the anchors it holds."""
        head = self.model[-1]
        yolo_blocks = [b for b in self.blocks if b.kind == 'yolo']
        for b, anchors in zip(yolo_blocks, head.anchor_grid.view(head.nl, -1, 2).tolist()):
            if not np.array_equal(b.anchors(), np.array(anchors, dtype=np.float32)):  # autoanchor's
                b.options.update(anchors=format_anchors(anchors), mask=','.join(str(k) for k in range(len(anchors))),
                                 num=str(len(anchors)))
        return format_cfg((b.kind, b.options) for b in [self.net] + list(self.blocks))


def _set_classes(blocks, nc):
    """classes=nc in every [yolo] and filters=(nc + 5) * anchors in the conv before it (in place)."""
    for i, b in enumerate(blocks):
        if b.kind == 'yolo':
            if i == 0 or blocks[i - 1].kind != 'convolutional':
                raise DarknetError(f'{b.where()}: a [yolo] layer must follow a [convolutional] one')
            na = len(b.anchors())
            b.options['classes'] = str(nc)
            blocks[i - 1].options['filters'] = str(na * (nc + 5))


def _check_before_yolo(block, conv, c):
    """The conv before a [yolo] gives (classes + 5) x anchors channels, with the activation its decoding
    expects: linear (new_coords=0) or logistic (new_coords=1; the sigmoid is moved into the head)."""
    if not isinstance(conv, DarknetConv):
        raise DarknetError(f'{block.where()}: a [yolo] layer must follow a [convolutional] one')
    new_coords = bool(block.get('new_coords', 0))
    if not isinstance(conv.act, nn.Sigmoid if new_coords else nn.Identity):
        raise DarknetError(f'{block.where()}: with new_coords={int(new_coords)} the conv before it must have '
                           f'activation={"logistic" if new_coords else "linear"}')
    conv.act = nn.Identity()
    na, nc = len(block.anchors()), block.get('classes', YOLO_CLASSES)
    if c != na * (5 + nc):
        raise DarknetError(f'{block.where()}: the layer before has {c} filters, not (classes + 5) * '
                           f'{na} = {na * (5 + nc)}')


def _conv_tensors(m):
    """The tensors of a conv layer in .weights order: biases, [scales, rolling mean, rolling variance], weights."""
    if m.batch_normalize and not isinstance(m.bn, nn.BatchNorm2d):
        raise DarknetError('a fused model (batch norms folded by fuse()) has no .weights layout: use it before fuse()')
    if isinstance(m.bn, nn.BatchNorm2d):
        return [m.bn.bias, m.bn.weight, m.bn.running_mean, m.bn.running_var, m.conv.weight]
    return [m.conv.bias, m.conv.weight]


def wide_counter(major, minor):
    """Whether a .weights header stores the images-seen counter as uint64: AlexeyAB darknet's load_weights_upto
    (src/parser.c) reads 64 bits when major * 10 + minor >= 2, whatever else (pjreddie's original darknet also asks
    major and minor below 1000)."""
    return major * 10 + minor >= 2


def weights_file_size(model, version=(0, 2, 5)):
    """The size in bytes of `model`'s .weights file: header (16 or 20 bytes) and one float32 per value."""
    header = 20 if wide_counter(*version[:2]) else 16
    return header + 4 * sum(t.numel() for m in model.model if isinstance(m, DarknetConv) for t in _conv_tensors(m))


def load_darknet_weights(model, path):
    """Read a darknet .weights file into `model` (a DarknetModel) exactly; returns the seen-images counter.

    Header: int32 major, minor, revision, then the images seen as uint64 (version >= 0.2) or int32; then per conv
    layer, in cfg order, float32 biases, [scales, rolling mean, rolling variance], weights (load_convolutional_weights
    in AlexeyAB darknet's src/parser.c)."""
    path = Path(path)
    if not path.is_file():
        raise DarknetError(f'darknet weights {path} not found')
    data = path.read_bytes()
    if len(data) < 16:
        raise DarknetError(f'{path}: {len(data)} bytes is too short for a darknet .weights header')
    major, minor, revision = np.frombuffer(data[:12], dtype='<i4')
    wide = wide_counter(major, minor)
    seen = int(np.frombuffer(data[12:20], '<u8')[0] if wide else np.frombuffer(data[12:16], '<i4')[0])
    body = data[20 if wide else 16:]
    if len(body) % 4:
        raise DarknetError(f'{path}: {len(body)} bytes after the header are not whole float32 values (truncated '
                           f'or damaged: download it again)')
    floats = np.frombuffer(body, dtype='<f4')
    convs = [m for m in model.model if isinstance(m, DarknetConv)]
    need = sum(t.numel() for m in convs for t in _conv_tensors(m))
    if len(floats) != need:
        raise DarknetError(f'{path}: {len(floats)} floats after the header, but {model.cfg_file} needs {need} '
                           f'({"truncated" if len(floats) < need else "too long"}: another cfg, or a damaged file)')
    offset = 0
    with torch.no_grad():
        for m in convs:
            for t in _conv_tensors(m):
                t.copy_(torch.from_numpy(floats[offset:offset + t.numel()].copy()).view_as(t))
                offset += t.numel()
    LOGGER.info('Loaded %s (darknet %d.%d.%d, %d images seen)', path, major, minor, revision, seen)
    return seen


def save_darknet_weights(model, path, seen=0, version=(0, 2, 5)):
    """Write `model`'s tensors as a darknet .weights file (version 0.2.5: a uint64 images-seen counter)."""
    major, minor, revision = version
    wide = wide_counter(major, minor)
    parts = [np.array(version, dtype='<i4').tobytes(), np.array([seen], dtype='<u8' if wide else '<i4').tobytes()]
    for m in model.model:
        if isinstance(m, DarknetConv):
            parts += [t.detach().float().cpu().numpy().astype('<f4').tobytes() for t in _conv_tensors(m)]
    Path(path).write_bytes(b''.join(parts))
    return path
