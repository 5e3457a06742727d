"""Classifier guidance toward a minority level (Um, Lee & Ye, ICLR 2024, step 4; the guidance
of Dhariwal & Nichol 2021) as a `GuidanceTerm` for the plain samplers.

At every step μ ← μ + s · Σ · ∇_{x_t} log p(target | x_t, t) (ADM's `condition_mean`), Σ the
step's variance (learned or fixed). `classifier(x_t, t)` returns logits over levels; t is the
original-grid timestep (their `cond_fn` under ADM's respacing wrapper). The classifier draws
nothing from the generator, so s = 0 reproduces standard sampling bit for bit.
Cost per step: one model forward + one classifier forward and backward.

    ancestral_sample(model, noise, grid, guidance=ClassifierGuidanceTerm(classifier, scale=3.5), generator=g)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minority_core.diffusion.guidance_term import GuidedStep
from minority_core.diffusion.model_api import DenoisingModel, ExtraInputs
from minority_core.diffusion.schedule import NoiseSchedule
from minority_core.errors import InputError

DEFAULT_SCALE = 3.5  # ADM LSUN-Bedrooms in the authors' README


class ClassifierGuidanceTerm:
    """Guidance toward `target_level` (default: the top level, `classifier.num_levels − 1`)."""

    def __init__(self, classifier: nn.Module, scale: float = DEFAULT_SCALE, target_level: int | None = None) -> None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
            raise InputError(f"scale must be a finite number ≥ 0, got {scale!r}")
        num_levels = getattr(classifier, "num_levels", None)
        if target_level is None:
            if num_levels is None:
                raise InputError("target_level is required for a classifier without a num_levels attribute")
            target_level = num_levels - 1
        if not _is_int(target_level) or target_level < 0 or (num_levels is not None and target_level >= num_levels):
            raise InputError(f"target_level must be an integer in [0, {num_levels - 1 if num_levels else '…'}], got {target_level!r}")
        self.classifier = classifier
        self.scale = scale
        self.target_level = target_level

    @property
    def nonfinite_hint(self) -> str:
        return ": lower the guidance scale"

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
        if self.scale == 0:  # nothing to add: skip the classifier's forward and backward
            return None
        t = grid.model_timestep(i, x.shape[0], x.device)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = F.log_softmax(self.classifier(x_in, t).float(), dim=-1)
            (grad,) = torch.autograd.grad(log_probs[:, self.target_level].sum(), x_in)
        return GuidedStep(grad.to(x.dtype), scale=self.scale, by_variance=True)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
