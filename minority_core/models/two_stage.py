"""The paper's two-stage ImageNet-256 sampler: guided 64 px samples from the class-conditional
base model, then the unguided 64→256 ADM upsampler conditioned on them (guided-diffusion's
super_res_sample).

It lives with the models, not in `minority_core.diffusion`, because it needs what a loaded
model knows (its shape, classes and spec) and the upsampler's low-res conditioning
(`ADMSuperResModel.conditioned_on`); the two stages themselves are the plain ancestral sampler.
"""

from __future__ import annotations

import torch
from torch import Tensor

from minority_core.diffusion.model_api import DenoisingModel, model_device
from minority_core.diffusion.noise import draw_noise
from minority_core.diffusion.samplers import Guidance, ancestral_sample
from minority_core.errors import InputError
from minority_core.models import LoadedModel
from minority_core.models.adm_loader import ADMSuperResModel


def sample_imagenet256(
    base: LoadedModel,
    upsampler: LoadedModel,
    n: int,
    guidance: Guidance | None,
    steps: int = 250,
    generator: torch.Generator | None = None,
    class_labels: Tensor | None = None,
    upsampler_steps: int | None = None,
    progress: bool = False,
) -> Tensor:
    """Guided 64 px samples from `base`, then `upsampler` (unguided) conditioned on them.

    Labels, drawn uniformly from `generator` unless given, condition both stages. The 64 px
    samples are clipped and rounded to 8 bits before upsampling, as guided-diffusion's
    super_res_sample reads them from saved images. Returns [n, 3, H, W] at the upsampler's size.
    Draws from `generator`, in order: the labels, stage 1's start noise and steps, stage 2's.
    """
    sr = upsampler.model
    if not isinstance(sr, ADMSuperResModel):
        raise InputError(f"{upsampler.spec} is not an ADM upsampler: load it with preset imagenet64to256")
    if base.shape[1:] != (sr.small_size, sr.small_size):
        raise InputError(f"the upsampler takes {sr.small_size} px inputs but {base.spec} makes {base.shape[1]} px samples")
    labels = _class_labels(base, upsampler, n, generator, class_labels)
    extra = None if labels is None else {"y": labels}
    low = _stage(base.model, base, n, steps, guidance, extra, generator, progress)
    with sr.conditioned_on(_as_8bit(low)):
        return _stage(sr, upsampler, n, upsampler_steps or steps, None, extra, generator, progress)


def _stage(model: DenoisingModel, loaded: LoadedModel, n: int, steps: int, guidance: Guidance | None,
           extra: dict[str, Tensor] | None, generator: torch.Generator | None, progress: bool) -> Tensor:
    """One stage: respace, draw its start noise, sample."""
    grid = loaded.schedule.respace(steps)
    x = draw_noise((n, *loaded.shape), generator, model_device(model))
    return ancestral_sample(model, x, grid, guidance=guidance, extra=extra, generator=generator, progress=progress)


def _class_labels(base: LoadedModel, upsampler: LoadedModel, n: int, generator: torch.Generator | None, given: Tensor | None) -> Tensor | None:
    """The labels both stages share: given ones, else uniform draws from `generator`."""
    if base.num_classes != upsampler.num_classes:
        raise InputError(f"the base model has {base.num_classes} classes but the upsampler {upsampler.num_classes}")
    if base.num_classes is None:
        if given is not None:
            raise InputError("class_labels given but the models are unconditional")
        return None
    if given is None:
        return draw_class_labels(base.num_classes, n, generator)
    given = torch.as_tensor(given, dtype=torch.long)
    if given.shape != (n,) or given.min() < 0 or given.max() >= base.num_classes:
        raise InputError(f"class_labels must be {n} integers in [0, {base.num_classes})")
    return given


def draw_class_labels(num_classes: int, n: int, generator: torch.Generator | None = None) -> Tensor:
    """n labels uniform over the classes, drawn from `generator` (on its device) so a seed fixes them."""
    device = generator.device if generator is not None else "cpu"
    return torch.randint(num_classes, (n,), generator=generator, device=device)


def _as_8bit(x: Tensor) -> Tensor:
    """[-1, 1] images rounded to the 256 levels a saved PNG holds."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
