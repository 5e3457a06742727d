"""Run configuration: one nested, typed schema, checked once at the edge before any work starts.

`SynthesisConfig(model, sampler, output, execution)` is built the same way by the CLI, dataset
files and the Python API; presets (per-model defaults) are merged in `presets.resolve_sampler`
only. Pure data: importing it loads neither torch nor Prefect nor Ray.
"""

from minority_core.config.guidance import MinorityGuidance
from minority_core.config.presets import Preset, preset_for, resolve_sampler
from minority_core.config.sampler import SamplerConfig
from minority_core.config.storage import STORAGE_OPTIONS_ENV, check_no_secrets, parse_storage_options, resolve_storage_options
from minority_core.config.synthesis import KNOBS, ExecutionConfig, ModelConfig, OutputConfig, SynthesisConfig

__all__ = [
    "KNOBS",
    "STORAGE_OPTIONS_ENV",
    "ExecutionConfig",
    "MinorityGuidance",
    "ModelConfig",
    "OutputConfig",
    "Preset",
    "SamplerConfig",
    "SynthesisConfig",
    "check_no_secrets",
    "parse_storage_options",
    "preset_for",
    "resolve_sampler",
    "resolve_storage_options",
]
