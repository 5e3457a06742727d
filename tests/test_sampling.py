"""Samplers and self-guided minority guidance on an analytic Gaussian mixture (exact ε, no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from minority_core.diffusion.guidance import MinorityGuidance, l2_distance, minority_gradient, minority_loss
from minority_core.diffusion.samplers import ancestral_sample, ddim_sample
from minority_core.errors import NonFiniteSampleError
from tests.gmm import SMALL, WEIGHTS
from tests.sampling_helpers import run_sampler


def test_unguided_sampling_reproduces_mixture_weights(gmm, schedule):
    n = 4000
    x = run_sampler(ancestral_sample, gmm, schedule, (n, 2), steps=100, generator=torch.Generator().manual_seed(0))
    share, off = gmm.component_shares(x)
    tolerance = 4 * np.sqrt(np.array(WEIGHTS) * (1 - np.array(WEIGHTS)) / n)  # 4 binomial sigmas
    assert np.all(np.abs(share - WEIGHTS) < tolerance), share
    assert off < 0.01


def test_guidance_raises_minority_share_and_stays_on_manifold(gmm, schedule):
    n = 3000
    guidance = MinorityGuidance(scale=6.0, every=5)
    base = run_sampler(ancestral_sample, gmm, schedule, (n, 2), steps=100, generator=torch.Generator().manual_seed(1))
    guided = run_sampler(ancestral_sample, gmm, schedule, (n, 2), guidance=guidance, steps=100, generator=torch.Generator().manual_seed(1))
    base_share, _ = gmm.component_shares(base)
    guided_share, off = gmm.component_shares(guided)
    factor = guided_share[SMALL].sum() / base_share[SMALL].sum()
    # Seen when written (n=2000): minority mass 0.18 → 0.39, factor 2.05 at w=6 (1.4 at w=3, 2.5 at w=10),
    # off-mode share 0. Note w·β̃ is tiny in 2-D, so w is larger than on images (docs/DESIGN.md §7).
    assert factor > 1.6, (base_share, guided_share)
    assert off < 0.01


def reference_ancestral(model, schedule, shape, steps, seed):
    """An independent, minimal DDPM ancestral sampler written from the formulas (the oracle)."""
    grid = schedule.respace(steps)
    abar = grid.alphas_cumprod
    abar_prev = np.append(1.0, abar[:-1])
    betas = 1 - abar / abar_prev
    var = betas * (1 - abar_prev) / (1 - abar)
    log_var = np.log(np.append(var[1], var[1:]))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    for i in reversed(range(steps)):
        t = torch.full((shape[0],), int(grid.timesteps[i]))
        eps = model(x, t)
        x0 = ((x - math.sqrt(1 - abar[i]) * eps) / math.sqrt(abar[i])).clamp(-1, 1)
        mean = (betas[i] * math.sqrt(abar_prev[i]) / (1 - abar[i])) * x0 + ((1 - abar_prev[i]) * math.sqrt(1 - betas[i]) / (1 - abar[i])) * x
        x = mean + math.exp(0.5 * log_var[i]) * torch.randn(shape, generator=g) if i > 0 else mean
    return x


def test_guidance_none_is_plain_ancestral_sampling_bit_for_bit(gmm, schedule):
    ours = run_sampler(ancestral_sample, gmm, schedule, (64, 2), guidance=None, steps=20, generator=torch.Generator().manual_seed(3))
    ref = reference_ancestral(gmm, schedule, (64, 2), 20, seed=3)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("guidance", [None, MinorityGuidance(scale=2.0, every=2)])
def test_same_seed_same_samples(gmm, schedule, guidance):
    a = run_sampler(ancestral_sample, gmm, schedule, (32, 2), guidance=guidance, steps=20, generator=torch.Generator().manual_seed(7))
    b = run_sampler(ancestral_sample, gmm, schedule, (32, 2), guidance=guidance, steps=20, generator=torch.Generator().manual_seed(7))
    c = run_sampler(ancestral_sample, gmm, schedule, (32, 2), guidance=guidance, steps=20, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


class RecordingModel(torch.nn.Module):
    """Wraps a model and records (timestep, whether its input carries a gradient graph)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x, t, y=None):
        self.calls.append((int(t[0]), x.requires_grad))
        return self.inner(x, t)


