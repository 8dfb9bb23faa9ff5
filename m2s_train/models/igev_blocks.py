"""Building blocks of IGEV-Stereo: conv units, MobileNetV2 backbone, context encoder, GRUs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvNormAct(nn.Module):
    """Conv (2-D or 3-D, optionally transposed) -> BatchNorm/InstanceNorm/none -> LeakyReLU (optional)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, *, dims: int = 2,
                 norm: str | None = "batch", act: bool = True, transposed: bool = False) -> None:
        super().__init__()
        conv = {(2, False): nn.Conv2d, (2, True): nn.ConvTranspose2d, (3, False): nn.Conv3d, (3, True): nn.ConvTranspose3d}
        self.conv = conv[(dims, transposed)](cin, cout, kernel, stride, padding, bias=False)
        norms = {"batch": (nn.BatchNorm2d, nn.BatchNorm3d), "instance": (nn.InstanceNorm2d, nn.InstanceNorm3d)}
        self.norm = norms[norm][dims - 2](cout) if norm else nn.Identity()
        self.act = nn.LeakyReLU(0.01) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if (torch.onnx.is_in_onnx_export() and isinstance(conv, nn.ConvTranspose3d) and conv.kernel_size == (4, 4, 4)
                and conv.stride == (2, 2, 2) and conv.padding == (1, 1, 1) and conv.groups == 1):
            return self.act(self.norm(conv_transpose3d_by_depth_phase(x, conv.weight, conv.bias)))
        return self.act(self.norm(conv(x)))


def conv_transpose3d_by_depth_phase(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv_transpose3d(x, weight, bias, stride=2, padding=1)`` for a 4x4x4 kernel, as two 2-D
    transposed convolutions, one per output depth parity, over (H, W).

    Output depth ``2m`` sees input depths ``m-1`` and ``m`` (kernel taps 3 and 1), ``2m+1`` sees
    ``m`` and ``m+1`` (taps 2 and 0): each parity is a 2-D transposed conv of the two depth slices
    stacked on channels, the depth folded into the batch. Same values to float rounding; used in
    ONNX export, where onnxruntime runs it ~1.5x faster than its 3-D ConvTranspose.
    """
    n, c, depth, h, w = x.shape
    xp = F.pad(x, (0, 0, 0, 0, 1, 1))  # input depth m is xp[:, :, m + 1]

    def fold(a: torch.Tensor) -> torch.Tensor:  # N,C',D,H,W -> N*D,C',H,W
        return a.permute(0, 2, 1, 3, 4).reshape(n * depth, a.shape[1], h, w)

    even = fold(torch.cat([xp[:, :, 0:depth], xp[:, :, 1 : depth + 1]], 1))
    odd = fold(torch.cat([xp[:, :, 1 : depth + 1], xp[:, :, 2 : depth + 2]], 1))
    y_even = F.conv_transpose2d(even, torch.cat([weight[:, :, 3], weight[:, :, 1]], 0), bias, stride=2, padding=1)
    y_odd = F.conv_transpose2d(odd, torch.cat([weight[:, :, 2], weight[:, :, 0]], 0), bias, stride=2, padding=1)
    cout = y_even.shape[1]
    y = torch.stack([y_even, y_odd], 1).reshape(n, depth, 2, cout, 2 * h, 2 * w)  # N,D,parity,C,H,W
    return y.permute(0, 3, 1, 2, 4, 5).reshape(n, cout, 2 * depth, 2 * h, 2 * w)


class UpConcat(nn.Module):
    """x2 transposed-conv upsampling of ``x`` to ``cout`` channels, concat with the skip (``cout``
    channels), then a 3x3 conv to ``2 * cout`` channels."""

    def __init__(self, cin: int, cout: int, *, dims: int = 2, norm: str = "batch") -> None:
        super().__init__()
        self.up = ConvNormAct(cin, cout, 4, 2, 1, dims=dims, norm=norm, transposed=True)
        self.fuse = ConvNormAct(2 * cout, 2 * cout, 3, 1, 1, dims=dims, norm=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.up(x), skip], dim=1))


def make_divisible(value: float, divisor: int = 8) -> int:
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise -> 1x1 project (linear), residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6()]
        layers += [nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
                   nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


# MobileNetV2 stages up to 1/32: (expansion, channels, repeats, first stride)
MBV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2))


class FeatureNet(nn.Module):
    """MobileNetV2 encoder (1/2 .. 1/32) with a U-Net style upsampling path back to 1/4.

    Returns features at 1/4, 1/8, 1/16, 1/32 with ``channels`` = (2*c4, 2*c8, 2*c16, c32).
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        chans = [make_divisible(c * width) for _, c, _, _ in MBV2_STAGES]
        stem = make_divisible(32 * width)
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6())
        stages = []
        cin = stem
        for (expand, _, repeats, stride), cout in zip(MBV2_STAGES, chans):
            blocks = []
            for i in range(repeats):
                blocks.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        # resolution groups: 1/2 (stage 0), 1/4 (1), 1/8 (2), 1/16 (3, 4), 1/32 (5)
        self.to2, self.to4, self.to8 = stages[0], stages[1], stages[2]
        self.to16 = nn.Sequential(stages[3], stages[4])
        self.to32 = stages[5]
        c4, c8, c16, c32 = chans[1], chans[2], chans[4], chans[5]
        self.up16 = UpConcat(c32, c16, norm="instance")
        self.up8 = UpConcat(2 * c16, c8, norm="instance")
        self.up4 = UpConcat(2 * c8, c4, norm="instance")
        self.out4 = ConvNormAct(2 * c4, 2 * c4, 3, 1, 1, norm="instance")
        self.channels = (2 * c4, 2 * c8, 2 * c16, c32)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x4 = self.to4(self.to2(self.stem(x)))
        x8 = self.to8(x4)
        x16 = self.to16(x8)
        x32 = self.to32(x16)
        y16 = self.up16(x32, x16)
        y8 = self.up8(y16, x8)
        y4 = self.out4(self.up4(y8, x4))
        return [y4, y8, y16, x32]


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.norm1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.norm2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return F.relu(self.shortcut(x) + y)


