"""Schedules, respacing and learned variance against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from minority_core.diffusion.schedule import NoiseSchedule


def test_linear_schedule_endpoints_and_scaling():
    s = NoiseSchedule.linear(1000)
    assert s.betas[0] == pytest.approx(1e-4) and s.betas[-1] == pytest.approx(0.02)
    short = NoiseSchedule.linear(100)  # improved-DDPM scales β by 1000/T
    assert short.betas[0] == pytest.approx(1e-3) and short.betas[-1] == pytest.approx(0.2)


def test_cosine_schedule_matches_alpha_bar_formula():
    s = NoiseSchedule.cosine(1000)
    def f(t):
        return math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2

    for t in (0, 10, 500, 998):
        assert s.alphas_cumprod[t] == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert s.betas.max() <= 0.999


def test_respace_hand_computed():
    s = NoiseSchedule(np.linspace(0.01, 0.2, 10))
    r = s.respace(4)  # kept: round(k · 9/3) = 0, 3, 6, 9
    assert r.timesteps.tolist() == [0, 3, 6, 9]
    betas = np.linspace(0.01, 0.2, 10)
    abar = [np.prod(1 - betas[: t + 1]) for t in (0, 3, 6, 9)]
    expected = [1 - abar[0]] + [1 - abar[k] / abar[k - 1] for k in range(1, 4)]
    np.testing.assert_allclose(r.betas, expected, rtol=1e-12)
    np.testing.assert_allclose(r.alphas_cumprod, abar, rtol=1e-12)


def test_respace_250_grid_matches_improved_ddpm():
    r = NoiseSchedule.linear(1000).respace(250)
    assert len(r) == 250 and r.timesteps[0] == 0 and r.timesteps[-1] == 999
    # improved-DDPM space_timesteps(1000, "250"): stride 999/249, Python round()
    assert r.timesteps[:5].tolist() == [0, 4, 8, 12, 16]
    assert r.timesteps[125] == round(125 * 999 / 249)
    np.testing.assert_allclose(r.alphas_cumprod, NoiseSchedule.linear(1000).alphas_cumprod[r.timesteps], rtol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 7, 10])
def test_truncate_keeps_the_first_indices_bit_for_bit(n):
    """Boost-and-Skip's shortened grid: indices 0 … n−1 keep their ᾱ, timesteps and variances."""
    grid = NoiseSchedule.cosine(1000).respace(10)
    short = grid.truncate(n)
    assert len(short) == n and short.timesteps.tolist() == grid.timesteps[:n].tolist()
    assert np.array_equal(short.alphas_cumprod, grid.alphas_cumprod[:n])
    assert np.array_equal(short.posterior_log_variance_clipped, grid.posterior_log_variance_clipped[:n])
    v = torch.tensor([-0.5, 0.3])
    for i in range(n):
        assert short.fixed_log_variance(i) == grid.fixed_log_variance(i)
        assert torch.equal(short.learned_log_variance(i, v), grid.learned_log_variance(i, v))
    large = NoiseSchedule(np.linspace(0.01, 0.2, 10), fixed_variance="fixed_large")
    assert large.truncate(n).fixed_log_variance(0) == large.fixed_log_variance(0)
    with pytest.raises(ValueError, match="n must be an integer in"):
        grid.truncate(0)


def test_posterior_variance_and_mean_hand_computed():
    s = NoiseSchedule(np.linspace(0.01, 0.2, 10))
    b = np.linspace(0.01, 0.2, 10)
    abar = np.cumprod(1 - b)
    i = 5
    assert s.posterior_variance[i] == pytest.approx(b[i] * (1 - abar[i - 1]) / (1 - abar[i]))
    x0, xt = torch.tensor([0.3]), torch.tensor([-0.7])
    mean = s.posterior_mean(x0, xt, i)
    expected = b[i] * math.sqrt(abar[i - 1]) / (1 - abar[i]) * 0.3 + (1 - abar[i - 1]) * math.sqrt(1 - b[i]) / (1 - abar[i]) * -0.7
    assert mean.item() == pytest.approx(expected, rel=1e-6)
    assert s.posterior_log_variance_clipped[0] == pytest.approx(math.log(s.posterior_variance[1]))


def test_learned_variance_interpolates_in_log_space():
    s = NoiseSchedule(np.linspace(0.01, 0.2, 10)).respace(5)
    i = 3
    log_beta, log_tilde = math.log(s.betas[i]), math.log(s.posterior_variance[i])
    v = torch.tensor([-1.0, 0.0, 1.0, 0.5])
    got = s.learned_log_variance(i, v)
    expected = [log_tilde, 0.5 * log_beta + 0.5 * log_tilde, log_beta, 0.75 * log_beta + 0.25 * log_tilde]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


def test_tweedie_round_trip():
    s = NoiseSchedule.cosine(100)
    x0, eps = torch.randn(4, 3), torch.randn(4, 3)
    xt = s.q_sample(x0, 40, eps)
    torch.testing.assert_close(s.predict_x0(xt, 40, eps), x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s.predict_eps(xt, 40, x0), eps, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: NoiseSchedule.linear(1), "num_timesteps"),
        (lambda: NoiseSchedule.linear(100).respace(101), "101 steps do not fit this 100-step schedule"),
        (lambda: NoiseSchedule.linear(100).respace(0), "every section needs at least 1 step"),
        (lambda: NoiseSchedule(np.array([0.1, 1.5])), "betas must lie in (0, 1]"),
        (lambda: NoiseSchedule(np.array([0.1, 0.2]), fixed_variance="huge"), "fixed_variance"),
    ],
)
def test_bad_schedule_input(call, message):
    with pytest.raises(ValueError, match=None) as err:
        call()
    assert message in str(err.value) and "\n" not in str(err.value)
