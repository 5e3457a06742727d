"""One synthesis run's configuration: a nested, typed schema validated once at the edge.

`SynthesisConfig(model, sampler, output, execution)`: the model to load, how to sample (the
`SamplerConfig`, guidance included), what to write where, and how to run it. The CLI, dataset
files and the Python API all build it, either nested or through the flat keyword form
(`SynthesisConfig.from_options(model=..., guidance_scale=..., out=...)`), whose names are the
knobs' declared flat names (minority_core.config.fields). Missing sampler settings come from
the model's preset (minority_core.config.presets), merged in one place. The dict form
(`model_dump`) round-trips and is what Prefect stores as the flow parameter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_serializer, field_validator, model_validator

from minority_core.config.fields import Knob, dataclass_knobs, model_knobs
from minority_core.config.guidance import MinorityGuidance
from minority_core.config.presets import concrete_distance, preset_for, resolve_sampler
from minority_core.config.sampler import SamplerConfig
from minority_core.config.storage import check_no_secrets, resolve_storage_options
from minority_core.errors import InputError
from minority_core.io.manifest import MAX_ROW, MAX_SHARD_INDEX

ARM_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"


class Section(BaseModel):
    """A config part: frozen, unknown keys refused, errors as one InputError line."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:  # one line naming each bad field, for library callers too
            raise InputError(describe_validation_error(exc)) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            raise InputError(describe_validation_error(exc)) from None


class ModelConfig(Section):
    """Which model to load, and how (preset, upsampler, explicit architecture flags)."""

    spec: str = Field(
        "bundled:digits", description="bundled:digits, diffusers:PATH_OR_ID, adm:PATH or latent:PATH (a Stable-Diffusion-layout folder)",
        json_schema_extra={"flag": "model"},
    )
    preset: str | None = Field(None, description="ADM preset for adm: specs (celeba64, lsun256, imagenet64, imagenet64to256)")
    upsampler: str | None = Field(None, description="imagenet64to256: the 64→256 upsampler checkpoint (the --model is the 64 px one)")
    adm_flags: tuple[str, ...] = Field(
        (), description="adm: models: an architecture/diffusion flag, guided-diffusion's name, key=value (e.g. num_channels=256, "
        "attention_resolutions=32,16,8, learn_sigma=true); overrides the preset; repeatable", json_schema_extra={"cli": "adm-flag"},
    )

    @field_validator("spec")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from minority_core.models import parse_spec

        parse_spec(value)
        return value

    @model_validator(mode="after")
    def _adm_flags_valid(self) -> ModelConfig:
        if self.adm_flags:
            if not self.spec.startswith("adm:"):
                raise InputError(f"adm_flags apply to adm: models only; {self.spec} is not one (drop --adm-flag)")
            self.load_options()
        return self

    def load_options(self) -> dict:
        """What load_model takes besides the spec: the ADM preset, upsampler and parsed flags."""
        from minority_core.models import load_options

        return load_options(self.preset, self.upsampler, self.adm_flags)

    def identity(self) -> dict:
        """What the samples depend on; flags parsed and sorted (spellings of the same flags are one
        run), absent when unused so the identities of earlier runs stay equal."""
        from minority_core.models import load_options

        flags = {"adm_flags": dict(sorted(load_options(adm_flags=self.adm_flags).items()))} if self.adm_flags else {}
        return {"model": self.spec, "preset": self.preset, "upsampler": self.upsampler, **flags}


def _not_bool(value: Any) -> Any:
    """A count given as true/false (YAML `num_samples: true`) is a mistake, not 1 or 0."""
    if isinstance(value, bool):
        raise InputError(f"expected a whole number, got {str(value).lower()}")
    return value


Count = Annotated[int, BeforeValidator(_not_bool)]
DEVICE_PATTERN = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


