"""Gaussian noise from a generator: the one place a sampler's random draws are made.

Noise is drawn on the generator's device and then moved, so one seed gives the same draws, and
the same samples, whichever device the model runs on. The start noise of a sampling run, every
step's noise and the minority loss's re-noising ε all come from here, in that order, from the
one generator a caller passes.
"""

from __future__ import annotations

import torch


def draw_noise(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device | str,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """N(0, I) of `shape` on `device`, drawn from `generator` on the generator's own device."""
    source = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=source, dtype=dtype).to(device)
