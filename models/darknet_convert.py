"""Our YAML models as darknet `.cfg` + `.weights`, and darknet `.weights` into our YAML models.

    text, dk = yaml_to_darknet(model)                       # a DarknetModel with the same outputs
    write_darknet(model, 'best.cfg', 'best.weights')
    model = yaml_from_darknet('yolov4-tiny.yaml', 'yolov4-tiny.weights')   # darknet's release in the YAML model
    model = load_darknet_model('yolov4-tiny.weights')     # a .weights of darknet's cfg, or of a YAML of ours

Every layer maps onto darknet's standard layers (docs/architecture.md, "Darknet files"):
- a batch norm keeps its values, its variance moved from the model's eps to darknet's 1e-5 (the same function;
  float32 rounding). YOLOv4-tiny's YAML uses darknet's eps, so its files convert bit for bit both ways;
- the batch norm + Mish that our BottleneckCSP2 and SPPCSP apply to their bottleneck branch a second time
  (darknet's own P5/P6/CSP cfgs do not) becomes a depthwise 1x1 [convolutional] with weights 1 and that norm,
  the one standard darknet layer that computes it;
- each Detect level becomes its 1x1 conv and a [yolo] layer right after the layer it reads, as darknet writes
  them: Scaled-YOLOv4's head as new_coords=1, scale_x_y=2.0 with a logistic conv, YOLOv4-tiny's as new_coords=0.
So a YAML model that darknet's cfg describes layer for layer (yolov4-tiny.yaml) lists its convs in darknet's
order, and the release's .weights load into it.
"""
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from models.activations import Mish
from models.common import Bottleneck, BottleneckCSP, BottleneckCSP2, Concat, Conv, Split, SPPCSP
from models.darknet import (BN_EPS, DarknetConv, DarknetError, DarknetModel, format_anchors, format_cfg,
                            load_darknet_weights, save_darknet_weights)
from models.yolo import CONFIG_DIR, Detect, Model
from utils.downloads import DARKNET_RELEASES, download_release, release_destination

COCO_YAML = CONFIG_DIR.parent / 'data' / 'coco.yaml'  # class names of the 80-class releases

NET = {'batch': 64, 'subdivisions': 8, 'channels': 3, 'momentum': 0.949, 'decay': 0.0005, 'angle': 0,
       'saturation': 1.5, 'exposure': 1.5, 'hue': .1, 'learning_rate': 0.001, 'burn_in': 1000,
       'max_batches': 500500, 'policy': 'steps', 'steps': '400000,450000', 'scales': '.1,.1', 'mosaic': 1,
       'letter_box': 1}  # darknet's yolov4-p5.cfg training settings, for darknet users who train the file
YOLO = {'scaled': {'jitter': .1, 'objectness_smooth': 1, 'ignore_thresh': .7, 'truth_thresh': 1, 'resize': 1.5,
                   'iou_thresh': 0.2, 'iou_normalizer': 0.05, 'cls_normalizer': 0.5, 'obj_normalizer': 1.0,
                   'iou_loss': 'ciou', 'nms_kind': 'diounms', 'beta_nms': 0.6, 'new_coords': 1, 'max_delta': 2},
        'yolov4': {'jitter': .3, 'cls_normalizer': 1.0, 'iou_normalizer': 0.07, 'iou_loss': 'ciou',
                   'ignore_thresh': .7, 'truth_thresh': 1, 'random': 0, 'resize': 1.5, 'nms_kind': 'greedynms',
                   'beta_nms': 0.6}}  # darknet's yolov4-p5.cfg and yolov4-tiny.cfg [yolo] training settings
FUSED = 'a fused model (batch norms folded by fuse()) cannot be written as darknet files: write it before fusing'


