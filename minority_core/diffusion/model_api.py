"""The one model interface every sampler and guidance function uses (docs/DESIGN.md §3).

`model(x, t, **extra)` takes a batch and integer timesteps on the model's *original* training
grid and returns ε (the shape of x), or ε and ADM-style learned-variance values stacked on dim 1
(2C channels). `extra` holds per-sample model inputs passed through as keyword arguments; today
that is class labels, `{"y": labels}`. Adapters in `minority_core.models` bring other model
families to this shape, so samplers never special-case a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

from minority_core.diffusion.schedule import NoiseSchedule
from minority_core.errors import InputError


class DenoisingModel(Protocol):
    def __call__(self, x: torch.Tensor, t: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class ModelOutput:
    eps: torch.Tensor
    var_values: torch.Tensor | None  # ADM's v in [−1, 1], or None for a fixed-variance model


ExtraInputs = Mapping[str, torch.Tensor]


def call_model(
    model: DenoisingModel,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    i: int,
    extra: ExtraInputs | None = None,
) -> ModelOutput:
    """Evaluate the model at grid index `i` of `schedule` and split ε from learned variance."""
    t = schedule.model_timestep(i, x.shape[0], x.device)
    out = model(x, t, **extra) if extra else model(x, t)
    channels = x.shape[1]
    if out.shape[1] == channels:
        return ModelOutput(out.to(x.dtype), None)
    if out.shape[1] == 2 * channels:
        eps, v = out.split(channels, dim=1)
        return ModelOutput(eps.to(x.dtype), v.to(x.dtype))
    raise InputError(
        f"the model returned {out.shape[1]} channels for a {channels}-channel input; expected "
        f"{channels} (ε) or {2 * channels} (ε and learned variance): check the model's out_channels"
    )


def prepare_extra(extra: ExtraInputs | None, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The extra model inputs on `device`, each checked to hold one row per sample."""
    prepared = {}
    for name, value in (extra or {}).items():
        value = torch.as_tensor(value).to(device)
        if name == "y" and value.shape != (batch,):
            raise InputError(f"class_labels must have shape ({batch},), got {tuple(value.shape)}")
        if value.dim() == 0 or value.shape[0] != batch:
            raise InputError(f"extra model input {name!r} must have one row per sample ({batch}), got shape {tuple(value.shape)}")
        prepared[name] = value
    return prepared


def model_device(model: object) -> torch.device:
    """Where a model's weights live (CPU for parameter-free callables such as analytic denoisers)."""
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        for p in parameters():
            return p.device
    return torch.device(getattr(model, "device", "cpu"))
