"""Feature extractors by name: the names runs store features under (`features/<name>/`), what the
CLI and README list, and what a dataset check can ask about before any run starts.

Each entry has a factory, a one-line description, and optionally where its weights file is
looked for, so `available_extractors` can say offline, without building anything, whether an
extractor would load.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from minority_core.errors import InputError
from minority_core.metrics.features.base import FeatureExtractor
from minority_core.metrics.features.demo_classifier import DemoClassifierFeatures
from minority_core.metrics.features.inception import InceptionSpatialFeatures, InceptionV3Features, inception_weights_location
from minority_core.metrics.features.pixels import RawPixels

_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")  # safe in storage paths and on a command line


@dataclass(frozen=True)
class ExtractorInfo:
    """One registered extractor as `available_extractors` reports it."""

    name: str
    description: str
    weights: Path | None  # where its weights file is looked for; None when it needs none
    weights_present: bool


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., FeatureExtractor]
    description: str
    weights: Callable[[], Path] | None


_REGISTRY: dict[str, _Entry] = {}


def register_extractor(
    name: str,
    factory: Callable[..., FeatureExtractor],
    *,
    description: str,
    weights: Callable[[], Path] | None = None,
) -> None:
    """Make `name` buildable by `get_extractor`. `factory(device=..., **kwargs)` builds it;
    `weights()` returns where its weights file is looked for (called offline, never downloads)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError(f"feature extractor name {name!r} must be lowercase letters, digits and single dashes")
    if name in _REGISTRY:
        raise InputError(f"feature extractor {name!r} is already registered")
    if not description.strip() or "\n" in description:
        raise InputError(f"feature extractor {name!r} needs a one-line description")
    _REGISTRY[name] = _Entry(factory, description, weights)


def get_extractor(name: str, device: torch.device | str = "cpu", **kwargs) -> FeatureExtractor:
    """Build an extractor by its storage name; kwargs go to its constructor (batch_size, path, …)."""
    if name not in _REGISTRY:
        raise InputError(f"unknown feature extractor {name!r}: valid names are {', '.join(_REGISTRY)}")
    return _REGISTRY[name].factory(device=device, **kwargs)


def available_extractors() -> list[ExtractorInfo]:
    """Every registered extractor in registration order, with whether its weights are on disk."""
    return [extractor_info(name) for name in _REGISTRY]


def extractor_info(name: str) -> ExtractorInfo:
    """One extractor by name, with whether its weights are on disk (offline, nothing built): what
    a dataset check asks before a run would load it. Unknown names list the valid ones."""
    if name not in _REGISTRY:
        raise InputError(f"unknown feature extractor {name!r}: valid names are {', '.join(_REGISTRY)}")
    entry = _REGISTRY[name]
    where = entry.weights() if entry.weights is not None else None
    return ExtractorInfo(name, entry.description, where, where is None or where.is_file())


register_extractor(RawPixels.name, RawPixels, description="flattened pixels in [-1, 1]: the weight-free baseline, any image size")
register_extractor(DemoClassifierFeatures.name, DemoClassifierFeatures,
                   description="64-d penultimate layer of the bundled 8x8 digit classifier: the demo's feature space")
register_extractor(InceptionV3Features.name, InceptionV3Features, weights=inception_weights_location,
                   description="Inception-V3 pool3, 2048-d: the FID feature space")
register_extractor(InceptionSpatialFeatures.name, InceptionSpatialFeatures, weights=inception_weights_location,
                   description="Inception-V3 mixed_6/conv, first 7 channels, 2023-d: the sFID feature space")