@dataclass
class Binding:
    """Where one darknet conv's tensors live in a YAML model: a conv weight (None: a depthwise 1x1 of ones), its
    bias (Detect's convs), and channels [first, last) of a batch norm (None for Detect's convs)."""
    weight: torch.Tensor = None
    bias: torch.Tensor = None
    bn: nn.BatchNorm2d = None
    first: int = 0
    last: int = 0

    def to_darknet(self, dk):
        with torch.no_grad():
            dk.conv.weight.copy_(torch.ones_like(dk.conv.weight) if self.weight is None else self.weight)
            if self.bias is not None:
                dk.conv.bias.copy_(self.bias)
            if self.bn is not None:
                bn, s = self.bn, slice(self.first, self.last)
                dk.bn.weight.copy_(bn.weight[s])
                dk.bn.bias.copy_(bn.bias[s])
                dk.bn.running_mean.copy_(bn.running_mean[s])
                dk.bn.running_var.copy_(bn.running_var[s] + (bn.eps - BN_EPS))

    def from_darknet(self, dk, where):
        with torch.no_grad():
            if self.weight is None:
                if not torch.all(dk.conv.weight == 1):
                    raise DarknetError(f'{where}: a depthwise conv standing for a batch norm has weights other than 1')
            else:
                self.weight.copy_(dk.conv.weight)
            if self.bias is not None:
                self.bias.copy_(dk.conv.bias)
            if self.bn is not None:
                bn, s = self.bn, slice(self.first, self.last)
                variance = dk.bn.running_var - (bn.eps - BN_EPS)
                if (variance <= 0).any():
                    raise DarknetError(f'{where}: variances below the YAML model\'s batch norm eps {bn.eps:g}')
                bn.weight[s] = dk.bn.weight
                bn.bias[s] = dk.bn.bias
                bn.running_mean[s] = dk.bn.running_mean
                bn.running_var[s] = variance


class _Writer:
    """Darknet blocks in order, each conv block with its Binding."""

    def __init__(self):
        self.blocks, self.bindings = [], []

    def add(self, kind, binding=None, **options):
        self.blocks.append((kind, options))
        self.bindings.append(binding)
        return len(self.blocks) - 1

    def at(self, i):
        """Make layer i the input of the next block (a one-layer [route] unless it is the last block)."""
        if i != len(self.blocks) - 1:
            self.add('route', layers=i)

    def conv(self, i, conv, bn, act):
        """conv (nn.Conv2d) on layer i's output, then bn (a BatchNorm2d, or (bn, first, last) a channel slice of
        one), then act; returns the new layer's index."""
        bn = bn if isinstance(bn, tuple) else (bn, 0, conv.out_channels)
        if not isinstance(bn[0], nn.BatchNorm2d):
            raise DarknetError(FUSED)
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        if conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1] or p != k // 2 \
                or conv.dilation != (1, 1) or conv.bias is not None:
            raise DarknetError(f'a {k}x{conv.kernel_size[1]} conv with stride {conv.stride}, padding {conv.padding} '
                               f'has no darknet [convolutional] equivalent here')
        self.at(i)
        return self.add('convolutional', Binding(conv.weight, None, *bn), batch_normalize=1,
                        filters=conv.out_channels, size=k, stride=s, pad=1, groups=conv.groups,
                        activation=_activation(act))

    def norm(self, i, bn, first, last):
        """Channels [first, last) of a batch norm + Mish applied to layer i's output: a depthwise 1x1 conv with
        weights 1 (darknet has no batch norm layer of its own that every reader supports)."""
        self.at(i)
        return self.add('convolutional', Binding(None, None, bn, first, last), batch_normalize=1,
                        filters=last - first, size=1, stride=1, pad=1, groups=last - first, activation='mish')


def _activation(act):
    if isinstance(act, Mish):
        return 'mish'
    if isinstance(act, nn.LeakyReLU) and act.negative_slope == 0.1:
        return 'leaky'
    if isinstance(act, nn.Identity):
        return 'linear'
    raise DarknetError(f'activation {act} has no darknet equivalent here (mish, leaky 0.1, linear)')


def _bottleneck(w, i, m):
    j = w.conv(w.conv(i, m.cv1.conv, m.cv1.bn, m.cv1.act), m.cv2.conv, m.cv2.bn, m.cv2.act)
    return w.add('shortcut', **{'from': i, 'activation': 'linear'}) if m.add else j


def _bottleneck_csp(w, i, m):
    c = m.cv2.out_channels
    h = w.conv(i, m.cv1.conv, m.cv1.bn, m.cv1.act)
    for b in m.m:
        h = _bottleneck(w, h, b)
    y1 = w.conv(h, m.cv3, (m.bn, 0, c), m.act)
    y2 = w.conv(i, m.cv2, (m.bn, c, 2 * c), m.act)
    w.add('route', layers=f'{y1},{y2}')
    return w.conv(len(w.blocks) - 1, m.cv4.conv, m.cv4.bn, m.cv4.act)


