"""Samplers as plain functions over a model, the starting noise and a grid (k-diffusion style).

`ancestral_sample(model, x, grid)` is DDPM ancestral sampling and `ddim_sample` DDIM (η ≥ 0).
`x` is the starting noise the caller drew (from the generator it then passes here), `grid` the
respaced NoiseSchedule, walked from its last index down to 0. Callers compose the rest: a
`MinorityGuidance` (self-guided minority guidance at the steps it selects, docs/DESIGN.md §1 item 7) or
any other `GuidanceTerm` adds its term to each step's mean; Boost-and-Skip is a scaled start on
a truncated grid. `extra` holds per-sample model inputs (class labels: `{"y": labels}`).

DDIM's guidance is an *extension of the paper* (the reference code has no DDIM path): the same
term is added to the DDIM mean, scaled by the variance the ancestral sampler would use at that
step, so w means the same thing in both samplers.

Random draws, all from `generator`: per step with i > 0 one noise draw of x's shape, after any
draws the guidance term makes at that step (the minority loss's re-noising ε). Everything runs
under `torch.no_grad` except the guided step's single backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext

import torch
from tqdm.auto import tqdm

from minority_core.config.guidance import MinorityGuidance
from minority_core.diffusion.guidance import MinorityGuidanceTerm
from minority_core.diffusion.guidance_term import GuidanceTerm, GuidedStep
from minority_core.diffusion.model_api import DenoisingModel, ExtraInputs, ModelOutput, call_model, prepare_extra
from minority_core.diffusion.noise import draw_noise
from minority_core.diffusion.schedule import NoiseSchedule
from minority_core.errors import InputError, NonFiniteSampleError

StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]  # (grid index, x_{t-1}, x̂0)
Guidance = MinorityGuidance | GuidanceTerm
ClipRange = tuple[float, float] | None
# (x_t, grid index, grid, model output, clipped x̂0, noise or None at i = 0, guided step or None) -> x_{t-1}
StepRule = Callable[[torch.Tensor, int, NoiseSchedule, ModelOutput, torch.Tensor, torch.Tensor | None, GuidedStep | None], torch.Tensor]


def ancestral_sample(
    model: DenoisingModel,
    x: torch.Tensor,
    grid: NoiseSchedule,
    *,
    guidance: Guidance | None = None,
    extra: ExtraInputs | None = None,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    clip_range: ClipRange = (-1.0, 1.0),
    progress: bool = False,
    autocast: bool = False,
) -> torch.Tensor:
    """DDPM ancestral sampling from x at the last index of `grid` down to index 0.

    `guidance=None` is exactly standard ancestral sampling. Returns x_0 (the unclipped last
    step mean, as DDPM does; it lies in `clip_range` up to the last step's tiny noise).
    """

    def step(x: torch.Tensor, i: int, grid: NoiseSchedule, out: ModelOutput, x0: torch.Tensor,
             noise: torch.Tensor | None, guided: GuidedStep | None) -> torch.Tensor:
        log_var = _log_variance(grid, i, out)
        mean = grid.posterior_mean(x0, x, i)
        if guided is not None:
            mean = mean + guided.shift(_exp(log_var))
        if i == 0:
            return mean
        return mean + _exp(0.5 * log_var) * noise

    return _sample_loop(step, model, x, grid, guidance=guidance, extra=extra, generator=generator, callback=callback,
                        clip_range=clip_range, progress=progress, autocast=autocast)


def ddim_sample(
    model: DenoisingModel,
    x: torch.Tensor,
    grid: NoiseSchedule,
    *,
    eta: float = 0.0,
    guidance: Guidance | None = None,
    extra: ExtraInputs | None = None,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    clip_range: ClipRange = (-1.0, 1.0),
    progress: bool = False,
    autocast: bool = False,
) -> torch.Tensor:
    """DDIM sampling (η = 0 deterministic, η = 1 ≈ ancestral); guidance is our extension (see module doc)."""
    if not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise InputError(f"eta must be in [0, 1], got {eta!r}")

    def step(x: torch.Tensor, i: int, grid: NoiseSchedule, out: ModelOutput, x0: torch.Tensor,
             noise: torch.Tensor | None, guided: GuidedStep | None) -> torch.Tensor:
        abar, abar_prev = grid.alphas_cumprod[i], grid.alphas_cumprod_prev[i]
        eps = grid.predict_eps(x, i, x0)  # consistent with the clipped x̂0, as ADM's DDIM does
        sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar)) * math.sqrt(1 - abar / abar_prev)
        mean = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
        if guided is not None:
            mean = mean + guided.shift(_exp(_log_variance(grid, i, out)))
        if i == 0 or sigma == 0:
            return mean
        return mean + sigma * noise

    return _sample_loop(step, model, x, grid, guidance=guidance, extra=extra, generator=generator, callback=callback,
                        clip_range=clip_range, progress=progress, autocast=autocast)


def _sample_loop(
    step: StepRule,
    model: DenoisingModel,
    x: torch.Tensor,
    grid: NoiseSchedule,
    *,
    guidance: Guidance | None,
    extra: ExtraInputs | None,
    generator: torch.Generator | None,
    callback: StepCallback | None,
    clip_range: ClipRange,
    progress: bool,
    autocast: bool,
) -> torch.Tensor:
    """The loop both samplers share: for i = last … 0: guidance term, model, x̂0, noise, step."""
    if guidance is not None and not isinstance(guidance, (MinorityGuidance, GuidanceTerm)):
        raise TypeError(f"guidance must be a MinorityGuidance, a GuidanceTerm or None, got {type(guidance).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be the starting noise, a tensor (batch, channels, ...), got {type(x).__name__}")
    if not isinstance(grid, NoiseSchedule):
        raise TypeError(f"grid must be a NoiseSchedule (e.g. schedule.respace(steps)), got {type(grid).__name__}")
    shape = tuple(x.shape)
    if len(shape) < 2 or any(d < 1 for d in shape):
        raise InputError(f"shape must be (batch, channels, ...) of positive integers, got {shape!r}")
    device = x.device
    extra = prepare_extra(extra, shape[0], device)
    term = MinorityGuidanceTerm(guidance, device, shape) if isinstance(guidance, MinorityGuidance) else guidance
    autocast_ctx = torch.autocast(device.type) if autocast else nullcontext()

    acted = False  # whether the guidance term has moved x yet: decides what a NaN is blamed on
    with torch.no_grad(), autocast_ctx:
        for i in tqdm(range(len(grid) - 1, -1, -1), desc="sampling", disable=not progress, leave=False):
            guided = term.at_step(model, x, i, grid, extra=extra, generator=generator) if term is not None else None
            out = guided.out if guided is not None and guided.out is not None else call_model(model, x, grid, i, extra)
            x0 = grid.predict_x0(x, i, out.eps)
            if clip_range is not None:
                x0 = x0.clamp(*clip_range)
            noise = draw_noise(shape, generator, device) if i > 0 else None
            x = step(x, i, grid, out, x0, noise, guided)
            if not torch.isfinite(x).all():
                raise NonFiniteSampleError(_nonfinite_message(i, len(grid), term, acted, guided is not None, out))
            acted = acted or guided is not None
            if callback is not None:
                callback(i, x, x0)
    return x


def _nonfinite_message(i: int, steps: int, term: GuidanceTerm | None, acted_before: bool, acts_now: bool, out: ModelOutput) -> str:
    """Blame the guidance once it has acted (a huge w often breaks only a later step's model
    call), unless the model already returned NaN/inf before it ever did."""
    model_first = not acted_before and not torch.isfinite(out.eps).all()
    if term is not None and (acted_before or acts_now) and not model_first:
        return f"sampling produced NaN/inf at step {i} of {steps}" + term.nonfinite_hint
    return f"sampling produced NaN/inf at step {i} of {steps}: check the model weights and --steps"


def _log_variance(grid: NoiseSchedule, i: int, out: ModelOutput) -> torch.Tensor | float:
    """log Σ_θ at grid index i: the model's learned variance if it has one, else the fixed one."""
    if out.var_values is not None:
        return grid.learned_log_variance(i, out.var_values)
    return grid.fixed_log_variance(i)


def _exp(value: torch.Tensor | float) -> torch.Tensor | float:
    return torch.exp(value) if isinstance(value, torch.Tensor) else math.exp(value)
