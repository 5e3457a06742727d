"""Boost-and-Skip (Um, Kim & Ye, "Boost-and-Skip: A Simple Guidance-Free Diffusion for Minority
Generation", ICML 2025, arXiv:2502.06516; code github.com/soobin-um/BnS).

Two changes to standard ancestral sampling and no extra model calls, so it is a start and a
grid for the plain sampler, not a sampler of its own:
`ancestral_sample(model, *boost_and_skip(noise, grid, gamma, skip), generator=...)`.

1. Variance-boosted initialisation: the initial draw z ~ N(0, I) is multiplied by γ.
2. Timestep skipping: the first Δt steps of the respaced grid are dropped (`grid.truncate`); the
   boosted draw is taken as the state at grid index steps − 1 − Δt and plain ancestral sampling
   runs from there down to 0 (steps − Δt model calls instead of steps).

Our reading, from the paper's description and the authors' sampler (`p_sample_loop_progressive`
in their `guided_diffusion/gaussian_diffusion.py`): `img = randn(shape); img = img * gamma;
indices = list(range(num_timesteps))[::-1][Delta_t:]`, where `num_timesteps` is the *respaced*
count (their sampling flags use `--timestep_respacing 250`). So:

- γ multiplies the standard deviation: x = γ·z, i.e. x ~ N(0, γ² I). (A brief describing this
  as N(0, γ I), "noise × √γ", disagrees with the authors' code; we follow the code, where their
  published settings were tuned: γ = 4.0, Δt = 3 for CelebA-64 / LSUN-Bedrooms, γ = 2.5, Δt = 3
  for ImageNet-64, all at 250 steps.) `gamma=2.0` here is the "variance 4" reading.
- Skipping counts steps of the respaced grid (3 of 250, not 3 of the 1000 training steps), and
  the skipped steps consume no generator draws: with γ = 1, Δt = 0 this is exactly standard
  ancestral sampling, bit for bit, for the same generator.
- Nothing else changes: same clipping of x̂0, same variance (learned or fixed), last step
  returns the mean.

How strong it is depends on dimension and on where the skip lands: x at the start index s enters
the posterior over data modes through γ·√ᾱ_s·⟨μ, z⟩, which grows like √D. On the 8×8 digits
(D = 64, cosine schedule, 100 steps) the defaults do nothing measurable (rare-class share 4.5 %
standard vs 4.5 %, mean of 2 seeds × 300 samples); Δt = 20 gives 8.5 % at 88 % confident samples
(vs 96 %). On a 2-D mixture it has no effect; on a 256-D one, factor ≈ 1.3 (tests/test_baselines.py).
"""

from __future__ import annotations

import math

import torch

from minority_core.diffusion.schedule import NoiseSchedule
from minority_core.errors import InputError

DEFAULT_GAMMA = 4.0
DEFAULT_SKIP = 3


def boost_and_skip(
    noise: torch.Tensor,
    grid: NoiseSchedule,
    gamma: float = DEFAULT_GAMMA,
    skip: int = DEFAULT_SKIP,
) -> tuple[torch.Tensor, NoiseSchedule]:
    """The start and grid Boost-and-Skip runs plain ancestral sampling on: (γ·noise, first
    len(grid) − skip indices of `grid`), i.e. x = γ·z at grid index len(grid) − 1 − skip.

    `noise` is the standard start draw z (what plain sampling would start from), `grid` the
    respaced grid. Costs len(grid) − skip model forwards. γ = 1, skip = 0 is standard sampling.
    """
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma <= 0:
        raise InputError(f"gamma must be a finite number > 0 (the initial noise's std multiplier), got {gamma!r}")
    steps = len(grid)
    if isinstance(skip, bool) or not isinstance(skip, int) or not 0 <= skip < steps:
        raise InputError(f"skip must be an integer in [0, {steps - 1}] for {steps} steps, got {skip!r}")
    start = noise * float(gamma) if gamma != 1.0 else noise
    return start, grid.truncate(steps - skip)
