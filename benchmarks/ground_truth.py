"""Ground truth for minority generation: an analytic 64-d Gaussian mixture whose ε is exact.

    python benchmarks/ground_truth.py [--num-samples 4000] [--steps 100] [--seed 0] [--plot docs/ground_truth.png]

p_0 = Σ_k π_k N(μ_k, s² I) in D = 64, π from 0.5 down to 0.005. Under the VP process every
component stays Gaussian, so the model is the mixture's exact ε (`tests/gmm.py`): nothing is
trained, and whatever an arm does to the samples is the sampler's doing. Per arm, the same start
noise and generator seed; reported:

- minority mass: share of samples in the support of a minority component (π ≤ 0.05; true 0.05),
  of the rarest one (π = 0.005), and of the largest (π = 0.5);
- off-support share: samples in no component's support. A sample is in component k's support
  when ‖x − μ_k‖²/s² ≤ the χ²_D 0.999 quantile, so an exact sampler puts ~0.1 % off support.
  100 ancestral steps with fixed-small variance under-disperse (median ‖x − μ‖²/s² 40 against
  the exact 63; fixed-large over-disperses, 81, and puts 6 % off support), so for this grid
  the standard arm's 0 % off support is the sampler's, and an arm's share is a lower bound.

Arms: standard ancestral sampling; self-guided minority guidance over a sweep of w, at the
paper's perturb 0.8 and at 0.3 (every 5, variance scaling, L2: LPIPS has no meaning here); Boost-and-Skip (the
authors' γ = 2.5 and 4.0, Δt = 3); and classifier guidance with the *exact* classifier, the
mixture's posterior p(k | x_t) at the model's t, toward the rarest component. The last stands in
for the minority-classifier baseline with a perfect classifier: on a mixture this separated,
the minority-score levels the authors train on are, at the top, the rarest component, so it is
the best that baseline could do (an oracle, not the authors' trained classifier).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import _common  # noqa: F401 - process settings first
import numpy as np
import torch
from scipy.stats import chi2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.gmm: the exact mixture denoiser

from minority_core.baselines.boost_and_skip import boost_and_skip
from minority_core.baselines.classifier_guidance import ClassifierGuidanceTerm
from minority_core.diffusion import MinorityGuidance, NoiseSchedule, ancestral_sample, draw_noise
from tests.gmm import GaussianMixtureDenoiser

DIM = 64
WEIGHTS = (0.5, 0.25, 0.12, 0.08, 0.045, 0.005)
MINORITY = (4, 5)  # π ≤ 0.05
STD = 0.1
GUIDANCE_SCALES = (1.0, 4.0, 16.0, 64.0)
PERTURB_RATIOS = (0.8, 0.3)  # the paper's, and a small re-noising that keeps x̂0(x_s) in its component
BNS = ((2.5, 3), (4.0, 3))
CLASSIFIER_SCALES = (0.5, 1.0, 2.0, 4.0)


class ExactPosterior(torch.nn.Module):
    """log p(k | x_t): the mixture's component posterior under the noised marginals, as logits."""

    def __init__(self, mixture: GaussianMixtureDenoiser) -> None:
        super().__init__()
        self.mixture = mixture
        self.num_levels = len(mixture.means)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m = self.mixture
        abar = m.alphas_cumprod[t].view(-1, 1)
        var = abar * m.std**2 + 1 - abar  # each component's per-dimension variance at t
        centred = x.double().flatten(1)[:, None, :] - abar.sqrt()[..., None] * m.means[None]
        return (m.log_weights[None] - 0.5 * (centred**2).sum(-1) / var).to(x.dtype)


def mixture(seed: int, schedule: NoiseSchedule) -> GaussianMixtureDenoiser:
    g = np.random.default_rng(seed)
    means = g.normal(0.0, 0.25, size=(len(WEIGHTS), DIM))  # ~28 stds apart: well separated
    return GaussianMixtureDenoiser(means, WEIGHTS, STD, schedule)


def measure(model: GaussianMixtureDenoiser, samples: torch.Tensor) -> dict[str, float]:
    d2 = torch.cdist(samples.double().flatten(1), model.means) ** 2 / STD**2  # [N, K]
    nearest = d2.argmin(1).numpy()
    inside = (d2.min(1).values <= chi2.ppf(0.999, DIM)).numpy()
    return {
        "minority": float((inside & np.isin(nearest, MINORITY)).mean()),
        "majority": float((inside & (nearest == 0)).mean()),
        "rarest": float((inside & (nearest == len(WEIGHTS) - 1)).mean()),
        "off": float((~inside).mean()),
    }