class ContextNet(nn.Module):
    """Residual encoder of the left image: hidden-state and context maps at 1/4, 1/8, 1/16."""

    def __init__(self, width: int, hidden: int, levels: int) -> None:
        super().__init__()
        w1, w2 = width // 2, (3 * width) // 4
        self.stem = nn.Sequential(nn.Conv2d(3, w1, 7, 1, 3), nn.BatchNorm2d(w1), nn.ReLU())
        self.layer1 = nn.Sequential(ResidualBlock(w1, w1), ResidualBlock(w1, w1))
        self.layer2 = nn.Sequential(ResidualBlock(w1, w2, 2), ResidualBlock(w2, w2))
        self.layer3 = nn.Sequential(ResidualBlock(w2, width, 2), ResidualBlock(width, width))
        # deeper levels only when a GRU uses them (unused parameters would break DDP)
        self.deeper = nn.ModuleList(nn.Sequential(ResidualBlock(width, width, 2), ResidualBlock(width, width))
                                    for _ in range(levels - 1))
        self.levels = levels

        def head(deep: bool) -> nn.Module:
            conv = nn.Conv2d(width, hidden, 3, padding=1)
            return nn.Sequential(ResidualBlock(width, width), conv) if deep else conv

        # per level: (hidden-state head, context head)
        self.heads = nn.ModuleList(nn.ModuleList([head(lvl < 2), head(lvl < 2)]) for lvl in range(levels))

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per level: (hidden state before its tanh, context after its ReLU, ready for the gate convs)."""
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        maps = [x]
        for layer in self.deeper:
            maps.append(layer(maps[-1]))
        return [(net(m), torch.relu(ctx(m))) for (net, ctx), m in zip(self.heads, maps)]


class FeatureContext(nn.Module):
    """RT-IGEV++'s context: hidden state and context from the 1/4 matching features (one level),
    no encoder of its own. The context conv ends in its own LeakyReLU (no ReLU after it)."""

    def __init__(self, cin: int, hidden: int) -> None:
        super().__init__()
        self.hidden = nn.Sequential(ConvNormAct(cin, hidden, 3, 1, 1), nn.Conv2d(hidden, hidden, 3, 1, 1, bias=False))
        self.context = ConvNormAct(cin, hidden, 3, 1, 1)

    def forward(self, feat: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """feat B,C,h,w -> [(hidden state before its tanh, context)] (B,hidden,h,w each)."""
        return [(self.hidden(feat), self.context(feat))]


class ConvGRU(nn.Module):
    """Convolutional GRU whose gates get per-pixel context biases (cz, cr, cq)."""

    def __init__(self, hidden: int, inputs: int) -> None:
        super().__init__()
        self.convz = nn.Conv2d(hidden + inputs, hidden, 3, padding=1)
        self.convr = nn.Conv2d(hidden + inputs, hidden, 3, padding=1)
        self.convq = nn.Conv2d(hidden + inputs, hidden, 3, padding=1)

    def forward(self, h: torch.Tensor, context: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                *inputs: torch.Tensor) -> torch.Tensor:
        cz, cr, cq = context
        x = torch.cat(inputs, dim=1)
        hx = torch.cat([h, x], dim=1)
        z = torch.sigmoid(self.convz(hx) + cz)
        r = torch.sigmoid(self.convr(hx) + cr)
        q = torch.tanh(self.convq(torch.cat([r * h, x], dim=1)) + cq)
        return (1 - z) * h + z * q


def pool2x(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=2, padding=1)


def resize_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


class UpdateBlock(nn.Module):
    """Multi-level ConvGRU update: motion features from the volume look-ups drive the 1/4 GRU."""

    def __init__(self, hidden: int, levels: int, lookup_channels: int, motion_dim: int, head_dim: int,
                 mask_dim: int, branch_dim: int | None = None) -> None:
        super().__init__()
        half = branch_dim or motion_dim // 2  # channels of the look-up and disparity encoder branches
        self.levels = levels
        self.corr_enc = nn.Sequential(nn.Conv2d(lookup_channels, half, 1), nn.ReLU(), nn.Conv2d(half, half, 3, padding=1), nn.ReLU())
        self.disp_enc = nn.Sequential(nn.Conv2d(1, half, 7, padding=3), nn.ReLU(), nn.Conv2d(half, half, 3, padding=1), nn.ReLU())
        self.motion = nn.Sequential(nn.Conv2d(2 * half, motion_dim - 1, 3, padding=1), nn.ReLU())
        self.gru04 = ConvGRU(hidden, motion_dim + hidden * (levels > 1))
        if levels > 1:
            self.gru08 = ConvGRU(hidden, hidden + hidden * (levels > 2))
        if levels > 2:
            self.gru16 = ConvGRU(hidden, hidden)
        self.disp_head = nn.Sequential(nn.Conv2d(hidden, head_dim, 3, padding=1), nn.ReLU(), nn.Conv2d(head_dim, 1, 3, padding=1))
        self.mask_head = nn.Sequential(nn.Conv2d(hidden, mask_dim, 3, padding=1), nn.ReLU())

    def forward(self, net: list[torch.Tensor], ctx: list[tuple[torch.Tensor, ...]], lookup: torch.Tensor,
                disp: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        net = list(net)
        if self.levels > 2:
            net[2] = self.gru16(net[2], ctx[2], pool2x(net[1]))
        if self.levels > 1:
            extra = [resize_to(net[2], net[1])] if self.levels > 2 else []
            net[1] = self.gru08(net[1], ctx[1], pool2x(net[0]), *extra)
        motion = torch.cat([self.motion(torch.cat([self.corr_enc(lookup), self.disp_enc(disp)], 1)), disp], 1)
        extra = [resize_to(net[1], net[0])] if self.levels > 1 else []
        net[0] = self.gru04(net[0], ctx[0], motion, *extra)
        return net, self.mask_head(net[0]), self.disp_head(net[0])
