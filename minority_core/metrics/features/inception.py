"""Inception-V3 as FID's and sFID's feature extractor: the network, its weights, its extractors.

The network is our own code, laid out so that torch-fidelity's converted TF weights
(`weights-inception-2015-12-05-6726825d.pth`) load by name with strict matching; its
preprocessing (uint8 → TF1 bilinear resize to 299 → (x − 128) / 128) is the one the TF graph
used by the FID / sFID reference implementations runs. The weights are never downloaded: they
are looked for in one place (`inception_weights_location`), which the doctor reports too.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minority_core.errors import InputError, MissingFileError
from minority_core.metrics.features.base import BatchedExtractor, Images, to_uint8_nchw

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"
INCEPTION_WEIGHTS_ENV = "MINORITY_INCEPTION_WEIGHTS"
INCEPTION_SIZE = 299
POOL3_DIM = 2048
SPATIAL_CHANNELS = 7  # guided-diffusion evaluator: spatial[..., :7]
SPATIAL_DIM = SPATIAL_CHANNELS * 17 * 17  # 2023


# --------------------------------------------------------------------------- TF1 bilinear resize


def _tf1_taps(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TF1 legacy (align_corners=False, half_pixel_centers=False) source taps for one axis.

    src = i · (in / out) in float32 (as TF's kernel computes it); lower = floor(src),
    upper = min(lower + 1, in − 1) (clamped at the far edge, no half-pixel shift), lerp = src − lower.
    """
    scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
    src = torch.arange(out_size, dtype=torch.float32) * scale
    lower = src.floor()
    lerp = src - lower
    lower = lower.long().clamp(0, in_size - 1)
    upper = (lower + 1).clamp(max=in_size - 1)
    return lower.to(device), upper.to(device), lerp.to(device)


