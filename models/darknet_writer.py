"""Our YAML models (P5, P6, P7, CSP and their scaled variants) written as a darknet `.cfg` + `.weights`.

    cfg_text, dk = yaml_to_darknet(model)       # a DarknetModel with the same outputs (float32 rounding)
    write_darknet(model, 'best.cfg', 'best.weights')

Every layer maps onto darknet's standard layers, with two conversions (docs/architecture.md, "Darknet files"):
- batch norm: darknet normalises with eps 1e-6 where ours use 1e-3, so each variance is written as
  variance + 1e-3 - 1e-6 (the same function; float32 rounding);
- the batch norm + Mish that our BottleneckCSP2 and SPPCSP apply to their bottleneck branch a second time
  (darknet's own P5/P6/CSP cfgs do not) becomes a depthwise 1x1 [convolutional] with weights 1 and that batch
  norm, the one standard darknet layer that computes it.
The head is written as darknet's Scaled-YOLOv4 head: a logistic 1x1 conv and a [yolo] layer with new_coords=1,
scale_x_y=2.0 per level, with the model's anchors.
"""
import torch
import torch.nn as nn

from models.activations import Mish
from models.common import Bottleneck, BottleneckCSP, BottleneckCSP2, Concat, Conv, SPPCSP
from models.darknet import BN_EPS, DarknetConv, DarknetError, DarknetModel, save_darknet_weights
from models.yolo import Detect

NET = {'batch': 64, 'subdivisions': 8, 'channels': 3, 'momentum': 0.949, 'decay': 0.0005, 'angle': 0,
       'saturation': 1.5, 'exposure': 1.5, 'hue': .1, 'learning_rate': 0.001, 'burn_in': 1000,
       'max_batches': 500500, 'policy': 'steps', 'steps': '400000,450000', 'scales': '.1,.1', 'mosaic': 1,
       'letter_box': 1}  # darknet's yolov4-p5.cfg training settings, for darknet users who train the file
YOLO = {'jitter': .1, 'scale_x_y': 2.0, 'objectness_smooth': 1, 'ignore_thresh': .7, 'truth_thresh': 1,
        'resize': 1.5, 'iou_thresh': 0.2, 'iou_normalizer': 0.05, 'cls_normalizer': 0.5, 'obj_normalizer': 1.0,
        'iou_loss': 'ciou', 'nms_kind': 'diounms', 'beta_nms': 0.6, 'new_coords': 1, 'max_delta': 2}

FUSED = 'a fused model (batch norms folded by fuse()) cannot be written as darknet files: write it before fusing'


class _Writer:
    """Darknet blocks in order, each conv block with the function that fills its DarknetConv."""

    def __init__(self):
        self.blocks, self.fills = [], []

    def add(self, kind, fill=None, **options):
        self.blocks.append((kind, options))
        self.fills.append(fill)
        return len(self.blocks) - 1

    def at(self, i):
        """Make layer i the input of the next block (a one-layer [route] unless it is the last block)."""
        if i != len(self.blocks) - 1:
            self.add('route', layers=i)

    def conv(self, i, conv, bn, act):
        """conv (nn.Conv2d) on layer i's output, then bn (a BatchNorm2d, or (bn, first, last) a channel slice of
        one), then act; returns the new layer's index."""
        if not isinstance(bn, tuple):
            bn = (bn, 0, conv.out_channels)
        if not isinstance(bn[0], nn.BatchNorm2d):
            raise DarknetError(FUSED)
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        if conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1] or p != k // 2 \
                or conv.dilation != (1, 1) or conv.bias is not None:
            raise DarknetError(f'a {k}x{conv.kernel_size[1]} conv with stride {conv.stride}, padding {conv.padding} '
                               f'has no darknet [convolutional] equivalent here')
        self.at(i)
        return self.add('convolutional', fill=lambda dk: _fill(dk, conv.weight, *bn), batch_normalize=1,
                        filters=conv.out_channels, size=k, stride=s, pad=1, groups=conv.groups,
                        activation=_activation(act))

    def norm(self, i, bn, first, last):
        """Channels [first, last) of a batch norm + Mish applied to layer i's output: a depthwise 1x1 conv with
        weights 1 (darknet has no batch norm layer of its own that every reader supports)."""
        c = last - first
        self.at(i)
        ones = torch.ones(c, 1, 1, 1)
        return self.add('convolutional', fill=lambda dk: _fill(dk, ones, bn, first, last), batch_normalize=1,
                        filters=c, size=1, stride=1, pad=1, groups=c, activation='mish')


