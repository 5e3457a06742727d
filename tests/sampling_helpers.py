"""Test helper for "respace, draw the start noise, then sample", in the order the product's
callers (`minority_core.runs.generate`) do it, so one seed gives the product's samples."""

from __future__ import annotations

import torch

from minority_core.diffusion.model_api import model_device
from minority_core.diffusion.noise import draw_noise
from minority_core.diffusion.schedule import NoiseSchedule


def start(model, schedule: NoiseSchedule, shape: tuple[int, ...], steps: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, NoiseSchedule]:
    """(start noise on the model's device, schedule respaced to `steps`): respaced first, then drawn."""
    grid = schedule.respace(steps)
    return draw_noise(shape, generator, model_device(model)), grid


def run_sampler(sampler, model, schedule: NoiseSchedule, shape: tuple[int, ...], *, steps: int, generator: torch.Generator | None = None, **options) -> torch.Tensor:
    """`sampler(model, x, grid, generator=generator, **options)` on a fresh start from `generator`."""
    x, grid = start(model, schedule, shape, steps, generator)
    return sampler(model, x, grid, generator=generator, **options)
