"""How to sample: method, sampler, steps, guidance, batching, and the model inputs (labels, prompts).

Declared once and validated on construction; the worker rebuilds it from its dict form.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from minority_core.config.fields import knob
from minority_core.config.guidance import MinorityGuidance
from minority_core.errors import InputError
from minority_core.respacing import normalize_steps, step_count

Sampler = Literal["ancestral", "ddim"]
Method = Literal["standard", "self-guided", "boost-and-skip", "minority-classifier"]
METHODS = ("standard", "self-guided", "boost-and-skip", "minority-classifier")


@dataclass(frozen=True)
class SamplerConfig:
    """How to sample: the method, sampler, steps, guidance (None = no self-guidance), batching.

    Methods: "self-guided" (this product: `guidance`), "standard" (plain sampling), and the
    baselines "boost-and-skip" (γ-boosted start, first `skip` steps skipped) and
    "minority-classifier" (classifier guidance toward the top minority level, ICLR 2024).
    """

    method: Method = knob("self-guided", help="self-guided (this product), standard, or a baseline: boost-and-skip, minority-classifier")
    sampler: Sampler = knob("ancestral", help="ancestral (DDPM) or ddim")
    steps: int | str = knob(250, help="sampling steps on the respaced grid: a count, ddimN (an integer stride giving exactly N) or section counts a,b,c (guided-diffusion's forms)")
    eta: float = knob(0.0, help="DDIM η (0 = deterministic)")
    guidance: MinorityGuidance | None = None  # None = no self-guidance (its knobs are MinorityGuidance's)
    batch_size: int = knob(256, help="images sampled at once per worker")
    class_labels: tuple[int, ...] | None = knob(None, help="class-conditional models: a class index (repeatable; sample k gets label k mod count). Default: uniform", cli="class-label")
    gamma: float = knob(4.0, help="boost-and-skip: initial noise std multiplier")
    skip: int = knob(3, help="boost-and-skip: first grid steps skipped")
    classifier: str | None = knob(None, help="minority-classifier: folder of a trained level classifier")
    classifier_scale: float = knob(3.5, help="minority-classifier: classifier-guidance scale")
    prompts: tuple[str, ...] | None = knob(None, help="latent: models: a text prompt (repeatable; sample k gets prompt k mod count)", cli="prompt")
    cfg_scale: float = knob(7.5, help="latent: models: classifier-free guidance scale (1 = conditional only)")
    negative_prompt: str = knob("", help="latent: models: the unconditional prompt of CFG")

    def __post_init__(self) -> None:
        if self.class_labels is not None:
            labels = (self.class_labels,) if isinstance(self.class_labels, int) else tuple(self.class_labels)
            if not labels or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in labels):
                raise InputError(f"class_labels must be a non-empty list of class indices ≥ 0, got {self.class_labels!r}")
            object.__setattr__(self, "class_labels", labels)
        if self.prompts is not None:
            prompts = (self.prompts,) if isinstance(self.prompts, str) else tuple(self.prompts)
            if not prompts or not all(isinstance(p, str) for p in prompts):
                raise InputError("prompts must be a non-empty list of strings (one per line in a prompts file)")
            object.__setattr__(self, "prompts", prompts)
        if isinstance(self.cfg_scale, bool) or not isinstance(self.cfg_scale, (int, float)) or not math.isfinite(self.cfg_scale) or self.cfg_scale < 0:
            raise InputError(f"cfg_scale must be a finite number ≥ 0, got {self.cfg_scale!r}")
        if not isinstance(self.negative_prompt, str):
            raise InputError(f"negative_prompt must be a string, got {self.negative_prompt!r}")
        if self.method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method != "self-guided" and self.guidance is not None:
            raise InputError(f"method {self.method!r} takes no self-guidance settings; use method 'self-guided'")
        if self.method in ("boost-and-skip", "minority-classifier") and self.sampler != "ancestral":
            raise InputError(f"method {self.method!r} runs on the ancestral sampler only, not {self.sampler!r}")
        if self.method == "minority-classifier" and not self.classifier:
            raise InputError("method 'minority-classifier' needs a trained level classifier: pass --classifier DIR (see `train_minority_classifier`)")
        if self.sampler not in ("ancestral", "ddim"):
            raise InputError(f"sampler must be 'ancestral' or 'ddim', got {self.sampler!r}")
        object.__setattr__(self, "steps", normalize_steps(self.steps))
        if step_count(self.steps) < 2:
            raise InputError(f"steps must be at least 2: a count ≥ 2, ddimN with N ≥ 2, or sections a,b,c summing to ≥ 2; got {self.steps!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError(f"batch_size must be an integer ≥ 1, got {self.batch_size!r}")
        if not 0.0 <= float(self.eta) <= 1.0:
            raise InputError(f"eta must be in [0, 1], got {self.eta!r}")

    def to_dict(self) -> dict:
        """JSON-ready; the text fields appear only when there are prompts, so the identity (and
        hash) of a run of a pixel model does not carry them."""
        data = asdict(self)
        data["guidance"] = None if self.guidance is None else self.guidance.to_dict()
        if self.prompts is None:
            for key in ("prompts", "cfg_scale", "negative_prompt"):
                data.pop(key)
        else:
            data["prompts"] = list(self.prompts)
        if self.class_labels is None:
            data.pop("class_labels")
        else:
            data["class_labels"] = list(self.class_labels)
        return data


def check_model_fits(spec: str, config: SamplerConfig) -> None:
    """Prompts go with text-to-image (latent:) models and only there; those run the two samplers
    self-guided or standard (the baselines' classifier and pixel-space clipping do not apply).
    Checked from the spec alone, so the CLI and the flow refuse a mismatch before loading anything."""
    if not str(spec).startswith("latent:"):
        if config.prompts is not None:
            raise InputError(f"prompts apply to text-to-image (latent:) models only; {spec} is not one: drop --prompt/--prompts-file")
        return
    if config.prompts is None:
        raise InputError(f"{spec} is a text-to-image model: give --prompt TEXT (repeatable) or --prompts-file FILE (one prompt per line)")
    if config.method not in ("self-guided", "standard"):
        raise InputError(f"method {config.method!r} is not available for latent: models; use self-guided or standard")
    if config.guidance is not None and config.guidance.distance not in ("l2", "auto"):
        raise InputError("minority guidance on latents uses distance 'l2': LPIPS compares images, not VAE latents (pass --distance l2)")