def _activation(act):
    if isinstance(act, Mish):
        return 'mish'
    if isinstance(act, nn.Identity):
        return 'linear'
    raise DarknetError(f'activation {type(act).__name__} has no darknet equivalent here (mish, linear)')


def _fill(dk, weight, bn, first, last):
    """Copy a conv weight and channels [first, last) of a batch norm into DarknetConv dk, the variance moved from
    the norm's eps to darknet's."""
    with torch.no_grad():
        dk.conv.weight.copy_(weight)
        dk.bn.weight.copy_(bn.weight[first:last])
        dk.bn.bias.copy_(bn.bias[first:last])
        dk.bn.running_mean.copy_(bn.running_mean[first:last])
        dk.bn.running_var.copy_(bn.running_var[first:last] + (bn.eps - BN_EPS))


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


def _detect(w, inputs, m):
    """Per level: route to its input, a logistic 1x1 conv with bias, a [yolo] layer (new_coords=1)."""
    anchors = m.anchor_grid.view(-1, 2).tolist()
    text = ', '.join(f'{x:.9g},{y:.9g}' for x, y in anchors)  # float32-exact
    for level, (i, conv) in enumerate(zip(inputs, m.m)):
        w.at(i)

        def fill(dk, conv=conv):
            with torch.no_grad():
                dk.conv.weight.copy_(conv.weight)
                dk.conv.bias.copy_(conv.bias)
        w.add('convolutional', fill=fill, size=1, stride=1, pad=1, filters=conv.out_channels, activation='logistic')
        w.add('yolo', mask=','.join(str(level * m.na + k) for k in range(m.na)), anchors=text, classes=m.nc,
              num=len(anchors), **YOLO)


def yaml_to_darknet(model, img_size=640):
    """(cfg text, DarknetModel with the weights of `model`, a YAML Model) in eval mode."""
    w, out = _Writer(), []
    for j, m in enumerate(model.model):
        src = [(out[j - 1] if j else -1) if k == -1 else out[k] for k in ([m.f] if isinstance(m.f, int) else m.f)]
        i = src[0]  # -1: the image, before the first block
        if isinstance(m, Conv):
            out.append(w.conv(i, m.conv, m.bn, m.act))
        elif isinstance(m, BottleneckCSP):
            out.append(_bottleneck_csp(w, i, m))
        elif isinstance(m, BottleneckCSP2):
            out.append(_bottleneck_csp2(w, i, m))
        elif isinstance(m, SPPCSP):
            out.append(_sppcsp(w, i, m))
        elif isinstance(m, Bottleneck):
            out.append(_bottleneck(w, i, m))
        elif isinstance(m, nn.Upsample) and m.mode == 'nearest' and m.scale_factor == 2:
            w.at(i)
            out.append(w.add('upsample', stride=2))
        elif isinstance(m, Concat) and m.d == 1:
            out.append(w.add('route', layers=','.join(str(k) for k in src)))
        elif isinstance(m, Detect) and j == len(model.model) - 1:
            _detect(w, src, m)
        else:
            raise DarknetError(f'layer {j} ({type(m).__name__}) has no darknet equivalent here')
    net = dict(NET, width=img_size, height=img_size)
    text = '\n'.join(f'[{kind}]\n' + ''.join(f'{k}={v}\n' for k, v in options.items())
                     for kind, options in [('net', net)] + w.blocks)
    dk = DarknetModel(text=text)
    for layer, fill in zip(dk.model, w.fills):
        if fill is not None:
            fill(layer)
    dk.names = list(model.names)
    return text, dk.eval()


def write_darknet(model, cfg_path, weights_path, img_size=640):
    """Write `model` (a YAML Model or a DarknetModel, unfused) as darknet files; returns (cfg_path, weights_path)."""
    if isinstance(model, DarknetModel):
        text, dk = model.to_cfg(), model
    else:
        text, dk = yaml_to_darknet(model, img_size)
    if any(isinstance(m, DarknetConv) and m.batch_normalize and not isinstance(m.bn, nn.BatchNorm2d)
           for m in dk.model):
        raise DarknetError(FUSED)
    with open(cfg_path, 'w') as f:
        f.write(text)
    save_darknet_weights(dk, weights_path)
    return cfg_path, weights_path
