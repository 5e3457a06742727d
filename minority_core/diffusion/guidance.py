"""Self-guided minority guidance (Um & Ye, ECCV 2024): the config and the guidance gradient.

The minority loss L(x_t) = d(x̂0(x_t), sg[x̂0(x_s)]) with x_s a re-noised copy of x̂0(x_t) at a
large step s measures how well the model *reconstructs* the emerging sample: common features
come back, rare ones do not. Its gradient (one backward through the first Tweedie only) points
toward less reconstructable, i.e. rarer, samples. DESIGN §1 lists the steps one by one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from minority_core.diffusion.model_api import DenoisingModel, ModelOutput, call_model
from minority_core.diffusion.schedule import NoiseSchedule
from minority_core.errors import InputError

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MinorityGuidance:
    """Settings of self-guided minority guidance; validated on construction.

    scale: w, the guidance strength (0 keeps the guided steps' extra work but adds nothing).
    perturb_ratio: s = ⌊perturb_ratio · steps⌋ on the respaced grid (a large perturbation).
    every: guide only at grid indices t with t % every == 0 (intermittent guidance).
    stop_ratio: guide only while t > stop_ratio · steps (−1: never switch off).
    scale_type: "var" multiplies the gradient by the step's variance Σ_θ(x_t, t); "fixed" does not.
    distance: "l2" (unsquared per-sample norm) or "lpips" (AlexNet LPIPS, needs weights on disk).
    normalize: divide each sample's gradient by its max-abs value before scaling.
    mc_samples: number of re-noising draws ε the loss is averaged over.
    """

    scale: float
    perturb_ratio: float = 0.8
    every: int = 5
    stop_ratio: float = -1.0
    scale_type: Literal["var", "fixed"] = "var"
    distance: Literal["l2", "lpips"] = "l2"
    normalize: bool = True
    mc_samples: int = 1

    def __post_init__(self) -> None:
        problems = []
        if not _is_real(self.scale) or not math.isfinite(self.scale) or self.scale < 0:
            problems.append(f"scale must be a finite number ≥ 0, got {self.scale!r}")
        if not _is_real(self.perturb_ratio) or not 0 < self.perturb_ratio <= 1:
            problems.append(f"perturb_ratio must be in (0, 1], got {self.perturb_ratio!r}")
        if not _is_int(self.every) or self.every < 1:
            problems.append(f"every must be an integer ≥ 1, got {self.every!r}")
        if not _is_real(self.stop_ratio) or not -1 <= self.stop_ratio < 1:
            problems.append(f"stop_ratio must be in [-1, 1) (−1 = never switch off), got {self.stop_ratio!r}")
        if self.scale_type not in ("var", "fixed"):
            problems.append(f"scale_type must be 'var' or 'fixed', got {self.scale_type!r}")
        if self.distance not in ("l2", "lpips"):
            problems.append(f"distance must be 'l2' or 'lpips', got {self.distance!r}")
        if not isinstance(self.normalize, bool):
            problems.append(f"normalize must be true or false, got {self.normalize!r}")
        if not _is_int(self.mc_samples) or self.mc_samples < 1:
            problems.append(f"mc_samples must be an integer ≥ 1, got {self.mc_samples!r}")
        if problems:
            raise InputError("invalid minority guidance: " + "; ".join(problems))

    def is_guided_step(self, i: int, steps: int) -> bool:
        """Whether grid index i (counting down from steps − 1) gets the guidance term."""
        return i > self.stop_ratio * steps and i % self.every == 0

    def perturb_index(self, steps: int) -> int:
        """s = ⌊perturb_ratio · steps⌋, kept on the grid (perturb_ratio = 1 means the last index)."""
        return min(math.floor(self.perturb_ratio * steps), steps - 1)

    def to_dict(self) -> dict:
        return asdict(self)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    class_labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ModelOutput]:
    """Per-sample minority loss at grid index i, with the graph to x_t kept for one backward.

    Returns the loss [N] and the model output at x_t, so the sampler's main path can reuse the
    forward pass instead of repeating it (the guided step then costs 2 forwards + 1 backward).
    """
    out = call_model(model, x_t, schedule, i, class_labels)
    x0 = schedule.predict_x0(x_t, i, out.eps)  # step 1: Tweedie with graph, not clipped
    s = guidance.perturb_index(len(schedule))
    total = torch.zeros(x_t.shape[0], device=x_t.device, dtype=torch.float32)
    for _ in range(guidance.mc_samples):
        with torch.no_grad():
            noise = _randn_like(x0, generator)
            x_s = schedule.q_sample(x0.detach(), s, noise)  # step 2: re-noise, no gradient
            x0_prime = schedule.predict_x0(x_s, s, call_model(model, x_s, schedule, s, class_labels).eps)
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
    class_labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ModelOutput]:
    """g = w · normalise(∇_{x_t} Σ L), before the variance factor; plus the reusable model output."""
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        loss, out = minority_loss(model, schedule, x, i, guidance, distance, generator, class_labels)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    if guidance.normalize:
        peak = grad.flatten(1).abs().amax(dim=1).clamp_min(torch.finfo(grad.dtype).tiny)
        grad = grad / peak.view(-1, *([1] * (grad.dim() - 1)))
    return guidance.scale * grad, out


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Noise drawn on the generator's device then moved, so a seed gives the same draws on any device."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def resolve_distance(guidance: MinorityGuidance, device: torch.device | str = "cpu") -> Distance:
    """The distance function a guidance config names (LPIPS is loaded, and checked, only if asked)."""
    if guidance.distance == "l2":
        return l2_distance
    from minority_core.diffusion.lpips import load_lpips

    return load_lpips(device)
