"""Baselines: Boost-and-Skip and minority (classifier) guidance, on analytic mixtures and the bundled digits model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from minority_core.baselines import (
    ClassifierGuidanceTerm,
    LevelClassifier,
    boost_and_skip,
    load_level_classifier,
    minority_scores,
    quantile_levels,
    save_level_classifier,
    train_level_classifier,
)
from minority_core.baselines.minority_classifier import level_accuracy
from minority_core.diffusion.samplers import ancestral_sample
from minority_core.diffusion.schedule import NoiseSchedule
from tests.gmm import MEANS, SMALL, WEIGHTS, GaussianMixtureDenoiser
from tests.sampling_helpers import run_sampler, start


def boost_and_skip_sample(model, schedule, shape, *, steps, gamma=4.0, skip=3, generator=None):
    """Boost-and-Skip as the product composes it: the standard start, boosted and skipped, then ancestral."""
    x, grid = start(model, schedule, shape, steps, generator)
    return ancestral_sample(model, *boost_and_skip(x, grid, gamma, skip), generator=generator)


def classifier_guided_sample(model, schedule, classifier, shape, *, steps, scale=3.5, target_level=None, generator=None):
    """Classifier guidance as the product composes it: the ancestral sampler with the classifier's term."""
    term = ClassifierGuidanceTerm(classifier, scale=scale, target_level=target_level)
    return run_sampler(ancestral_sample, model, schedule, shape, steps=steps, generator=generator, guidance=term)


