"""CSP-Darknet building blocks of Scaled-YOLOv4 (the paper's section 3; docs/architecture.md).

Class names and attribute names are the state_dict keys of the released weights and the module paths in
their pickles: keep them.
"""
import torch
import torch.nn as nn

from models.activations import Mish


def autopad(k, p=None):
    """'Same' padding for an odd kernel unless an explicit padding is given."""
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


def activate(act, x):
    """act(x) for an x that nothing else holds (a fresh convolution or BatchNorm output). When no gradient is
    recorded (evaluation, detection) Mish then overwrites x: on a CPU that takes about a quarter less time, with
    the same bits."""
    return act(x, inplace=not torch.is_grad_enabled()) if isinstance(act, Mish) else act(x)


ACTIVATIONS = {'mish': Mish, 'leaky': lambda: nn.LeakyReLU(0.1), 'linear': nn.Identity}  # Conv's act by name


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> Mish (or Identity when act is False; or act by name: 'leaky' is
    darknet's LeakyReLU(0.1), of YOLOv4-tiny)."""

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = ACTIVATIONS[act]() if isinstance(act, str) else Mish() if act else nn.Identity()

    def forward(self, x):
        # After Model.fuse() `bn` is an Identity and `conv` carries the folded bias.
        return activate(self.act, self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """1x1 Conv -> 3x3 Conv, with a residual connection when shortcut and c1 == c2."""

    def __init__(self, c1, c2, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class BottleneckCSP(nn.Module):
    """Cross Stage Partial bottleneck stack of the backbone (CSPNet)."""

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = nn.Conv2d(c1, c_, 1, 1, bias=False)
        self.cv3 = nn.Conv2d(c_, c_, 1, 1, bias=False)
        self.cv4 = Conv(2 * c_, c2, 1, 1)
        self.bn = nn.BatchNorm2d(2 * c_)  # applied to cat(cv3, cv2)
        self.act = Mish()
        self.m = nn.Sequential(*[Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)])

    def forward(self, x):
        y1 = self.cv3(self.m(self.cv1(x)))
        y2 = self.cv2(x)
        return self.join(y1, y2)

    def join(self, y1, y2):
        """The two paths concatenated, normalized, activated and mixed (a piece of its own for activation
        checkpointing, models/activation_checkpointing.py)."""
        return self.cv4(activate(self.act, self.bn(torch.cat((y1, y2), dim=1))))


class BottleneckCSP2(nn.Module):
    """CSP block of the PAN neck: the split happens after cv1, bottlenecks without shortcut."""

    def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5):
        super().__init__()
        c_ = int(c2)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = nn.Conv2d(c_, c_, 1, 1, bias=False)
        self.cv3 = Conv(2 * c_, c2, 1, 1)
        self.bn = nn.BatchNorm2d(2 * c_)
        self.act = Mish()
        self.m = nn.Sequential(*[Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)])

    def forward(self, x):
        x1 = self.cv1(x)
        y1 = self.m(x1)
        y2 = self.cv2(x1)
        return self.join(y1, y2)

    def join(self, y1, y2):
        """The two paths concatenated, normalized, activated and mixed (a piece of its own for activation
        checkpointing, models/activation_checkpointing.py)."""
        return self.cv3(activate(self.act, self.bn(torch.cat((y1, y2), dim=1))))


class SPPCSP(nn.Module):
    """Spatial pyramid pooling (max-pools 5, 9, 13) inside a CSP block."""

    def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5, k=(5, 9, 13)):
        super().__init__()
        c_ = int(2 * c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = nn.Conv2d(c1, c_, 1, 1, bias=False)
        self.cv3 = Conv(c_, c_, 3, 1)
        self.cv4 = Conv(c_, c_, 1, 1)
        self.m = nn.ModuleList([nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k])
        self.cv5 = Conv(4 * c_, c_, 1, 1)
        self.cv6 = Conv(c_, c_, 3, 1)
        self.bn = nn.BatchNorm2d(2 * c_)
        self.act = Mish()
        self.cv7 = Conv(2 * c_, c2, 1, 1)

    def forward(self, x):
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1] + [m(x1) for m in self.m], 1)))
        y2 = self.cv2(x)
        return self.cv7(activate(self.act, self.bn(torch.cat((y1, y2), dim=1))))


class Split(nn.Module):
    """Channel group `group_id` of `groups` (darknet's [route] groups=2 group_id=1 in YOLOv4-tiny)."""

    def __init__(self, groups=2, group_id=1):
        super().__init__()
        self.groups, self.group_id = groups, group_id

    def forward(self, x):
        return x.chunk(self.groups, 1)[self.group_id]


class Concat(nn.Module):
    """Concatenate a list of tensors along a dimension."""

    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat(x, self.d)
