"""Generate a batch of samples from a loaded model: the one function the CLI and the workers call.

Seeds: a shard's generator seed derives from (run seed, shard index) alone, so the samples of
shard k do not depend on how many workers ran the job or in which order shards finished.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch

from .guidance import MinorityGuidance
from .models import LoadedModel
from .sampling import ancestral_sample, ddim_sample

Sampler = Literal["ancestral", "ddim"]


@dataclass(frozen=True)
class SamplerConfig:
    """How to sample: which sampler, its steps, the guidance (None = standard sampling), batching."""

    sampler: Sampler = "ancestral"
    steps: int = 250
    eta: float = 0.0
    guidance: MinorityGuidance | None = None
    batch_size: int = 256
    class_label: int | None = None  # fixed class for class-conditional models; None draws uniformly

    def __post_init__(self) -> None:
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
        kwargs = dict(guidance=config.guidance, steps=config.steps, generator=generator, progress=progress, class_labels=y, device=device)
        if config.sampler == "ddim":
            x = ddim_sample(loaded.model, loaded.schedule, (n, *loaded.shape), eta=config.eta, **kwargs)
        else:
            x = ancestral_sample(loaded.model, loaded.schedule, (n, *loaded.shape), **kwargs)
        chunks.append(x.clamp(-1, 1).cpu())
    return torch.cat(chunks), labels


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
