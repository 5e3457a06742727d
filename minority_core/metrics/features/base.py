"""What every feature extractor shares: the interface scoring relies on, the input checks, the
conversion of both image formats, and the batching loop.

Extractors take either uint8 NHWC images (as stored in Parquet shards) or float NCHW in
[−1, 1] (as sampled), numpy or torch, and return float32 [N, dim]. Float input is first
quantised to uint8 exactly as `minority_core.io.images.to_uint8_nhwc` stores samples (round half
up), so a sample scored straight from the sampler gets the same features as its stored PNG.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from minority_core.errors import InputError

FLOAT_RANGE_LIMIT = 2.0  # float input beyond ±2 is not [−1, 1] data (likely 0–255 or 0–1 confusion)

Images = np.ndarray | torch.Tensor


@runtime_checkable
class FeatureExtractor(Protocol):
    """What scoring needs: a storage name, a feature width, and images → float32 [N, dim]."""

    name: str  # used in storage paths: features/<name>/..., lowercase [a-z0-9-]
    dim: int

    def __call__(self, images: Images) -> np.ndarray: ...


# --------------------------------------------------------------------------- input checks


def check_images(images: Images) -> Images:
    """Validate a batch (uint8 NHWC or float NCHW, C in (1, 3), finite); one-line errors."""
    if not isinstance(images, (np.ndarray, torch.Tensor)):
        raise InputError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")
    shape = tuple(images.shape)
    if len(shape) != 4:
        raise InputError(f"images must be 4-D (uint8 NHWC or float NCHW), got shape {shape}")
    if _is_uint8(images):
        if shape[3] not in (1, 3):
            raise InputError(f"uint8 images must be NHWC with C in (1, 3), got shape {shape}")
        return images
    if not _is_float(images):
        raise InputError(f"images must be uint8 (NHWC) or floating point (NCHW in [-1, 1]), got dtype {images.dtype}")
    if shape[1] not in (1, 3):
        raise InputError(f"float images must be NCHW with C in (1, 3), got shape {shape}")
    _check_float_values(images)
    return images


def image_chw(images: Images) -> tuple[int, int, int]:
    """(C, H, W) of a validated batch, whichever layout it is in."""
    n, a, b, c = images.shape
    return (c, a, b) if _is_uint8(images) else (a, b, c)


def _is_uint8(images: Images) -> bool:
    return images.dtype == (torch.uint8 if isinstance(images, torch.Tensor) else np.uint8)


def _is_float(images: Images) -> bool:
    if isinstance(images, torch.Tensor):
        return images.is_floating_point()
    return np.issubdtype(images.dtype, np.floating)


def _check_float_values(images: Images) -> None:
    """Reject NaN/inf and values far outside [−1, 1] before they become silent garbage features."""
    if images.shape[0] == 0:
        return
    if isinstance(images, torch.Tensor):
        t = images.detach()
        finite, low, high = bool(torch.isfinite(t).all()), float(t.min()), float(t.max())
    else:
        finite, low, high = bool(np.isfinite(images).all()), float(images.min()), float(images.max())
    if not finite:
        raise InputError("images contain NaN or inf")
    if low < -FLOAT_RANGE_LIMIT or high > FLOAT_RANGE_LIMIT:
        raise InputError(
            f"float images must be in [-1, 1], got values in [{low:.3g}, {high:.3g}]: pass 0-255 images as uint8 NHWC"
        )


# --------------------------------------------------------------------------- format conversion


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Float NCHW in [−1, 1] → uint8 NCHW, rounding half up like the shard writer (images.py)."""
    scaled = (images.to(torch.float32) + 1.0) * 127.5 + 0.5
    return scaled.clamp_(0, 255).to(torch.uint8)


def to_uint8_nchw(batch: Images, device: torch.device) -> torch.Tensor:
    """One validated batch, either format, → uint8 NCHW on `device` (the quantisation step)."""
    t = _tensor(batch)
    if t.dtype == torch.uint8:
        return t.to(device).permute(0, 3, 1, 2).contiguous()
    return quantize(t.to(device))


def to_float_nchw(batch: Images, device: torch.device, quantized: bool) -> torch.Tensor:
    """One validated batch → float32 NCHW in [−1, 1] on `device` (quantised first if asked)."""
    t = _tensor(batch)
    if quantized or t.dtype == torch.uint8:
        return to_uint8_nchw(t, device).to(torch.float32) / 127.5 - 1.0
    return t.to(device=device, dtype=torch.float32).clamp(-1.0, 1.0)


def _tensor(batch: Images) -> torch.Tensor:
    """A detached tensor view of a batch; read-only numpy (e.g. decoded shards) is copied."""
    if isinstance(batch, torch.Tensor):
        return batch.detach()
    batch = np.ascontiguousarray(batch)
    return torch.from_numpy(batch if batch.flags.writeable else batch.copy())


# --------------------------------------------------------------------------- shared batching


class BatchedExtractor:
    """Batching, no_grad and numpy output shared by all extractors; subclasses give `_forward`."""

    name: str
    dim: int

    def __init__(self, device: torch.device | str = "cpu", batch_size: int = 256) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.device = torch.device(device)
        self.batch_size = batch_size

    def __call__(self, images: Images) -> np.ndarray:
        """float32 [N, dim] features of a batch in either input format."""
        return self._run(images)[0]

    def __repr__(self) -> str:
        dim = getattr(self, "dim", "?")
        return f"{type(self).__name__}(name={self.name!r}, dim={dim}, device={str(self.device)!r}, batch_size={self.batch_size})"

    def _output_dims(self) -> tuple[int, ...]:
        return (self.dim,)

    def _check(self, images: Images) -> None:
        """Extractor-specific checks (image size, channels) after the generic ones."""

    def _forward(self, batch: Images) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _run(self, images: Images) -> list[np.ndarray]:
        """Validate once, then run `_forward` batch by batch; one array per forward output."""
        images = check_images(images)
        self._check(images)
        if images.shape[0] == 0:
            return [np.zeros((0, d), dtype=np.float32) for d in self._output_dims()]
        chunks: list[list[np.ndarray]] = []
        with torch.no_grad():
            for start in range(0, images.shape[0], self.batch_size):
                outputs = self._forward(images[start : start + self.batch_size])
                chunks.append([o.detach().to("cpu", torch.float32).numpy() for o in outputs])
        return [np.ascontiguousarray(np.concatenate(parts)) for parts in zip(*chunks)]