def arms(model: GaussianMixtureDenoiser) -> list[tuple[str, str, dict]]:
    out = [("standard", "standard", {})]
    out += [
        (f"self-guided p={p:g} w={w:g}", f"self-guided p={p:g}", {"guidance": MinorityGuidance(scale=w, perturb_ratio=p, distance="l2")})
        for p in PERTURB_RATIOS
        for w in GUIDANCE_SCALES
    ]
    out += [(f"boost-and-skip γ={g:g} Δt={s}", "boost-and-skip", {"bns": (g, s)}) for g, s in BNS]
    classifier = ExactPosterior(model)
    out += [(f"exact classifier s={s:g}", "classifier", {"guidance": ClassifierGuidanceTerm(classifier, s)}) for s in CLASSIFIER_SCALES]
    return out


def run_arm(model, grid, n: int, seed: int, options: dict) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = draw_noise((n, DIM, 1, 1), g, "cpu")
    if "bns" in options:
        start, short = boost_and_skip(x, grid, *options["bns"])
        return ancestral_sample(model, start, short, generator=g)
    return ancestral_sample(model, x, grid, guidance=options.get("guidance"), generator=g)


def plot(rows: list[tuple[str, str, dict]], path: Path, n: int, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = {
        "standard": ("k", "o"),
        "self-guided p=0.8": ("C0", "o-"),
        "self-guided p=0.3": ("C1", "o-"),
        "boost-and-skip": ("C2", "s"),
        "classifier": ("C3", "^-"),
    }
    for family, (colour, marker) in styles.items():
        points = [(r["off"] * 100, r["minority"] * 100, name) for name, fam, r in rows if fam == family]
        if not points:
            continue
        xs, ys, names = zip(*points)
        label = {"classifier": "classifier guidance, exact classifier (oracle)"}.get(family, family)
        hollow = {"mfc": "none", "ms": 11} if family == "standard" else {}  # standard and Boost-and-Skip coincide
        ax.plot(xs, ys, marker, color=colour, label=label, **hollow)
        for x, y, name in points:
            ax.annotate(name.rsplit(" ", 1)[-1] if family != "standard" else "", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(sum(WEIGHTS[k] for k in MINORITY) * 100, color="grey", ls=":", lw=1, label="true minority mass (5 %)")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlim(0, 130)
    ax.set_ylim(0, 130)
    ax.set_xlabel("off-support samples (%)")
    ax.set_ylabel("samples in minority components (%)")
    ax.set_title(f"64-d Gaussian mixture, exact ε: {n} samples, {steps} steps", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-samples", type=int, default=4000)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", type=Path, default=None, help="write the trade-off plot (PNG) here")
    args = p.parse_args(argv)
    if args.num_samples < 1 or args.steps < 2:
        p.error("--num-samples must be ≥ 1 and --steps ≥ 2")
    torch.set_num_threads(1)
    schedule = NoiseSchedule.linear(1000)
    model = mixture(args.seed, schedule)
    grid = schedule.respace(args.steps)
    rows = []
    print(f"{'arm':<30} {'minority %':>11} {'rarest %':>9} {'largest %':>10} {'off-support %':>14} {'s':>6}")
    for name, family, options in arms(model):
        start = time.perf_counter()
        result = measure(model, run_arm(model, grid, args.num_samples, args.seed + 1, options))
        rows.append((name, family, result))
        se = 100 * math.sqrt(max(result["minority"] * (1 - result["minority"]), 1e-12) / args.num_samples)
        print(
            f"{name:<30} {100 * result['minority']:>7.2f} ±{se:.2f} {100 * result['rarest']:>9.2f} {100 * result['majority']:>10.2f} {100 * result['off']:>14.2f} "
            f"{time.perf_counter() - start:>6.1f}"
        )
    print(
        f"true: minority {100 * sum(WEIGHTS[k] for k in MINORITY):.1f} %, rarest {100 * WEIGHTS[-1]:.1f} %, largest {100 * WEIGHTS[0]:.0f} %, "
        f"off-support 0.1 % (the χ² 0.999 bound); ± is one binomial standard error"
    )
    if args.plot:
        plot(rows, args.plot, args.num_samples, args.steps)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