@pytest.mark.parametrize("every, stop_ratio", [(5, -1.0), (3, 0.5), (1, 0.9)])
def test_guided_steps_are_exactly_those_selected(gmm, schedule, every, stop_ratio):
    steps = 40
    model = RecordingModel(gmm)
    guidance = MinorityGuidance(scale=1.0, every=every, stop_ratio=stop_ratio, perturb_ratio=0.8)
    run_sampler(ancestral_sample, model, schedule, (8, 2), guidance=guidance, steps=steps, generator=torch.Generator().manual_seed(0))
    grid = schedule.respace(steps)
    index_of = {int(t): i for i, t in enumerate(grid.timesteps)}
    guided = sorted({index_of[t] for t, with_grad in model.calls if with_grad})
    expected = sorted(i for i in range(steps) if i > stop_ratio * steps and i % every == 0)
    assert guided == expected
    s = math.floor(0.8 * steps)
    perturbed = [index_of[t] for t, with_grad in model.calls if not with_grad and index_of[t] == s]
    assert len(perturbed) >= len(expected)  # one re-noised forward at step s per guided step
    # every step has exactly one main-path forward; guided steps add exactly one forward at s
    assert len(model.calls) == steps + len(expected)


def test_gradient_does_not_flow_through_second_tweedie(gmm, schedule):
    grid = schedule.respace(50)
    guidance = MinorityGuidance(scale=1.0, perturb_ratio=0.8, normalize=False)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    i, s = 30, guidance.perturb_index(50)
    loss, _ = minority_loss(gmm, grid, x, i, guidance, l2_distance, torch.Generator().manual_seed(5))
    (grad,) = torch.autograd.grad(loss.sum(), x)
    # Oracle: the same loss with x0' computed separately as a constant.
    x2 = x.detach().clone().requires_grad_(True)
    t = grid.model_timestep(i, 16, "cpu")
    x0 = grid.predict_x0(x2, i, gmm(x2, t))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        x_s = grid.q_sample(x0, s, noise)
        x0_prime = grid.predict_x0(x_s, s, gmm(x_s, grid.model_timestep(s, 16, "cpu")))
    (expected,) = torch.autograd.grad((x0 - x0_prime).norm(dim=1).sum(), x2)
    torch.testing.assert_close(grad, expected)
    # And a version that lets the gradient through x0' differs: the stop-gradient matters.
    x3 = x.detach().clone().requires_grad_(True)
    x0b = grid.predict_x0(x3, i, gmm(x3, t))
    x_sb = grid.q_sample(x0b, s, noise)
    x0_prime_b = grid.predict_x0(x_sb, s, gmm(x_sb, grid.model_timestep(s, 16, "cpu")))
    (through,) = torch.autograd.grad((x0b - x0_prime_b).norm(dim=1).sum(), x3)
    assert not torch.allclose(through, expected)


def test_gradient_normalised_per_sample_and_scaled(gmm, schedule):
    grid = schedule.respace(50)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    g, _ = minority_gradient(gmm, grid, x, 30, MinorityGuidance(scale=2.5), l2_distance, torch.Generator().manual_seed(1))
    np.testing.assert_allclose(g.abs().amax(dim=1).numpy(), 2.5, rtol=1e-6)


def test_mc_samples_average_the_loss(gmm, schedule):
    grid = schedule.respace(50)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    one = MinorityGuidance(scale=1.0)
    two = MinorityGuidance(scale=1.0, mc_samples=2)
    gen = torch.Generator().manual_seed(9)
    l1, _ = minority_loss(gmm, grid, x, 30, one, l2_distance, gen)
    l2_, _ = minority_loss(gmm, grid, x, 30, one, l2_distance, gen)
    both, _ = minority_loss(gmm, grid, x, 30, two, l2_distance, torch.Generator().manual_seed(9))
    torch.testing.assert_close(both, (l1 + l2_) / 2)


@pytest.mark.parametrize("learned", [False, True])
def test_var_versus_fixed_scale_type(gmm, schedule, learned):
    """One guided step: the guided minus fixed-scale outputs differ by g·(Σ − 1), Σ the step's variance."""
    steps, shape = 2, (16, 2)
    model = LearnedVarianceModel(gmm, v=0.3) if learned else gmm
    results = {}
    for scale_type in ("var", "fixed"):
        guidance = MinorityGuidance(scale=1.5, every=1, scale_type=scale_type)
        seen = {}
        run_sampler(ancestral_sample, model, schedule, shape, guidance=guidance, steps=steps, generator=torch.Generator().manual_seed(4), callback=lambda i, x, x0, seen=seen: seen.setdefault(i, x.clone()), clip_range=None)
        results[scale_type] = seen[1]
    grid = schedule.respace(steps)
    gen = torch.Generator().manual_seed(4)
    x_start = torch.randn(shape, generator=gen)
    g, _ = minority_gradient(model, grid, x_start, 1, MinorityGuidance(scale=1.5, every=1), l2_distance, gen)
    variance = math.exp(grid.learned_log_variance(1, torch.tensor(0.3)).item()) if learned else grid.posterior_variance[1]
    torch.testing.assert_close(results["var"] - results["fixed"], g * (variance - 1.0), atol=1e-5, rtol=1e-4)


