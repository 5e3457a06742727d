"""Per-model defaults for sampling, guidance and scoring.

w is not portable across data dimensions or normalisations (DESIGN §7), so every model family
carries its own tuned defaults; the generic ones are the reference code's.
"""

from __future__ import annotations

from minority_core.errors import InputError

GENERIC = dict(
    steps=250, guidance_scale=0.4, perturb_ratio=0.8, every=5, stop_ratio=-1.0,
    scale_type="var", distance="l2", mc_samples=1, extractor="inception-pool3",
)

# Tuned on the bundled digits model with benchmarks/tune_demo.py (README, "Demo numbers"): the
# best trade-off between rare-class share / AvgkNN and classifier confidence. On this 8×8 model
# with its cosine schedule, the paper's s = 0.8·T and every = 5 give almost no effect below the
# w that wrecks samples; guiding every 2nd step of the first half, with s = 0.4·T, does.
DIGITS = dict(GENERIC, steps=100, guidance_scale=3.0, perturb_ratio=0.4, every=2, stop_ratio=0.5, extractor="demo-classifier",
              classifier_scale=10.0)  # minority-classifier baseline, tuned in minority_core/baselines/minority_classifier.py

PRESETS = {"bundled:digits": DIGITS}

# latent: (Stable-Diffusion-style) pipelines: 50 steps as diffusers' pipelines, L2 on latents (LPIPS
# needs images). w is the generic 0.4 and untuned: latents are not [−1, 1] pixels (DESIGN §7).
LATENT = dict(GENERIC, steps=50)


def defaults_for(spec: str, preset: str | None = None) -> dict:
    """The sampling defaults for a model spec: the bundled model's tuned ones, the paper's for an
    ADM preset (Um & Ye: CelebA-64/LSUN w 0.4, ImageNet-64 w 0.2 every 2, LPIPS), else generic."""
    if spec.startswith("adm:") and preset:
        from minority_core.models.adm_loader import PAPER_GUIDANCE

        if preset not in PAPER_GUIDANCE:
            raise InputError(f"unknown ADM preset {preset!r}: use one of {', '.join(PAPER_GUIDANCE)}")
        paper = PAPER_GUIDANCE[preset]
        return dict(GENERIC, guidance_scale=paper["scale"], **{k: paper[k] for k in ("perturb_ratio", "every", "scale_type", "distance", "steps")})
    if spec.startswith("latent:"):
        return dict(LATENT)
    return dict(PRESETS.get(spec, GENERIC))


def sampler_config_for(
    spec: str,
    *,
    preset: str | None = None,
    guidance_scale: float | None = None,
    perturb_ratio: float | None = None,
    every: int | None = None,
    stop_ratio: float | None = None,
    scale_type: str | None = None,
    distance: str | None = None,
    mc_samples: int | None = None,
    steps: int | None = None,
    sampler: str = "ancestral",
    eta: float = 0.0,
    batch_size: int = 256,
    method: str = "self-guided",
    gamma: float | None = None,
    skip: int | None = None,
    classifier: str | None = None,
    classifier_scale: float | None = None,
    prompts: list[str] | tuple[str, ...] | None = None,
    cfg_scale: float | None = None,
    negative_prompt: str | None = None,
    class_labels: list[int] | tuple[int, ...] | None = None,
):
    """A validated SamplerConfig: given values win, the model's preset fills the rest; w = 0 is standard sampling."""
    from minority_core.config.guidance import MinorityGuidance
    from minority_core.config.sampler import SamplerConfig
    from minority_core.runs.generate import check_model_fits

    d = defaults_for(spec, preset)
    given = dict(guidance_scale=guidance_scale, perturb_ratio=perturb_ratio, every=every, stop_ratio=stop_ratio,
                 scale_type=scale_type, distance=distance, mc_samples=mc_samples, steps=steps)
    v = {k: d[k] if value is None else value for k, value in given.items()}
    guidance = None
    if method == "self-guided" and v["guidance_scale"] == 0:
        method = "standard"
    if method == "self-guided":
        guidance = MinorityGuidance(
            scale=float(v["guidance_scale"]), perturb_ratio=float(v["perturb_ratio"]), every=v["every"],
            stop_ratio=float(v["stop_ratio"]), scale_type=v["scale_type"], distance=v["distance"], mc_samples=v["mc_samples"],
        )
    baseline = {k: val for k, val in dict(gamma=gamma, skip=skip, classifier_scale=classifier_scale if classifier_scale is not None else d.get("classifier_scale")).items() if val is not None}
    text = {k: val for k, val in dict(prompts=prompts, cfg_scale=cfg_scale, negative_prompt=negative_prompt).items() if val is not None}
    if prompts is None and text:
        if not spec.startswith("latent:"):
            raise InputError(f"{', '.join(sorted(text))} apply to text-to-image (latent:) models only; {spec} is not one")
        raise InputError(f"{', '.join(sorted(text))} given without prompts: pass --prompt TEXT or --prompts-file FILE")
    config = SamplerConfig(method=method, sampler=sampler, steps=v["steps"], eta=eta, guidance=guidance, batch_size=batch_size, classifier=classifier,
                           class_labels=class_labels or None, **baseline, **text)
    check_model_fits(spec, config)
    return config
