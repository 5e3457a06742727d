"""Integrity of a run (issue #18): a run holds exactly what it says, and what it reads is checked.

Against the real thing: real files, moto S3 through the session fixtures, real Prefect and Ray
where a row needs them; tiny model, 8-16 samples, so each test takes seconds.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from minority_core.errors import InputError


def reseal(folder, name: str, data: bytes) -> None:
    """Write `name` in a saved reference set and record its new size and hash in meta.json, as a
    careful tamperer (or a buggy writer) would: only the load-time checks can tell."""
    (folder / name).write_bytes(data)
    meta = json.loads((folder / "meta.json").read_text())
    meta["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.fixture()
def saved_reference(tmp_path):
    from minority_core.metrics import ReferenceSet

    features = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    folder = tmp_path / "ref" / "index"
    ReferenceSet.build(features, k_lof=5, k_rarity=3, index="exact").save(str(folder))
    return folder, features


def test_reference_with_nan_lrd_is_one_line_naming_the_file(saved_reference):
    import io

    from minority_core.metrics import ReferenceSet

    folder, features = saved_reference
    assert np.isfinite(ReferenceSet.load(str(folder)).score(features[:3])["lof"]).all()  # the clean set loads and scores
    buffer = io.BytesIO()
    np.save(buffer, np.full(len(features), np.nan))
    reseal(folder, "lrd.npy", buffer.getvalue())
    with pytest.raises(InputError, match=r"lrd\.npy holds non-finite values .*rebuild") as err:
        ReferenceSet.load(str(folder))
    assert "\n" not in str(err.value)


def test_reference_with_inconsistent_shapes_is_refused(saved_reference):
    import io

    from minority_core.metrics import ReferenceSet

    folder, features = saved_reference
    buffer = io.BytesIO()
    np.save(buffer, np.ones(len(features) - 1))
    reseal(folder, "lrd.npy", buffer.getvalue())
    with pytest.raises(InputError, match=r"lrd\.npy has shape \(39,\).*40 rows"):
        ReferenceSet.load(str(folder))


def test_truncated_reference_meta_is_one_line_naming_it(saved_reference):
    from minority_core.metrics import ReferenceSet

    folder, _ = saved_reference
    text = (folder / "meta.json").read_text()
    (folder / "meta.json").write_text(text[: len(text) // 2])
    with pytest.raises(InputError, match=r"meta\.json is not valid JSON .*rebuild the reference set") as err:
        ReferenceSet.load(str(folder))
    assert "\n" not in str(err.value)
