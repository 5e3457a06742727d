"""Per-preset method defaults: Boost-and-Skip's γ and Δt as the authors' scripts set them; distance
'auto' made concrete at the edge (LPIPS where its weights are and the samples are images, else L2)."""

from __future__ import annotations

import pytest

from minority_core.config.guidance import MinorityGuidance
from minority_core.config.presets import preset_for, resolve_sampler
from minority_core.config.sampler import SamplerConfig
from minority_core.config.synthesis import SynthesisConfig
from minority_core.lpips_files import BACKBONE_FILES


@pytest.mark.parametrize(
    ("spec", "preset", "gamma"),
    [("adm:m.pt", "celeba64", 4.0), ("adm:m.pt", "lsun256", 4.0), ("adm:m.pt", "imagenet64", 2.5), ("adm:m.pt", "imagenet64to256", 2.5),
     ("bundled:digits", None, 4.0), ("diffusers:some/model", None, 4.0)],
)
def test_boost_and_skip_defaults_per_preset(spec, preset, gamma):
    config = resolve_sampler(spec, preset, {"method": "boost-and-skip"})
    assert (config.method, config.gamma, config.skip) == ("boost-and-skip", gamma, 3)
    assert resolve_sampler(spec, preset, {"method": "boost-and-skip", "gamma": 3.0}).gamma == 3.0  # a given γ wins


@pytest.fixture()
def lpips_files(tmp_path, monkeypatch):
    """Where the LPIPS files are looked for, empty; calling the fixture's value puts them there
    (their presence is what 'auto' decides on; loading them is test_lpips's)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("MINORITY_LPIPS_HEADS", str(tmp_path / "heads"))
    (tmp_path / "heads").mkdir()

    def put():
        checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
        checkpoints.mkdir(parents=True)
        (checkpoints / BACKBONE_FILES["alex"]).write_bytes(b"stand-in")
        (tmp_path / "heads" / "alex.pth").write_bytes(b"stand-in")

    return put


def generic_distance(**guidance) -> str:
    return resolve_sampler("diffusers:some/model", None, {"guidance": guidance}).guidance.distance


def test_auto_distance_is_made_concrete_at_the_edge(lpips_files, tmp_path):
    assert MinorityGuidance(scale=1.0).distance == "auto" and preset_for("diffusers:x").sampler.guidance.distance == "auto"
    assert generic_distance() == "l2"  # no LPIPS weights: L2
    lpips_files()
    assert generic_distance() == "lpips"  # weights and images: LPIPS
    assert generic_distance(distance="l2") == "l2"  # a given distance wins
    assert resolve_sampler("latent:some/pipe", None, {"prompts": ("a cat",), "guidance": {"distance": "auto"}}).guidance.distance == "l2"
    assert resolve_sampler("bundled:digits").guidance.distance == "l2"  # its w was tuned with L2
    # a whole SamplerConfig (the Python API) is made concrete too, and the run summary says which
    config = SynthesisConfig(model={"spec": "diffusers:some/model"}, sampler=SamplerConfig(guidance=MinorityGuidance(scale=0.4)),
                             output={"out": str(tmp_path / "run"), "num_samples": 4})
    assert config.sampler.guidance.distance == "lpips" and config.output_identity()["sampler"]["guidance"]["distance"] == "lpips"
    from flows.synthesize import _summary_markdown

    card = _summary_markdown(config, {"samples": 4, "shards": 1, "generated_shards": 1, "skipped_shards": 0, "seconds": 1.0, "report": None})
    assert "distance lpips" in card
