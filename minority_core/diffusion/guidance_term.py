"""The sampling loop's one extension point: a guidance term added to each reverse step's mean.

Both kinds of guidance this project runs have the form of ADM's `condition_mean`,
μ ← μ + c·d with c = s·Σ (or s alone), Σ the step's ancestral variance: self-guided minority
guidance (d = w·∇L normalised; c = Σ for scale_type "var", 1 for "fixed") and classifier
guidance (d = ∇ log p(level | x_t); c = s·Σ). So a term answers one question per step, "what
is d and how does Σ scale it here?", as a `GuidedStep`; the loop computes Σ from the model
output and applies it. Why this shape rather than a callback that returns the shift:

- minority guidance differentiates *through* the model's forward at x_t, so the term runs that
  forward itself and hands its output back (`GuidedStep.out`): the main path reuses it and the
  guided step costs 2 forwards + 1 backward, not 3 + 1;
- Σ depends on that output (learned variance), so it can only be computed after the term ran:
  the term returns the factors and the loop multiplies, in the same order the math is written
  (c first, then c·d), which keeps every sample bit for bit what it was;
- the term is stateless between steps: nothing is stored between "compute" and "apply".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from minority_core.diffusion.model_api import DenoisingModel, ExtraInputs, ModelOutput
from minority_core.diffusion.schedule import NoiseSchedule


@dataclass(frozen=True)
class GuidedStep:
    """One guided step's contribution to the mean: (scale·Σ if by_variance else scale)·direction.

    `out` is the model output at x_t when the term ran the forward itself (the loop reuses it
    instead of calling the model again), else None.
    """

    direction: torch.Tensor
    scale: float = 1.0
    by_variance: bool = True
    out: ModelOutput | None = None

    def shift(self, variance: torch.Tensor | float) -> torch.Tensor:
        """The mean shift, given the step's variance Σ (a float, or a tensor for learned Σ)."""
        factor = self.scale * variance if self.by_variance else self.scale
        return factor * self.direction


@runtime_checkable
class GuidanceTerm(Protocol):
    """A guidance term the samplers add to the reverse step's mean (see the module docstring)."""

    @property
    def nonfinite_hint(self) -> str:
        """Appended to "sampling produced NaN/inf at step i of n" once the term has acted: what to lower."""
        ...

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
        """The term at grid index i of `grid` for the batch x (None: step i is not guided)."""
        ...
