"""Reference sets: features of real data plus the precomputed kNN side, built once and reused.

Layout under REFERENCE/<extractor>/: `features/shard-00000.parquet` (the real features) and
`index/` (the saved ReferenceSet: self-kNN radii and LOF densities, docs/DESIGN.md §4-5).
"""

from __future__ import annotations

import hashlib
import json
import logging

import fsspec
import numpy as np

from minority_core.errors import InputError
from minority_core.io import ShardStore, features_matrix, features_table, sample_id
from minority_core.io.retry import retry

LOG = logging.getLogger(__name__)


def reference_url(reference: str, extractor: str) -> str:
    """Where the reference set of one extractor lives."""
    return f"{reference.rstrip('/')}/{extractor}"


def reference_exists(reference: str, extractor: str, storage_options: dict) -> bool:
    fs, path = fsspec.core.url_to_fs(f"{reference_url(reference, extractor)}/index/meta.json", **storage_options)
    return bool(fs.exists(path))


def reference_digest(index_url: str, storage_options: dict) -> str:
    """sha256 of a saved set's meta.json, which holds the size and sha256 of every file of it: what
    scores record, so a set rebuilt under the same URL is told apart from the one they came from."""
    fs, path = fsspec.core.url_to_fs(f"{index_url}/meta.json", **storage_options)
    return hashlib.sha256(fs.cat_file(path)).hexdigest()


def build_reference_set(
    source: str, extractor: str, reference: str, storage_options: dict, k_lof: int, k_rarity: int, index: str, device: str,
    logger: logging.Logger | logging.LoggerAdapter = LOG, overwrite: bool = False,
) -> dict:
    """Featurise the real data of `source` (bundled:digits, an image folder, or Parquet with an image
    column), store the features and the precomputed ReferenceSet; returns its URL and size. A built
    set is immutable (scores name it): replacing it takes `overwrite`, under the set's lease."""
    from minority_core.io.lease import Lease
    from minority_core.io.sources import load_reference_images
    from minority_core.metrics import ReferenceSet
    from minority_core.metrics.features import get_extractor

    url = reference_url(reference, extractor)
    store = ShardStore(url, storage_options)
    with Lease.acquire(store, "build-reference") as lease:  # two builders of one URL: the second fails at once, naming the first
        if not overwrite and reference_exists(reference, extractor, storage_options):
            raise InputError(f"{url} already holds a reference set (runs scored against it name it): use another --reference, "
                             "or pass --overwrite to rebuild it")
        images = load_reference_images(source, storage_options)
        features = get_extractor(extractor, device=device)(images)
        store.check_writable()
        store.write_shard("features", 0, features_table([sample_id(0, i) for i in range(len(features))], features))
        built = ReferenceSet.build(features, k_lof=k_lof, k_rarity=k_rarity, index=index)
        lease.check()  # a builder that lost the lease must not write the set (its meta.json completes it)
        # each file atomic, meta.json last: a save retried whole is safe; an outage is one line (StorageError)
        retry(lambda: built.save(f"{url}/index", storage_options), f"saving the reference set {url}/index")
    logger.info("reference set %s: %d images, %d-d %s features", url, len(features), features.shape[1], extractor)
    return {"url": url, "rows": int(len(features)), "dim": int(features.shape[1])}


def load_reference_features(reference: str, extractor: str, storage_options: dict) -> np.ndarray:
    """The real features of a reference set, float32 [N, dim]."""
    store = ShardStore(reference_url(reference, extractor), storage_options)
    return features_matrix(store.read_shard(("features", 0), verify=False))


def reference_accuracy(reference: str, extractor: str, storage_options: dict) -> dict | None:
    """The reference index's checked kNN accuracy, as its meta.json keeps it (None for older sets),
    so a report can say how far its scores may be from exact search."""
    fs, path = fsspec.core.url_to_fs(f"{reference_url(reference, extractor)}/index/meta.json", **storage_options)
    return json.loads(fs.cat_file(path)).get("accuracy") if fs.exists(path) else None
