"""Gaussian diffusion math: noise schedules, respacing, Tweedie, posterior mean and variance.

Everything a sampler needs from the forward process lives here, computed once in float64
(small schedule arrays, where float32 round-off in 1 - ᾱ near t = 0 would matter) and cast to
the sample's dtype at use. Indices `i` always refer to positions on *this* schedule's grid;
`timesteps[i]` is the matching step on the model's original training grid, which is what the
model is called with (as improved-DDPM's respacing does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from minority_core.errors import InputError
from minority_core.respacing import space_timesteps

FixedVariance = Literal["fixed_small", "fixed_large"]


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete VP noise schedule, possibly a respaced sub-grid of a longer training schedule.

    `beta_tilde_1` is the β̃_1 that stands in for β̃_0 = 0 at index 0 (ADM's clipped log-variance);
    left unset it is computed from index 1. `truncate` sets it, so a grid cut to its first n
    indices keeps every variance of the grid it was cut from, even at n = 1.
    """

    betas: np.ndarray
    timesteps: np.ndarray = field(default=None)  # type: ignore[assignment]
    fixed_variance: FixedVariance = "fixed_small"
    beta_tilde_1: float | None = None

    def __post_init__(self) -> None:
        betas = np.asarray(self.betas, dtype=np.float64)
        minimum = 1 if self.beta_tilde_1 is not None else 2  # index 0's variance needs β̃_1
        if betas.ndim != 1 or len(betas) < minimum:
            raise InputError(f"betas must be a 1-D array of at least {'2 values' if minimum == 2 else '1 value'}, got shape {betas.shape}")
        if self.beta_tilde_1 is not None and not (isinstance(self.beta_tilde_1, (int, float)) and 0 < self.beta_tilde_1 <= 1):
            raise InputError(f"beta_tilde_1 must be a number in (0, 1], got {self.beta_tilde_1!r}")
        if not np.all((betas > 0) & (betas <= 1)):
            raise InputError("betas must lie in (0, 1]; check the schedule's beta_start/beta_end")
        if self.fixed_variance not in ("fixed_small", "fixed_large"):
            raise InputError(f"fixed_variance must be 'fixed_small' or 'fixed_large', got {self.fixed_variance!r}")
        timesteps = np.arange(len(betas)) if self.timesteps is None else np.asarray(self.timesteps, dtype=np.int64)
        if timesteps.shape != betas.shape:
            raise InputError(f"timesteps has {len(timesteps)} entries but betas has {len(betas)}")
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "timesteps", timesteps.astype(np.int64))

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def linear(cls, num_timesteps: int = 1000, **kwargs) -> NoiseSchedule:
        """DDPM's linear schedule, β from 1e-4 to 0.02 at T = 1000 (scaled by 1000/T otherwise)."""
        _check_num_timesteps(num_timesteps)
        scale = 1000.0 / num_timesteps
        return cls(np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64), **kwargs)

    @classmethod
    def cosine(cls, num_timesteps: int = 1000, **kwargs) -> NoiseSchedule:
        """Nichol & Dhariwal's cosine schedule (s = 0.008, β capped at 0.999)."""
        _check_num_timesteps(num_timesteps)

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [
            min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), 0.999)
            for i in range(num_timesteps)
        ]
        return cls(np.array(betas, dtype=np.float64), **kwargs)

    def respace(self, steps: int | str) -> NoiseSchedule:
        """The sub-grid a step spec keeps, with the β' that keep ᾱ on the kept steps.

        The kept timesteps are guided-diffusion's `space_timesteps(T, steps)` for a count, a
        `"ddimN"` or a multi-section `"a,b,c"` spec (`minority_core.respacing`). A 1-step grid
        keeps this grid's β̃_1 for its index 0, as it has no index 1 of its own.
        """
        total = len(self.betas)
        keep = space_timesteps(total, steps)
        if len(keep) == total:
            return self
        kept_alphas = self.alphas_cumprod[keep]
        previous = np.concatenate([[1.0], kept_alphas[:-1]])
        beta_tilde_1 = self._beta_tilde_1() if len(keep) == 1 else None
        return NoiseSchedule(1.0 - kept_alphas / previous, self.timesteps[keep], self.fixed_variance, beta_tilde_1)

    def truncate(self, n: int) -> NoiseSchedule:
        """The first n indices of this grid (0 … n−1), with their ᾱ, timesteps and variances.

        A sampler walking the result starts at index n−1 of this grid, skipping the later ones
        (Boost-and-Skip). The ᾱ are bit for bit this grid's: a cumulative product's prefix.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= len(self):
            raise InputError(f"n must be an integer in [1, {len(self)}] to truncate this {len(self)}-step grid, got {n!r}")
        if n == len(self):
            return self
        return NoiseSchedule(self.betas[:n], self.timesteps[:n], self.fixed_variance, self._beta_tilde_1())

    # -- derived arrays (cheap; recomputed on access to keep the dataclass the single truth) ---

    def __len__(self) -> int:
        return len(self.betas)

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(1.0 - self.betas)

    @property
    def alphas_cumprod_prev(self) -> np.ndarray:
        return np.concatenate([[1.0], self.alphas_cumprod[:-1]])

    @property
    def posterior_variance(self) -> np.ndarray:
        """β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t): the variance of q(x_{t−1} | x_t, x_0)."""
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_log_variance_clipped(self) -> np.ndarray:
        """log β̃_t with β̃_0 = 0 replaced by β̃_1, as ADM does (log 0 would be −inf)."""
        var = self.posterior_variance
        return np.log(np.concatenate([[self._beta_tilde_1()], var[1:]]))

    def _beta_tilde_1(self) -> float:
        return float(self.posterior_variance[1]) if self.beta_tilde_1 is None else self.beta_tilde_1

    # -- per-step math on tensors ----------------------------------------------------------------

    def model_timestep(self, i: int, batch: int, device: torch.device | str) -> torch.Tensor:
        """The original-grid timestep of grid index `i`, as the batch of ints a model takes."""
        return torch.full((batch,), int(self.timesteps[i]), dtype=torch.long, device=device)

    def predict_x0(self, x_t: torch.Tensor, i: int, eps: torch.Tensor) -> torch.Tensor:
        """Tweedie's posterior mean of x_0: (x_t − √(1−ᾱ_t) ε) / √ᾱ_t."""
        abar = self.alphas_cumprod[i]
        return (x_t - math.sqrt(1.0 - abar) * eps) / math.sqrt(abar)

    def predict_eps(self, x_t: torch.Tensor, i: int, x0: torch.Tensor) -> torch.Tensor:
        """The ε that maps x_t to a given x_0 (used after clipping x̂0)."""
        abar = self.alphas_cumprod[i]
        return (x_t - math.sqrt(abar) * x0) / math.sqrt(1.0 - abar)

    def q_sample(self, x0: torch.Tensor, i: int, noise: torch.Tensor) -> torch.Tensor:
        """Forward process: x_i = √ᾱ_i x_0 + √(1−ᾱ_i) ε."""
        abar = self.alphas_cumprod[i]
        return math.sqrt(abar) * x0 + math.sqrt(1.0 - abar) * noise

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, i: int) -> torch.Tensor:
        """Mean of q(x_{t−1} | x_t, x_0)."""
        abar, abar_prev, beta = self.alphas_cumprod[i], self.alphas_cumprod_prev[i], self.betas[i]
        coef_x0 = beta * math.sqrt(abar_prev) / (1.0 - abar)
        coef_xt = (1.0 - abar_prev) * math.sqrt(1.0 - beta) / (1.0 - abar)
        return coef_x0 * x0 + coef_xt * x_t

    def fixed_log_variance(self, i: int) -> float:
        """log of the sampler's fixed variance at step i: β̃ ("fixed_small") or β ("fixed_large")."""
        if self.fixed_variance == "fixed_small":
            return float(self.posterior_log_variance_clipped[i])
        # ADM's fixed-large uses β̃_1 at the first step so the last sample is not over-noised.
        return float(math.log(self._beta_tilde_1() if i == 0 else self.betas[i]))

    def learned_log_variance(self, i: int, v: torch.Tensor) -> torch.Tensor:
        """ADM's learned range: log Σ = f·log β_t + (1−f)·log β̃_t with f = (v + 1) / 2."""
        frac = (v + 1.0) / 2.0
        return frac * math.log(self.betas[i]) + (1.0 - frac) * float(self.posterior_log_variance_clipped[i])


def _check_num_timesteps(num_timesteps: int) -> None:
    if not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 2:
        raise InputError(f"num_timesteps must be an integer ≥ 2, got {num_timesteps!r}")
