"""Exact k-NN and ball membership at float32-GEMM speed, with a rounding-error bound per query.

The distance work is one float32 matrix product per block, A = 2 q·x − ‖x‖² on mean-centred
data, so that ‖q − x‖² = ‖q‖² − A.  Every A carries a rigorous bound F_q on its distance to the
true squared distance between the *original* vectors (`_error_bound`: the GEMM's γ_{d+1}
(2‖q‖·max‖x‖ + max‖x‖²) plus the centring rounding), and float32 settles everything the bound
allows:

* k-NN.  Per query a small pool keeps the largest A seen; a reference whose A is below the
  pool's k-th largest minus 2F cannot be among the k nearest (k pooled rows are nearer), so a
  block's rows are filtered by one max-reduction over groups of GROUP columns and only the few
  above the line enter the pool.  At the end the pooled rows are recomputed in float64 from the
  original vectors (exact differences) and sorted: exact distances and the exact k-th boundary.
  A pool that had to drop a row above the final line is widened and redone (never silently cut).
* Balls B(x, r).  A pair is certainly inside when ‖q‖² − A < r² − F, certainly outside when
  above r² + F; only the pairs in between are recomputed in float64.

References live in lists (contiguous, each padded to a multiple of GROUP).  Without centroids
("exact") every list is scanned; its lists are compact (rows ordered by a cheap k-means), queries
are taken in the order of their nearest list and each query block scans the lists nearest its
mean first, so the lines are tight after one list and later tiles add few candidates (measured at
50k × 64: 74 candidates a query, 209 in row order).  GEMMs run on cache-sized tiles into one
reused buffer.  Ball scans read a second, radius-sorted layout (`_BallLayout`).  With centroids and list radii ("ivf") the lower bound
‖q − c‖ − ρ of a list's distances lets a query skip lists that cannot hold a neighbour (or a ball
containing it): lists are scanned nearest first, in rounds of doubling width, until no unscanned
list's bound is below the query's k-th distance.  So the IVF answers are exact too (certified
per query); the index only changes how much is scanned.

The same code runs on a CUDA device through torch (`device`), the rounding bound then assuming
full float32 matmuls (TF32 is refused).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from minority_core.errors import InputError

U32 = 2.0**-24  # unit roundoff of float32
GROUP = 32  # columns per max-reduction of the candidate filter
QUERY_BLOCK = 512  # queries per GEMM block
REF_BLOCK = 8192  # references per radius-sorted list of the exact kind's ball scans
REF_TILE = 1024  # references per GEMM tile (and per list of the exact kind's kNN): 1024 × 512 × 4 B = 2 MiB, in cache
MERGE_LISTS = 8  # the exact scan merges its candidates into the pools after the first list, then every 8
LB_ELEMENTS = 2**24  # (query, list) lower bounds held at once: bounds the query chunk of an IVF scan
QUERY_CHUNK = 65536  # queries whose candidate pools are held at once
POOL_EXTRA = 8  # pool slots beyond k; a pool that overflows is widened 4x and redone
NPROBE_START = 2  # lists scanned per query in the first round of an IVF search (then 2x per round)
PAIR_BLOCK = 2**16  # pairs recomputed in float64 at once
PAD = -1.0e30  # the constant column of padding rows: their A is never a candidate


def torch_device(device: str) -> torch.device:
    """'cpu' | 'auto' | 'gpu' | 'cuda' | 'cuda:N' as a torch device.  'auto' falls back to the CPU
    without CUDA; a GPU asked for without one (or an unknown index) is a one-line InputError."""
    if torch.get_float32_matmul_precision() != "highest":
        raise InputError(
            f"torch float32 matmul precision is {torch.get_float32_matmul_precision()!r}, which breaks the "
            "float32 error bounds: call torch.set_float32_matmul_precision('highest')"
        )
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build, no GPU visible"
        raise InputError(f"device={device!r} but torch sees no CUDA device ({build}): use device='cpu' or 'auto'")
    index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
    if index >= torch.cuda.device_count():
        raise InputError(
            f"device={device!r} but torch sees {torch.cuda.device_count()} CUDA device(s): use cuda:0 .. "
            f"cuda:{torch.cuda.device_count() - 1}"
        )
    if torch.backends.cuda.matmul.allow_tf32:
        raise InputError(
            "torch.backends.cuda.matmul.allow_tf32 is on, which breaks the float32 error bounds: set it to False"
        )
    return torch.device("cuda", index)


class Engine:
    """References grouped in lists, as float32 GEMM operands, plus what the bounds need.

    `lists`: row ids per list (any order inside); `centroids` (float64, centred coordinates) turn
    on the certified pruning; without them every list is scanned."""

    def __init__(
        self,
        vectors: np.ndarray,
        mean: np.ndarray,
        lists: list[np.ndarray],
        centroids: np.ndarray | None,
        device: torch.device,
    ) -> None:
        self.vectors = vectors
        self.mean = mean.astype(np.float32)
        self.device = device
        self.n, self.dim = vectors.shape
        sizes = np.array([len(ids) for ids in lists], dtype=np.int64)
        padded = -(-sizes // GROUP) * GROUP
        self.starts = np.concatenate([[0], np.cumsum(padded)])
        self.order = np.full(int(self.starts[-1]), -1, dtype=np.int64)  # position -> row id (-1: padding)
        for start, ids in zip(self.starts, lists):
            self.order[start : start + len(ids)] = ids
        self.pos_of = np.empty(self.n, dtype=np.int64)
        self.pos_of[self.order[self.order >= 0]] = np.flatnonzero(self.order >= 0)
        xc = np.zeros((len(self.order), self.dim), dtype=np.float32)
        real = self.order >= 0
        xc[real] = vectors[self.order[real]] - self.mean
        self.xn = np.einsum("ij,ij->i", xc, xc, dtype=np.float64)  # buffered: no float64 copy of xc
        self.xmax = float(np.sqrt(self.xn.max()))
        self.xaug, self.cmax = self._operand(xc, -self.xn, real)
        self.lists = lists
        self.centroids = centroids
        self.list_radius = None if centroids is None else _list_radii(xc, self.starts, sizes, centroids)
        # where each list lies (the exact kind's scan order per query block); IVF: its centroids
        self.list_means = centroids if centroids is not None else _list_means(xc, self.starts, sizes)
        del xc
        self.torch_vectors = _tensor(vectors).to(device)
        self.order_t = _tensor(self.order).to(device)
        self._balls: dict[tuple[int, bool], tuple] = {}

    @property
    def n_lists(self) -> int:
        return len(self.starts) - 1

    def _operand(self, xc: np.ndarray, const: np.ndarray, real: np.ndarray) -> tuple[torch.Tensor, float]:
        """[2x, const] as a float32 (positions × d+1) tensor; padding rows get PAD."""
        col = np.where(real, const, PAD).astype(np.float32)
        aug = np.empty((len(xc), self.dim + 1), dtype=np.float32)
        np.multiply(xc, 2, out=aug[:, :-1])
        aug[:, -1] = col
        return _tensor(aug).to(self.device), float(np.abs(const).max(initial=0.0))

    # ------------------------------------------------------------ query preparation

    def _prepare(self, queries: np.ndarray, cmax: float) -> _Queries:
        qc = np.ascontiguousarray(queries - self.mean, dtype=np.float32)
        qn = np.einsum("ij,ij->i", qc.astype(np.float64), qc.astype(np.float64))
        bound = _error_bound(np.sqrt(qn), self.xmax, cmax, self.dim)
        aug = np.ones((len(qc), self.dim + 1), dtype=np.float32)
        aug[:, :-1] = qc
        return _Queries(qc, qn, bound, _tensor(aug).to(self.device), self.device)

    def _lower_bounds(self, qc: np.ndarray, with_centre_distance: bool = False):
        """Lower bound of the distance from each query to any member of each list (float64), and
        with `with_centre_distance` the distances to the centroids too."""
        c = self.centroids
        qc64 = qc.astype(np.float64)
        qn = np.einsum("ij,ij->i", qc64, qc64)
        cn = np.einsum("ij,ij->i", c, c)
        sq = qn[:, None] + cn[None, :] - 2 * (qc64 @ c.T)
        sq -= 1e-12 * (qn[:, None] + cn[None, :])  # float64 rounding of the expansion, generously
        delta = 1.01 * U32 * (np.sqrt(qn) + self.xmax)  # centring error between stored and original
        centre = np.sqrt(np.maximum(sq, 0))
        lb = centre - self.list_radius[None, :] - delta[:, None]
        return (lb, centre) if with_centre_distance else lb

    # ------------------------------------------------------------ k-NN

    def knn(self, queries: np.ndarray, k: int, self_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact k nearest rows of each query (float64 distances, row ids), nearest first, ties by id.
        `self_ids`: each query's own row, never its own neighbour (duplicates still are)."""
        chunk = QUERY_CHUNK if self.centroids is None else max(1, min(QUERY_CHUNK, LB_ELEMENTS // self.n_lists))
        dist = np.empty((len(queries), k))
        ids = np.empty((len(queries), k), dtype=np.int64)
        perm = self._locality_order(queries, self_ids)
        with _gemm_only_threads():
            for s in range(0, len(queries), chunk):
                rows = perm[s : s + chunk]
                own = None if self_ids is None else self_ids[rows]
                dist[rows], ids[rows] = self._knn_chunk(queries[rows], k, own, k + POOL_EXTRA)
        return dist, ids

    def _locality_order(self, queries: np.ndarray, self_ids: np.ndarray | None) -> np.ndarray:
        """Queries ordered by their nearest list (self-queries: by their own), so that a query
        block lies in one region and its first lists give it tight lines: then later tiles add
        few candidates (the answers do not depend on the order)."""
        if self_ids is not None:
            key = self.pos_of[self_ids]
        else:
            means = self.list_means.astype(np.float32)
            half = 0.5 * np.einsum("ij,ij->i", means, means)
            key = np.concatenate([
                np.argmax((queries[s : s + 65536] - self.mean) @ means.T - half, axis=1)
                for s in range(0, len(queries), 65536)
            ])
        return np.argsort(key, kind="stable")

    def _knn_chunk(self, q: np.ndarray, k: int, self_ids: np.ndarray | None, width: int) -> tuple[np.ndarray, np.ndarray]:
        qs = self._prepare(q, self.cmax)
        pool = _Pool(len(q), k, width, qs.bound, self.device)
        self_pos = None if self_ids is None else _tensor(self.pos_of[self_ids]).to(self.device)
        if self.centroids is None:
            self._exact_scan(qs, pool, self_pos)
        else:
            self._certified_scan(qs, pool, self_pos)
        over = pool.overflowing()
        if len(over) and width < len(self.order):  # widen and redo those queries alone
            sub = self._knn_chunk(q[over], k, None if self_ids is None else self_ids[over], width * 4)
        dist, ids = self._finish(q, pool, k)
        if len(over) and width < len(self.order):
            dist[over], ids[over] = sub
        return dist, ids

    def _certified_scan(self, qs: _Queries, pool: _Pool, self_pos: torch.Tensor | None) -> None:
        """Scan lists in order of centroid distance (good neighbours early, so the k-th distance
        tightens fast), in rounds of doubling width, skipping lists whose lower bound exceeds the
        query's k-th distance (an upper bound from its pool, which only shrinks, so a skipped
        list never needs a scan later); done when no list left has a bound at or below it."""
        lb, centre = self._lower_bounds(qs.qc, with_centre_distance=True)
        order = np.argsort(centre, axis=1, kind="stable").astype(np.int32)
        lb_sorted = np.take_along_axis(lb, order, axis=1)
        start = np.zeros(len(lb), dtype=np.int64)
        positions = np.arange(lb.shape[1])
        step = NPROBE_START
        while True:
            rho = pool.kth_upper(qs.qn)
            wanted = (lb_sorted <= rho[:, None]) & (positions[None, :] >= start[:, None])
            rank = np.cumsum(wanted, axis=1, dtype=np.int32)
            take = wanted & (rank <= step)
            rows, cols = np.nonzero(take)
            if not len(rows):
                return
            last = np.full(len(lb), -1)
            np.maximum.at(last, rows, cols)
            start = np.where(last >= 0, last + 1, lb.shape[1])  # nothing wanted left: done with that query
            lists = order[rows, cols]
            by_list = np.argsort(lists, kind="stable")
            rows, lists = rows[by_list], lists[by_list]
            bounds = np.flatnonzero(np.diff(lists)) + 1
            for part_rows, lst in zip(np.split(rows, bounds), lists[np.concatenate([[0], bounds])]):
                self._scan(qs, pool, _tensor(part_rows).to(self.device), int(lst), self_pos)
            step *= 2

    def _exact_scan(self, qs: _Queries, pool: _Pool, self_pos: torch.Tensor | None) -> None:
        """Scan every list for each block of QUERY_BLOCK queries, nearest lists (to the block's
        mean) first; candidates enter the pools after the first list (so the lines are tight
        early) and after lists 2, 4, 8 ..., and every MERGE_LISTS lists."""
        m = len(qs.qn)
        means = self.list_means.astype(np.float32)
        buf = self._tile_buffer(m)
        for s in range(0, m, QUERY_BLOCK):
            part = slice(s, min(m, s + QUERY_BLOCK))
            gap = means - qs.qc[part].mean(axis=0)
            lists = np.argsort(np.einsum("ij,ij->i", gap, gap), kind="stable")
            q_t = qs.aug[part].T
            mine = None if self_pos is None else (self_pos[part], int(self_pos[part].min()), int(self_pos[part].max()))
            line, fresh = pool.lines(part)
            found: list = []
            for i, lst in enumerate(lists):
                fresh = self._tiles(q_t, pool, part, line, fresh, int(lst), mine, buf, found)
                if found and ((i + 1) & i == 0 or (i + 1) % MERGE_LISTS == 0 or i == len(lists) - 1):
                    pool.add(part, q_t.shape[1], *(torch.cat(parts) for parts in zip(*found)))
                    found = []
                    line, fresh = pool.lines(part)

    def _scan(
        self, qs: _Queries, pool: _Pool, rows: torch.Tensor | slice, lst: int, self_pos: torch.Tensor | None
    ) -> None:
        """Fold list `lst` into the pools of queries `rows` (indices), QUERY_BLOCK at a time;
        the candidates of all of the list's tiles enter the pools in one merge."""
        buf = self._tile_buffer(len(rows))
        for s in range(0, len(rows), QUERY_BLOCK):
            part = rows[s : s + QUERY_BLOCK]
            q_t = qs.aug[part].T
            line, fresh = pool.lines(part)
            found: list = []
            mine = None if self_pos is None else (self_pos[part], 0, len(self.order))
            self._tiles(q_t, pool, part, line, fresh, lst, mine, buf, found)
            if found:
                pool.add(part, q_t.shape[1], *(torch.cat(parts) for parts in zip(*found)))

    def _tile_buffer(self, queries: int) -> torch.Tensor:
        return torch.empty(REF_TILE * min(QUERY_BLOCK, queries), device=self.device)

    def _tiles(self, q_t, pool, part, line, fresh, lst, mine, buf, found) -> torch.Tensor | None:
        """Append the candidates (query row, position, A) of list `lst` for the queries of `q_t`
        (their [q, 1] columns) to `found`; returns who is still without a line.  `mine`: the
        queries' own positions (never their own neighbour) and their min and max.

        One GEMM per REF_TILE references into the reused buffer `buf`: the tile stays in cache,
        so the group maxima and candidate gathers read it from there (a fresh 16 MiB block per
        GEMM cost page faults and a memory pass each; docs/DESIGN.md §5).  The tile is
        (references × queries), so the group maxima reduce over a middle axis (fast)."""
        a, b = int(self.starts[lst]), int(self.starts[lst + 1])
        width = q_t.shape[1]
        for t in range(a, b, REF_TILE):
            u = min(b, t + REF_TILE)
            scores = _mm(self.xaug[t:u], q_t, buf[: (u - t) * width].view(u - t, width))
            if mine is not None and mine[1] < u and mine[2] >= t:
                local = mine[0] - t
                own = ((local >= 0) & (local < u - t)).nonzero().squeeze(1)
                if len(own):
                    scores[local[own], own] = -torch.inf
            groups = scores.view((u - t) // GROUP, GROUP, width)
            peaks = groups.amax(1)  # (groups × queries)
            if fresh is not None:
                fresh = pool.start_lines(part, groups, peaks, line, fresh)
            hit = _candidates(groups, peaks, line)
            if hit is not None:
                found.append((hit[0], hit[1] + t, hit[2]))
        return fresh

    def _finish(self, q: np.ndarray, pool: _Pool, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Recompute the pooled candidates above the final line in float64; sort by (distance, id)."""
        keep = (pool.val >= pool.thr[:, None]) & (pool.pos >= 0)
        width = int(keep.sum(1).max())  # pools are sorted by A, so the kept entries come first
        pos = pool.pos[:, :width].clamp(min=0)
        ids = torch.where(keep[:, :width], self.order_t[pos], self.n)  # n: sorts after every real id
        qt = _tensor(np.ascontiguousarray(q, dtype=np.float32)).to(self.device)
        dist = torch.empty(ids.shape, dtype=torch.float64, device=self.device)
        block = max(1, PAIR_BLOCK // width)
        for s in range(0, len(ids), block):
            diff = self.torch_vectors[ids[s : s + block].clamp(max=self.n - 1)].double() - qt[s : s + block, None, :].double()
            dist[s : s + block] = row_norms(diff)
        dist[ids == self.n] = torch.inf
        by_id = torch.argsort(ids, dim=1)
        dist, ids = dist.gather(1, by_id), ids.gather(1, by_id)
        by_dist = torch.argsort(dist, dim=1, stable=True)
        dist, ids = dist.gather(1, by_dist)[:, :k], ids.gather(1, by_dist)[:, :k]
        return dist.cpu().numpy(), ids.cpu().numpy()

    def _pair_distances(self, q: np.ndarray, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """‖q[rows[i]] − x[ids[i]]‖ in float64, differences taken in float64 (exact), so this is the
        true distance to float64 rounding, the quantity the float32 bounds are stated for (float32
        differences were off by up to ~1e-8 relative and split ties at a ball's edge differently
        from the pairs the bound settled)."""
        qt = _tensor(np.ascontiguousarray(q, dtype=np.float32)).to(self.device)
        out = torch.empty(len(ids), dtype=torch.float64, device=self.device)
        for s in range(0, len(ids), PAIR_BLOCK):
            diff = self.torch_vectors[ids[s : s + PAIR_BLOCK]].double() - qt[rows[s : s + PAIR_BLOCK]].double()
            out[s : s + PAIR_BLOCK] = row_norms(diff)
        return out

    # ------------------------------------------------------------ balls

    def _ball_layout(self, radii: np.ndarray, inclusive: bool) -> _BallLayout:
        """The references in lists of ascending radius, as [2x, r² − ‖x‖²] operands, so a ball
        scan can stop once a list's radii exceed its answer: IVF keeps its lists (each sorted by
        radius), the exact kind chunks all rows by radius into lists of REF_BLOCK."""
        key = (id(radii), inclusive)
        if key not in self._balls:
            if self.centroids is None:
                by_radius = np.argsort(radii, kind="stable")
                lists = [by_radius[s : s + REF_BLOCK] for s in range(0, len(by_radius), REF_BLOCK)]
            else:
                lists = [ids[np.argsort(radii[ids], kind="stable")] for ids in self.lists]
            self._balls = {key: _BallLayout(self, lists, radii)}  # the layout keeps `radii` alive: the key is its id
        return self._balls[key]

    def ball_pairs(
        self,
        queries: np.ndarray,
        radii: np.ndarray,
        inclusive: bool,
        lo: np.ndarray | None = None,
        hi: np.ndarray | None = None,
    ):
        """Yield (query rows, row ids) of pairs with ‖q − x‖ < r_x (<= when `inclusive`), for the
        balls with lo_q < r_x < hi_q when given (a rarity scan: with `hi` it shrinks to each
        query's best radius so far, which the caller lowers between yields through `hi`)."""
        layout = self._ball_layout(radii, inclusive)
        qs = self._prepare(queries, max(layout.cmax, self.cmax))
        lo = np.full(len(queries), -np.inf) if lo is None else lo
        hi = np.full(len(queries), np.inf) if hi is None else hi
        chunk = max(1, min(len(queries), LB_ELEMENTS // self.n_lists))
        lb = None
        rmin, rmax = layout.rmin, layout.rmax
        for lst in np.argsort(rmin, kind="stable"):
            need = (rmax[lst] > lo) & (rmin[lst] < hi)
            if self.centroids is not None:  # the same lists as the kNN's, so their bounds hold
                if lb is None:
                    lb = np.concatenate([self._lower_bounds(qs.qc[s : s + chunk]) for s in range(0, len(queries), chunk)])
                need &= lb[:, lst] < np.minimum(hi, rmax[lst]) + (1e-7 * rmax[lst] if inclusive else 0.0)
            rows = np.flatnonzero(need)
            if len(rows):
                yield from self._ball_list(qs, queries, layout, rows, int(lst), inclusive, lo, hi)

    def _ball_list(self, qs, queries, layout, rows, lst, inclusive, lo, hi):
        """Yield the inside pairs of list `lst` for queries `rows`, QUERY_BLOCK × REF_TILE per GEMM."""
        buf = self._tile_buffer(len(rows))
        a, b = int(layout.starts[lst]), int(layout.starts[lst + 1])
        for s in range(0, len(rows), QUERY_BLOCK):
            for t in range(a, b, REF_TILE):
                with _gemm_only_threads():
                    found = self._ball_tile(qs, queries, layout, rows[s : s + QUERY_BLOCK], t, min(b, t + REF_TILE),
                                            inclusive, lo, hi, buf)
                if found is not None:
                    yield found

    def _ball_tile(self, qs, queries, layout, part, a, b, inclusive, lo, hi, buf) -> tuple[np.ndarray, np.ndarray] | None:
        q_t = qs.aug[_tensor(part).to(self.device)].T
        scores = _mm(layout.aug[a:b], q_t, buf[: (b - a) * len(part)].view(b - a, len(part)))  # ‖q‖² − A < r²  <=>  A > ‖q‖² (within ±F)
        groups = scores.view(scores.shape[0] // GROUP, GROUP, scores.shape[1])
        qn = _tensor(qs.qn[part]).to(self.device)
        bound = _tensor(qs.bound[part]).to(self.device)
        found = _candidates(groups, groups.amax(1), (qn - bound * 1.01).float())
        if found is None:
            return None
        r, c, val = found
        pos = c + a
        rad = layout.r_pos_t[pos]
        lo_t, hi_t = _tensor(lo[part]).to(self.device), _tensor(hi[part]).to(self.device)
        useful = (rad > lo_t[r]) & (rad < hi_t[r])
        r, pos, val, rad = r[useful], pos[useful], val[useful], rad[useful]
        sure = val.double() > qn[r] + bound[r] * 1.01
        unsure = (~sure).nonzero().squeeze(1)
        ids = layout.order_t[pos]
        if len(unsure):
            d = self._pair_distances(queries[part], r[unsure], ids[unsure])
            sure[unsure] = d <= rad[unsure] if inclusive else d < rad[unsure]
        return part[r[sure].cpu().numpy()], ids[sure].cpu().numpy()


class _BallLayout:
    """References in radius-sorted lists as [2x, r² − ‖x‖²] GEMM operands (padding rows PAD),
    with per list the min/max radius: what a ball scan reads."""

    def __init__(self, engine: Engine, lists: list[np.ndarray], radii: np.ndarray) -> None:
        self.radii = radii
        sizes = np.array([len(ids) for ids in lists], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(-(-sizes // GROUP) * GROUP)])
        order = np.full(int(self.starts[-1]), -1, dtype=np.int64)
        for start, ids in zip(self.starts, lists):
            order[start : start + len(ids)] = ids
        real = order >= 0
        xc = np.zeros((len(order), engine.dim), dtype=np.float32)
        xc[real] = engine.vectors[order[real]] - engine.mean  # as the kNN operand: the same centring rounding
        xn = np.einsum("ij,ij->i", xc, xc, dtype=np.float64)
        r_pos = np.where(real, radii[np.maximum(order, 0)], -np.inf).astype(np.float64)
        self.aug, self.cmax = engine._operand(xc, np.where(real, r_pos**2, 0) - xn, real)
        del xc
        span = [r_pos[a:b][real[a:b]] for a, b in zip(self.starts[:-1], self.starts[1:])]
        self.rmin = np.array([x.min(initial=np.inf) for x in span])
        self.rmax = np.array([x.max(initial=-np.inf) for x in span])
        self.r_pos_t = _tensor(r_pos).to(engine.device)
        self.order_t = _tensor(order).to(engine.device)


class _Queries:
    """A query block's centred rows, ‖q‖² (float64), error bound F and [q, 1] GEMM operand."""

    def __init__(self, qc: np.ndarray, qn: np.ndarray, bound: np.ndarray, aug: torch.Tensor, device: torch.device):
        self.qc, self.qn, self.bound, self.aug = qc, qn, bound, aug


class _Pool:
    """Per query the `width` largest A seen (and their positions), the filter line and the
    largest value ever dropped (an overflow if it ends above the line)."""

    def __init__(self, m: int, k: int, width: int, bound: np.ndarray, device: torch.device) -> None:
        self.k, self.width = k, width
        self.val = torch.full((m, width), -torch.inf, device=device)
        self.pos = torch.full((m, width), -1, dtype=torch.int64, device=device)
        self.thr = torch.full((m,), -torch.inf, device=device)
        self.dropped = torch.full((m,), -torch.inf, device=device)
        self.full = torch.zeros(m, dtype=torch.bool, device=device)
        self.margin = _tensor((2.0 * bound * 1.01).astype(np.float32)).to(device)

    def lines(self, rows: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The filter line of queries `rows` (a copy, raised by `start_lines`) and which of them
        have no full pool yet (None when all have one)."""
        full = self.full[rows]
        return self.thr[rows].clone(), None if bool(full.all()) else (~full).nonzero().squeeze(1)

    def start_lines(
        self, rows: torch.Tensor | slice, groups: torch.Tensor, peaks: torch.Tensor, line: torch.Tensor, fresh: torch.Tensor
    ) -> torch.Tensor | None:
        """A line for queries `fresh` (indices into `rows`) from a tile's k-th largest entry, which
        will be in their pools; returns who is still without one (all, while tiles have < k groups)."""
        if peaks.shape[0] < self.k:  # fewer than k groups: every entry of this small tile is a candidate
            return fresh
        best = peaks[:, fresh].topk(self.k, dim=0, sorted=False).indices  # the k largest lie in these groups
        vals = groups[best, :, fresh[None, :]].permute(1, 0, 2).reshape(len(fresh), -1)
        kth = vals.topk(self.k, dim=1, sorted=True).values[:, -1]
        line[fresh] = kth - self.margin[rows][fresh]
        return None

    def add(self, rows: torch.Tensor | slice, m: int, r: torch.Tensor, pos: torch.Tensor, val: torch.Tensor) -> None:
        """Merge candidates (row within `rows`, position, A) into the pools of the m queries `rows`."""
        by_query = torch.argsort(r, stable=True)
        r, pos, val = r[by_query], pos[by_query], val[by_query]
        counts = torch.bincount(r, minlength=m)
        slot = torch.arange(len(r), device=r.device) - (torch.cumsum(counts, 0) - counts)[r]
        width = int(counts.max())
        dense = torch.full((m, width), -torch.inf, device=val.device)
        where = torch.full((m, width), -1, dtype=torch.int64, device=val.device)
        dense[r, slot], where[r, slot] = val, pos
        self._merge(rows, dense, where)

    def _merge(self, rows: torch.Tensor | slice, val: torch.Tensor, pos: torch.Tensor) -> None:
        val = torch.cat([self.val[rows], val], 1)
        pos = torch.cat([self.pos[rows], pos], 1)
        top, arg = val.topk(min(self.width + 1, val.shape[1]), dim=1)
        self.val[rows], self.pos[rows] = top[:, : self.width], pos.gather(1, arg[:, : self.width])
        if top.shape[1] > self.width:
            self.dropped[rows] = torch.maximum(self.dropped[rows], top[:, self.width])
        kth = top[:, self.k - 1]
        full = kth > PAD / 2
        self.full[rows] = full
        self.thr[rows] = torch.where(full, kth - self.margin[rows], -torch.inf)

    def kth_upper(self, qn: np.ndarray) -> np.ndarray:
        """Upper bound of each query's true k-th distance from its pool (inf while not full)."""
        kth = self.val[:, self.k - 1].double().cpu().numpy()
        half = self.margin.double().cpu().numpy() / 2
        rho = np.sqrt(np.maximum(qn - kth + half, 0))
        return np.where(self.full.cpu().numpy(), rho, np.inf)

    def overflowing(self) -> np.ndarray:
        """Queries that dropped a row the final line would keep: their pool was too narrow."""
        return (self.dropped >= self.thr).nonzero().squeeze(1).cpu().numpy()


def _candidates(
    groups: torch.Tensor, peaks: torch.Tensor, line: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(query, reference, value) of every entry >= its query's line, from a transposed block
    viewed as (groups × GROUP × queries) and its group maxima: only groups whose maximum
    reaches the line are looked at element by element."""
    g, q = (peaks >= line[None, :]).nonzero(as_tuple=True)
    if len(g) == 0:
        return None
    sub = groups[g, :, q]  # (hits × GROUP)
    hg, hj = (sub >= line[q, None]).nonzero(as_tuple=True)
    return q[hg], g[hg] * GROUP + hj, sub[hg, hj]


_GEMM_THREADS: list[int] = []  # torch's thread count while inside `_gemm_only_threads`


@contextmanager
def _gemm_only_threads() -> Iterator[None]:
    """Run the many small filter/pool ops on one thread and only the GEMMs on all of torch's:
    on a shared 2-core machine each small multi-threaded op waits for a descheduled thread
    (measured: a 30k self-kNN 4.3 s on 1 thread, 36 s on 2 while another process ran)."""
    threads = torch.get_num_threads()
    _GEMM_THREADS.append(threads)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        _GEMM_THREADS.pop()
        torch.set_num_threads(threads)


def _mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b (into `out` when given) on all of torch's threads (restored to one afterwards inside
    `_gemm_only_threads`)."""
    if not _GEMM_THREADS or a.device.type != "cpu":
        return torch.mm(a, b, out=out)
    torch.set_num_threads(_GEMM_THREADS[-1])
    try:
        return torch.mm(a, b, out=out)
    finally:
        torch.set_num_threads(1)


def row_norms(diff: torch.Tensor) -> torch.Tensor:
    """‖·‖ over the last axis of float64 differences, one fixed summation for every caller: a
    reference row scored as a query then meets a ball's edge (its own distance to a row whose
    k-th neighbour it is) at exactly that row's radius, so strict membership is decided the
    same way the radius was computed, not by rounding noise between two reductions."""
    return diff.square().sum(-1).sqrt()


def _tensor(arr: np.ndarray) -> torch.Tensor:
    """A tensor sharing `arr`'s memory; read-only arrays (loaded, memory-mapped) are fine: never written."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr)


def _error_bound(q_norm: np.ndarray, x_max: float, c_max: float, dim: int) -> np.ndarray:
    """Bound on |(‖q‖² − A_float32) − ‖q − x‖²_original| for every reference x.

    GEMM over d+1 terms: γ_{d+1} Σ|terms| <= (d+1) U (1+δ) (2‖q‖‖x‖ + |c|), plus U|c| for c's own
    rounding (taken as (d+3) U); centring moves each vector by at most U‖v‖ (per coordinate
    U|v_i|), which changes a distance D by δ <= U (‖q‖ + ‖x‖) and D² by 2δ(D + δ); and 4U of
    every magnitude involved covers rounding the float32 lines A is compared with."""
    gemm = (dim + 3) * U32 * 1.01 * (2 * q_norm * x_max + c_max)
    delta = 1.01 * U32 * (q_norm + x_max)
    compare = 4 * U32 * (q_norm**2 + 2 * q_norm * x_max + c_max)  # float32 rounding of the lines compared with A
    return gemm + 2 * delta * (q_norm + x_max + delta) + compare


def _list_means(xc: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Mean of each list's members (centred coordinates): where the list lies."""
    return np.stack([xc[a : a + n].mean(axis=0, dtype=np.float64) if n else np.zeros(xc.shape[1])
                     for a, n in zip(starts, sizes)])


def _list_radii(xc: np.ndarray, starts: np.ndarray, sizes: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Largest float64 distance from each list's centroid to its members, plus rounding slack."""
    out = np.zeros(len(sizes))
    for i, (start, size) in enumerate(zip(starts, sizes)):
        if size:
            diff = xc[start : start + size].astype(np.float64) - centroids[i]
            out[i] = math.sqrt(float(np.einsum("ij,ij->i", diff, diff).max())) * (1 + 1e-12)
    return out
