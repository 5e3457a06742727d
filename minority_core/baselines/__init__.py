"""Baselines the self-guided method is compared against (docs/DESIGN.md §1, last paragraph).

Each composes the plain samplers of `minority_core.diffusion` rather than having one of its own:

- Boost-and-Skip (Um, Kim & Ye, ICML 2025): guidance-free; `boost_and_skip(noise, grid)` gives
  the boosted start and the grid with its first Δt steps skipped, for plain ancestral sampling.
- Minority guidance (Um, Lee & Ye, ICLR 2024): minority scores of real data → quantile levels →
  a noise-conditional level classifier (`minority_classifier`) → classifier guidance, the
  `ClassifierGuidanceTerm` passed to the ancestral sampler as its `guidance`.
"""

from minority_core.baselines.boost_and_skip import boost_and_skip
from minority_core.baselines.classifier_guidance import ClassifierGuidanceTerm
from minority_core.baselines.minority_classifier import (
    LevelClassifier,
    load_level_classifier,
    minority_scores,
    quantile_levels,
    save_level_classifier,
    train_level_classifier,
)

__all__ = [
    "boost_and_skip",
    "ClassifierGuidanceTerm",
    "LevelClassifier",
    "load_level_classifier",
    "minority_scores",
    "quantile_levels",
    "save_level_classifier",
    "train_level_classifier",
]
