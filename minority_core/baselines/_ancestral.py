"""The ancestral loop the baselines share, built from the public pieces of `minority_core`.

`minority_core.sampling._sample_loop` always starts from N(0, I) at the last grid index and
has no hook for a mean shift other than `MinorityGuidance`, so the baselines run this loop
instead. With `init_scale=1`, `start_index=None` and `mean_shift=None` it performs exactly the
operations of `ancestral_sample(..., guidance=None)` in the same order (same generator draws,
same float ops), so it reproduces standard sampling bit for bit (tested).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..diffusion import NoiseSchedule
from ..model_api import DenoisingModel, ModelOutput, call_model, model_device
from ..sampling import NonFiniteSampleError, StepCallback

# (x_t, grid index i, respaced grid, model output, Σ at this step) -> shift added to the step mean
MeanShift = Callable[[torch.Tensor, int, NoiseSchedule, ModelOutput, "torch.Tensor | float"], torch.Tensor]


def ancestral_loop(
    model: DenoisingModel,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    steps: int,
    generator: torch.Generator | None,
    progress: bool,
    class_labels: torch.Tensor | None,
    clip_range: tuple[float, float] | None,
    device: torch.device | str | None,
    init_scale: float = 1.0,
    start_index: int | None = None,
    mean_shift: MeanShift | None = None,
    callback: StepCallback | None = None,
    desc: str = "sampling",
) -> torch.Tensor:
    """DDPM ancestral sampling on `schedule.respace(steps)`.

    init_scale: the first draw z ~ N(0, I) is multiplied by it (x = init_scale · z).
    start_index: grid index the loop starts at (default: the last, steps − 1); x above is
        taken as x at that index. Indices above it are skipped (no model call, no noise draw).
    mean_shift: called at every step; its value is added to the posterior mean before noise.
    """
    if len(shape) < 2 or any(not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"shape must be (batch, channels, ...) of positive integers, got {tuple(shape)!r}")
    device = torch.device(device) if device is not None else model_device(model)
    grid = schedule.respace(steps)
    start = len(grid) - 1 if start_index is None else start_index
    if not 0 <= start < len(grid):
        raise ValueError(f"start index {start} is outside the {len(grid)}-step grid")
    if class_labels is not None:
        class_labels = class_labels.to(device)
        if class_labels.shape != (shape[0],):
            raise ValueError(f"class_labels must have shape ({shape[0]},), got {tuple(class_labels.shape)}")

    x = randn(shape, generator, device)
    if init_scale != 1.0:
        x = x * init_scale
    with torch.no_grad():
        for i in tqdm(range(start, -1, -1), desc=desc, disable=not progress, leave=False):
            out = call_model(model, x, grid, i, class_labels)
            x0 = grid.predict_x0(x, i, out.eps)
            if clip_range is not None:
                x0 = x0.clamp(*clip_range)
            noise = randn(shape, generator, device) if i > 0 else None
            log_var = log_variance(grid, i, out)
            mean = grid.posterior_mean(x0, x, i)
            if mean_shift is not None:
                mean = mean + mean_shift(x, i, grid, out, exp(log_var))
            x = mean if i == 0 else mean + exp(0.5 * log_var) * noise
            if not torch.isfinite(x).all():
                raise NonFiniteSampleError(
                    f"sampling produced NaN/inf at step {i} of {len(grid)}"
                    + (": lower the guidance scale" if mean_shift is not None else ": check the model weights and --steps")
                )
            if callback is not None:
                callback(i, x, x0)
    return x


def log_variance(grid: NoiseSchedule, i: int, out: ModelOutput) -> torch.Tensor | float:
    """log Σ_θ at grid index i: the model's learned variance if it has one, else the fixed one."""
    if out.var_values is not None:
        return grid.learned_log_variance(i, out.var_values)
    return grid.fixed_log_variance(i)


def exp(value: torch.Tensor | float) -> torch.Tensor | float:
    return torch.exp(value) if isinstance(value, torch.Tensor) else math.exp(value)


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Noise drawn on the generator's device then moved (as `sampling` does: same seed, same draws)."""
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source).to(device)
