"""Self-guided minority guidance (Um & Ye, ECCV 2024): the minority loss, its gradient, and the
guidance term the samplers add.

The minority loss L(x_t) = d(x̂0(x_t), sg[x̂0(x_s)]) with x_s a re-noised copy of x̂0(x_t) at a
large step s measures how well the model *reconstructs* the emerging sample: common features
come back, rare ones do not. Its gradient (one backward through the first Tweedie only) points
toward less reconstructable, i.e. rarer, samples. docs/DESIGN.md §1 lists the steps one by one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from minority_core.config.guidance import MinorityGuidance
from minority_core.diffusion.guidance_term import GuidedStep
from minority_core.diffusion.model_api import DenoisingModel, ExtraInputs, ModelOutput, call_model
from minority_core.diffusion.noise import draw_noise
from minority_core.diffusion.schedule import NoiseSchedule

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def l2_distance(x0: torch.Tensor, x0_prime: torch.Tensor) -> torch.Tensor:
    """Unsquared per-sample L2 norm of the difference."""
    return (x0 - x0_prime).flatten(1).norm(dim=1)


def minority_loss(
    model: DenoisingModel,
    schedule: NoiseSchedule,
    x_t: torch.Tensor,
    i: int,
    guidance: MinorityGuidance,
    distance: Distance,
    generator: torch.Generator | None = None,
    *,
    extra: ExtraInputs | None = None,
) -> tuple[torch.Tensor, ModelOutput]:
    """Per-sample minority loss at grid index i, with the graph to x_t kept for one backward.

    Returns the loss [N] and the model output at x_t, so the sampler's main path can reuse the
    forward pass instead of repeating it (the guided step then costs 2 forwards + 1 backward).
    """
    out = call_model(model, x_t, schedule, i, extra)
    x0 = schedule.predict_x0(x_t, i, out.eps)  # step 1: Tweedie with graph, not clipped
    s = guidance.perturb_index(len(schedule))
    total = torch.zeros(x_t.shape[0], device=x_t.device, dtype=torch.float32)
    for _ in range(guidance.mc_samples):
        with torch.no_grad():
            noise = draw_noise(x0.shape, generator, x0.device, dtype=x0.dtype)
            x_s = schedule.q_sample(x0.detach(), s, noise)  # step 2: re-noise, no gradient
            x0_prime = schedule.predict_x0(x_s, s, call_model(model, x_s, schedule, s, extra).eps)
        total = total + distance(x0, x0_prime.detach()).float()  # steps 3-4: stop-gradient target
    return total / guidance.mc_samples, ModelOutput(out.eps.detach(), None if out.var_values is None else out.var_values.detach())


def minority_gradient(
    model: DenoisingModel,
    schedule: NoiseSchedule,
    x_t: torch.Tensor,
    i: int,
    guidance: MinorityGuidance,
    distance: Distance,
    generator: torch.Generator | None = None,
    *,
    extra: ExtraInputs | None = None,
) -> tuple[torch.Tensor, ModelOutput]:
    """g = w · normalise(∇_{x_t} Σ L), before the variance factor; plus the reusable model output."""
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        loss, out = minority_loss(model, schedule, x, i, guidance, distance, generator, extra=extra)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    if guidance.normalize:
        peak = grad.flatten(1).abs().amax(dim=1).clamp_min(torch.finfo(grad.dtype).tiny)
        grad = grad / peak.view(-1, *([1] * (grad.dim() - 1)))
    return guidance.scale * grad, out


def resolve_distance(guidance: MinorityGuidance, device: torch.device | str = "cpu", shape: tuple[int, ...] | None = None) -> Distance:
    """The distance function a guidance config names (LPIPS is loaded, and checked, only if asked).

    'auto' (a config the edge did not make concrete, e.g. the library called directly) is LPIPS
    when the samples of `shape` are images (N, 1 or 3, H, W) and its weights are on disk, else L2."""
    distance = guidance.distance
    if distance == "auto":
        from minority_core.lpips_files import lpips_available

        images = shape is not None and len(shape) == 4 and shape[1] in (1, 3)
        distance = "lpips" if images and lpips_available("alex") else "l2"
    if distance == "l2":
        return l2_distance
    from minority_core.diffusion.lpips import load_lpips

    return load_lpips(device)


class MinorityGuidanceTerm:
    """Self-guided minority guidance as the samplers' `GuidanceTerm`.

    At the steps `config` selects it runs the model's forward at x_t with a graph, takes the
    minority gradient, and hands the forward's output back for the main path to reuse. The
    distance is resolved once, on `device`, when the term is built (so a missing LPIPS file is
    reported before any step runs); `shape`, the batch's, decides distance 'auto'.
    """

    def __init__(self, config: MinorityGuidance, device: torch.device | str = "cpu", shape: tuple[int, ...] | None = None) -> None:
        self.config = config
        self.distance = resolve_distance(config, device, shape)

    @property
    def nonfinite_hint(self) -> str:
        return f" with guidance scale {self.config.scale}: lower --guidance-scale"

    def at_step(
        self,
        model: DenoisingModel,
        x: torch.Tensor,
        i: int,
        grid: NoiseSchedule,
        *,
        extra: ExtraInputs,
        generator: torch.Generator | None,
    ) -> GuidedStep | None:
        if not self.config.is_guided_step(i, len(grid)):
            return None
        direction, out = minority_gradient(model, grid, x, i, self.config, self.distance, generator, extra=extra)
        # "var" scales by Σ_θ, which decays late in sampling; "fixed" adds w·ĝ as it is
        return GuidedStep(direction, by_variance=self.config.scale_type == "var", out=out)