class LearnedVarianceModel(torch.nn.Module):
    """ADM-style output: ε and a constant variance value v stacked on dim 1."""

    def __init__(self, inner, v):
        super().__init__()
        self.inner, self.v = inner, v

    def forward(self, x, t, y=None):
        return torch.cat([self.inner(x, t), torch.full_like(x, self.v)], dim=1)


def test_learned_variance_model_samples(gmm, schedule):
    x = run_sampler(ancestral_sample, LearnedVarianceModel(gmm, -1.0), schedule, (500, 2), steps=50, generator=torch.Generator().manual_seed(0))
    share, off = gmm.component_shares(x)
    assert off < 0.02 and share[0] > 0.25


def test_ddim_reproduces_mixture_and_guidance_extension_works(gmm, schedule):
    n = 2000
    x = run_sampler(ddim_sample, gmm, schedule, (n, 2), steps=50, eta=0.0, generator=torch.Generator().manual_seed(0))
    share, off = gmm.component_shares(x)
    assert np.all(np.abs(share - WEIGHTS) < 4 * np.sqrt(np.array(WEIGHTS) * (1 - np.array(WEIGHTS)) / n) + 0.02)
    assert off < 0.02
    guided = run_sampler(ddim_sample, gmm, schedule, (n, 2), guidance=MinorityGuidance(scale=3.0, every=2), steps=50, eta=1.0, generator=torch.Generator().manual_seed(0))
    base = run_sampler(ddim_sample, gmm, schedule, (n, 2), steps=50, eta=1.0, generator=torch.Generator().manual_seed(0))
    assert gmm.component_shares(guided)[0][SMALL].sum() > 1.3 * gmm.component_shares(base)[0][SMALL].sum()


def test_non_finite_values_raise_and_name_the_setting(schedule):
    class Exploding(torch.nn.Module):
        def forward(self, x, t, y=None):
            return torch.full_like(x, float("nan")) if int(t[0]) < 500 else torch.zeros_like(x)

    with pytest.raises(NonFiniteSampleError, match="NaN/inf at step"):
        run_sampler(ancestral_sample, Exploding(), schedule, (4, 2), steps=10, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(scale=-1.0), "scale must be a finite number ≥ 0"),
        (dict(scale=float("inf")), "scale must be a finite number"),
        (dict(scale=1.0, perturb_ratio=0.0), "perturb_ratio must be in (0, 1]"),
        (dict(scale=1.0, perturb_ratio=1.5), "perturb_ratio"),
        (dict(scale=1.0, every=0), "every must be an integer ≥ 1"),
        (dict(scale=1.0, every=2.5), "every must be an integer"),
        (dict(scale=1.0, stop_ratio=1.0), "stop_ratio must be in [-1, 1)"),
        (dict(scale=1.0, scale_type="log"), "scale_type must be 'var' or 'fixed'"),
        (dict(scale=1.0, distance="l1"), "distance must be 'auto', 'l2' or 'lpips'"),
        (dict(scale=1.0, mc_samples=0), "mc_samples must be an integer ≥ 1"),
        (dict(scale=1.0, normalize="yes"), "normalize must be true or false"),
    ],
)
def test_invalid_guidance_fields(kwargs, message):
    with pytest.raises(ValueError) as err:
        MinorityGuidance(**kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_wrong_model_output_shape_is_reported(schedule):
    class ThreeChannels(torch.nn.Module):
        def forward(self, x, t, y=None):
            return torch.zeros(x.shape[0], 3, device=x.device)

    with pytest.raises(ValueError, match="returned 3 channels for a 2-channel input"):
        run_sampler(ancestral_sample, ThreeChannels(), schedule, (4, 2), steps=5)


def test_bad_shape_and_labels(gmm, schedule):
    with pytest.raises(ValueError, match="shape must be"):
        run_sampler(ancestral_sample, gmm, schedule, (4,), steps=5)
    with pytest.raises(ValueError, match="class_labels must have shape"):
        run_sampler(ancestral_sample, gmm, schedule, (4, 2), steps=5, extra={"y": torch.zeros(3, dtype=torch.long)})
