"""LPIPS distance (AlexNet or VGG-16 backbone) for the minority loss, from weights on disk, weights only.

The `lpips` package ships LPIPS's learned linear heads (`lpips/weights/v0.1/{alex,vgg}.pth`) but
imports torchvision, whose PyPI wheels do not load beside the CPU torch build we pin. So the
networks are written here (torchvision's `features` layouts, so its checkpoints load by name)
and every weight file is read with `torch.load(weights_only=True)`; where the files are looked
for is `minority_core.lpips_files`, and `load_lpips` also takes explicit local paths.

LPIPS v0.1 (Zhang et al. 2018): both images are shifted/scaled per channel, each tapped layer's
features are unit-normalised over channels, their squared difference is weighted by a learned
1×1 linear head (non-negative, no bias), averaged over space, and the layers are summed.
AlexNet is the guidance distance ("lpips"); VGG-16 is what the minority-classifier authors
score with ("lpips-vgg").
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from minority_core.errors import InputError, MissingFileError
from minority_core.lpips_files import BACKBONE_FILES, Net, backbone_path, heads_path

ALEXNET_FILE = BACKBONE_FILES["alex"]
VGG16_FILE = BACKBONE_FILES["vgg"]
CHANNELS = (64, 192, 384, 256, 256)  # AlexNet's tapped layers
VGG_CHANNELS = (64, 128, 256, 512, 512)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
MIN_SIZE = 32  # the backbones' strides and pools need at least this many pixels


def alexnet_weights_path() -> Path:
    return backbone_path("alex")


def lpips_heads_path() -> Path | None:
    return heads_path("alex")


class AlexNetFeatures(nn.Module):
    """torchvision's AlexNet `features` stack (same parameter names), tapped after each ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.taps = (1, 4, 7, 9, 11)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outs.append(x.clone())  # clone: the next in-place ReLU must not alter a tap
        return outs


class VGG16Features(nn.Module):
    """torchvision's VGG-16 `features` stack up to relu5_3 (same parameter names), tapped after
    relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 (LPIPS's five slices)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
            if width == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
                channels = width
        self.features = nn.Sequential(*layers)
        self.taps = (3, 8, 15, 22, 29)

    forward = AlexNetFeatures.forward


BACKBONES: dict[str, tuple[type[nn.Module], tuple[int, ...]]] = {"alex": (AlexNetFeatures, CHANNELS), "vgg": (VGG16Features, VGG_CHANNELS)}


class LPIPS(nn.Module):
    """LPIPS v0.1 with an AlexNet or VGG-16 backbone: per-sample distance of images in [−1, 1]."""

    def __init__(self, net: Net = "alex") -> None:
        super().__init__()
        if net not in BACKBONES:
            raise InputError(f"LPIPS backbone must be 'alex' or 'vgg', got {net!r}")
        features, channels = BACKBONES[net]
        self.net = features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def load_weights(self, alexnet_state: dict, heads_state: dict) -> LPIPS:
        features = {k: v for k, v in alexnet_state.items() if k.startswith("features.")}
        self.net.load_state_dict(features, strict=True)
        heads = {f"{k}.weight": heads_state[f"lin{k}.model.1.weight"] for k in range(len(self.lins))}
        self.lins.load_state_dict(heads, strict=True)
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = self._prepare(x), self._prepare(y)
        total = torch.zeros(x.shape[0], device=x.device, dtype=torch.float32)
        for lin, fx, fy in zip(self.lins, self.net(x), self.net(y)):
            diff = (_unit(fx) - _unit(fy)) ** 2
            total = total + lin(diff).mean(dim=(1, 2, 3)).float()
        return total

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise InputError(f"LPIPS needs 1- or 3-channel images, got {x.shape[1]} channels: use distance l2 (--distance l2)")
        if min(x.shape[-2:]) < MIN_SIZE:  # too small for AlexNet: upsample, as one would to view it
            x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
        return (x - self.shift) / self.scale


def _unit(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def load_lpips(device: torch.device | str = "cpu", net: Net = "alex", backbone: str | Path | None = None,
               heads: str | Path | None = None) -> LPIPS:
    """LPIPS with real weights, from `backbone` / `heads` if given, else where `minority_core.lpips_files`
    looks; a one-line error names whichever file is missing and where it goes."""
    if net not in BACKBONES:
        raise InputError(f"LPIPS backbone must be 'alex' or 'vgg', got {net!r}")
    hint = "" if backbone is not None else " (or set TORCH_HOME)"
    backbone = Path(backbone) if backbone is not None else backbone_path(net)
    if not backbone.is_file():
        raise MissingFileError(
            f"LPIPS needs the {'AlexNet' if net == 'alex' else 'VGG-16'} weights: put torchvision's {BACKBONE_FILES[net]} at {backbone}{hint}, or use distance 'l2'"
        )
    heads = Path(heads) if heads is not None else heads_path(net)
    if heads is None or not heads.is_file():
        raise MissingFileError(
            f"LPIPS needs its linear heads {net}.pth: `pip install lpips==0.1.4 --no-deps` or set MINORITY_LPIPS_HEADS to the file or its folder (looked at {heads})"
        )
    state = torch.load(backbone, map_location="cpu", weights_only=True)
    head_state = torch.load(heads, map_location="cpu", weights_only=True)
    return LPIPS(net).load_weights(state, head_state).to(device).eval()