def resize_bilinear_tf1(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of float NCHW as TF1 `resize_bilinear` (the op inside the FID Inception
    graph): corner-aligned grid without half-pixel centres, so it differs from torch's
    `interpolate(..., align_corners=False)`; lerps in TF's order (top, bottom, then vertical)."""
    if images.ndim != 4 or not images.is_floating_point():
        raise InputError(f"resize_bilinear_tf1 needs a float NCHW tensor, got {images.dtype} shape {tuple(images.shape)}")
    y0, y1, dy = _tf1_taps(images.shape[2], size[0], images.device)
    x0, x1, dx = _tf1_taps(images.shape[3], size[1], images.device)
    dx, dy = dx.to(images.dtype), dy.to(images.dtype)[:, None]
    rows0, rows1 = images[:, :, y0], images[:, :, y1]
    top = rows0[..., x0] + (rows0[..., x1] - rows0[..., x0]) * dx
    bottom = rows1[..., x0] + (rows1[..., x1] - rows1[..., x0]) * dx
    return top + (bottom - top) * dy


# --------------------------------------------------------------------------- Inception-V3 network
# Attribute names follow torch-fidelity's FeatureExtractorInceptionV3 (itself the TF
# 2015-12-05 graph converted by name), so its weights file loads with strict=True.


class BasicConv2d(nn.Module):
    """conv (no bias) → batch norm (eps 1e-3, as in the TF graph) → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: torch.Tensor) -> torch.Tensor:
    """TF's 3×3 'SAME' average pool ignores the zero padding in the mean."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35×35 block (TF mixed, mixed_1, mixed_2)."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionB(nn.Module):
    """35→17 reduction block (TF mixed_3)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17×17 block with factorised 7×7 convs (TF mixed_4 … mixed_7 = Mixed_6b … Mixed_6e)."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionD(nn.Module):
    """17→8 reduction block (TF mixed_8)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8×8 block (TF mixed_9, mixed_10). The TF graph's last block max-pools its pool branch
    where the paper average-pools; `max_pool=True` reproduces that (as torch-fidelity does)."""

    def __init__(self, in_channels: int, max_pool: bool = False) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_tf(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


class InceptionV3(nn.Module):
    """The TF 2015-12-05 Inception-V3 (FID's network) returning pool3 and sFID spatial features.

    sFID layer mapping. guided-diffusion's evaluator reads tensor `mixed_6/conv:0` from
    `classify_image_graph_def.pb` and keeps `[..., :7]`. In that graph the blocks are named
    mixed, mixed_1, …, mixed_10, and torch-fidelity's converter
    (utils/util_convert_inception_weights.py) maps `mixed_6/conv/conv2d_params` →
    `Mixed_6d.branch1x1.conv` and `mixed_6/conv/batchnorm` → `Mixed_6d.branch1x1.bn`
    (mixed_4..mixed_7 = Mixed_6b..Mixed_6e; `mixed_7/conv` is Mixed_6e.branch1x1). The tensor
    `mixed_6/conv:0` is the output of that scope (conv → batchnorm → ReLU), i.e. the output of
    **Mixed_6d.branch1x1**: 192 × 17 × 17 at 299 input. Since Mixed_6d concatenates branch1x1
    first, its first 7 output channels are exactly that tensor's first 7 channels. TF tensors
    are NHWC, so the evaluator's reshape flattens in (h, w, c) order; we flatten the same way
    so our vectors are coordinate-for-coordinate comparable with its reference statistics.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.MaxPool_2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.AvgPool = nn.AdaptiveAvgPool2d(output_size=(1, 1))
        self.fc = nn.Linear(2048, 1008)  # unused for features; kept so the weights load strictly

    @staticmethod
    def preprocess(images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW RGB → the graph's input: TF1 bilinear resize to 299, then (x − 128) / 128."""
        x = resize_bilinear_tf1(images_uint8.to(torch.float32), (INCEPTION_SIZE, INCEPTION_SIZE))
        return (x - 128) / 128

    def forward(self, images_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 NCHW RGB of any size → (pool3 [N, 2048], mixed_6/conv[..., :7] flat [N, 2023])."""
        x = self.preprocess(images_uint8)
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a",
                     "Mixed_6b", "Mixed_6c", "Mixed_6d"):
            x = getattr(self, name)(x)
        spatial = x[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)  # NHWC order, as TF
        for name in ("Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool"):
            x = getattr(self, name)(x)
        return x.flatten(1), spatial


# --------------------------------------------------------------------------- weights


def inception_weights_location(path: str | Path | None = None) -> Path:
    """Where the weights are looked for (the file may be absent): `path`, else
    $MINORITY_INCEPTION_WEIGHTS, else the torch hub cache ($TORCH_HOME/hub/checkpoints, where
    torch-fidelity itself downloads them)."""
    return _locate(path)[0]


def inception_weights_path(path: str | Path | None = None) -> Path:
    """The weights file `inception_weights_location` names, or a one-line error saying how to get it."""
    where, source = _locate(path)
    if not where.is_file():
        raise MissingFileError(
            f"Inception weights {INCEPTION_WEIGHTS_FILE} not found at {where} ({source}): download {INCEPTION_WEIGHTS_URL} "
            f"to $TORCH_HOME/hub/checkpoints/ or point ${INCEPTION_WEIGHTS_ENV} at it"
        )
    return where


def _locate(path: str | Path | None) -> tuple[Path, str]:
    """(where, which setting chose it) in lookup order."""
    if path is not None:
        where, source = Path(path), "path argument"
    elif os.environ.get(INCEPTION_WEIGHTS_ENV):
        where, source = Path(os.environ[INCEPTION_WEIGHTS_ENV]), f"${INCEPTION_WEIGHTS_ENV}"
    else:
        where, source = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE, "torch hub cache"
    return where.expanduser(), source


def load_inception(path: str | Path | None = None, device: torch.device | str = "cpu") -> InceptionV3:
    """Our InceptionV3 with torch-fidelity's weights (strict, weights_only), frozen, in eval mode."""
    where = inception_weights_path(path)
    try:
        state = torch.load(where, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's unpickling errors are long and multi-line; keep ours to one
        raise InputError(
            f"could not read Inception weights {where} with torch.load(weights_only=True) ({type(exc).__name__}): "
            f"expected torch-fidelity's {INCEPTION_WEIGHTS_FILE}"
        ) from exc
    if not isinstance(state, dict):
        raise InputError(f"Inception weights {where} hold a {type(state).__name__}, not a state dict")
    net = InceptionV3()
    missing, unexpected = _key_mismatch(net, state)
    if missing or unexpected:
        raise InputError(f"Inception weights {where} do not match the torch-fidelity layout: "
                         f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shape mismatches
        raise InputError(f"Inception weights {where} do not fit: {' '.join(str(exc).split())[:300]}") from exc
    return net.to(device).eval().requires_grad_(False)


def _key_mismatch(net: nn.Module, state: dict) -> tuple[list[str], list[str]]:
    """Missing / unexpected keys; BatchNorm's num_batches_tracked is optional (the converted
    TF file has none, and torch fills it in for metadata-free dicts)."""
    expected = set(net.state_dict())
    given = set(state)
    missing = sorted(k for k in expected - given if not k.endswith("num_batches_tracked"))
    return missing, sorted(given - expected)


# --------------------------------------------------------------------------- extractors


class InceptionV3Features(BatchedExtractor):
    """Inception-V3 pool3 (2048-d): the FID feature space. `extract_all` also gives sFID's."""

    name = "inception-pool3"
    dim = POOL3_DIM

    def __init__(self, device: torch.device | str = "cpu", batch_size: int = 32,
                 path: str | Path | None = None, network: InceptionV3 | None = None) -> None:
        """Weights from `path` / $MINORITY_INCEPTION_WEIGHTS / torch hub cache; or share a loaded `network`."""
        super().__init__(device, batch_size)
        self.network = network.to(self.device) if network is not None else load_inception(path, self.device)

    def extract_all(self, images: Images) -> dict[str, np.ndarray]:
        """Both Inception feature sets from one forward pass, keyed by extractor name."""
        pool3, spatial = self._run(images)
        return {InceptionV3Features.name: pool3, InceptionSpatialFeatures.name: spatial}

    def _output_dims(self) -> tuple[int, ...]:
        return (POOL3_DIM, SPATIAL_DIM)

    def _forward(self, batch: Images) -> tuple[torch.Tensor, ...]:
        x = to_uint8_nchw(batch, self.device)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grayscale → RGB, as clean-fid does
        return self.network(x)


class InceptionSpatialFeatures(InceptionV3Features):
    """sFID features: first 7 channels of mixed_6/conv (Mixed_6d.branch1x1), 7×17×17 = 2023-d."""

    name = "inception-spatial"
    dim = SPATIAL_DIM

    def __call__(self, images: Images) -> np.ndarray:
        return self._run(images)[1]
