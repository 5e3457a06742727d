"""Exact k-NN and ball membership for wide features (e.g. 2048-d Inception) through a PCA projection.

The coarse search runs on z = P(x − μ), P the top principal directions (orthonormal rows), with the
exact `Engine` in p dimensions; the answers are re-ranked on the full vectors, which may be
memory-mapped (np.load(mmap_mode="r")): only the candidates' rows are read.  Certificate: a
projection with orthonormal rows is a contraction, ‖P(q − x)‖ <= ‖q − x‖, so the projected
distance, less the float32 rounding of the two projections (E_q + E_max, `_projection_error`),
is a lower bound of the true distance.  A query's k-NN are certified once its K'-th projected
distance (every row not among its K' projected candidates is at least that far in z) minus the
slack exceeds its k-th true distance among the candidates; otherwise K' is widened 4× for that
query alone.  Balls B(x, r): candidates are the z-balls of radius r + slack, each checked on the
full vectors.  So every answer is exact; the projection only decides how much is re-ranked.

Memory: N × p float32 twice (z and its GEMM operand) plus the full vectors, which stay on disk
when memory-mapped; nothing N × d is copied.
"""

from __future__ import annotations

import numpy as np
import torch

from minority_core.metrics.exact import U32, Engine, row_norms

ROW_BLOCK = 65536  # rows projected at once
PAIR_BYTES = 2**26  # float64 bytes of full-vector differences held at once in a re-rank
WIDEN = 4  # candidates per query start at WIDEN·k and grow WIDEN× until certified


def fit_projection(vectors: np.ndarray, dims: int, sample: int = 20000, seed: int = 0) -> np.ndarray:
    """The top `dims` principal directions (float64, orthonormal rows) of a row sample."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(vectors), size=min(len(vectors), sample), replace=False))
    x = np.asarray(vectors[rows], dtype=np.float64)
    x -= x.mean(axis=0)
    _, vecs = np.linalg.eigh(x.T @ x)
    top = vecs[:, ::-1][:, :dims].T
    q, _ = np.linalg.qr(top.T)  # re-orthonormalise in float64
    return np.ascontiguousarray(q.T)


def project(vectors: np.ndarray, mean: np.ndarray, projection: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z = P(v − μ) in float32 by row blocks, and per row the bound on its rounding error."""
    pt = np.ascontiguousarray(projection.T, dtype=np.float32)
    z = np.empty((len(vectors), len(projection)), dtype=np.float32)
    err = np.empty(len(vectors))
    for s in range(0, len(vectors), ROW_BLOCK):
        block = np.asarray(vectors[s : s + ROW_BLOCK], dtype=np.float32) - mean
        np.matmul(block, pt, out=z[s : s + ROW_BLOCK])
        err[s : s + ROW_BLOCK] = _projection_error(np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64)),
                                                    float(np.linalg.norm(mean)), *projection.shape)
    return z, err


def _projection_error(norm: np.ndarray, mean_norm: float, p: int, d: int) -> np.ndarray:
    """Bound on ‖fl(P̃ fl(v − μ)) − P(v − μ)‖: the centring (U per coordinate), P's float32 rounding
    (‖P̃ − P‖₂ <= U √p) and the GEMM (γ_d per row, √p rows), all times ‖v − μ‖ or its bound."""
    centred = norm + U32 * (norm + mean_norm)
    return 1.05 * (U32 * (norm + mean_norm) + U32 * np.sqrt(p) * centred + (d + 2) * U32 * np.sqrt(p) * centred
                   + U32 * centred)


class ProjectedEngine:
    """`Engine`'s interface (knn, ball_pairs, n_lists) over full vectors through an inner Engine on z."""

    def __init__(self, vectors: np.ndarray, mean: np.ndarray, projection: np.ndarray, inner: Engine, z_error: np.ndarray):
        self.vectors, self.mean, self.projection, self.inner = vectors, mean.astype(np.float32), projection, inner
        self.n = len(vectors)
        self.e_max = float(z_error.max())
        self.candidates_reranked = 0  # full-vector distances computed (what the certificate costs)

    @property
    def n_lists(self) -> int:
        return self.inner.n_lists

    def knn(self, queries: np.ndarray, k: int, self_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        zq, eq = project(queries, self.mean, self.projection)
        avail = self.n - (self_ids is not None)
        dist, ids = np.empty((len(queries), k)), np.empty((len(queries), k), dtype=np.int64)
        todo, width = np.arange(len(queries)), min(avail, WIDEN * k)
        while len(todo):
            own = None if self_ids is None else self_ids[todo]
            zd, zi = self.inner.knn(zq[todo], width, own)
            true = self.distances(queries[todo], zi)
            by_id = np.argsort(zi, axis=1, kind="stable")
            true, cand = np.take_along_axis(true, by_id, 1), np.take_along_axis(zi, by_id, 1)
            best = np.argsort(true, axis=1, kind="stable")[:, :k]  # by (distance, id)
            dist[todo], ids[todo] = np.take_along_axis(true, best, 1), np.take_along_axis(cand, best, 1)
            if width >= avail:
                break
            certified = zd[:, -1] - eq[todo] - self.e_max > dist[todo, -1]
            todo, width = todo[~certified], min(avail, width * WIDEN)
        return dist, ids

    def distances(self, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """‖q_i − x_ids[i, j]‖ in float64 (differences taken in float64: exact), reading only those rows."""
        out = np.empty(ids.shape)
        per = max(1, PAIR_BYTES // (8 * self.vectors.shape[1] * max(1, ids.shape[1])))
        for s in range(0, len(ids), per):
            rows = np.asarray(self.vectors[ids[s : s + per].ravel()]).reshape(*ids[s : s + per].shape, -1)
            diff = torch.from_numpy(rows.astype(np.float64)) - torch.from_numpy(queries[s : s + per, None, :].astype(np.float64))
            out[s : s + per] = row_norms(diff).numpy()
        self.candidates_reranked += ids.size
        return out

    def ball_pairs(self, queries: np.ndarray, radii: np.ndarray, inclusive: bool, lo=None, hi=None):
        """`Engine.ball_pairs` exactly: z-balls of radius r + slack give the candidates, each is
        checked on the full vectors.  `hi` may be lowered by the caller between yields."""
        zq, eq = project(queries, self.mean, self.projection)
        slack = float(eq.max(initial=0.0)) + self.e_max
        lo = np.full(len(queries), -np.inf) if lo is None else lo
        hi = np.full(len(queries), np.inf) if hi is None else hi
        hi_z = hi + slack
        wide = radii + slack
        for rows, refs in self.inner.ball_pairs(zq, wide, True, lo + slack, hi_z):
            d = self.distances(queries[rows], refs[:, None])[:, 0]
            r = radii[refs]
            keep = ((d <= r) if inclusive else (d < r)) & (r > lo[rows]) & (r < hi[rows])
            if keep.any():
                yield rows[keep], refs[keep]
                np.add(hi, slack, out=hi_z)  # the caller may have lowered `hi`
