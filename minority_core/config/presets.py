"""Per-model defaults as default objects, and the one place they are merged with what was given.

w is not portable across data dimensions or normalisations (docs/DESIGN.md §7), so every model
family carries its own tuned defaults; the generic ones are the reference code's. A preset is
a complete `SamplerConfig` (guidance included) plus the feature extractor its runs score with;
`resolve_sampler` lays the user's overrides over it. The CLI, dataset files and the Python API
all come through here, so a default lives in exactly one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from minority_core.config.guidance import MinorityGuidance
from minority_core.config.sampler import SamplerConfig, check_model_fits
from minority_core.errors import InputError


@dataclass(frozen=True)
class Preset:
    """What a model family samples and scores with unless told otherwise."""

    sampler: SamplerConfig
    extractor: str


GENERIC = Preset(SamplerConfig(steps=250, guidance=MinorityGuidance(scale=0.4)), extractor="inception-pool3")

# Tuned on the bundled digits model with benchmarks/tune_demo.py (README, "Demo numbers"): the
# best trade-off between rare-class share / AvgkNN and classifier confidence. On this 8×8 model
# with its cosine schedule, the paper's s = 0.8·T and every = 5 give almost no effect below the
# w that wrecks samples; guiding every 2nd step of the first half, with s = 0.4·T, does.
# classifier_scale: the minority-classifier baseline's s, tuned on this model (100 steps, 300 samples,
# L = 10 levels, classifier trained 3000 steps). Rare-class share / confident (> 0.9), mean of seeds 0
# and 1: standard 4.5 % / 96 %; s = 3.5: 11.3 % / 89 %; s = 10: 16.2 % / 87 %. Seed 0 only: s = 1:
# 9.3 % / 90 %; s = 30: 21.0 % / 89 % but collapsing onto class 8 (60 eights, 3 nines of 300). s = 10
# is the knee: most of the gain, both rare classes.
DIGITS = Preset(  # tuned with L2 (w is not portable across distances either)
    SamplerConfig(steps=100, guidance=MinorityGuidance(scale=3.0, perturb_ratio=0.4, every=2, stop_ratio=0.5, distance="l2"), classifier_scale=10.0),
    extractor="demo-classifier",
)

# latent: (Stable-Diffusion-style) pipelines: 50 steps as diffusers' pipelines, L2 on latents (LPIPS
# needs images). w is the generic 0.4 and untuned: latents are not [−1, 1] pixels (docs/DESIGN.md §7).
LATENT = replace(GENERIC, sampler=replace(GENERIC.sampler, steps=50, guidance=MinorityGuidance(scale=0.4, distance="l2")))

BY_SPEC = {"bundled:digits": DIGITS}

# Um & Ye's settings for the guided-diffusion checkpoints (sg-minority's scripts): LPIPS, s = 0.8·T,
# 250 respaced steps; CelebA-64 and LSUN-Bedrooms-256 w 0.4 every 5, ImageNet-64 w 0.2 every 2.
# Boost-and-Skip (the BnS scripts): γ = 4.0 for CelebA-64 / LSUN, 2.5 for ImageNet-64, Δt = 3.
# imagenet64to256 guides its 64 px stage as imagenet64 and runs the upsampler unguided.
_CELEBA = replace(GENERIC, sampler=replace(GENERIC.sampler, steps=250, guidance=MinorityGuidance(scale=0.4, distance="lpips"), gamma=4.0))
_IMAGENET64 = replace(_CELEBA, sampler=replace(_CELEBA.sampler, guidance=MinorityGuidance(scale=0.2, every=2, distance="lpips"), gamma=2.5))
ADM_PRESETS = {"celeba64": _CELEBA, "lsun256": _CELEBA, "imagenet64": _IMAGENET64, "imagenet64to256": _IMAGENET64}

SAMPLER_KEYS = tuple(f.name for f in dataclasses.fields(SamplerConfig))
GUIDANCE_KEYS = tuple(f.name for f in dataclasses.fields(MinorityGuidance))
TEXT_KEYS = ("prompts", "cfg_scale", "negative_prompt")


def preset_for(spec: str, preset: str | None = None) -> Preset:
    """The defaults of a model spec: the bundled model's tuned ones, the paper's for an ADM preset
    (Um & Ye: CelebA-64/LSUN w 0.4, ImageNet-64 w 0.2 every 2, LPIPS), else generic."""
    if spec.startswith("adm:") and preset:
        if preset not in ADM_PRESETS:
            raise InputError(f"unknown ADM preset {preset!r}: use one of {', '.join(ADM_PRESETS)}")
        return ADM_PRESETS[preset]
    if spec.startswith("latent:"):
        return LATENT
    return BY_SPEC.get(spec, GENERIC)


def resolve_sampler(spec: str, preset: str | None = None, overrides: Mapping[str, Any] | None = None) -> SamplerConfig:
    """The preset's SamplerConfig with `overrides` laid over it (`guidance` a mapping of guidance
    fields); validated, and checked against the model spec. w = 0 is standard sampling."""
    given = {k: v for k, v in dict(overrides or {}).items() if v is not None}
    guidance_given = dict(given.pop("guidance", None) or {})
    _refuse_unknown(given, SAMPLER_KEYS, "sampler")
    _refuse_unknown(guidance_given, GUIDANCE_KEYS, "guidance")
    base = preset_for(spec, preset).sampler
    method = given.get("method", base.method)
    guidance = None
    if method == "self-guided":
        guidance = replace(base.guidance, **guidance_given)
        if guidance.scale == 0:
            method, guidance = "standard", None
    text = sorted(k for k in TEXT_KEYS if k in given)
    if "prompts" not in given and text:
        if not spec.startswith("latent:"):
            raise InputError(f"{', '.join(text)} apply to text-to-image (latent:) models only; {spec} is not one")
        raise InputError(f"{', '.join(text)} given without prompts: pass --prompt TEXT or --prompts-file FILE")
    config = concrete_distance(replace(base, **{**given, "method": method, "guidance": guidance}), spec)
    check_model_fits(spec, config)
    return config


def concrete_distance(config: SamplerConfig, spec: str) -> SamplerConfig:
    """distance 'auto' made concrete at the edge, once, so the run's identity and summary say what
    ran: LPIPS where its weights are on disk (minority_core.lpips_files) and the model makes images
    (every scheme but latent:, whose samples are VAE latents), else L2."""
    g = config.guidance
    if g is None or g.distance != "auto":
        return config
    from minority_core.lpips_files import lpips_available

    images = not str(spec).startswith("latent:")
    return replace(config, guidance=replace(g, distance="lpips" if images and lpips_available("alex") else "l2"))


def _refuse_unknown(given: Mapping[str, Any], known: tuple[str, ...], section: str) -> None:
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise InputError(f"unknown {section} setting(s) {', '.join(unknown)}: known are {', '.join(known)}")
