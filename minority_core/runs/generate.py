"""Generate a batch of samples from a loaded model: the one function the CLI and the workers call.

Seeds: a shard's generator seed derives from (run seed, shard index) alone, so the samples of
shard k do not depend on how many workers ran the job or in which order shards finished.
"""

from __future__ import annotations

from minority_core.errors import InputError

from dataclasses import asdict, dataclass
import math
from functools import lru_cache
from typing import Literal

import numpy as np
import torch

from minority_core.diffusion.guidance import MinorityGuidance
from minority_core.models import LoadedModel
from minority_core.diffusion.samplers import ancestral_sample, ddim_sample

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

    method: Method = "self-guided"
    sampler: Sampler = "ancestral"
    steps: int = 250
    eta: float = 0.0
    guidance: MinorityGuidance | None = None
    batch_size: int = 256
    # class-conditional models: sample k of a run gets class_labels[k mod len]; None draws uniformly
    class_labels: tuple[int, ...] | None = None
    gamma: float = 4.0  # boost-and-skip: initial-noise std multiplier (the authors' code)
    skip: int = 3  # boost-and-skip: first grid steps skipped
    classifier: str | None = None  # minority-classifier: folder of a trained level classifier
    classifier_scale: float = 3.5  # minority-classifier: classifier-guidance scale
    # text-to-image (latent:) models only: sample k of a run gets prompts[k mod len(prompts)]
    prompts: tuple[str, ...] | None = None
    cfg_scale: float = 7.5  # classifier-free guidance scale (1 = conditional only)
    negative_prompt: str = ""  # the unconditional branch of CFG

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
        if not isinstance(self.steps, int) or self.steps < 2:
            raise InputError(f"steps must be an integer ≥ 2, got {self.steps!r}")
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


def shard_seed(run_seed: int, shard_index: int) -> int:
    """A 63-bit seed from (run seed, shard index) only; independent streams per shard."""
    return int(np.random.SeedSequence([int(run_seed), int(shard_index)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def generate(
    loaded: LoadedModel,
    num_samples: int,
    config: SamplerConfig,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    first_index: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`num_samples` images in [−1, 1] (float NCHW, on CPU) and their class labels if conditional.

    `first_index` is the run-wide index of the first sample: it picks the samples' prompts
    (`sample_prompts`) for text-to-image models, and is unused otherwise.
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise InputError(f"num_samples must be an integer ≥ 1, got {num_samples!r}")
    check_model_fits(loaded.spec, config)
    check_class_labels(loaded, config)
    generator = torch.Generator().manual_seed(seed)
    labels = _class_labels(loaded, num_samples, config, generator, first_index)
    prompts = sample_prompts(config, first_index, num_samples)
    chunks = []
    for start in range(0, num_samples, config.batch_size):
        n = min(config.batch_size, num_samples - start)
        y = None if labels is None else labels[start : start + n].to(device)
        if loaded.latent is not None:
            batch = _sample_latent_batch(loaded, prompts[start : start + n], config, generator, progress)
        else:
            batch = _sample_batch(loaded, (n, *loaded.shape), config, generator, y, device, progress)
        chunks.append(batch.clamp(-1, 1).cpu())
    return torch.cat(chunks), labels


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
    if config.guidance is not None and config.guidance.distance != "l2":
        raise InputError("minority guidance on latents uses distance 'l2': LPIPS compares images, not VAE latents (pass --distance l2)")


def sample_prompts(config: SamplerConfig, first_index: int, count: int) -> list[str] | None:
    """The prompts of samples first_index … first_index+count−1 of a run (None without prompts):
    sample k gets prompts[k mod len], whatever the shard size or number of workers."""
    if config.prompts is None:
        return None
    from minority_core.models.latent import shard_prompts

    return shard_prompts(config.prompts, first_index, count)


def _sample_latent_batch(loaded: LoadedModel, prompts: list[str], config: SamplerConfig, generator, progress) -> torch.Tensor:
    pipe = loaded.latent
    latents = pipe.sample_latents(prompts, config.guidance, config.steps, config.cfg_scale, generator, config.sampler,
                                  negative_prompt=config.negative_prompt, eta=config.eta, progress=progress)
    return pipe.decode(latents, batch_size=len(prompts))


def _sample_batch(loaded: LoadedModel, shape, config: SamplerConfig, generator, y, device, progress) -> torch.Tensor:
    if loaded.upsampler is not None:
        from minority_core.models.adm_loader import sample_imagenet256

        if config.method not in ("self-guided", "standard") or config.sampler != "ancestral":
            raise InputError("the two-stage ImageNet-256 model runs self-guided or standard ancestral sampling only")
        return sample_imagenet256(loaded, loaded.upsampler, shape[0], config.guidance, steps=config.steps, generator=generator, class_labels=y, progress=progress)
    common = dict(steps=config.steps, generator=generator, progress=progress, class_labels=y, device=device)
    if config.method == "boost-and-skip":
        from minority_core.baselines import boost_and_skip_sample

        return boost_and_skip_sample(loaded.model, loaded.schedule, shape, gamma=config.gamma, skip=config.skip, **common)
    if config.method == "minority-classifier":
        from minority_core.baselines import classifier_guided_sample

        classifier = _level_classifier(config.classifier, str(device))
        return classifier_guided_sample(loaded.model, loaded.schedule, classifier, shape, scale=config.classifier_scale, **common)
    if config.sampler == "ddim":
        return ddim_sample(loaded.model, loaded.schedule, shape, guidance=config.guidance, eta=config.eta, **common)
    return ancestral_sample(loaded.model, loaded.schedule, shape, guidance=config.guidance, **common)


@lru_cache(maxsize=4)
def _level_classifier(path: str, device: str):
    from minority_core.baselines import load_level_classifier

    return load_level_classifier(path, device)


def check_class_labels(loaded: LoadedModel, config: SamplerConfig) -> None:
    """Given class labels need a class-conditional model and must be among its classes (checked
    once the model is loaded: workers do it at start-up, before any shard is written)."""
    if config.class_labels is None:
        return
    if loaded.num_classes is None:
        raise InputError(f"class labels (--class-label) given but {loaded.spec} is unconditional: drop them")
    bad = sorted({c for c in config.class_labels if c >= loaded.num_classes})
    if bad:
        raise InputError(f"class labels {bad} are out of range: {loaded.spec} has classes 0…{loaded.num_classes - 1}")


def _class_labels(loaded: LoadedModel, n: int, config: SamplerConfig, generator: torch.Generator, first_index: int) -> torch.Tensor | None:
    if loaded.num_classes is None:
        return None
    if config.class_labels is not None:  # by run-wide index, like prompts: independent of the sharding
        chosen = config.class_labels
        return torch.tensor([chosen[(first_index + k) % len(chosen)] for k in range(n)], dtype=torch.long)
    return torch.randint(loaded.num_classes, (n,), generator=generator)