class OutputConfig(Section):
    """What to write and where: sizes, the run seed, the arm's name, the scoring side."""

    out: str = Field(description="output location: a folder, file://, s3://, gs:// or memory:// URL")
    num_samples: Count = Field(gt=0, description="samples in the run")
    shard_size: Count = Field(256, gt=0, description="samples per Parquet shard (the unit of resume)")
    arm: str = Field("guided", pattern=ARM_PATTERN, description="name of this arm in reports (e.g. standard, guided)")
    seed: Count = Field(0, ge=0, description="run seed; shard k's seed derives from (seed, k) alone")
    extractor: str | None = Field(None, description="feature extractor for scoring (default: the model's preset)")
    reference: str | None = Field(None, description="a reference set (build-reference's output): score and report after generating")
    reference_source: str | None = Field(None, description="real data to build --reference from when it does not exist yet")
    storage_options: dict = Field(default_factory=dict)  # fsspec options without credentials (the CLI's --storage-option)
    overwrite: bool = Field(False, description="replace a different earlier run at --out")

    @field_validator("out")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if "://" not in value and not value.startswith("/"):
            raise InputError(f"out must be an absolute path or a URL (file://, s3://, gs://, memory://), got {value!r}")
        return value

    @field_validator("storage_options")
    @classmethod
    def _no_secrets(cls, value: dict) -> dict:
        return check_no_secrets(value)

    @model_validator(mode="after")
    def _within_limits(self) -> OutputConfig:
        """What the planner and the file names handle, refused here rather than at shard 10,000,000."""
        if self.shard_size > MAX_ROW + 1:
            raise InputError(f"shard_size {self.shard_size:,} is above the {MAX_ROW + 1:,} rows a shard holds: use a smaller --shard-size")
        shards = -(-self.num_samples // self.shard_size)
        if shards > MAX_SHARD_INDEX + 1:
            raise InputError(f"{self.num_samples:,} samples in shards of {self.shard_size:,} are {shards:,} shards; a run holds at most "
                             f"{MAX_SHARD_INDEX + 1:,}: raise --shard-size (or split the run)")
        return self


class ExecutionConfig(Section):
    """How to run it; nothing here changes the output bytes."""

    workers: Count = Field(2, ge=0, le=256, description="CPU Ray actors (one per GPU where there are GPUs); 0 = in-process")
    ray_address: str | None = Field(None, description="an existing Ray cluster (default: local Ray, or $RAY_ADDRESS)")
    device: str = Field("cpu", description="cpu, cuda or cuda:N")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not DEVICE_PATTERN.match(value):
            raise InputError(f"device must be cpu, cuda, cuda:N or mps, got {value!r}")
        return value

    @model_validator(mode="after")
    def _device_here(self) -> ExecutionConfig:
        """In-process runs use this machine's device: say now if it has none (Ray workers check their own node's)."""
        if self.workers == 0:
            check_device_available(self.device)
        return self


def check_device_available(device: str) -> None:
    """One line (InputError) where `device` is not usable on this machine, before any work."""
    if device == "cpu":
        return
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise InputError(f"device {device!r}: no CUDA device here (torch {torch.__version__}, {build}): use --device cpu, or run on a GPU machine")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s): use cuda:0 … cuda:{torch.cuda.device_count() - 1}")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise InputError("device 'mps': no Apple GPU here: use --device cpu")


