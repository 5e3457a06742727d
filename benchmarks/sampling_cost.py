"""Guided vs unguided sampling cost: per-sample time, same model and steps, one process (docs/DESIGN.md §6).

Times `ancestral_sample` without guidance, with self-guided minority guidance at every = 5
(the default) and at every = 1 (every step guided), and prints the ratios against unguided.
The model is wrapped in a counting module, so the table also shows the work per step: model
forwards and backward passes. Our guided step reuses the main path's forward for the minority
loss (2 forwards + 1 backward per guided step); the reference code runs the main path's
forward again (3 forwards + 1 backward), i.e. at every = k it does 1 + 2/k forwards per step
where we do 1 + 1/k, plus the 1/k backward both do.

Target (docs/DESIGN.md §6): guided/unguided ≤ 1.9× at every = 5.

    python benchmarks/sampling_cost.py                                   # bundled:digits, 256 samples, 100 steps
    python benchmarks/sampling_cost.py --model diffusers:/tmp/unet --num-samples 64 --steps 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from _common import check_model  # first: env defaults before torch / faiss (docs/DESIGN.md §7)
from torch import nn

from minority_core.diffusion.guidance import MinorityGuidance
from minority_core.diffusion.noise import draw_noise
from minority_core.diffusion.samplers import ancestral_sample
from minority_core.models import load_model

TARGET_EVERY5 = 1.9  # docs/DESIGN.md §6
SCALE = 0.4


class CountingModel(nn.Module):
    """Passes calls through to the model; counts forwards and the backward passes through them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forwards = 0
        self.backwards = 0

    def reset(self) -> None:
        self.forwards = self.backwards = 0

    def _count_backward(self, grad: torch.Tensor) -> None:
        self.backwards += 1

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.forwards += 1
        out = self.model(x, t) if y is None else self.model(x, t, y=y)
        if out.requires_grad:
            out.register_hook(self._count_backward)
        return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="bundled:digits", help="any load_model spec: bundled:digits, diffusers:PATH, adm:PATH")
    p.add_argument("--num-samples", type=int, default=256, help="samples per timed run")
    p.add_argument("--steps", type=int, default=100, help="sampling steps (respaced grid)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per ancestral_sample call (default: all at once, at most 256)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per mode; the median is reported")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for name in ("num_samples", "steps", "repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be ≥ 1")
    if args.steps < 2:
        p.error("--steps must be ≥ 2")
    args.batch_size = args.batch_size or min(args.num_samples, 256)
    if args.batch_size < 1:
        p.error("--batch-size must be ≥ 1")
    return args


def sample_once(model, loaded, batch: int, steps: int, guidance, generator: torch.Generator) -> None:
    """One batch as the product samples it: respace, draw the start noise, then the sampler."""
    grid = loaded.schedule.respace(steps)
    x = draw_noise((batch, *loaded.shape), generator, "cpu")
    ancestral_sample(model, x, grid, guidance=guidance, generator=generator)


def sample_all(model, loaded, n: int, batch_size: int, steps: int, guidance, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, n, batch_size):
        sample_once(model, loaded, min(batch_size, n - start), steps, guidance, generator)


def main() -> None:
    args = parse_args()
    check_model(args.model)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    loaded = load_model(args.model, "cpu")
    load_s = time.perf_counter() - t0
    model = CountingModel(loaded.model).eval()
    params = sum(p.numel() for p in loaded.model.parameters())
    batches = -(-args.num_samples // args.batch_size)

    modes = [
        ("unguided", None),
        ("guided every=5", MinorityGuidance(scale=SCALE, every=5)),
        ("guided every=1", MinorityGuidance(scale=SCALE, every=1)),
    ]
    print(f"model {args.model}: shape {loaded.shape}, {params / 1e6:.2f} M parameters, loaded in {load_s:.1f} s")
    print(f"{args.num_samples} samples in batches of {args.batch_size}, {args.steps} ancestral steps, "
          f"w = {SCALE}, l2 distance, torch threads {torch.get_num_threads()}, median of {args.repeats} runs (modes interleaved)")
    print(f"host load (uptime) at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

    # warm-up (lazy kernel init, allocator): a few steps of each mode on a small batch
    for _, guidance in modes:
        sample_once(model, loaded, min(args.batch_size, 8), min(args.steps, 10), guidance, torch.Generator().manual_seed(args.seed))

    times: dict[str, list[float]] = {name: [] for name, _ in modes}
    counts: dict[str, tuple[int, int]] = {}
    for _ in range(args.repeats):
        for name, guidance in modes:
            model.reset()
            start = time.perf_counter()
            sample_all(model, loaded, args.num_samples, args.batch_size, args.steps, guidance, args.seed)
            times[name].append(time.perf_counter() - start)
            counts[name] = (model.forwards, model.backwards)

    base = statistics.median(times["unguided"]) / args.num_samples
    calls = batches * args.steps  # sampler steps executed per run
    print()
    print(f"{'mode':<16} {'ms/sample':>10} {'runs (s)':>22} {'fwd/step':>9} {'bwd/step':>9} {'vs unguided':>12}")
    ratios = {}
    for name, _ in modes:
        per_sample = statistics.median(times[name]) / args.num_samples
        ratios[name] = per_sample / base
        fwd, bwd = counts[name]
        runs = " ".join(f"{t:.2f}" for t in times[name])
        print(f"{name:<16} {1e3 * per_sample:>10.2f} {runs:>22} {fwd / calls:>9.2f} {bwd / calls:>9.2f} {ratios[name]:>11.2f}x")

    g5 = sum(1 for i in range(args.steps) if MinorityGuidance(scale=SCALE, every=5).is_guided_step(i, args.steps))
    print()
    print(f"work per guided step here: {counts['guided every=1'][0] / calls:.0f} forwards + "
          f"{counts['guided every=1'][1] / calls:.0f} backward (the main path reuses the loss's forward); "
          f"the reference does 3 forwards + 1 backward, i.e. {1 + 2 * g5 / args.steps:.2f} forwards/step at every=5 "
          f"where we do {counts['guided every=5'][0] / calls:.2f}")
    print(f"guided steps at every=5: {g5} of {args.steps}")
    print(f"host load (uptime) at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    verdict = "meets" if ratios["guided every=5"] <= TARGET_EVERY5 else "MISSES"
    print(f"guided/unguided at every=1: {ratios['guided every=1']:.2f}x")
    print(f"guided/unguided at every=5: {ratios['guided every=5']:.2f}x (target <= {TARGET_EVERY5}x; {verdict} it)")


if __name__ == "__main__":
    main()
