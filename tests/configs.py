"""Sampler configs from flat options, as the CLI and dataset files build them (preset merged)."""

from __future__ import annotations

from minority_core.config import SamplerConfig, SynthesisConfig


def sampler_for(spec: str, **options) -> SamplerConfig:
    """The SamplerConfig a run of `spec` with these flat options samples with."""
    return SynthesisConfig.from_options(model=spec, out="/unused", num_samples=1, **options).sampler
