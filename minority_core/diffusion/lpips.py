"""LPIPS (AlexNet) distance for the minority loss, from weights on disk, weights only.

The `lpips` package ships LPIPS's learned linear heads (`lpips/weights/v0.1/alex.pth`) but
imports torchvision, whose PyPI wheels do not load beside the CPU torch build we pin. So the
network is written here (torchvision's AlexNet layout, so its checkpoint loads by name) and
both weight files are read with `torch.load(weights_only=True)`:

- AlexNet backbone: torchvision's `alexnet-owt-7be5be79.pth` in the torch hub cache,
  `$TORCH_HOME/hub/checkpoints/` (default `~/.cache/torch/hub/checkpoints/`).
- Linear heads: `alex.pth` from the installed `lpips` package (`pip install lpips --no-deps`),
  or `$MINORITY_LPIPS_HEADS` pointing at that file.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from minority_core.errors import InputError, MissingFileError

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
CHANNELS = (64, 192, 384, 256, 256)
MIN_SIZE = 32  # AlexNet's stride-4 stem and two pools need at least this many pixels


def alexnet_weights_path() -> Path:
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    return torch_home / "hub" / "checkpoints" / ALEXNET_FILE


def lpips_heads_path() -> Path | None:
    if os.environ.get("MINORITY_LPIPS_HEADS"):
        return Path(os.environ["MINORITY_LPIPS_HEADS"])
    spec = importlib.util.find_spec("lpips")  # locate the package without importing torchvision
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / "alex.pth"


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


class LPIPS(nn.Module):
    """LPIPS v0.1 with the AlexNet backbone: per-sample distance of images in [−1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.net = AlexNetFeatures()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def load_weights(self, alexnet_state: dict, heads_state: dict) -> LPIPS:
        features = {k: v for k, v in alexnet_state.items() if k.startswith("features.")}
        self.net.load_state_dict(features, strict=True)
        heads = {f"{k}.weight": heads_state[f"lin{k}.model.1.weight"] for k in range(len(CHANNELS))}
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
            raise InputError(f"LPIPS needs 1- or 3-channel images, got {x.shape[1]} channels")
        if min(x.shape[-2:]) < MIN_SIZE:  # too small for AlexNet: upsample, as one would to view it
            x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
        return (x - self.shift) / self.scale


def _unit(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def load_lpips(device: torch.device | str = "cpu") -> LPIPS:
    """LPIPS with real weights; a one-line error names whichever file is missing and where it goes."""
    alexnet = alexnet_weights_path()
    if not alexnet.is_file():
        raise MissingFileError(
            f"LPIPS needs the AlexNet weights: put torchvision's {ALEXNET_FILE} at {alexnet} (or set TORCH_HOME), or use distance 'l2'"
        )
    heads = lpips_heads_path()
    if heads is None or not heads.is_file():
        raise MissingFileError(
            f"LPIPS needs its linear heads alex.pth: `pip install lpips==0.1.4 --no-deps` or set MINORITY_LPIPS_HEADS to the file (looked at {heads})"
        )
    state = torch.load(alexnet, map_location="cpu", weights_only=True)
    head_state = torch.load(heads, map_location="cpu", weights_only=True)
    return LPIPS().load_weights(state, head_state).to(device).eval()
