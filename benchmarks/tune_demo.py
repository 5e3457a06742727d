"""Tune the demo's guidance on the bundled digits model: both sides of the trade-off, per setting.

For each (w, perturb_ratio, stop_ratio) prints rare-class (8+9) share, AvgkNN (k=5, demo
classifier features, against the imbalanced training split the model saw) and the share of
confident samples (classifier max softmax > 0.9), next to standard sampling with the same seeds.

    python benchmarks/tune_demo.py --num-samples 400 --scales 0.2,0.4,1,2 --perturb 0.8 --stop -1,0.3
"""

from __future__ import annotations

import argparse
import itertools
import time

import _common  # noqa: F401 - first: env defaults before faiss / torch (docs/DESIGN.md §7)
import numpy as np
import torch

from minority_core.config.sampler import SamplerConfig
from minority_core.demo.digits import RARE_CLASSES
from minority_core.diffusion.guidance import MinorityGuidance
from minority_core.io.images import to_uint8_nhwc
from minority_core.io.sources import load_reference_images
from minority_core.metrics import ReferenceSet
from minority_core.metrics.features import DemoClassifierFeatures
from minority_core.models import load_model
from minority_core.runs.generate import generate


def measure(loaded, extractor, refset, n, steps, guidance, seed):
    start = time.perf_counter()
    images, _ = generate(loaded, n, SamplerConfig(steps=steps, guidance=guidance, batch_size=n), seed)
    seconds = time.perf_counter() - start
    uint8 = to_uint8_nhwc(images)
    labels, confidence = extractor.predict(uint8)
    scores = refset.score(extractor(uint8), k_avg=5)
    return {
        "rare": float(np.isin(labels, RARE_CLASSES).mean()),
        "avgknn": float(scores["avgknn"].mean()),
        "confident": float((confidence > 0.9).mean()),
        "in_support": float(scores["in_support"].mean()),
        "s/sample": seconds / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=400)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--scales", default="0.2,0.5,1,2")
    parser.add_argument("--perturb", default="0.8")
    parser.add_argument("--stop", default="-1")
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(2)
    loaded = load_model("bundled:digits")
    extractor = DemoClassifierFeatures()
    refset = ReferenceSet.build(extractor(load_reference_images("bundled:digits")), index="exact")
    rows = [("standard", measure(loaded, extractor, refset, args.num_samples, args.steps, None, args.seed))]
    grid = itertools.product(map(float, args.scales.split(",")), map(float, args.perturb.split(",")), map(float, args.stop.split(",")))
    for w, p, stop in grid:
        guidance = MinorityGuidance(scale=w, perturb_ratio=p, stop_ratio=stop, every=args.every)
        rows.append((f"w={w:g} p={p:g} stop={stop:g}", measure(loaded, extractor, refset, args.num_samples, args.steps, guidance, args.seed)))
        print(rows[-1], flush=True)
    print(f"\n{args.num_samples} samples, {args.steps} steps, every={args.every}, seed {args.seed}")
    print(f"{'setting':28s} {'rare 8+9':>9s} {'AvgkNN':>8s} {'conf>0.9':>9s} {'in supp':>8s} {'s/sample':>9s}")
    for name, r in rows:
        print(f"{name:28s} {r['rare']:9.1%} {r['avgknn']:8.2f} {r['confident']:9.1%} {r['in_support']:8.1%} {r['s/sample']:9.4f}")


if __name__ == "__main__":
    main()