class SynthesisConfig(Section):
    """One synthesis run (one arm): a model, a sampler with or without guidance, where to write, how to run."""

    model: ModelConfig = ModelConfig()
    sampler: SamplerConfig
    output: OutputConfig
    execution: ExecutionConfig = ExecutionConfig()

    @model_validator(mode="before")
    @classmethod
    def _merge_presets(cls, data: Any) -> Any:
        """The one place presets meet given values: a partial (or absent) sampler mapping is laid
        over the model's preset; an absent extractor is the preset's."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        model = data.get("model", ModelConfig())
        if isinstance(model, str):
            model = {"spec": model}
        model = model if isinstance(model, ModelConfig) else ModelConfig.model_validate(model)
        data["model"] = model
        sampler = data.get("sampler")
        if not isinstance(sampler, SamplerConfig):
            data["sampler"] = resolve_sampler(model.spec, model.preset, _sampler_overrides(sampler))
        else:
            data["sampler"] = concrete_distance(sampler, model.spec)
        output = data.get("output")
        if isinstance(output, Mapping) and output.get("extractor") is None:
            data["output"] = {**output, "extractor": preset_for(model.spec, model.preset).extractor}
        elif isinstance(output, OutputConfig) and output.extractor is None:
            data["output"] = output.model_copy(update={"extractor": preset_for(model.spec, model.preset).extractor})
        return data

    @field_serializer("sampler")
    def _sampler_dict(self, sampler: SamplerConfig) -> dict:
        return sampler.to_dict()

    # ----- the flat keyword form

    @classmethod
    def from_options(cls, **options: Any) -> SynthesisConfig:
        """Build from flat keywords (`model=`, `guidance_scale=`, `steps=`, `out=`, `workers=`, ...):
        each goes to the section that declares it; None means "not given" (the preset decides)."""
        by_flat = {k.flat: k for k in KNOBS}
        unknown = sorted(set(options) - set(by_flat))
        if unknown:
            raise InputError(f"invalid config: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(by_flat))}")
        nested: dict[str, Any] = {"sampler": {}, "output": {}, "execution": {}, "model": {}}
        for flat, value in options.items():
            if value is None:
                continue
            path = by_flat[flat].path
            target = nested
            for part in path[:-1]:
                target = target.setdefault(part, {})
            target[path[-1]] = tuple(value) if isinstance(value, list) and by_flat[flat].repeated else value
        return cls(**nested)

    def options(self) -> dict[str, Any]:
        """The flat keywords that rebuild this config (`from_options(**c.options()) == c`)."""
        sections = {"model": self.model.model_dump(), "output": self.output.model_dump(), "execution": self.execution.model_dump(), "sampler": self.sampler.to_dict()}
        out: dict[str, Any] = {}
        for knob in KNOBS:
            value: Any = sections
            for part in knob.path:
                value = value.get(part) if isinstance(value, Mapping) else None
            if value is not None:
                out[knob.flat] = value
        return out

    def replace(self, **changes: Any) -> SynthesisConfig:
        """A copy with some flat options changed, validated (and preset-merged) like any config."""
        return SynthesisConfig.from_options(**{**self.options(), **changes})

    # ----- what the run layer asks of it

    def output_identity(self) -> dict:
        """What the output bytes depend on (the manifest's config): no execution or credential fields."""
        o = self.output
        return {
            **self.model.identity(),
            "num_samples": o.num_samples,
            "shard_size": o.shard_size,
            "arm": o.arm,
            "seed": o.seed,
            "extractor": o.extractor,
            "sampler": self.sampler.to_dict(),
        }

    def full_storage_options(self) -> dict:
        """The plain options merged with credentials from the environment (for the processes that write)."""
        return resolve_storage_options(self.output.storage_options)


KNOBS: list[Knob] = [
    *model_knobs(ModelConfig, ("model",)),
    *dataclass_knobs(SamplerConfig, ("sampler",)),
    *dataclass_knobs(MinorityGuidance, ("sampler", "guidance")),
    *model_knobs(OutputConfig, ("output",)),
    Knob("storage_options", ("output", "storage_options"), dict, None, "fsspec options without credentials", "storage-option"),
    *model_knobs(ExecutionConfig, ("execution",)),
]


def _sampler_overrides(sampler: Any) -> dict:
    """A sampler mapping as resolve_sampler takes it (a nested MinorityGuidance becomes a mapping)."""
    given = dict(sampler or {})
    guidance = given.get("guidance")
    if isinstance(guidance, MinorityGuidance):
        given["guidance"] = guidance.to_dict()
    return given


def describe_validation_error(exc: ValidationError) -> str:
    """pydantic's multi-line report as one line: `invalid config: section.field: reason; …`, with our
    own errors (raised in validators, possibly of a nested section) in their own words."""
    parts = []
    for error in exc.errors():
        cause = (error.get("ctx") or {}).get("error")
        message = str(cause) if isinstance(cause, InputError) else error["msg"]
        message = message.removeprefix("invalid config: ")
        where = ".".join(map(str, error["loc"]))
        parts.append(f"{where}: {message}" if where else message)
    return "invalid config: " + "; ".join(parts)
