"""Generate a batch of samples from a loaded model: the one function the CLI and the workers call.

Seeds: a shard's generator seed derives from (run seed, shard index) alone, so the samples of
shard k do not depend on how many workers ran the job or in which order shards finished.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import torch

from minority_core.config.sampler import SamplerConfig, check_model_fits
from minority_core.diffusion.noise import draw_noise
from minority_core.diffusion.samplers import ancestral_sample, ddim_sample
from minority_core.errors import InputError
from minority_core.models import LoadedModel


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
    with generation_threads():
        return _generate(loaded, num_samples, config, seed, device, progress, first_index)


GENERATION_THREADS = 1  # what a Ray actor (one CPU, OMP_NUM_THREADS=1) runs with; in-process runs pin the same


@contextmanager
def generation_threads() -> Iterator[None]:
    """Run the block on GENERATION_THREADS torch CPU threads, then restore the process's count.

    CPU kernels split reductions by thread count, so the same seed on 2 threads (in-process,
    --workers 0) and on 1 (an actor) gave different bytes in 3 of 16 shards; pinned, a shard's
    bytes depend on neither the worker count nor where it ran (docs/DESIGN.md §4 "Seeds").
    The count is process-wide: blocks in several threads share one pin, the last one restores."""
    with _PIN_LOCK:
        if not _PINNED:
            _PINNED.append(torch.get_num_threads())
            torch.set_num_threads(GENERATION_THREADS)
        _PINNED.append(None)
    try:
        yield
    finally:
        with _PIN_LOCK:
            _PINNED.pop()
            if len(_PINNED) == 1:
                torch.set_num_threads(_PINNED.pop())


_PIN_LOCK = threading.Lock()
_PINNED: list = []  # [count before the first pin, one entry per open block]


def _generate(loaded: LoadedModel, num_samples: int, config: SamplerConfig, seed: int, device, progress: bool, first_index: int):
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
    """One batch by `config.method`: the plain samplers, composed with a baseline's start, grid or
    guidance term. Draws from `generator`: the start noise (after respacing), then the sampler's."""
    if loaded.upsampler is not None:
        from minority_core.models.two_stage import sample_imagenet256

        if config.method not in ("self-guided", "standard") or config.sampler != "ancestral":
            raise InputError("the two-stage ImageNet-256 model runs self-guided or standard ancestral sampling only")
        return sample_imagenet256(loaded, loaded.upsampler, shape[0], config.guidance, steps=config.steps, generator=generator, class_labels=y, progress=progress)
    grid = loaded.schedule.respace(config.steps)
    x = draw_noise(shape, generator, device)
    common = dict(extra=None if y is None else {"y": y}, generator=generator, progress=progress)
    if config.method == "boost-and-skip":
        from minority_core.baselines import boost_and_skip

        x, grid = boost_and_skip(x, grid, gamma=config.gamma, skip=config.skip)
        return ancestral_sample(loaded.model, x, grid, **common)
    if config.method == "minority-classifier":
        from minority_core.baselines import ClassifierGuidanceTerm

        classifier = _level_classifier(config.classifier, str(device))
        return ancestral_sample(loaded.model, x, grid, guidance=ClassifierGuidanceTerm(classifier, scale=config.classifier_scale), **common)
    if config.sampler == "ddim":
        return ddim_sample(loaded.model, x, grid, guidance=config.guidance, eta=config.eta, **common)
    return ancestral_sample(loaded.model, x, grid, guidance=config.guidance, **common)


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
