"""The LPIPS distance path without the real AlexNet weights: missing files give a one-line error,
and random stand-in weight files (saved where the real ones go) are loaded weights-only and
drive guided sampling with the stop-gradient on x0'."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch

from minority_core.diffusion.guidance import MinorityGuidance, minority_loss
from minority_core.diffusion.lpips import ALEXNET_FILE, CHANNELS, LPIPS, AlexNetFeatures, load_lpips, lpips_heads_path
from minority_core.diffusion.samplers import ancestral_sample
from minority_core.diffusion.schedule import NoiseSchedule
from tests.sampling_helpers import run_sampler

SHAPE = (2, 3, 32, 32)


class LinearEps(torch.nn.Module):
    """A tiny analytic ε-model: ε(x, t) = 0.1·x (cheap, differentiable, data-independent)."""

    def forward(self, x, t, y=None):
        return 0.1 * x


class NotAWeight:
    """Anything that is not a tensor or a plain container: weights-only loading must refuse it."""


def seed(n: int) -> torch.Generator:
    return torch.Generator().manual_seed(n)


@pytest.fixture(scope="module")
def stand_in_files(tmp_path_factory):
    """Random AlexNet features + random non-negative LPIPS heads, saved as the real files are."""
    root = tmp_path_factory.mktemp("lpips-weights")
    torch.manual_seed(0)
    alexnet = AlexNetFeatures().state_dict()  # keys features.N.weight / features.N.bias
    checkpoints = root / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(alexnet, checkpoints / ALEXNET_FILE)
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(CHANNELS)}
    torch.save(heads, root / "alex.pth")
    return {"torch_home": root / "torch", "heads": root / "alex.pth", "alexnet": alexnet, "head_state": heads}


@pytest.fixture()
def stand_in(stand_in_files, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(stand_in_files["torch_home"]))
    monkeypatch.setenv("MINORITY_LPIPS_HEADS", str(stand_in_files["heads"]))
    return stand_in_files


# -- (a) no weights on disk -------------------------------------------------------------------------


def test_missing_alexnet_weights_is_a_one_line_file_not_found(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        load_lpips()
    message = str(info.value)
    assert ALEXNET_FILE in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "\n" not in message

    guidance = MinorityGuidance(scale=1.0, distance="lpips")
    with pytest.raises(FileNotFoundError) as sampled:  # raised by resolve_distance, before any step
        run_sampler(ancestral_sample, LinearEps(), NoiseSchedule.linear(1000), SHAPE, guidance=guidance, steps=3, generator=seed(0))
    assert str(sampled.value) == message


def test_missing_heads_is_a_one_line_file_not_found(stand_in, tmp_path, monkeypatch):
    monkeypatch.setenv("MINORITY_LPIPS_HEADS", str(tmp_path / "nowhere" / "alex.pth"))
    with pytest.raises(FileNotFoundError) as info:
        load_lpips()
    assert "alex.pth" in str(info.value) and str(tmp_path / "nowhere") in str(info.value) and "\n" not in str(info.value)


# -- (b) stand-in weights -----------------------------------------------------------------------------


def test_stand_in_weights_load(stand_in):
    lpips = load_lpips()
    assert isinstance(lpips, LPIPS) and not lpips.training
    for name, value in stand_in["alexnet"].items():
        torch.testing.assert_close(lpips.net.state_dict()[name], value, rtol=0, atol=0)
    for k in range(len(CHANNELS)):
        torch.testing.assert_close(lpips.lins[k].weight, stand_in["head_state"][f"lin{k}.model.1.weight"], rtol=0, atol=0)
    assert all(not p.requires_grad for p in lpips.parameters())


def test_weights_are_loaded_weights_only(stand_in, tmp_path, monkeypatch):
    heads = dict(stand_in["head_state"], extra=NotAWeight())
    torch.save(heads, tmp_path / "alex.pth")
    monkeypatch.setenv("MINORITY_LPIPS_HEADS", str(tmp_path / "alex.pth"))
    with pytest.raises(pickle.UnpicklingError):
        load_lpips()


def test_distance_is_zero_on_identical_positive_otherwise_and_symmetric(stand_in):
    lpips = load_lpips()
    x = torch.rand(SHAPE, generator=seed(1)) * 2 - 1
    y = torch.rand(SHAPE, generator=seed(2)) * 2 - 1
    with torch.no_grad():
        same, xy, yx = lpips(x, x.clone()), lpips(x, y), lpips(y, x)
    assert same.shape == (2,) and torch.equal(same, torch.zeros(2))
    assert (xy > 0).all()
    torch.testing.assert_close(xy, yx)
    gray = torch.rand(2, 1, 16, 16, generator=seed(3))  # 1 channel and under 32 px: expanded and upsampled
    with torch.no_grad():
        assert (lpips(gray, gray.flip(-1)) > 0).all()


def test_guided_ancestral_sampling_with_lpips_runs(stand_in):
    schedule = NoiseSchedule.linear(1000)
    guidance = MinorityGuidance(scale=1.0, every=1, distance="lpips")
    guided = run_sampler(ancestral_sample, LinearEps(), schedule, SHAPE, guidance=guidance, steps=4, generator=seed(0))
    again = run_sampler(ancestral_sample, LinearEps(), schedule, SHAPE, guidance=guidance, steps=4, generator=seed(0))
    l2 = run_sampler(ancestral_sample, LinearEps(), schedule, SHAPE, guidance=MinorityGuidance(scale=1.0, every=1, distance="l2"), steps=4, generator=seed(0))
    assert guided.shape == SHAPE and torch.isfinite(guided).all()
    assert torch.equal(guided, again)
    assert not torch.allclose(guided, l2)  # the LPIPS distance, not L2, drove the guidance


def test_lpips_gradient_flows_to_x_t_but_not_through_x0_prime(stand_in):
    lpips = load_lpips()
    model = LinearEps()
    grid = NoiseSchedule.linear(1000).respace(20)
    guidance = MinorityGuidance(scale=1.0, normalize=False)
    i, s = 12, guidance.perturb_index(20)
    x = torch.randn(SHAPE, generator=seed(4)).requires_grad_(True)
    loss, _ = minority_loss(model, grid, x, i, guidance, lpips, seed(5))
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(grad).all() and (grad.flatten(1).abs().amax(dim=1) > 0).all()
    # Oracle: the same loss with x0' computed separately as a constant.
    t = grid.model_timestep(i, SHAPE[0], "cpu")
    noise = torch.randn(SHAPE, generator=seed(5))
    x2 = x.detach().clone().requires_grad_(True)
    x0 = grid.predict_x0(x2, i, model(x2, t))
    with torch.no_grad():
        x_s = grid.q_sample(x0, s, noise)
        x0_prime = grid.predict_x0(x_s, s, model(x_s, grid.model_timestep(s, SHAPE[0], "cpu")))
    (expected,) = torch.autograd.grad(lpips(x0, x0_prime).sum(), x2)
    torch.testing.assert_close(grad, expected)
    # Letting the gradient through x0' gives a different gradient: the stop-gradient matters.
    x3 = x.detach().clone().requires_grad_(True)
    x0b = grid.predict_x0(x3, i, model(x3, t))
    x_sb = grid.q_sample(x0b, s, noise)
    x0_prime_b = grid.predict_x0(x_sb, s, model(x_sb, grid.model_timestep(s, SHAPE[0], "cpu")))
    (through,) = torch.autograd.grad(lpips(x0b, x0_prime_b).sum(), x3)
    assert not torch.allclose(through, expected)


def test_real_heads_from_the_installed_lpips_package_load(stand_in, monkeypatch):
    monkeypatch.delenv("MINORITY_LPIPS_HEADS")
    path = lpips_heads_path()
    if path is None or not path.is_file():
        pytest.skip("the lpips package (with weights/v0.1/alex.pth) is not installed")
    heads = torch.load(path, map_location="cpu", weights_only=True)
    for k, c in enumerate(CHANNELS):
        assert heads[f"lin{k}.model.1.weight"].shape == (1, c, 1, 1)
        assert (heads[f"lin{k}.model.1.weight"] >= 0).all()  # LPIPS v0.1 heads are non-negative
    lpips = load_lpips()  # real heads + stand-in AlexNet
    torch.testing.assert_close(lpips.lins[0].weight, heads["lin0.model.1.weight"], rtol=0, atol=0)
    x = torch.rand(SHAPE, generator=seed(6)) * 2 - 1
    with torch.no_grad():
        assert (lpips(x, x.flip(-1)) > 0).all()


def test_auto_distance_in_the_sampler(stand_in, tmp_path, monkeypatch):
    """distance 'auto' (the default) called directly: LPIPS for images when the weights are on disk,
    L2 for samples that are not (N, 1|3, H, W) images and when the weights are absent."""
    schedule = NoiseSchedule.linear(1000)
    auto = MinorityGuidance(scale=1.0, every=1)
    assert auto.distance == "auto"

    def run(guidance, shape=SHAPE):
        return run_sampler(ancestral_sample, LinearEps(), schedule, shape, guidance=guidance, steps=3, generator=seed(0))

    lpips, l2 = run(dataclasses.replace(auto, distance="lpips")), run(dataclasses.replace(auto, distance="l2"))
    assert not torch.equal(lpips, l2)
    assert torch.equal(run(auto), lpips)
    vectors = (2, 3, 8)
    assert torch.equal(run(auto, vectors), run(dataclasses.replace(auto, distance="l2"), vectors))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # the backbone is gone
    assert torch.equal(run(auto), l2)