class RecordingModel(torch.nn.Module):
    """Wraps a model and records (timestep, input) of every call."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x, t, y=None):
        self.calls.append((int(t[0]), x.detach().clone()))
        return self.inner(x, t)


# --------------------------------------------------------------------------- Boost-and-Skip


def test_boost_and_skip_identity_is_standard_sampling_bit_for_bit(gmm, schedule):
    shape = (64, 2)
    ours = boost_and_skip_sample(gmm, schedule, shape, steps=20, gamma=1.0, skip=0, generator=torch.Generator().manual_seed(3))
    ref = run_sampler(ancestral_sample, gmm, schedule, shape, guidance=None, steps=20, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ours, ref)
    boosted = boost_and_skip_sample(gmm, schedule, shape, steps=20, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(boosted, ref)


def test_boost_and_skip_starts_from_boosted_noise_at_the_skipped_index(gmm, schedule):
    steps, skip, gamma = 20, 3, 4.0
    model = RecordingModel(gmm)
    boost_and_skip_sample(model, schedule, (16, 2), steps=steps, gamma=gamma, skip=skip, generator=torch.Generator().manual_seed(5))
    grid = schedule.respace(steps)
    assert [t for t, _ in model.calls] == [int(grid.timesteps[i]) for i in range(steps - 1 - skip, -1, -1)]
    first_draw = torch.randn((16, 2), generator=torch.Generator().manual_seed(5))
    assert torch.equal(model.calls[0][1], first_draw * gamma)  # x at index steps−1−Δt is γ·z, not re-noised


@pytest.mark.parametrize("kwargs", [dict(gamma=0.0), dict(gamma=float("nan")), dict(skip=-1), dict(skip=20), dict(skip=1.5)])
def test_boost_and_skip_rejects_bad_settings(gmm, schedule, kwargs):
    with pytest.raises(ValueError):
        boost_and_skip_sample(gmm, schedule, (4, 2), steps=20, **kwargs)


def test_boost_and_skip_defaults_raise_minority_share_in_high_dimension():
    # Mechanism: x at the start index s enters the component posterior through γ·√ᾱ_s·⟨μ_k, z⟩,
    # which grows with ‖μ‖ ~ √D. On the 2-D mixture above (linear schedule) defaults change
    # nothing (measured factor 1.00; 1.04 on a cosine schedule), so this uses D = 256 on the
    # cosine schedule (that of the bundled model and of the paper's CelebA model).
    # Seen when written (n=1000, 100 steps): minority mass 0.212 → 0.285, factor 1.34 (seeds 2–4: 1.22–1.31)
    # (γ=2: 1.09; γ=4, Δt=0: 1.00, the skip is what lets the boost through); at 250 steps the
    # default Δt=3 starts later (t≈987 vs 969) and the factor drops to 1.05.
    rng = np.random.default_rng(0)
    dim, n = 256, 1000
    means = rng.choice([-0.5, 0.5], size=(4, dim))
    schedule = NoiseSchedule.cosine(1000)
    gmm = GaussianMixtureDenoiser(means, WEIGHTS, 0.1, schedule)
    base = run_sampler(ancestral_sample, gmm, schedule, (n, dim), steps=100, generator=torch.Generator().manual_seed(1))
    bns = boost_and_skip_sample(gmm, schedule, (n, dim), steps=100, generator=torch.Generator().manual_seed(1))
    base_share, _ = gmm.component_shares(base)
    bns_share, _ = gmm.component_shares(bns)
    comp, dist = gmm.assign(bns)
    factor = bns_share[SMALL].sum() / base_share[SMALL].sum()
    assert factor > 1.15, (base_share, bns_share)
    assert np.median(dist) < 1.2 * math.sqrt(dim)  # still on the components (≈ √D stds from the mean)


# --------------------------------------------------------------------------- minority scores and levels


@pytest.fixture(scope="module")
def digits():
    from minority_core.demo.digits import RARE_CLASSES, split_digits
    from minority_core.models import load_model

    loaded = load_model("bundled:digits")
    split = split_digits(0)
    rare = np.isin(split.test_labels, RARE_CLASSES)
    rng = np.random.default_rng(0)
    pick = np.concatenate([rng.choice(np.flatnonzero(rare), 60, replace=False), rng.choice(np.flatnonzero(~rare), 60, replace=False)])
    images = split.test_images[pick]
    scores = minority_scores(loaded.model, loaded.schedule, images, generator=torch.Generator().manual_seed(0))
    return loaded, images, scores


def test_minority_scores_are_higher_for_held_out_rare_digits(digits):
    _, _, scores = digits
    rare, common = scores[:60], scores[60:]
    auc = float((rare[:, None] > common[None, :]).mean())
    # Seen when written (l2, 100-step grid, s = 60, 5 draws, seed 0): mean 3.59 vs 2.96 (ratio 1.21), AUC 0.85.
    assert rare.mean() > 1.1 * common.mean(), (rare.mean(), common.mean())
    assert auc > 0.75, auc


def test_minority_scores_reproducible_and_validated(gmm, schedule):
    x = torch.tensor(MEANS, dtype=torch.float32)
    a = minority_scores(gmm, schedule, x, generator=torch.Generator().manual_seed(1))
    b = minority_scores(gmm, schedule, x, generator=torch.Generator().manual_seed(1))
    assert a.shape == (4,) and np.array_equal(a, b)
    with pytest.raises(ValueError):
        minority_scores(gmm, schedule, x, perturb_index=100)
    with pytest.raises(ValueError):
        minority_scores(gmm, schedule, x, distance="l1")


def reference_levels(scores, levels):
    """The authors' labelling loop, written out (thresholds from numpy's linear quantiles)."""
    q = [np.quantile(scores, (i + 1) / levels) for i in range(levels)]
    out = np.zeros(len(scores), dtype=np.int64)
    for n, s in enumerate(scores):
        for j in range(levels):
            if (j == 0 and s <= q[0]) or (j > 0 and q[j - 1] < s <= q[j]):
                out[n] = j
    return out


@pytest.mark.parametrize("levels", [2, 5, 10, 100])
def test_quantile_levels_match_reference_binning(levels):
    rng = np.random.default_rng(levels)
    scores = np.concatenate([rng.gamma(2.0, size=997), np.full(20, 1.5)])  # ties included
    got = quantile_levels(scores, levels)
    assert got.dtype == np.int64 and got.min() == 0 and got.max() == levels - 1
    np.testing.assert_array_equal(got, reference_levels(scores, levels))
    thresholds = torch.quantile(torch.tensor(scores), torch.arange(1, levels + 1, dtype=torch.float64) / levels).numpy()
    np.testing.assert_array_equal(got, np.searchsorted(thresholds, scores, side="left"))
    assert got[np.argmax(scores)] == levels - 1 and got[np.argmin(scores)] == 0
    if levels <= 10:  # continuous scores: equal-count bins up to the tie block
        assert np.abs(np.bincount(got) - len(scores) / levels).max() <= 21


def test_quantile_levels_rejects_bad_input():
    for scores, levels in [(np.array([]), 5), (np.array([1.0, np.nan]), 2), (np.ones(10), 1), (np.ones((2, 2)), 2)]:
        with pytest.raises(ValueError):
            quantile_levels(scores, levels)


# --------------------------------------------------------------------------- level classifier


@pytest.fixture(scope="module")
def trained(digits):
    loaded, images, scores = digits
    levels = quantile_levels(scores, 5)
    classifier = train_level_classifier(loaded.schedule, images, levels, steps=300, batch_size=64, lr=2e-3, seed=0)
    return classifier, levels


def test_level_classifier_trains_above_chance(digits, trained):
    loaded, images, _ = digits
    classifier, levels = trained
    first, last = classifier.train_log[0][1], classifier.train_log[-1][1]
    assert last < first, classifier.train_log
    accuracy = level_accuracy(classifier, loaded.schedule, images, levels, t=50)
    # Chance is 0.2 with 5 levels. Seen when written (120 images, 300 steps of 64): loss 1.47 → 0.97;
    # accuracy on the training images 0.98 at t = 50, 0.95 at t = 200, 0.52 at t = 500.
    assert accuracy > 0.6, accuracy


def test_level_classifier_save_load_roundtrip(trained, tmp_path):
    classifier, _ = trained
    save_level_classifier(classifier, tmp_path / "lc", metadata={"levels": 5, "thresholds": np.arange(5.0)})
    loaded = load_level_classifier(tmp_path / "lc")
    assert isinstance(loaded, LevelClassifier) and loaded.num_levels == 5
    assert loaded.metadata == {"levels": 5, "thresholds": [0.0, 1.0, 2.0, 3.0, 4.0]}
    x, t = torch.randn(8, 1, 8, 8), torch.randint(0, 1000, (8,))
    with torch.no_grad():
        assert torch.equal(classifier(x, t), loaded(x, t))
    with pytest.raises(ValueError):
        load_level_classifier(tmp_path / "missing")


def test_classifier_guided_sampling_runs_on_digits(digits, trained):
    loaded, _, _ = digits
    classifier, _ = trained
    x = classifier_guided_sample(loaded.model, loaded.schedule, classifier, (8, 1, 8, 8), scale=10.0, steps=10, generator=torch.Generator().manual_seed(0))
    base = run_sampler(ancestral_sample, loaded.model, loaded.schedule, (8, 1, 8, 8), steps=10, generator=torch.Generator().manual_seed(0))
    assert x.shape == (8, 1, 8, 8) and torch.isfinite(x).all() and not torch.equal(x, base)


# --------------------------------------------------------------------------- classifier guidance, exact classifier


class ExactLevelPosterior(torch.nn.Module):
    """p(level | x_t, t) of the mixture, exactly: level 0 = components {0, 1}, level 1 = {2, 3}."""

    num_levels = 2

    def __init__(self, gmm, groups=((0, 1), (2, 3))):
        super().__init__()
        self.gmm, self.groups = gmm, [list(g) for g in groups]

    def forward(self, x, t):
        abar = self.gmm.alphas_cumprod[t].view(-1, 1)
        var = abar * self.gmm.std**2 + 1 - abar
        centred = x.double()[:, None, :] - abar.sqrt()[:, :, None] * self.gmm.means[None]
        log_p = self.gmm.log_weights[None] - 0.5 * (centred**2).sum(-1) / var  # same variance for all k
        return torch.stack([torch.logsumexp(log_p[:, g], dim=1) for g in self.groups], dim=1).to(x.dtype)


def test_classifier_guidance_scale_zero_is_standard_sampling(gmm, schedule):
    ref = run_sampler(ancestral_sample, gmm, schedule, (64, 2), steps=20, generator=torch.Generator().manual_seed(3))
    ours = classifier_guided_sample(gmm, schedule, ExactLevelPosterior(gmm), (64, 2), scale=0.0, steps=20, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ours, ref)


def test_classifier_guidance_with_exact_classifier_samples_the_minority_conditional(gmm, schedule):
    # With the exact p(level | x_t) and scale 1, μ + Σ∇log p(y|x_t) is the conditional reverse step:
    # samples should follow p(x | minority) = components 2 and 3 in ratio 0.15 : 0.05.
    # Seen when written (n=2000, 100 steps): minority mass 0.19 → 0.984, 2:3 = 0.733:0.251, off-mode 1.2 %;
    # mean minority score (l2) 0.61 → 0.91 (minority-component samples score 0.92 vs 0.54).
    n = 2000
    base = run_sampler(ancestral_sample, gmm, schedule, (n, 2), steps=100, generator=torch.Generator().manual_seed(1))
    guided = classifier_guided_sample(gmm, schedule, ExactLevelPosterior(gmm), (n, 2), scale=1.0, steps=100, generator=torch.Generator().manual_seed(1))
    base_share, _ = gmm.component_shares(base)
    share, off = gmm.component_shares(guided)
    assert share[SMALL].sum() > 0.93, share
    assert abs(share[2] / share[SMALL].sum() - 0.75) < 0.06, share
    assert off < 0.03
    score_base = minority_scores(gmm, schedule, base, generator=torch.Generator().manual_seed(0))
    score_guided = minority_scores(gmm, schedule, guided, generator=torch.Generator().manual_seed(0))
    assert score_guided.mean() > 1.3 * score_base.mean(), (score_base.mean(), score_guided.mean())


def test_classifier_guidance_validates_target(gmm, schedule):
    with pytest.raises(ValueError):
        classifier_guided_sample(gmm, schedule, ExactLevelPosterior(gmm), (4, 2), target_level=2, steps=5)
    with pytest.raises(ValueError):
        classifier_guided_sample(gmm, schedule, ExactLevelPosterior(gmm), (4, 2), scale=-1.0, steps=5)
