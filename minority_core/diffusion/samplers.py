"""Samplers as plain functions over the model interface (k-diffusion style).

`ancestral_sample` is DDPM ancestral sampling on a respaced grid; with a `MinorityGuidance`
it adds the self-guided minority term at the steps the guidance selects (DESIGN §1, item 7).
`ddim_sample` is DDIM (η ≥ 0); its guidance is an *extension of the paper* (the reference code
has no DDIM path): the same gradient is added to the DDIM mean, scaled by the variance the
ancestral sampler would use at that step, so w means the same thing in both samplers.

Everything runs under `torch.no_grad` except the guided step's single backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext

import torch
from tqdm.auto import tqdm

from minority_core.diffusion.guidance import MinorityGuidance, minority_gradient, resolve_distance
from minority_core.diffusion.model_api import DenoisingModel, ModelOutput, call_model, model_device
from minority_core.diffusion.schedule import NoiseSchedule
from minority_core.errors import InputError, NonFiniteSampleError

StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]  # (grid index, x_{t-1}, x̂0)
# (x_t, grid index, respaced grid, model output, Σ at this step) -> shift added to the step mean,
# an ADM-style `cond_fn`: how baselines such as classifier guidance plug into the same loop.
MeanShift = Callable[[torch.Tensor, int, NoiseSchedule, ModelOutput, "torch.Tensor | float"], torch.Tensor]


def ancestral_sample(
    model: DenoisingModel,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    guidance: MinorityGuidance | None = None,
    steps: int = 250,
    generator: torch.Generator | None = None,
    progress: bool = False,
    class_labels: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    clip_range: tuple[float, float] | None = (-1.0, 1.0),
    autocast: bool = False,
    device: torch.device | str | None = None,
    init_scale: float = 1.0,
    start_index: int | None = None,
    mean_shift: MeanShift | None = None,
) -> torch.Tensor:
    """DDPM ancestral sampling, optionally with self-guided minority guidance.

    `schedule` is the model's training schedule; sampling runs on `schedule.respace(steps)`.
    `guidance=None` is exactly standard ancestral sampling. Returns x_0 (unclipped last step
    mean, as DDPM does; it lies in `clip_range` up to the last step's tiny noise).
    Hooks for the baselines: the first draw is scaled by `init_scale` and taken as x at grid
    index `start_index` (later indices are skipped, drawing nothing); `mean_shift` is added to
    every step's mean.
    """

    def step(x: torch.Tensor, i: int, out: ModelOutput, x0: torch.Tensor, grid: NoiseSchedule, noise: torch.Tensor, guide: torch.Tensor | None) -> torch.Tensor:
        log_var = _log_variance(grid, i, out)
        mean = grid.posterior_mean(x0, x, i)
        if guide is not None:
            mean = mean + guide * _variance_factor(guidance, log_var)
        if mean_shift is not None:
            mean = mean + mean_shift(x, i, grid, out, _exp(log_var))
        if i == 0:
            return mean
        return mean + _exp(0.5 * log_var) * noise

    return _sample_loop(step, model, schedule, shape, guidance, steps, generator, progress, class_labels, callback, clip_range, autocast, device,
                        init_scale=init_scale, start_index=start_index, shifted=mean_shift is not None)


def ddim_sample(
    model: DenoisingModel,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    guidance: MinorityGuidance | None = None,
    steps: int = 250,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
    class_labels: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    clip_range: tuple[float, float] | None = (-1.0, 1.0),
    autocast: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """DDIM sampling (η = 0 deterministic, η = 1 ≈ ancestral); guidance is our extension (see module doc)."""
    if not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise InputError(f"eta must be in [0, 1], got {eta!r}")

    def step(x: torch.Tensor, i: int, out: ModelOutput, x0: torch.Tensor, grid: NoiseSchedule, noise: torch.Tensor, guide: torch.Tensor | None) -> torch.Tensor:
        abar, abar_prev = grid.alphas_cumprod[i], grid.alphas_cumprod_prev[i]
        eps = grid.predict_eps(x, i, x0)  # consistent with the clipped x̂0, as ADM's DDIM does
        sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar)) * math.sqrt(1 - abar / abar_prev)
        mean = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
        if guide is not None:
            mean = mean + guide * _variance_factor(guidance, _log_variance(grid, i, out))
        if i == 0 or sigma == 0:
            return mean
        return mean + sigma * noise

    return _sample_loop(step, model, schedule, shape, guidance, steps, generator, progress, class_labels, callback, clip_range, autocast, device)


def _sample_loop(step, model, schedule, shape, guidance, steps, generator, progress, class_labels, callback, clip_range, autocast, device,
                 init_scale: float = 1.0, start_index: int | None = None, shifted: bool = False) -> torch.Tensor:
    """The loop both samplers share: noise → for i = start … 0: model, x̂0, guidance, step."""
    if guidance is not None and not isinstance(guidance, MinorityGuidance):
        raise TypeError(f"guidance must be a MinorityGuidance or None, got {type(guidance).__name__}")
    if len(shape) < 2 or any(not isinstance(d, int) or d < 1 for d in shape):
        raise InputError(f"shape must be (batch, channels, ...) of positive integers, got {tuple(shape)!r}")
    device = torch.device(device) if device is not None else model_device(model)
    grid = schedule.respace(steps)
    if class_labels is not None:
        class_labels = class_labels.to(device)
        if class_labels.shape != (shape[0],):
            raise InputError(f"class_labels must have shape ({shape[0]},), got {tuple(class_labels.shape)}")
    distance = resolve_distance(guidance, device) if guidance is not None else None
    autocast_ctx = torch.autocast(device.type) if autocast else nullcontext()

    start = len(grid) - 1 if start_index is None else start_index
    if not isinstance(start, int) or not 0 <= start < len(grid):
        raise InputError(f"start index {start!r} is outside the {len(grid)}-step grid")
    x = _randn(shape, generator, device)
    if init_scale != 1.0:
        x = x * init_scale
    indices = range(start, -1, -1)
    guided = False  # whether a guidance term has moved x yet: decides what a NaN is blamed on  # whether the guidance term has moved x yet: decides what a NaN is blamed on
    with torch.no_grad(), autocast_ctx:
        for i in tqdm(indices, desc="sampling", disable=not progress, leave=False):
            guide = None
            if guidance is not None and guidance.is_guided_step(i, len(grid)):
                guide, out = minority_gradient(model, grid, x, i, guidance, distance, generator, class_labels)
            else:
                out = call_model(model, x, grid, i, class_labels)
            x0 = grid.predict_x0(x, i, out.eps)
            if clip_range is not None:
                x0 = x0.clamp(*clip_range)
            noise = _randn(shape, generator, device) if i > 0 else None
            x = step(x, i, out, x0, grid, noise, guide)
            if not torch.isfinite(x).all():
                # blame the guidance once it has acted (a huge w often breaks only a later step's
                # model call), unless the model already returned NaN/inf before it ever did
                model_first = not guided and not torch.isfinite(out.eps).all()
                blame_guidance = (guided or guide is not None or shifted) and not model_first
                what = f" with guidance scale {guidance.scale}: lower --guidance-scale" if guidance is not None else ": lower the guidance scale"
                raise NonFiniteSampleError(
                    f"sampling produced NaN/inf at step {i} of {len(grid)}" + (what if blame_guidance else ": check the model weights and --steps")
                )
            guided = guided or guide is not None or shifted
            if callback is not None:
                callback(i, x, x0)
    return x


def _log_variance(grid: NoiseSchedule, i: int, out: ModelOutput) -> torch.Tensor | float:
    """log Σ_θ at grid index i: the model's learned variance if it has one, else the fixed one."""
    if out.var_values is not None:
        return grid.learned_log_variance(i, out.var_values)
    return grid.fixed_log_variance(i)


def _variance_factor(guidance: MinorityGuidance, log_var: torch.Tensor | float) -> torch.Tensor | float:
    """The "var" schedule scales the gradient by Σ_θ, which decays late in sampling."""
    return 1.0 if guidance.scale_type == "fixed" else _exp(log_var)


def _exp(value: torch.Tensor | float) -> torch.Tensor | float:
    return torch.exp(value) if isinstance(value, torch.Tensor) else math.exp(value)


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Gaussian noise drawn on the generator's device, so one seed gives one sample on any device."""
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source).to(device)
