"""Baselines the self-guided method is compared against (DESIGN §1, last paragraph).

- `boost_and_skip`: Boost-and-Skip (Um, Kim & Ye, ICML 2025): guidance-free; boosted initial
  noise and the first Δt steps of the grid skipped, then plain ancestral sampling.
- `minority_classifier`: minority guidance (Um, Lee & Ye, ICLR 2024): minority scores of real
  data → quantile levels → a noise-conditional level classifier → classifier guidance.

Both run on the same model interface and respaced grids as `minority_core.diffusion.samplers`.
"""

from minority_core.baselines.boost_and_skip import boost_and_skip_sample
from minority_core.baselines.minority_classifier import (
    LevelClassifier,
    classifier_guided_sample,
    load_level_classifier,
    minority_scores,
    quantile_levels,
    save_level_classifier,
    train_level_classifier,
)

__all__ = [
    "boost_and_skip_sample",
    "LevelClassifier",
    "classifier_guided_sample",
    "load_level_classifier",
    "minority_scores",
    "quantile_levels",
    "save_level_classifier",
    "train_level_classifier",
]
