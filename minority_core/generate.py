"""Generate a batch of samples from a loaded model: the one function the CLI and the workers call.

Seeds: a shard's generator seed derives from (run seed, shard index) alone, so the samples of
shard k do not depend on how many workers ran the job or in which order shards finished.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch

from .guidance import MinorityGuidance
from .models import LoadedModel
from .sampling import ancestral_sample, ddim_sample

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
    class_label: int | None = None  # fixed class for class-conditional models; None draws uniformly
    gamma: float = 4.0  # boost-and-skip: initial-noise std multiplier (the authors' code)
    skip: int = 3  # boost-and-skip: first grid steps skipped
    classifier: str | None = None  # minority-classifier: folder of a trained level classifier
    classifier_scale: float = 3.5  # minority-classifier: classifier-guidance scale

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method != "self-guided" and self.guidance is not None:
            raise ValueError(f"method {self.method!r} takes no self-guidance settings; use method 'self-guided'")
        if self.method in ("boost-and-skip", "minority-classifier") and self.sampler != "ancestral":
            raise ValueError(f"method {self.method!r} runs on the ancestral sampler only, not {self.sampler!r}")
        if self.method == "minority-classifier" and not self.classifier:
            raise ValueError("method 'minority-classifier' needs a trained level classifier: pass --classifier DIR (see `train_minority_classifier`)")
        if self.sampler not in ("ancestral", "ddim"):
            raise ValueError(f"sampler must be 'ancestral' or 'ddim', got {self.sampler!r}")
        if not isinstance(self.steps, int) or self.steps < 2:
            raise ValueError(f"steps must be an integer ≥ 2, got {self.steps!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer ≥ 1, got {self.batch_size!r}")
        if not 0.0 <= float(self.eta) <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta!r}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["guidance"] = None if self.guidance is None else self.guidance.to_dict()
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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`num_samples` images in [−1, 1] (float NCHW, on CPU) and their class labels if conditional."""
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer ≥ 1, got {num_samples!r}")
    generator = torch.Generator().manual_seed(seed)
    labels = _class_labels(loaded, num_samples, config, generator)
    chunks = []
    for start in range(0, num_samples, config.batch_size):
        n = min(config.batch_size, num_samples - start)
        y = None if labels is None else labels[start : start + n].to(device)
        chunks.append(_sample_batch(loaded, (n, *loaded.shape), config, generator, y, device, progress).clamp(-1, 1).cpu())
    return torch.cat(chunks), labels


def _sample_batch(loaded: LoadedModel, shape, config: SamplerConfig, generator, y, device, progress) -> torch.Tensor:
    if loaded.upsampler is not None:
        from .models.adm_loader import sample_imagenet256

        if config.method not in ("self-guided", "standard") or config.sampler != "ancestral":
            raise ValueError("the two-stage ImageNet-256 model runs self-guided or standard ancestral sampling only")
        return sample_imagenet256(loaded, loaded.upsampler, shape[0], config.guidance, steps=config.steps, generator=generator, class_labels=y, progress=progress)
    common = dict(steps=config.steps, generator=generator, progress=progress, class_labels=y, device=device)
    if config.method == "boost-and-skip":
        from .baselines import boost_and_skip_sample

        return boost_and_skip_sample(loaded.model, loaded.schedule, shape, gamma=config.gamma, skip=config.skip, **common)
    if config.method == "minority-classifier":
        from .baselines import classifier_guided_sample

        classifier = _level_classifier(config.classifier, str(device))
        return classifier_guided_sample(loaded.model, loaded.schedule, classifier, shape, scale=config.classifier_scale, **common)
    if config.sampler == "ddim":
        return ddim_sample(loaded.model, loaded.schedule, shape, guidance=config.guidance, eta=config.eta, **common)
    return ancestral_sample(loaded.model, loaded.schedule, shape, guidance=config.guidance, **common)


@lru_cache(maxsize=4)
def _level_classifier(path: str, device: str):
    from .baselines import load_level_classifier

    return load_level_classifier(path, device)


def _class_labels(loaded: LoadedModel, n: int, config: SamplerConfig, generator: torch.Generator) -> torch.Tensor | None:
    if loaded.num_classes is None:
        if config.class_label is not None:
            raise ValueError(f"class_label given but {loaded.spec} is unconditional")
        return None
    if config.class_label is not None:
        if not 0 <= config.class_label < loaded.num_classes:
            raise ValueError(f"class_label must be in [0, {loaded.num_classes}), got {config.class_label}")
        return torch.full((n,), config.class_label, dtype=torch.long)
    return torch.randint(loaded.num_classes, (n,), generator=generator)
