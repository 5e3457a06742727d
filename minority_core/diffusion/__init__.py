"""The diffusion math and the samplers, in the order a sample is made.

- `schedule`: `NoiseSchedule`, the forward process (β, ᾱ, respacing, truncation, Tweedie,
  posterior mean and variance), float64, indices on its own grid.
- `model_api`: the one model interface (`model(x, t, **extra)` → ε, or ε and learned variance).
- `noise`: `draw_noise`, where every random draw of a sampling run is made (generator-device).
- `samplers`: `ancestral_sample` and `ddim_sample`, plain functions over a model, the starting
  noise and a grid (k-diffusion style), with one extension point, `guidance`.
- `guidance_term`: that extension point: the `GuidanceTerm` protocol and its `GuidedStep`.
- `guidance`: self-guided minority guidance (Um & Ye, ECCV 2024): `minority_loss`,
  `minority_gradient`, the distances, and `MinorityGuidanceTerm`; its settings are
  `MinorityGuidance` (declared in `minority_core.config.guidance`).
- `lpips`: the LPIPS distance, weights from disk only.

    grid = schedule.respace(steps)
    x = draw_noise((n, *shape), generator, device)
    samples = ancestral_sample(model, x, grid, guidance=MinorityGuidance(scale=3.0), generator=generator)
"""

from minority_core.config.guidance import MinorityGuidance
from minority_core.diffusion.guidance import MinorityGuidanceTerm, l2_distance, minority_gradient, minority_loss
from minority_core.diffusion.guidance_term import GuidanceTerm, GuidedStep
from minority_core.diffusion.noise import draw_noise
from minority_core.diffusion.samplers import ancestral_sample, ddim_sample
from minority_core.diffusion.schedule import NoiseSchedule

__all__ = [
    "GuidanceTerm",
    "GuidedStep",
    "MinorityGuidance",
    "MinorityGuidanceTerm",
    "NoiseSchedule",
    "ancestral_sample",
    "ddim_sample",
    "draw_noise",
    "l2_distance",
    "minority_gradient",
    "minority_loss",
]
