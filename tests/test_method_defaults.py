"""Per-preset method defaults: Boost-and-Skip's γ and Δt as the authors' scripts set them."""

from __future__ import annotations

import pytest

from minority_core.config.presets import resolve_sampler


@pytest.mark.parametrize(
    ("spec", "preset", "gamma"),
    [("adm:m.pt", "celeba64", 4.0), ("adm:m.pt", "lsun256", 4.0), ("adm:m.pt", "imagenet64", 2.5), ("adm:m.pt", "imagenet64to256", 2.5),
     ("bundled:digits", None, 4.0), ("diffusers:some/model", None, 4.0)],
)
def test_boost_and_skip_defaults_per_preset(spec, preset, gamma):
    config = resolve_sampler(spec, preset, {"method": "boost-and-skip"})
    assert (config.method, config.gamma, config.skip) == ("boost-and-skip", gamma, 3)
    assert resolve_sampler(spec, preset, {"method": "boost-and-skip", "gamma": 3.0}).gamma == 3.0  # a given γ wins
