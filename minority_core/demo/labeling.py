"""Labels for generated samples where the product has a labeller (the bundled digit classifier)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

LABELLED_SPECS = ("bundled:digits",)


@lru_cache(maxsize=1)
def _digit_classifier():
    from minority_core.metrics.features import DemoClassifierFeatures

    return DemoClassifierFeatures()


def label_samples(spec: str, images: torch.Tensor) -> np.ndarray | None:
    """Predicted class of each sample (float NCHW in [−1, 1]), or None for models without a labeller."""
    if spec not in LABELLED_SPECS:
        return None
    labels, _confidence = _digit_classifier().predict(images)
    return labels.astype(np.int32)
