"""The settings of self-guided minority guidance: declared once, validated on construction.

Pure data (no torch), so the config layer, the CLI and dataset files use it without loading
the sampling stack; `minority_core.diffusion.guidance` computes the loss and gradient from it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from minority_core.config.fields import knob
from minority_core.errors import InputError


@dataclass(frozen=True)
class MinorityGuidance:
    """Settings of self-guided minority guidance (docs/DESIGN.md §1); validated on construction."""

    scale: float = knob(help="w, the guidance strength; 0 = standard sampling (no guidance)", flag="guidance_scale")
    perturb_ratio: float = knob(0.8, help="s = ⌊ratio·steps⌋: how far the posterior mean is re-noised (a large perturbation)")
    every: int = knob(5, help="guide every k-th step only (intermittent guidance)")
    stop_ratio: float = knob(-1.0, help="guide only while t > ratio·steps (−1: never switch off)")
    scale_type: Literal["var", "fixed"] = knob("var", help="var: scale the gradient by the step's variance Σ_θ (it decays late in sampling); fixed: do not")
    distance: Literal["auto", "l2", "lpips"] = knob(
        "auto", help="minority-loss distance: auto (lpips where its weights are on disk and the samples are images, else l2; the run summary says which), "
        "l2 (unsquared per-sample norm) or lpips (AlexNet LPIPS, the paper's; weights on disk)")
    normalize: bool = knob(True, help="divide each sample's gradient by its max-abs value before scaling")
    mc_samples: int = knob(1, help="re-noising draws ε the minority loss is averaged over")

    def __post_init__(self) -> None:
        problems = []
        if not _is_real(self.scale) or not math.isfinite(self.scale) or self.scale < 0:
            problems.append(f"scale must be a finite number ≥ 0 (guidance_scale, w), got {self.scale!r}")
        if not _is_real(self.perturb_ratio) or not 0 < self.perturb_ratio <= 1:
            problems.append(f"perturb_ratio must be in (0, 1], got {self.perturb_ratio!r}")
        if not _is_int(self.every) or self.every < 1:
            problems.append(f"every must be an integer ≥ 1, got {self.every!r}")
        if not _is_real(self.stop_ratio) or not -1 <= self.stop_ratio < 1:
            problems.append(f"stop_ratio must be in [-1, 1) (−1 = never switch off), got {self.stop_ratio!r}")
        if self.scale_type not in ("var", "fixed"):
            problems.append(f"scale_type must be 'var' or 'fixed', got {self.scale_type!r}")
        if self.distance not in ("auto", "l2", "lpips"):
            problems.append(f"distance must be 'auto', 'l2' or 'lpips', got {self.distance!r}")
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
