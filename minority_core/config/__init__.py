"""Typed, validated run configuration: checked once at the edge, before any work starts."""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from minority_core.config.presets import defaults_for, sampler_config_for
from minority_core.errors import InputError

SECRET_KEY = re.compile(r"(secret|password|token|key$|^key|credential|session)", re.IGNORECASE)
STORAGE_OPTIONS_ENV = "MINORITY_STORAGE_OPTIONS"


class SynthesisConfig(BaseModel):
    """One synthesis run (one arm): a model, a sampler with or without guidance, and where to write."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, **data) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:  # one line naming each bad field, for library callers too
            raise InputError(describe_validation_error(exc)) from None

    model: str = "bundled:digits"
    preset: str | None = None
    upsampler: str | None = None  # imagenet64to256: the upsampler checkpoint
    adm_flags: list[str] = Field(default_factory=list)  # adm: architecture/diffusion flags, "key=value" (guided-diffusion names)
    num_samples: int = Field(gt=0)
    shard_size: int = Field(default=256, gt=0)
    out: str
    arm: str = Field(default="guided", pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")
    # sampler and guidance; None means "the model's preset default"
    guidance_scale: float | None = Field(default=None, ge=0)
    perturb_ratio: float | None = None
    every: int | None = None
    stop_ratio: float | None = None
    scale_type: Literal["var", "fixed"] | None = None
    distance: Literal["l2", "lpips"] | None = None
    mc_samples: int | None = None
    steps: int | None = None
    sampler: Literal["ancestral", "ddim"] = "ancestral"
    method: Literal["standard", "self-guided", "boost-and-skip", "minority-classifier"] = "self-guided"
    gamma: float | None = Field(default=None, gt=0)
    skip: int | None = Field(default=None, ge=0)
    classifier: str | None = None
    classifier_scale: float | None = Field(default=None, ge=0)
    eta: float = Field(default=0.0, ge=0, le=1)
    # text-to-image (latent:) models: sample k gets prompts[k mod len(prompts)]
    prompts: list[str] | None = None
    cfg_scale: float | None = Field(default=None, ge=0)
    negative_prompt: str | None = None
    # class-conditional models (e.g. ImageNet-64): sample k gets class_labels[k mod len]; None = uniform
    class_labels: list[int] | None = None
    batch_size: int = Field(default=256, gt=0)
    seed: int = Field(default=0, ge=0)
    extractor: str | None = None
    reference: str | None = None  # a reference set (build_reference's output): score + report after generating
    reference_source: str | None = None  # real data to build `reference` from when it does not exist yet
    # execution (not part of what the output depends on)
    workers: int = Field(default=2, ge=0, le=256)
    ray_address: str | None = None
    device: str = "cpu"
    overwrite: bool = False
    storage_options: dict = Field(default_factory=dict)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from minority_core.models import parse_spec

        parse_spec(value)
        return value

    @field_validator("storage_options")
    @classmethod
    def _no_secrets(cls, value: dict) -> dict:
        return check_no_secrets(value)

    @model_validator(mode="after")
    def _adm_flags_valid(self) -> SynthesisConfig:
        if self.adm_flags:
            if not self.model.startswith("adm:"):
                raise InputError(f"adm_flags apply to adm: models only; {self.model} is not one")
            self.model_options()
        return self

    def model_options(self) -> dict:
        """What load_model takes besides the spec: the ADM preset, upsampler and explicit flags."""
        from minority_core.models import load_options

        return load_options(self.preset, self.upsampler, self.adm_flags)

    @model_validator(mode="after")
    def _sampler_valid(self) -> SynthesisConfig:
        self.sampler_config()  # builds MinorityGuidance / SamplerConfig: their validation applies here
        if "://" not in self.out and not self.out.startswith("/"):
            raise InputError(f"out must be an absolute path or a URL (file://, s3://, gs://, memory://), got {self.out!r}")
        return self

    def sampler_config(self):
        """The library's SamplerConfig, preset defaults filling unset fields."""
        return sampler_config_for(
            self.model, preset=self.preset, guidance_scale=self.guidance_scale, perturb_ratio=self.perturb_ratio, every=self.every,
            stop_ratio=self.stop_ratio, scale_type=self.scale_type, distance=self.distance, mc_samples=self.mc_samples,
            steps=self.steps, sampler=self.sampler, eta=self.eta, batch_size=self.batch_size, method=self.method,
            gamma=self.gamma, skip=self.skip, classifier=self.classifier, classifier_scale=self.classifier_scale,
            prompts=self.prompts, cfg_scale=self.cfg_scale, negative_prompt=self.negative_prompt, class_labels=self.class_labels,
        )

    def resolved_extractor(self) -> str:
        return self.extractor or defaults_for(self.model)["extractor"]

    def output_identity(self) -> dict:
        """What the output bytes depend on (the manifest's config): no execution or credential fields."""
        from minority_core.models import load_options

        return {
            "model": self.model,
            "preset": self.preset,
            "upsampler": self.upsampler,
            # parsed and sorted: spellings of the same flags are the same run; absent when unused (older identities stay equal)
            **({"adm_flags": dict(sorted(load_options(adm_flags=self.adm_flags).items()))} if self.adm_flags else {}),
            "num_samples": self.num_samples,
            "shard_size": self.shard_size,
            "arm": self.arm,
            "seed": self.seed,
            "extractor": self.resolved_extractor(),
            "sampler": self.sampler_config().to_dict(),
        }

    def full_storage_options(self) -> dict:
        return resolve_storage_options(self.storage_options)


def describe_validation_error(exc: ValidationError) -> str:
    """pydantic's multi-line report as one line: `invalid config: field: reason; …`."""
    parts = [f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()]
    return "invalid config: " + "; ".join(parts)


def check_no_secrets(options: dict | None) -> dict:
    """Flow parameters are stored by Prefect in plain text: refuse anything that looks like a credential."""
    options = dict(options or {})
    secret = sorted(k for k in options if SECRET_KEY.search(str(k)))
    if secret:
        raise InputError(
            f"storage option(s) {secret} look like credentials: pass them through the environment "
            f"(e.g. AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) or {STORAGE_OPTIONS_ENV}, never as flow parameters"
        )
    return options


def resolve_storage_options(plain: dict | None) -> dict:
    """Flow-parameter options merged with credentials from the environment (never stored by Prefect)."""
    import json

    secret = json.loads(os.environ.get(STORAGE_OPTIONS_ENV, "{}") or "{}")
    merged = {**check_no_secrets(plain), **secret}
    if "client_kwargs" in (plain or {}) and "client_kwargs" in secret:
        merged["client_kwargs"] = {**plain["client_kwargs"], **secret["client_kwargs"]}
    return merged