def _bottleneck_csp2(w, i, m):
    c = m.cv2.out_channels
    x1 = h = w.conv(i, m.cv1.conv, m.cv1.bn, m.cv1.act)
    for b in m.m:
        h = _bottleneck(w, h, b)
    y1 = w.norm(h, m.bn, 0, c)
    y2 = w.conv(x1, m.cv2, (m.bn, c, 2 * c), m.act)
    w.add('route', layers=f'{y1},{y2}')
    return w.conv(len(w.blocks) - 1, m.cv3.conv, m.cv3.bn, m.cv3.act)


def _sppcsp(w, i, m):
    c = m.cv2.out_channels
    h = i
    for cv in (m.cv1, m.cv3, m.cv4):
        h = w.conv(h, cv.conv, cv.bn, cv.act)
    pools = []
    for pool in m.m:
        w.at(h)
        pools.append(w.add('maxpool', size=pool.kernel_size, stride=1))
    w.add('route', layers=','.join(str(j) for j in [h] + pools))
    y1 = w.conv(len(w.blocks) - 1, m.cv5.conv, m.cv5.bn, m.cv5.act)
    y1 = w.conv(y1, m.cv6.conv, m.cv6.bn, m.cv6.act)
    y1 = w.norm(y1, m.bn, 0, c)
    y2 = w.conv(i, m.cv2, (m.bn, c, 2 * c), m.act)
    w.add('route', layers=f'{y1},{y2}')
    return w.conv(len(w.blocks) - 1, m.cv7.conv, m.cv7.bn, m.cv7.act)


def _detect_level(w, i, m, level):
    """Detect's level `level` on layer i: its 1x1 conv (with bias) and a [yolo] layer."""
    scaled = m.decoding == 'scaled'
    anchors = m.anchor_grid.view(-1, 2).tolist()
    w.at(i)
    conv = m.m[level]
    w.add('convolutional', Binding(conv.weight, conv.bias), size=1, stride=1, pad=1, filters=conv.out_channels,
          activation='logistic' if scaled else 'linear')
    w.add('yolo', mask=','.join(str(level * m.na + k) for k in range(m.na)),
          anchors=format_anchors(anchors), classes=m.nc, num=len(anchors),
          scale_x_y=m.scale_xy, **YOLO[m.decoding])


def _simple_layer(w, i, src, m):
    """Layers without weights; None when m is none of them."""
    if isinstance(m, nn.Upsample) and m.mode == 'nearest' and m.scale_factor == 2:
        w.at(i)
        return w.add('upsample', stride=2)
    if isinstance(m, Concat) and m.d == 1:
        return w.add('route', layers=','.join(str(k) for k in src))
    if isinstance(m, Split):
        return w.add('route', layers=i, groups=m.groups, group_id=m.group_id)
    if isinstance(m, nn.MaxPool2d) and m.kernel_size == m.stride == 2 and m.padding == 0:  # sizes are even here
        w.at(i)
        return w.add('maxpool', size=2, stride=2)
    return None


def yaml_to_darknet(model, img_size=640):
    """(cfg text, DarknetModel with the weights of `model` (a YAML Model), bindings per darknet layer)."""
    w, out = _Writer(), []
    detect = model.model[-1]
    if not isinstance(detect, Detect):
        raise DarknetError('the model has no Detect layer last: not a detector darknet files can describe')
    inputs = [detect.f] if isinstance(detect.f, int) else list(detect.f)
    for j, m in enumerate(model.model[:-1]):
        src = [(out[j - 1] if j else -1) if k == -1 else out[k] for k in ([m.f] if isinstance(m.f, int) else m.f)]
        i = src[0]  # -1: the image, before the first block
        if isinstance(m, Conv):
            out.append(w.conv(i, m.conv, m.bn, m.act))
        elif isinstance(m, (BottleneckCSP, BottleneckCSP2, SPPCSP, Bottleneck)):
            emit = {BottleneckCSP: _bottleneck_csp, BottleneckCSP2: _bottleneck_csp2, SPPCSP: _sppcsp,
                    Bottleneck: _bottleneck}[type(m)]
            out.append(emit(w, i, m))
        else:
            out.append(_simple_layer(w, i, src, m))
            if out[-1] is None:
                raise DarknetError(f'layer {j} ({type(m).__name__}) has no darknet equivalent here')
        for level, k in enumerate(inputs):
            if k % (len(model.model) - 1) == j:  # Detect reads rows before it
                _detect_level(w, out[j], detect, level)
    net = dict(NET, width=img_size, height=img_size)
    text = format_cfg([('net', net)] + w.blocks)
    dk = DarknetModel(text=text)
    for layer, binding in zip(dk.model, w.bindings):
        if binding is not None:
            binding.to_darknet(layer)
    dk.names = list(model.names)
    return text, dk.eval(), w.bindings


