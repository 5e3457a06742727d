"""An analytic Gaussian-mixture denoiser: the exact ε of a known mixture under the VP process.

p_0 = Σ_k π_k N(μ_k, s² I). Under x_t = √ᾱ x_0 + √(1−ᾱ) ε each component stays Gaussian,
N(√ᾱ μ_k, (ᾱ s² + 1 − ᾱ) I), so the score — and ε = −√(1−ᾱ) ∇log p_t — is known in closed
form. No training: any deviation of the sampler from the mixture is the sampler's.
"""

from __future__ import annotations

import numpy as np
import torch

from minority_core.diffusion.schedule import NoiseSchedule

# The 2-D test mixture the sampler and baseline tests share: components 2 and 3 are the minority.
MEANS = [(-0.5, -0.5), (0.5, -0.5), (-0.5, 0.5), (0.5, 0.5)]
WEIGHTS = [0.4, 0.4, 0.15, 0.05]
STD = 0.08
SMALL = [2, 3]


class GaussianMixtureDenoiser(torch.nn.Module):
    def __init__(self, means, weights, std: float, schedule: NoiseSchedule) -> None:
        super().__init__()
        self.means = torch.as_tensor(np.asarray(means), dtype=torch.float64)  # [K, D]
        self.log_weights = torch.log(torch.as_tensor(weights, dtype=torch.float64))
        self.std = std
        self.alphas_cumprod = torch.as_tensor(schedule.alphas_cumprod, dtype=torch.float64)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
        xd = x.double().flatten(1)  # [N, D]
        abar = self.alphas_cumprod[t].view(-1, 1, 1)  # [N, 1, 1]
        var = abar * self.std**2 + 1 - abar
        centred = xd[:, None, :] - abar.sqrt() * self.means[None]  # [N, K, D]
        log_p = self.log_weights[None] - 0.5 * (centred**2).sum(-1) / var[..., 0] - 0.5 * xd.shape[1] * torch.log(var[..., 0])
        resp = torch.softmax(log_p, dim=1)  # [N, K]
        score = -(resp[..., None] * centred / var).sum(1)
        eps = -(1 - abar[:, 0]).sqrt() * score
        return eps.view_as(x).to(x.dtype)

    def assign(self, samples: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Nearest component of each sample and the distance to it, in component stds."""
        d = torch.cdist(samples.double().flatten(1), self.means)
        dist, comp = d.min(dim=1)
        return comp.numpy(), (dist / self.std).numpy()

    def component_shares(self, samples: torch.Tensor, off_mode: float = 4.0) -> tuple[np.ndarray, float]:
        """Share of samples nearest each component, and the fraction farther than `off_mode` stds from every one."""
        comp, dist = self.assign(samples)
        return np.bincount(comp, minlength=len(self.means)) / len(comp), float((dist > off_mode).mean())
