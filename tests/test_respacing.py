"""Respacing against guided-diffusion's documented `space_timesteps` rule (re-stated here as the
oracle, loop by loop), for every step count at T = 1000 and 4000, its ddimN and multi-section forms."""

from __future__ import annotations

import numpy as np
import pytest

from minority_core.config.presets import resolve_sampler
from minority_core.config.sampler import SamplerConfig
from minority_core.diffusion.schedule import NoiseSchedule
from minority_core.errors import InputError
from minority_core.respacing import space_timesteps


def oracle(T: int, sections: list[int]) -> list[int]:  # noqa: N803 - the paper's symbol
    """guided-diffusion's rule: split T into len(sections) parts (the first T % len one longer);
    walk each with a running position += (size-1)/(count-1), keeping round(position) each time."""
    n = len(sections)
    kept = set()
    start = 0
    for j in range(n):
        size = T // n + (1 if j < T % n else 0)
        count = sections[j]
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.add(start + round(position))
            position = position + stride
        start = start + size
    return sorted(kept)


def ddim_oracle(T: int, n: int) -> list[int]:  # noqa: N803
    """ddimN: the first stride i = 1, 2, … with len(range(0, T, i)) == N."""
    for i in range(1, T):
        if len(range(0, T, i)) == n:
            return list(range(0, T, i))
    raise AssertionError("no stride")


def every_count_oracle(T: int) -> np.ndarray:  # noqa: N803
    """The one-section rule for all counts c = 1 … T at once: column c−1 holds count c's loop
    (a position starting at 0, += (T−1)/(c−1) per kept step, 1 for c = 1), row k its k-th kept
    step, rounded halves-to-even as Python's round (np.rint)."""
    stride = np.ones(T)
    stride[1:] = (T - 1) / np.arange(1, T)
    position = np.zeros(T)
    kept = np.zeros((T, T), dtype=np.int16)
    for k in range(T):
        kept[k] = np.rint(position)
        position = position + stride
    return kept


@pytest.mark.parametrize("T", [1000, 4000])
def test_every_count_matches_the_rule(T):  # noqa: N803
    kept = every_count_oracle(T)
    for count in range(1, T + 1):
        assert np.array_equal(space_timesteps(T, count), kept[:count, count - 1]), count
    for count in (2, 21, 111, 249, 251, T // 3, T - 1):  # spot checks against the plain loop
        assert space_timesteps(T, count).tolist() == oracle(T, [count])
    if T == 1000:  # the old rule, round(k·stride), differs for 278 of the 999 counts (the audit)
        old = [np.unique(np.rint(np.arange(c) * ((T - 1) / (c - 1)))) for c in range(2, T + 1)]
        assert sum(not np.array_equal(o, kept[:c, c - 1]) for c, o in zip(range(2, T + 1), old)) == 278


def test_hand_computed_grids():
    assert space_timesteps(10, 4).tolist() == [0, 3, 6, 9]
    assert space_timesteps(10, 1).tolist() == [0]
    assert space_timesteps(10, "ddim3").tolist() == [0, 4, 8]  # stride 3 gives 4 steps, 4 gives 3
    assert space_timesteps(10, "2,3").tolist() == [0, 4, 5, 7, 9]  # sections [0,5) and [5,10)
    assert space_timesteps(11, "2,3").tolist() == [0, 5, 6, 8, 10]  # the first section is one longer
    # count 21 at T = 1000: the accumulated stride 49.95 lands on ...,849,899,949,999 ...
    grid = space_timesteps(1000, 21).tolist()
    assert len(grid) == 21 and grid[0] == 0 and grid[-1] == 999
    assert grid != sorted({round(k * (999 / 20)) for k in range(21)})


def oracle_or_ddim(T: int, spec: int | str) -> list[int]:  # noqa: N803
    if isinstance(spec, str) and spec.startswith("ddim"):
        return ddim_oracle(T, int(spec[4:]))
    return oracle(T, [int(c) for c in str(spec).split(",")])


@pytest.mark.parametrize("T", [1000, 4000])
def test_ddim_and_multi_section_forms(T):  # noqa: N803
    for n in (2, 10, 25, 50, 100, 250, 500, T):
        assert space_timesteps(T, f"ddim{n}").tolist() == ddim_oracle(T, n)
    for spec in ("10,15,20", "1,1,1", "100,7", "3,250,9,40"):
        assert space_timesteps(T, spec).tolist() == oracle(T, [int(c) for c in spec.split(",")])


def test_respaced_schedule_uses_the_kept_steps():
    base = NoiseSchedule.linear(1000)
    for spec in (21, 111, "ddim50", "10,15,20"):
        grid = base.respace(spec)
        assert grid.timesteps.tolist() == space_timesteps(1000, spec).tolist() == oracle_or_ddim(1000, spec)
        np.testing.assert_allclose(grid.alphas_cumprod, base.alphas_cumprod[grid.timesteps], rtol=1e-12)
    one = base.respace(1)
    assert one.timesteps.tolist() == [0] and one.fixed_log_variance(0) == base.fixed_log_variance(0)


@pytest.mark.parametrize(
    "spec, message",
    [
        (1001, "1001 steps do not fit this 1000-step schedule"),
        ("ddim999", "no integer stride gives exactly 999"),
        ("400,400,400", "400 steps do not fit section 1 of 334"),
        ("10,0", "every section needs at least 1 step"),
        ("fifty", "steps must be a count"),
        (2.5, "steps must be a count"),
        (True, "steps must be a count"),
    ],
)
def test_bad_specs_are_one_line(spec, message):
    with pytest.raises(InputError) as err:
        NoiseSchedule.linear(1000).respace(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_config_takes_every_form():
    assert SamplerConfig(steps="250").steps == 250  # the CLI's text: same identity as the int
    assert SamplerConfig(steps=" ddim50 ").steps == "ddim50"
    assert SamplerConfig(steps="10, 15,20").steps == "10,15,20"
    assert resolve_sampler("bundled:digits", None, {"steps": "ddim25"}).to_dict()["steps"] == "ddim25"
    for bad in (1, "ddim1", "1", "x"):
        with pytest.raises(InputError, match="steps must"):
            SamplerConfig(steps=bad)