def write_darknet(model, cfg_path, weights_path, img_size=640):
    """Write `model` (a YAML Model or a DarknetModel, unfused) as darknet files; returns (cfg_path, weights_path)."""
    if isinstance(model, DarknetModel):
        text, dk = model.to_cfg(), model
    else:
        text, dk, _ = yaml_to_darknet(model, img_size)
    if any(isinstance(m, DarknetConv) and m.batch_normalize and not isinstance(m.bn, nn.BatchNorm2d)
           for m in dk.model):
        raise DarknetError(FUSED)
    with open(cfg_path, 'w') as f:
        f.write(text)
    save_darknet_weights(dk, weights_path)
    return cfg_path, weights_path


def yaml_from_darknet(cfg, weights, nc=None):
    """The YAML model `cfg` with darknet `weights` in place, for files whose layers are those of the YAML model in
    darknet's order (darknet's yolov4-tiny.weights and yolov4-tiny.yaml; files written by write_darknet from a
    model of that YAML). A file of another layout fails the size check in one line."""
    model = Model(cfg, nc=nc)
    _, dk, bindings = yaml_to_darknet(model)
    dk.cfg_file = f'{cfg} (as darknet layers)'
    load_darknet_weights(dk, weights)
    for n, (layer, binding) in enumerate(zip(dk.model, bindings)):
        if binding is not None:
            binding.from_darknet(layer, f'{weights} (layer {n})')
    return model.eval()


def load_darknet_model(weights, cfg=None):
    """The model of darknet `weights`, in eval mode: a DarknetModel of `cfg`, or, when `cfg` is a YAML of ours
    that darknet's layers describe in order (yolov4-tiny.yaml), that YAML model (yaml_from_darknet).
    `cfg` defaults to the cfg of the same name in models/ (yolov4-tiny.weights: models/yolov4-tiny.cfg). Darknet's
    releases (utils.downloads.DARKNET_RELEASES) that are not on disk are downloaded into weights/ first, checked
    against the cfg before they get their name. An 80-class model gets COCO's class names."""
    weights = Path(weights)
    if not weights.is_file() and weights.name not in DARKNET_RELEASES:
        raise DarknetError(f'darknet weights {weights} not found (darknet\'s releases {", ".join(DARKNET_RELEASES)} '
                           f'are downloaded into weights/ when named)')
    if cfg is None:
        if not (CONFIG_DIR / f'{weights.stem}.cfg').is_file():
            raise DarknetError(f'{weights}: no models/{weights.stem}.cfg to build it from: give its darknet cfg '
                               f'(--cfg path/to/{weights.stem}.cfg)')
        cfg = CONFIG_DIR / f'{weights.stem}.cfg'
    if str(cfg).endswith(('.yaml', '.yml')):
        build = lambda path: yaml_from_darknet(cfg, path)  # noqa: E731
    else:
        empty = DarknetModel(cfg)  # built once, before any download: a bad cfg fails first

        def build(path):
            load_darknet_weights(empty, path)
            return empty
    loaded = []  # a download is checked by loading it: that model is the one returned
    if not weights.is_file() and weights.name in DARKNET_RELEASES:  # darknet's release, by name
        weights = release_destination(weights)
        if not weights.is_file():
            download_release(weights.name, weights, validate=lambda path: loaded.append(build(path)))
    model = loaded[0] if loaded else build(weights)
    if model.nc == 80 and COCO_YAML.is_file():
        model.names = list(yaml.safe_load(COCO_YAML.read_text())['names'])
    return model.eval()
