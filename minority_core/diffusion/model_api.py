"""The one model interface every sampler and guidance function uses (DESIGN §3).

`model(x, t)` or `model(x, t, y=labels)` takes a batch and integer timesteps on the model's
*original* training grid and returns ε (the shape of x), or ε and ADM-style learned-variance
values stacked on dim 1 (2C channels). Adapters in `minority_core.models` bring other model
families to this shape, so samplers never special-case a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from minority_core.diffusion.schedule import NoiseSchedule
from minority_core.errors import InputError


class DenoisingModel(Protocol):
    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class ModelOutput:
    eps: torch.Tensor
    var_values: torch.Tensor | None  # ADM's v in [−1, 1], or None for a fixed-variance model


def call_model(
    model: DenoisingModel,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    i: int,
    class_labels: torch.Tensor | None = None,
) -> ModelOutput:
    """Evaluate the model at grid index `i` of `schedule` and split ε from learned variance."""
    t = schedule.model_timestep(i, x.shape[0], x.device)
    out = model(x, t) if class_labels is None else model(x, t, y=class_labels)
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


def model_device(model: object) -> torch.device:
    """Where a model's weights live (CPU for parameter-free callables such as analytic denoisers)."""
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        for p in parameters():
            return p.device
    return torch.device(getattr(model, "device", "cpu"))
