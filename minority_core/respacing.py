"""Which training timesteps a respaced sampler keeps: guided-diffusion's `space_timesteps` rule.

No torch, so the config layer validates a step spec at the edge and the
schedule builds its grid from the same rule. A step spec is one of

- a count `N` (int, or its digits as text): one section of N steps;
- `"a,b,c"`: T split into len(sections) near-equal sections (the first T mod len get one extra
  step), section j walked with `a`, `b`, … steps;
- `"ddimN"`: the smallest integer stride whose `range(0, T, stride)` has exactly N entries.

Within a section of `size` steps and `count` kept ones, the position advances by the fractional
stride (size − 1)/(count − 1) (1 when count is 1) and each *accumulated* position is rounded
(Python's round, halves to even). Rounding k·stride instead differs by ±1 for 278 of the 999
counts at T = 1000 (the float sums drift across .5), so the accumulation is the rule, not a detail.
"""

from __future__ import annotations

import numpy as np

from minority_core.errors import InputError

StepSpec = int | str


def normalize_steps(spec: object) -> StepSpec:
    """A step spec in canonical form: an int count, `"ddimN"`, or `"a,b,c"` without spaces.

    Checks the form only (T is the model's); one-line InputError naming the accepted forms."""
    if isinstance(spec, bool):
        raise InputError(f"steps must be a count (e.g. 250), 'ddimN' or comma-separated section counts (e.g. 10,15,20), got {spec!r}")
    if isinstance(spec, (int, np.integer)):
        return int(spec)
    if not isinstance(spec, str):
        raise InputError(f"steps must be a count (e.g. 250), 'ddimN' or comma-separated section counts (e.g. 10,15,20), got {spec!r}")
    text = spec.strip().replace(" ", "")
    if text.isdigit():
        return int(text)
    if text.startswith("ddim") and text[4:].isdigit():
        return f"ddim{int(text[4:])}"
    parts = text.split(",")
    if len(parts) > 1 and all(p.isdigit() for p in parts):
        return ",".join(str(int(p)) for p in parts)
    raise InputError(f"steps must be a count (e.g. 250), 'ddimN' or comma-separated section counts (e.g. 10,15,20), got {spec!r}")


def step_count(spec: object) -> int:
    """How many steps a spec keeps on any schedule it fits (a sampler needs at least 2)."""
    spec = normalize_steps(spec)
    if isinstance(spec, int):
        return spec
    if spec.startswith("ddim"):
        return int(spec[4:])
    return sum(int(p) for p in spec.split(","))


def space_timesteps(num_timesteps: int, spec: object) -> np.ndarray:
    """The sorted training timesteps (0 … T−1, int64) a spec keeps on a T-step schedule.

    The running position is a cumulative sum (`np.cumsum` adds in order, as the reference's loop
    does) and np.round rounds halves to even, as Python's round."""
    spec = normalize_steps(spec)
    if isinstance(spec, str) and spec.startswith("ddim"):
        return _integer_stride(num_timesteps, int(spec[4:]))
    counts = [spec] if isinstance(spec, int) else [int(p) for p in spec.split(",")]
    if any(c < 1 for c in counts):
        raise InputError(f"steps {spec!r}: every section needs at least 1 step")
    size, extra = divmod(num_timesteps, len(counts))
    kept: list[np.ndarray] = []
    start = 0
    for j, count in enumerate(counts):
        section = size + (1 if j < extra else 0)
        if count > section:
            where = f"section {j + 1} of {section} timesteps" if len(counts) > 1 else f"this {num_timesteps}-step schedule"
            raise InputError(f"steps {spec!r}: {count} steps do not fit {where}; use at most {section}")
        stride = 1.0 if count == 1 else (section - 1) / (count - 1)
        positions = np.concatenate([[0.0], np.cumsum(np.full(count - 1, stride))])
        kept.append(start + np.round(positions).astype(np.int64))
        start += section
    # sections are disjoint and each strictly increasing (stride ≥ 1): already sorted, no repeats
    return np.concatenate(kept)


def _integer_stride(num_timesteps: int, count: int) -> np.ndarray:
    for stride in range(1, num_timesteps):
        if -(-num_timesteps // stride) == count:  # len(range(0, T, stride)) = ⌈T / stride⌉
            return np.arange(0, num_timesteps, stride, dtype=np.int64)
    raise InputError(f"steps 'ddim{count}': no integer stride gives exactly {count} steps on this {num_timesteps}-step schedule; give a plain count instead")
