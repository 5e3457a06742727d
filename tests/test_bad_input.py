"""Bad input, as a table: every row must fail with one line that names the problem.

Rows span the CLI, run configs, dataset files, model files, feature files and metric parameters;
the config validators are also checked with hypothesis against the rules they implement.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from minority_core.config import SynthesisConfig
from minority_core.config.datasets import load_dataset_file
from minority_core.diffusion.guidance import MinorityGuidance
from minority_synth.cli import main

VALID_DATASET = """name: {name}
model: bundled:digits
reference: {{source: bundled:digits, url: /tmp/ref}}
output: /tmp/out
"""


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def dataset_file(tmp: Path, text: str, name: str = "ds") -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


def truncated_copy(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 3])
    return dst


def tiny_adm(tmp: Path, image_size: int) -> Path:
    from minority_core.models.adm import build_adm

    net = build_adm("celeba64", num_channels=32, num_head_channels=32, image_size=image_size, use_fp16=False)
    path = tmp / f"adm{image_size}.pt"
    torch.save(net.state_dict(), path)
    return path


def reference(n: int = 50, d: int = 4):
    from minority_core.metrics import ReferenceSet

    return ReferenceSet.build(np.random.default_rng(0).normal(size=(n, d)).astype(np.float32), k_lof=5, k_rarity=3, index="exact")


def cli_case(args, message):
    def run(tmp):
        code, output = cli(*[a.format(tmp=tmp) for a in args])
        assert code == 2, output
        return output.strip().splitlines()[-1]

    return run


def raises_case(fn, message):
    def run(tmp):
        with pytest.raises((ValueError, FileNotFoundError, RuntimeError)) as err:
            fn(tmp)
        return str(err.value)

    return run


CASES = {
    # --- CLI
    "cli: unknown model spec": (cli_case(["sample", "--model", "nope", "--out", "{tmp}/o"], ""), "unknown model spec"),
    "cli: every 0": (cli_case(["sample", "--every", "0", "--out", "{tmp}/o"], ""), "every must be an integer ≥ 1"),
    "cli: perturb ratio 0": (cli_case(["sample", "--perturb-ratio", "0", "--out", "{tmp}/o"], ""), "perturb_ratio must be in (0, 1]"),
    "cli: stop ratio 1": (cli_case(["sample", "--stop-ratio", "1", "--out", "{tmp}/o"], ""), "stop_ratio must be in [-1, 1)"),
    "cli: scale type": (cli_case(["sample", "--scale-type", "log", "--out", "{tmp}/o"], ""), "Invalid value for '--scale-type'"),
    "cli: negative scale": (cli_case(["sample", "--guidance-scale", "-1", "--out", "{tmp}/o"], ""), "scale must be a finite number ≥ 0"),
    "cli: shard size 0": (cli_case(["synthesize", "--num-samples", "4", "--shard-size", "0", "--out", "{tmp}/o"], ""), "shard_size"),
    "cli: num samples 0": (cli_case(["synthesize", "--num-samples", "0", "--out", "{tmp}/o"], ""), "num_samples"),
    "cli: storage option": (cli_case(["synthesize", "--num-samples", "4", "--out", "{tmp}/o", "--storage-option", "x"], ""), "--storage-option must be key=value"),
    "cli: unknown dataset": (cli_case(["datasets", "show", "nope"], ""), "unknown dataset 'nope'"),
    "cli: filter top-q": (cli_case(["filter", "--run", "{tmp}/none", "--top-q", "2"], ""), "top_q must be in (0, 1]"),
    "cli: eta": (cli_case(["synthesize", "--num-samples", "4", "--out", "{tmp}/o", "--sampler", "ddim", "--eta", "3"], ""), "eta"),
    "cli: device banana": (cli_case(["sample", "--device", "banana", "--out", "{tmp}/o"], ""), "device must be cpu, cuda, cuda:N or mps"),
    "cli: device cuda here": (cli_case(["sample", "--device", "cuda" if not torch.cuda.is_available() else "cuda:99", "--out", "{tmp}/o"], ""), "device 'cuda"),
    "cli: empty out": (cli_case(["synthesize", "--num-samples", "4", "--out", ""], ""), "location is empty"),
    "cli: filter threshold nan": (cli_case(["filter", "--run", "{tmp}/none", "--threshold", "nan"], ""), "threshold must be a finite number"),
    "cli: dataset workers 1000": (cli_case(["datasets", "validate", "{tmp}/w.yaml"], ""), "workers"),
    "cli: dataset timezone": (cli_case(["datasets", "validate", "{tmp}/tz.yaml"], ""), "timezone"),
    # --- configs
    "config: bundled model": (raises_case(lambda t: SynthesisConfig.from_options(model="bundled:cats", num_samples=1, out="/tmp/x"), ""), "unknown bundled model"),
    "config: arm name": (raises_case(lambda t: SynthesisConfig.from_options(num_samples=1, out="/tmp/x", arm="Bad Name!"), ""), "arm"),
    "config: credentials": (raises_case(lambda t: SynthesisConfig.from_options(num_samples=1, out="/tmp/x", storage_options={"password": "p"}), ""), "may be credentials"),
    "config: unknown field": (raises_case(lambda t: SynthesisConfig(output={"num_samples": 1, "out": "/tmp/x"}, colour="red"), ""), "Extra inputs are not permitted"),
    "config: relative out": (raises_case(lambda t: SynthesisConfig.from_options(num_samples=1, out="rel/x"), ""), "absolute path or a URL"),
    "config: mc samples": (raises_case(lambda t: SynthesisConfig.from_options(num_samples=1, out="/tmp/x", mc_samples=0), ""), "mc_samples must be an integer ≥ 1"),
    # --- dataset files
    "dataset: not yaml": (raises_case(lambda t: load_dataset_file(dataset_file(t, "name: [unclosed")), ""), "not valid YAML"),
    "dataset: not a mapping": (raises_case(lambda t: load_dataset_file(dataset_file(t, "- a\n- b\n")), ""), "must be a mapping"),
    "dataset: name mismatch": (raises_case(lambda t: load_dataset_file(dataset_file(t, VALID_DATASET.format(name="other"))), ""), "must match the file name"),
    "dataset: bad cron": (raises_case(lambda t: load_dataset_file(dataset_file(t, VALID_DATASET.format(name="ds") + "schedule: {cron: '* *'}\n")), ""), "cron must have 5 fields"),
    "dataset: unknown field": (raises_case(lambda t: load_dataset_file(dataset_file(t, VALID_DATASET.format(name="ds") + "colour: red\n")), ""), "colour: Extra inputs are not permitted"),
    "dataset: perturb ratio": (raises_case(lambda t: load_dataset_file(dataset_file(t, VALID_DATASET.format(name="ds") + "guidance: {perturb_ratio: 2}\n")), ""), "guidance.perturb_ratio"),
    "dataset: missing file": (raises_case(lambda t: load_dataset_file(t / "missing.yaml"), ""), "does not exist"),
    "dataset: count given as true": (raises_case(lambda t: load_dataset_file(dataset_file(t, VALID_DATASET.format(name="ds") + "run: {num_samples: true}\n")), ""),
                                     "run.num_samples: expected a whole number, got true"),
    "dataset: duplicated key": (raises_case(lambda t: load_dataset_file(dataset_file(t, VALID_DATASET.format(name="ds") + "output: /tmp/other\n")), ""),
                                "key 'output' appears twice"),
    "dataset: device": (raises_case(lambda t: load_dataset_file(dataset_file(t, VALID_DATASET.format(name="ds") + "run: {device: nonsense}\n")), ""),
                        "device must be cpu, cuda, cuda:N or mps"),
    # --- model files
    "model: truncated safetensors": (
        raises_case(lambda t: _truncated_unet(t), ""),
        "could not load the diffusers UNet",
    ),
    "model: truncated classifier": (
        raises_case(lambda t: _load_classifier(truncated_copy(Path(__file__).parents[1] / "minority_core/models/bundled/digits/classifier.safetensors", t / "c.safetensors")), ""),
        "do not load",
    ),
    "model: pickle minority classifier": (raises_case(lambda t: _pickled_level_classifier(t), ""), "does not load as this classifier's safetensors weights"),
    "model: beta_end 2": (raises_case(lambda t: _edited_scheduler(t, beta_end=2.0), ""), "beta_end 2.0 must satisfy"),
    "model: scheduler config not JSON": (raises_case(lambda t: _edited_scheduler(t, text="{nope"), ""), "scheduler_config.json is not valid JSON"),
    "model: num_train_timesteps many": (raises_case(lambda t: _edited_scheduler(t, num_train_timesteps="many"), ""),
                                        "num_train_timesteps is 'many', expected a whole number"),
    "model: sample_size not what the weights were trained at": (raises_case(lambda t: _edited_unet_config(t, sample_size=64), ""),
                                                                "sample_size 64, but its weights are the bundled model's, trained at 8×8"),
    "model: sample_size the UNet cannot halve": (raises_case(lambda t: _edited_unet_config(t, sample_size=6), ""), "sample_size 6 is not divisible by 4"),
    "cli: class label on an unconditional model": (cli_case(["sample", "--class-label", "1", "--num-samples", "2", "--out", "{tmp}/o"], ""),
                                                   "bundled:digits is unconditional"),
    "model: ADM wrong image size": (
        raises_case(lambda t: __import__("minority_core.models", fromlist=["load_model"]).load_model(f"adm:{tiny_adm(t, 16)}", preset="celeba64", num_channels=32, num_head_channels=32, image_size=32), ""),
        "image_size",
    ),
    "model: ADM missing file": (
        raises_case(lambda t: __import__("minority_core.models", fromlist=["load_model"]).load_model(f"adm:{t}/none.pt", preset="celeba64"), ""),
        "ADM checkpoint not found",
    ),
    # --- feature files
    "features: NaN": (raises_case(lambda t: __import__("minority_core.io", fromlist=["x"]).features_table(["a"], np.array([[np.nan, 1.0]])), ""), "NaN or inf"),
    "features: corrupt shard": (raises_case(lambda t: _corrupt_features(t), ""), "sha256"),
    "features: corrupt reference index lists": (raises_case(lambda t: _corrupt_reference(t, "lists.npy"), ""), "lists.npy in"),
    "features: corrupt reference meta": (raises_case(lambda t: _corrupt_reference(t, "meta.json"), ""), "meta.json"),
    "features: missing reference set": (raises_case(lambda t: __import__("minority_core.metrics", fromlist=["x"]).ReferenceSet.load(str(t / "none")), ""), "none"),
    # --- metric parameters
    "metric: k ≥ N": (raises_case(lambda t: reference(n=5), ""), "k"),
    "metric: dimension mismatch": (raises_case(lambda t: reference().score(np.zeros((3, 7), np.float32)), ""), "dim"),
    "metric: NaN queries": (raises_case(lambda t: reference().score(np.full((2, 4), np.nan, np.float32)), ""), "NaN"),
    "metric: precision k 0": (raises_case(lambda t: __import__("minority_core.metrics", fromlist=["x"]).precision_recall(np.zeros((5, 2)), np.zeros((5, 2)), k=0), ""), "k"),
    "metric: frechet shapes": (raises_case(lambda t: __import__("minority_core.metrics", fromlist=["x"]).frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)), ""), "must be a 3×3 covariance"),
    "metric: empty set": (raises_case(lambda t: __import__("minority_core.metrics", fromlist=["x"]).fid_from_features(np.zeros((0, 3)), np.zeros((4, 3))), ""), "empty"),
}


def _truncated_unet(tmp: Path):
    import shutil

    from minority_core.models import BUNDLED_DIR, load_model

    folder = tmp / "m"
    shutil.copytree(BUNDLED_DIR / "digits", folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    truncated_copy(weights, weights)
    return load_model(f"diffusers:{folder}")


def _pickled_level_classifier(tmp: Path):
    """A trained-looking classifier folder whose weights file is a pickle under the safetensors name."""
    import pickle

    from minority_core.baselines.minority_classifier import LevelClassifier, load_level_classifier, save_level_classifier

    folder = tmp / "clf"
    save_level_classifier(LevelClassifier(in_channels=1, num_levels=4, width=8, channel_mults=(1,)), folder)
    (folder / "level_classifier.safetensors").write_bytes(pickle.dumps({"weight": [1, 2, 3]}))
    return load_level_classifier(folder)


def _edited_scheduler(tmp: Path, text: str | None = None, **changes):
    return _edited_bundled_copy(tmp, "scheduler/scheduler_config.json", text, changes)


def _edited_unet_config(tmp: Path, **changes):
    return _edited_bundled_copy(tmp, "unet/config.json", None, changes)


def _edited_bundled_copy(tmp: Path, name: str, text: str | None, changes: dict):
    """A copy of bundled:digits with one JSON file edited (or replaced by `text`), loaded."""
    import json
    import shutil

    from minority_core.models import BUNDLED_DIR, load_model

    folder = tmp / "m"
    shutil.copytree(BUNDLED_DIR / "digits", folder)
    path = folder / name
    path.write_text(text if text is not None else json.dumps({**json.loads(path.read_text()), **changes}))
    return load_model(f"diffusers:{folder}")


def _corrupt_reference(tmp: Path, name: str):
    """A saved IVF reference set with one byte of `name` flipped, loaded."""
    from minority_core.metrics import ReferenceSet

    features = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
    ReferenceSet.build(features, k_lof=5, k_rarity=3, index="ivf").save(str(tmp / "ref"))
    path = tmp / "ref" / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return ReferenceSet.load(str(tmp / "ref"))


def _load_classifier(path: Path):
    from minority_core.models import load_digit_classifier

    return load_digit_classifier(path=path)


def _corrupt_features(tmp: Path):
    from minority_core.io import ShardStore, features_table

    store = ShardStore(str(tmp / "run"))
    record = store.write_shard("features/x", 0, features_table(["a", "b"], np.ones((2, 3), np.float32)))
    path = Path(store.shard_path("features/x", 0))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return store.read_shard(record)


def refused_case(args, files: dict[str, str] | None = None):
    """A CLI row refused before any work: exit 2, and nothing written in the test folder (its
    `files`, written first, are the input)."""

    def run(tmp):
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        before = sorted(tmp.rglob("*"))
        code, output = cli(*[a.format(tmp=tmp) for a in args])
        assert code == 2, output
        assert sorted(tmp.rglob("*")) == before, "a refused command wrote something"
        return output.strip().splitlines()[-1]

    return run


def _empty_run(tmp: Path) -> str:
    """A run whose manifest lists no shard (every one forgotten by `verify --repair`, say)."""
    from minority_core import __version__
    from minority_core.io import Manifest, ShardStore

    config = SynthesisConfig.from_options(num_samples=8, shard_size=4, out=str(tmp / "empty"))
    ShardStore(config.output.out).write_manifest(Manifest(config=config.output_identity(), code_version=__version__))
    return config.output.out


def _arm_result_of_empty_run(tmp: Path):
    from minority_core.runs.results import arm_result

    return arm_result(_empty_run(tmp), np.zeros((8, 64), np.float32), {})


def _local_cpus() -> int:
    from minority_core.config.resources import local_cpus

    return local_cpus()


LATENT_DATASET = """name: {name}
model: latent:/nonexistent/pipeline
reference: {{source: bundled:digits, url: /tmp/ref}}
output: /tmp/out
"""

# #18 "Integrity": unbounded inputs, dataset files, messages that named nothing
CASES.update({
    "cli: 10**12 samples in shards of 1": (
        refused_case(["synthesize", "--num-samples", str(10**12), "--shard-size", "1", "--out", "{tmp}/o"]),
        "are 1,000,000,000,000 shards; a run holds at most 10,000,000: raise --shard-size",
    ),
    "cli: dataset cron 99 99 99 99 99": (
        refused_case(["datasets", "validate", "{tmp}/cron.yaml"], {"cron.yaml": VALID_DATASET.format(name="cron") + "schedule: {cron: '99 99 99 99 99'}\n"}),
        "schedule.cron: Invalid cron string",
    ),
    "cli: dataset timezone Mars/Olympus": (
        refused_case(["datasets", "validate", "{tmp}/mars.yaml"], {"mars.yaml": VALID_DATASET.format(name="mars") + "schedule: {cron: '0 3 * * *', timezone: Mars/Olympus}\n"}),
        "schedule.timezone: Invalid timezone",
    ),
    "cli: dataset device banana": (
        refused_case(["datasets", "validate", "{tmp}/dev.yaml"], {"dev.yaml": VALID_DATASET.format(name="dev") + "run: {device: banana}\n"}),
        "device must be cpu, cuda, cuda:N or mps, got 'banana'",
    ),
    "cli: dataset prompts file outside": (
        refused_case(["datasets", "validate", "{tmp}/pw.yaml"], {"pw.yaml": LATENT_DATASET.format(name="pw") + "prompts: {file: ../../../../etc/passwd}\n"}),
        "prompts.file: '../../../../etc/passwd' climbs out of the folder relative paths start at",
    ),
    "cli: dataset output outside": (
        refused_case(["datasets", "validate", "{tmp}/up.yaml"], {"up.yaml": VALID_DATASET.format(name="up").replace("output: /tmp/out", "output: ../../elsewhere")}),
        "output: '../../elsewhere' climbs out of the folder relative paths start at (the project root, or the dataset file's own folder "
        "outside the project): keep it inside that folder, or give an absolute path",
    ),
    "cli: dataset reference outside": (
        refused_case(["datasets", "validate", "{tmp}/ru.yaml"], {"ru.yaml": VALID_DATASET.format(name="ru").replace("url: /tmp/ref", "url: runs/../../ref")}),
        "reference.url: 'runs/../../ref' climbs out",
    ),
    "cli: workers over this machine's CPUs": (
        refused_case(["synthesize", "--num-samples", "4", "--workers", str(min(_local_cpus() + 1, 256)), "--out", "{tmp}/o"]),
        "CPU(s) and each local worker takes one: use --workers",
    ),
    "cli: batch over this machine's memory": (
        refused_case(["synthesize", "--num-samples", "1000000", "--shard-size", "1000000", "--batch-size", "1000000", "--out", "{tmp}/o"]),
        "estimated from its architecture) but",
    ),
    "cli: class label on an unconditional model": (
        refused_case(["synthesize", "--num-samples", "4", "--class-label", "3", "--out", "{tmp}/o"]),
        "class labels [3] given but bundled:digits is unconditional",
    ),
    "cli: dataset class_labels on an unconditional model": (
        refused_case(["datasets", "validate", "{tmp}/cl.yaml"], {"cl.yaml": VALID_DATASET.format(name="cl") + "sampler: {class_labels: [3]}\n"}),
        "sampler.class_labels: class labels [3] given but bundled:digits is unconditional",
    ),
    "run: report of an empty run": (raises_case(_arm_result_of_empty_run, ""), "has no committed samples (an empty or unfinished run): run `minority-synth synthesize`"),
})


def test_table_has_at_least_30_rows():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, tmp_path):
    dataset_file(tmp_path, VALID_DATASET.format(name="w") + "run: {workers: 1000}\n", "w")
    dataset_file(tmp_path, VALID_DATASET.format(name="tz") + "schedule: {cron: '0 3 * * *', timezone: Mars/Base}\n", "tz")
    case, expected = CASES[name]
    message = case(tmp_path)
    assert expected.lower() in message.lower(), message
    assert "\n" not in message.strip(), message


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-10, max_value=10)


@settings(max_examples=200, deadline=None)
@given(scale=finite, perturb=finite, every=st.integers(-3, 10), stop=finite, mc=st.integers(-2, 4))
def test_guidance_validator_accepts_exactly_the_valid_region(scale, perturb, every, stop, mc):
    valid = scale >= 0 and 0 < perturb <= 1 and every >= 1 and -1 <= stop < 1 and mc >= 1
    try:
        g = MinorityGuidance(scale=scale, perturb_ratio=perturb, every=every, stop_ratio=stop, mc_samples=mc)
    except ValueError as err:
        assert not valid and "\n" not in str(err)
    else:
        assert valid and g.perturb_index(250) == min(math.floor(perturb * 250), 249)


@settings(max_examples=100, deadline=None)
@given(num_samples=st.integers(-5, 10_000), shard_size=st.integers(-5, 5_000), workers=st.integers(-2, 300))
def test_synthesis_config_validator(num_samples, shard_size, workers):
    valid = num_samples > 0 and shard_size > 0 and 0 <= workers <= 256
    try:
        SynthesisConfig.from_options(num_samples=num_samples, shard_size=shard_size, workers=workers, out="/tmp/x")
    except ValueError:
        assert not valid
    else:
        assert valid
