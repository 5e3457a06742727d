"""Reference set → scores → filter → report, as flows on a real Prefect API with local Ray."""

from __future__ import annotations

import numpy as np
import pytest

from minority_core.config import SynthesisConfig
from minority_core.io import ShardStore, features_matrix
from minority_core.metrics import ReferenceSet

pytestmark = pytest.mark.usefixtures("prefect_api", "ray_local")


@pytest.fixture(scope="module")
def scored_runs(tiny_diffusers_model, tmp_path_factory):
    """A pixels reference set of the digits, and two scored arms from the tiny model."""
    from flows.scoring import build_reference
    from flows.synthesize import synthesize

    root = tmp_path_factory.mktemp("scored")
    ref = build_reference("bundled:digits", str(root / "ref"), extractor="pixels")
    runs = {}
    for arm, w in (("standard", 0.0), ("guided", 2.0)):
        cfg = SynthesisConfig.from_options(model=f"diffusers:{tiny_diffusers_model}", num_samples=36, shard_size=16, steps=6, out=str(root / arm), arm=arm, guidance_scale=w, extractor="pixels", reference=str(root / "ref"), workers=2)
        runs[arm] = synthesize(cfg)
    return root, ref, runs


def test_reference_set_has_the_digits(scored_runs):
    root, ref, _ = scored_runs
    assert ref["rows"] == 1203 and ref["dim"] == 64  # the imbalanced training split, 8×8 pixels


def test_scores_match_the_reference_set(scored_runs):
    root, _, _ = scored_runs
    store = ShardStore(str(root / "guided"))
    manifest = store.read_manifest()
    refset = ReferenceSet.load(str(root / "ref" / "pixels" / "index"))
    for record in manifest.records("features/pixels"):
        features = features_matrix(store.read_shard(record))
        scores = store.read_shard(("scores/pixels", record.index))
        expected = refset.score(features, k_avg=5)
        np.testing.assert_allclose(scores.column("avgknn").to_numpy(), expected["avgknn"], rtol=1e-6)
        np.testing.assert_allclose(scores.column("lof").to_numpy(), expected["lof"], rtol=1e-6)
        assert scores.column("in_support").to_pylist() == expected["in_support"].tolist()
    assert len(manifest.records("scores/pixels")) == 3


def test_score_resumes(scored_runs):
    from flows.scoring import score

    root, _, _ = scored_runs
    again = score(str(root / "guided"), str(root / "ref"))
    assert again["scored_shards"] == 0 and again["skipped_shards"] == 3


def test_filter_keeps_the_rarest(scored_runs):
    from flows.scoring import filter_samples

    root, _, _ = scored_runs
    result = filter_samples(str(root / "guided"), metric="avgknn", top_q=0.25, name="rarest")
    store = ShardStore(str(root / "guided"))
    manifest = store.read_manifest()
    scores = [store.read_shard(r) for r in sorted(manifest.records("scores/pixels"), key=lambda r: r.index)]
    ids = [i for t in scores for i in t.column("sample_id").to_pylist()]
    values = np.concatenate([t.column("avgknn").to_numpy() for t in scores])
    expected = {ids[i] for i in np.argsort(-values)[:9]}
    selection = store.read_shard(("selections/rarest", 0), verify=False)
    assert result["selected"] == 9 and set(selection.column("sample_id").to_pylist()) == expected


def test_report_and_artifacts(scored_runs):
    import asyncio

    from prefect.client.orchestration import get_client

    from flows.scoring import report

    root, _, _ = scored_runs
    result = report([str(root / "standard"), str(root / "guided")], str(root / "ref"), str(root), title="tiny report")
    html = (root / "report" / "index.html").read_text()
    assert "standard" in html and "guided" in html and "data:image/png;base64," in html
    assert {row["name"] for row in result["table"]} == {"standard", "guided"}

    async def keys():
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts()}

    assert {"minority-report-table", "minority-report", "minority-report-link"} <= asyncio.run(keys())


def test_bad_inputs(tmp_path, scored_runs):
    from flows.scoring import filter_samples, score

    root, _, _ = scored_runs
    with pytest.raises(ValueError, match="no run at"):
        score(str(tmp_path / "nothing"), str(root / "ref"))
    with pytest.raises(ValueError, match="exactly one of top_q"):
        filter_samples(str(root / "guided"), top_q=0.1, threshold=3.0)
    with pytest.raises(ValueError, match="metric must be one of"):
        filter_samples(str(root / "guided"), metric="beauty")
    with pytest.raises(ValueError, match="has no prompts .*drop per_prompt"):
        filter_samples(str(root / "guided"), top_q=0.1, per_prompt=True)
    with pytest.raises(ValueError, match="give top_q, not threshold"):
        filter_samples(str(root / "guided"), top_q=None, threshold=1.0, per_prompt=True)
    with pytest.raises(ValueError, match="may be credentials"):
        score(str(root / "guided"), str(root / "ref"), storage_options={"secret": "x"})
