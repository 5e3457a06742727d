"""The bundled 8×8 digit classifier as a feature extractor: the demo's feature space, and the
labels the demo reports per sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from minority_core.errors import InputError
from minority_core.metrics.features.base import BatchedExtractor, Images, image_chw, to_float_nchw


class DemoClassifierFeatures(BatchedExtractor):
    """Penultimate layer (64-d) of the bundled 8×8 digit classifier: the demo's feature space."""

    name = "demo-classifier"
    dim = 64
    image_shape = (1, 8, 8)

    def __init__(self, device: torch.device | str = "cpu", batch_size: int = 512,
                 path: str | Path | None = None, quantized: bool = True) -> None:
        """`path` overrides the bundled weights (safetensors), e.g. while they are retrained."""
        super().__init__(device, batch_size)
        from minority_core.models import load_digit_classifier

        self.model = load_digit_classifier(self.device, path=Path(path) if path is not None else None)
        self.model.requires_grad_(False)
        self.quantized = quantized

    def predict(self, images: Images) -> tuple[np.ndarray, np.ndarray]:
        """(labels int64 [N], confidence float32 [N] = max softmax) for labelling demo samples."""
        _, probs = self._run(images)
        return probs.argmax(axis=1).astype(np.int64), probs.max(axis=1).astype(np.float32)

    def _output_dims(self) -> tuple[int, ...]:
        return (self.dim, self.model.head.out_features)

    def _check(self, images: Images) -> None:
        if image_chw(images) != self.image_shape:
            raise InputError(f"demo-classifier needs 1×8×8 images, got C×H×W {image_chw(images)}")

    def _forward(self, batch: Images) -> tuple[torch.Tensor, ...]:
        feats = self.model.features(to_float_nchw(batch, self.device, self.quantized))
        return feats, torch.softmax(self.model.head(feats), dim=1)
