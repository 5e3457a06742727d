"""Raw pixels as features: the metric-free baseline feature space, needing no weights."""

from __future__ import annotations

import math

import torch

from minority_core.errors import InputError
from minority_core.metrics.features.base import BatchedExtractor, Images, image_chw, to_float_nchw


class RawPixels(BatchedExtractor):
    """Flattened pixels in [−1, 1] (CHW order): the metric-free baseline feature space."""

    name = "pixels"

    def __init__(self, device: torch.device | str = "cpu", batch_size: int = 1024,
                 shape: tuple[int, int, int] | None = None, quantized: bool = True) -> None:
        """`shape` (C, H, W) fixes `dim` up front; without it the first batch fixes it."""
        super().__init__(device, batch_size)
        self.shape = tuple(int(s) for s in shape) if shape is not None else None
        self.quantized = quantized

    @property
    def dim(self) -> int:  # type: ignore[override]
        """C·H·W; AttributeError (what hasattr expects) while the shape is still unknown."""
        if self.shape is None:
            raise AttributeError("pixels' dim is unknown until a batch is seen: pass shape=(C, H, W)")
        return math.prod(self.shape)

    def _check(self, images: Images) -> None:
        chw = image_chw(images)
        if self.shape is None:
            self.shape = chw
        elif chw != self.shape:
            raise InputError(f"pixels extractor was fixed to C×H×W {self.shape}, got images of {chw}")

    def _forward(self, batch: Images) -> tuple[torch.Tensor, ...]:
        return (to_float_nchw(batch, self.device, self.quantized).flatten(1),)
