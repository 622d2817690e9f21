"""Approximate candidate retrieval behind ``recommend``, re-ranked exactly (issue 13.1).

An embedding model whose score is a distance (NMRN: ``||s - v||``) or an inner product (BPR:
``p . q + b``) to one query vector per user can find its top-k without scoring every item: a
faiss index over the item vectors (``index``: ``"ivf"``, the default, ``IndexIVFFlat`` searched
in its ``nprobe`` nearest cells; or ``"hnsw"``, ``IndexHNSWFlat``) returns ``C`` candidates,
and the model scores them, *exactly*, with its current vectors and its own score function.

The index is a snapshot: the item vectors at its build (an IVF index is then moved in place by
the reads, :meth:`CandidateIndex.prepare`; what follows is how HNSW's delta works, and IVF's
for the rows it cannot move). Streaming ``learn`` moves some of them
and adds new items, so :class:`CandidateIndex` keeps the **delta set**, every item changed
since the snapshot was taken plus every item added after it; the delta joins the candidates of
every read and is scored exactly like them. An item moved by ``learn`` is therefore found at its
new place at once, and a new item is recommendable at once; what the index can miss is only an
unchanged item that HNSW's search does not reach (recall, measured in BENCHMARKS.md).

Once the delta exceeds ``rebuild_fraction`` of the catalogue, the next read copies the vectors
(on the reader's thread: the tables are not safe to read while ``learn`` runs) and builds a new
index from the copy on a background thread, off the write path; reads go on with the old index
and a delta that keeps growing until the new one is swapped in, by the first read after the
build is done. Items changed after the copy are the new index's delta. A delta larger than
``MAX_DELTA_SHARE`` of the catalogue makes the read exact (scoring it would cost about a full
pass).

Inner product (BPR) uses the Euclidean transform of Bachrach et al. (RecSys 2014, "Speeding up
the Xbox recommender system using a Euclidean transformation for inner-product spaces"): item
``x = (q, b)``, ``x' = (x, sqrt(phi^2 - ||x||^2))`` with ``phi = max ||x||`` at the build; query
``(p, 1, 0)``. Then ``||y' - x'||^2 = ||p||^2 + 1 + phi^2 - 2 (p . q + b)``: the L2 nearest items
are exactly the highest-scoring ones, and the index is an ordinary L2 HNSW graph. We chose this
over faiss's ``METRIC_INNER_PRODUCT`` because HNSW's graph construction (nearest-neighbour links,
the pruning heuristic) assumes a metric, which the inner product is not (an item need not be its
own best match, and large-norm items become hubs). Measured on 100,000 items, d=32, M=32,
efConstruction=80, 100 candidates, efSearch=128 (recall of the exact top-10 among them): on
clustered vectors (bench_ann.py's) the transform 0.9993, native inner product 0.9953; on
structureless random directions with norms in [0.2, 1] the transform is worse, 0.415 against
0.853 (both far from usable: such a catalogue needs larger C or efSearch whatever the metric).
Learned embeddings are clustered, so the transform is the default. An item whose norm later
exceeds ``phi`` is in the delta (changed), so it is scored exactly until the next build
recomputes ``phi``.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from nmrn.config import RetrievalConfig
from nmrn.errors import ConfigError

__all__ = ["CandidateIndex", "ann_top_k", "faiss_module", "l2_from_inner_product"]

log = logging.getLogger(__name__)

MAX_DELTA_SHARE = 0.1
"""A read whose delta exceeds this share of the catalogue is answered exactly: scoring a delta
item (a gathered row) costs ~10x what an item of the full pass costs (BENCHMARKS.md, "ANN
retrieval": 110,000 changed items of 1M took longer than the exact read)."""

_FAISS: list[Any] = []  # the imported module, or None when it is missing (imported once)


def faiss_module() -> Any | None:
    """The ``faiss`` module, or ``None`` when it is not installed (``pip install 'nmrn[ann]'``)."""
    if not _FAISS:
        try:
            _FAISS.append(importlib.import_module("faiss"))
        except ImportError:
            _FAISS.append(None)
    return _FAISS[0]


def check_retrieval(config: RetrievalConfig, why_not: str | None, model: str) -> None:
    """Refuse ``mode="ann"`` where it cannot run: faiss missing, or a score that is not a
    distance to one query vector (``why_not`` says why)."""
    if config.mode != "ann":
        return
    if why_not is not None:
        raise ConfigError(
            f"{model}: retrieval mode 'ann' needs a score that is a distance (or inner product) "
            f"to one query vector per user, but {why_not}; use mode 'exact' or 'auto'"
        )
    if faiss_module() is None:
        raise ConfigError(
            f"{model}: retrieval mode 'ann' needs faiss, which is not installed: "
            "pip install 'nmrn[ann]' (or use mode 'exact' or 'auto')"
        )


def l2_from_inner_product(items: np.ndarray) -> tuple[np.ndarray, float]:
    """``([N, D + 1] float32, phi)``: items ``x`` as ``(x, sqrt(phi^2 - ||x||^2))`` (the module's
    docstring), so that the L2 nearest neighbours of ``(y, 0)`` maximise ``y . x``."""
    x = np.asarray(items, dtype=np.float64)
    sq = (x * x).sum(axis=1)
    phi2 = float(sq.max()) if len(sq) else 0.0
    extra = np.sqrt(np.maximum(phi2 - sq, 0.0))
    return np.hstack([x, extra[:, None]]).astype(np.float32), float(np.sqrt(phi2))


class _Delta:
    """The items changed since one snapshot: a mask and the list of their indices."""

    def __init__(self, n: int) -> None:
        self.mask = np.zeros(n, dtype=bool)
        self.idx = np.empty(0, dtype=np.int64)
        self._parts: list[np.ndarray] = []

    def mark(self, rows: np.ndarray) -> None:
        rows = rows[rows < len(self.mask)]  # items past the snapshot are in the delta anyway
        new = np.unique(rows[~self.mask[rows]])
        if len(new):
            self.mask[new] = True
            self._parts.append(new)

    def indices(self) -> np.ndarray:
        if self._parts:
            self.idx = np.concatenate([self.idx, *self._parts])
            self._parts = []
        return self.idx

    def __len__(self) -> int:
        return len(self.idx) + sum(len(p) for p in self._parts)


class _Build:
    """A background build: the thread, its result, and the delta since its snapshot."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.phi = 0.0
        self.delta = _Delta(n)
        self.index: Any = None
        self.error: BaseException | None = None
        self.seconds = 0.0
        self.thread: threading.Thread | None = None


class CandidateIndex:
    """An HNSW index over a snapshot of an item table, the delta set since, and the rebuilds.

    Parameters
    ----------
    config
        The :class:`~nmrn.config.RetrievalConfig`.
    inner_product
        The model's score is ``y . x`` (BPR): the index applies the Euclidean transform
        (:func:`l2_from_inner_product`) to the vectors it is given, with the ``phi`` of its
        build; ``False``: the vectors are indexed as they are (L2).

    The model tells it which item rows change (:meth:`changed`) and asks it for candidates
    (:meth:`candidates`) with a function that returns a fresh float32 copy of the vectors to
    index (``[n_items, D]``) and, optionally, one that returns the current vectors of some rows
    (``rows_of``): with it, an IVF index moves the changed items to their new vectors in place
    on the next read (:meth:`prepare`) instead of scoring them exactly until a rebuild.
    :meth:`invalidate` drops everything (after ``fit``, a load). The index is never saved: a
    loaded model builds it again on its first read, or takes over the index of the model it
    replaces (:meth:`adopt`, a reader's next snapshot).
    """

    def __init__(self, config: RetrievalConfig, inner_product: bool = False) -> None:
        self.config = config
        self.inner_product = inner_product
        self._phi = 0.0
        self.refreshed = 0  # items moved in place since the build (IVF)
        self._index: Any = None
        self._n_built = 0
        self._delta = _Delta(0)
        self._build: _Build | None = None
        self.builds = 0  # completed builds (for tests and benchmarks)
        self.last_build_seconds = 0.0
        self.broken = False  # a build failed: reads stay exact (logged once)
        self.answered = 0  # calls answered from candidates, and calls sent to the exact path
        self.fell_back = 0
        self._scratch = np.zeros(0, dtype=bool)  # all False between calls (see hits)
        self._params: tuple[Any, tuple[str, int], Any] | None = None  # (index, key, params)

    # -- writes ------------------------------------------------------------------------------------
    def changed(self, rows: np.ndarray) -> None:
        """Item rows whose vectors changed (dense indices)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._index is not None:
            self._delta.mark(rows)
        if self._build is not None:
            self._build.delta.mark(rows)

    def invalidate(self) -> None:
        """Forget the index and any build in flight (its result is dropped)."""
        self._index, self._n_built, self._delta, self._build = None, 0, _Delta(0), None
        self.refreshed = 0

    def adopt(self, old: CandidateIndex, changed: np.ndarray) -> None:
        """Take over ``old``'s index (built for the model this one's replaces: a reader's
        previous snapshot), with ``changed``, the rows whose vectors differ between the two
        models, in its delta (items past the old catalogue are new anyway). ``old`` must not
        be used afterwards."""
        self.__dict__.update({k: v for k, v in old.__dict__.items() if k != "config"})
        self.changed(changed)

    # -- reads -------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._index is not None

    def delta_size(self, n_items: int) -> int:
        """Items scored exactly on every read besides the candidates (changed or new)."""
        return len(self._delta) + max(n_items - self._n_built, 0) if self.ready else n_items

    def prepare(self, vectors: Callable[[], np.ndarray], n_items: int,
                rows_of: Callable[[np.ndarray], np.ndarray] | None = None) -> bool:
        """Swap in a finished build, move changed items in place (IVF, with ``rows_of``), and
        start a build if the delta is too large; ``True`` when an index can answer now."""
        build = self._build
        if build is not None and (build.thread is None or not build.thread.is_alive()):
            self._build = None
            if build.error is not None:
                # not retried on every read (each try copies the table): exact from now on
                log.error("building the retrieval index failed, reads stay exact: %r",
                          build.error)
                self.broken = True
                self.invalidate()
            else:
                self._index, self._n_built, self._delta = build.index, build.n, build.delta
                self._phi, self.refreshed = build.phi, 0
                self.builds += 1
                self.last_build_seconds = build.seconds
        if (rows_of is not None and self._build is None and self.ready
                and isinstance(self._index, faiss_module().IndexIVF)):
            self._refresh(rows_of, n_items)
        if self._build is None and not self.broken and (
            not self.ready or self.delta_size(n_items) > self.config.rebuild_fraction * n_items
            or self.refreshed > IVF_REBUILD_AFTER * n_items
        ):
            self._start_build(vectors())
        return self.ready and self.delta_size(n_items) <= MAX_DELTA_SHARE * n_items

    def _refresh(self, rows_of: Callable[[np.ndarray], np.ndarray], n_items: int) -> None:
        """IVF: move the changed items to their current vectors (``update_vectors``: each is
        reassigned to its nearest cell) and add the items new since the build, so that the
        delta is empty again; an item the inner-product transform cannot place (its norm grew
        past the build's ``phi``) stays in the delta, scored exactly."""
        changed = self._delta.indices()
        if not len(changed) and n_items <= self._n_built:
            return
        delta = _Delta(n_items)
        if len(changed):
            vec, ok = self._to_index_space(rows_of(changed))
            if ok.any():
                self._index.update_vectors(np.ascontiguousarray(changed[ok]), vec[ok])
            delta.mark(changed[~ok])
            self.refreshed += int(ok.sum())
        if n_items > self._n_built:
            new = np.arange(self._n_built, n_items, dtype=np.int64)
            vec, ok = self._to_index_space(rows_of(new))
            self._index.add(vec)  # ids n_built.. in order (the direct map needs them so)
            delta.mark(new[~ok])
        self._delta, self._n_built = delta, n_items

    def _to_index_space(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(float32 vectors as indexed, which rows are placed exactly)``."""
        raw = np.asarray(raw, dtype=np.float64)
        if not self.inner_product:
            return np.ascontiguousarray(raw, dtype=np.float32), np.ones(len(raw), dtype=bool)
        sq = (raw * raw).sum(axis=1)
        extra = np.sqrt(np.maximum(self._phi**2 - sq, 0.0))
        vec = np.ascontiguousarray(np.hstack([raw, extra[:, None]]), dtype=np.float32)
        return vec, sq <= self._phi**2

    def _start_build(self, snapshot: np.ndarray) -> None:
        build = self._build = _Build(len(snapshot))
        if self.config.background:
            build.thread = threading.Thread(
                target=self._run_build, args=(build, snapshot), name="nmrn-ann-build", daemon=True
            )
            build.thread.start()
        else:
            self._run_build(build, snapshot)
            if build.error is not None:
                self._build = None
                raise build.error
            self.prepare(lambda: snapshot, len(snapshot))  # swap it in now

    def _run_build(self, build: _Build, snapshot: np.ndarray) -> None:
        try:
            faiss = faiss_module()
            if faiss is None:
                raise ImportError("faiss is not installed: pip install 'nmrn[ann]'")
            start = time.perf_counter()
            cfg = self.config
            if self.inner_product:
                snapshot, build.phi = l2_from_inner_product(snapshot)
            snapshot = np.ascontiguousarray(snapshot, dtype=np.float32)
            if cfg.index == "ivf":
                index = _ivf(faiss, snapshot, cfg.nlist)
            else:
                index = faiss.IndexHNSWFlat(snapshot.shape[1], cfg.hnsw_m)  # L2
                index.hnsw.efConstruction = cfg.ef_construction
            if len(snapshot):
                index.add(snapshot)
            if cfg.index == "ivf":
                index.set_direct_map_type(faiss.DirectMap.Array)  # for update_vectors
            build.index = index
            build.seconds = time.perf_counter() - start
        except BaseException as err:  # noqa: BLE001 - reported by the read that swaps
            build.error = err

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a build in flight (tests, benchmarks); the next read swaps it in."""
        build = self._build
        if build is not None and build.thread is not None:
            build.thread.join(timeout)

    def candidates(self, query: np.ndarray, n: int, n_items: int) -> np.ndarray:
        """Item indices to score exactly for one query ``[D]``: the index's ``n`` nearest that
        are unchanged since its build, every changed item and every item added since (no
        duplicates, in no particular order). Call :meth:`prepare` first."""
        faiss = faiss_module()
        assert self._index is not None and faiss is not None
        want = min(n, self._n_built)
        parts = []
        if want:
            _, labels = self._index.search(
                np.ascontiguousarray(query, dtype=np.float32)[None, :], want,
                params=self._search_params(faiss, want),
            )
            found = labels[0]
            found = found[found >= 0]
            parts.append(found[~self._delta.mask[found]])  # changed ones come from the delta
        parts.append(self._delta.indices())
        if n_items > self._n_built:
            parts.append(np.arange(self._n_built, n_items, dtype=np.int64))
        return np.concatenate(parts)

    def _search_params(self, faiss: Any, want: int) -> Any:
        """The search parameters of the index for ``want`` results, made once per index and
        setting (a faiss parameter object costs ~15 us to build, on every read)."""
        if isinstance(self._index, faiss.IndexIVF):
            key = ("ivf", min(self.config.nprobe, self._index.nlist))
        else:
            key = ("hnsw", max(self.config.ef_search, want))
        cached = self._params
        if cached is None or cached[0] is not self._index or cached[1] != key:
            params = (faiss.SearchParametersIVF(nprobe=key[1]) if key[0] == "ivf"
                      else faiss.SearchParametersHNSW(efSearch=key[1]))
            self._params = cached = (self._index, key, params)
        return cached[2]

    def hits(self, cand: np.ndarray, seen: np.ndarray, n_items: int) -> np.ndarray:
        """``np.isin(cand, seen)`` for item indices, in ``O(len(cand) + len(seen))`` with a
        scratch mask (``np.isin`` sorts: ~40 us for 120 candidates)."""
        if len(self._scratch) < n_items:
            self._scratch = np.zeros(max(n_items, 2 * len(self._scratch)), dtype=bool)
        self._scratch[seen] = True
        found = self._scratch[cand]
        self._scratch[seen] = False
        return found

    def nbytes(self) -> int:
        """Bytes the index holds (faiss's serialised size: vectors and graph)."""
        faiss = faiss_module()
        if self._index is None or faiss is None:
            return 0
        return int(faiss.serialize_index(self._index).size)


IVF_REBUILD_AFTER = 1.0
"""An IVF index moved in place (its cells stay those of its build's k-means) is rebuilt in the
background once it has moved this many items per item of the catalogue."""

IVF_TRAIN_PER_CELL = 64
"""k-means of an IVF index trains on at most this many items per cell (a seeded sample): faiss
needs >= 39 and gains little past ~64; training on all 10^6 items would cost minutes."""


def _ivf(faiss: Any, snapshot: np.ndarray, nlist: int) -> Any:
    """An untrained-then-trained, empty ``IndexIVFFlat`` (L2) for ``snapshot``."""
    n, dim = snapshot.shape
    cells = nlist or int(4 * np.sqrt(max(n, 1)))
    cells = max(1, min(cells, n // 39 if n >= 39 else 1))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, cells)  # keeps its quantizer alive
    index.cp.seed = 1234
    train = snapshot
    if n > IVF_TRAIN_PER_CELL * cells:
        pick = np.random.default_rng(0).choice(n, IVF_TRAIN_PER_CELL * cells, replace=False)
        train = snapshot[np.sort(pick)]
    if len(train):
        index.train(train)
    return index


def ann_top_k(
    index: CandidateIndex,
    users: np.ndarray,
    k: int,
    n_items: int,
    seen_of: Callable[[int], np.ndarray] | None,
    vectors: Callable[[], np.ndarray],
    query_of: Callable[[int], np.ndarray],
    score_of: Callable[[int, np.ndarray], np.ndarray],
    rows_of: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """``top_k`` of known users from ANN candidates scored exactly, or ``None`` (score every
    item) when no index is ready or fewer than ``min(k, n_items)`` candidates survive the
    exclusions.

    ``seen_of(user)`` gives the items to exclude (``None``: exclude nothing); the index is asked
    for ``C`` plus that many candidates, so that ``C`` remain after the exclusions.
    ``query_of(user)`` is the user's query in the index's space, ``score_of(user, items)``
    the model's exact scores of ``items`` (float64), ``rows_of(rows)`` the current vectors of
    ``rows`` as ``vectors()`` gives them (for :meth:`CandidateIndex.prepare`). Ties go to the
    lower item index, as in :func:`nmrn.training.ranking.top_k`.
    """
    if not index.prepare(vectors, n_items, rows_of):
        index.fell_back += 1
        return None
    width = min(k, n_items)
    idx = np.zeros((len(users), width), dtype=np.int64)
    vals = np.zeros((len(users), width))
    for row, user in enumerate(users.tolist()):
        seen = seen_of(user) if seen_of is not None else None
        n_seen = 0 if seen is None else len(seen)
        cand = index.candidates(query_of(user), index.config.candidates + n_seen, n_items)
        scores = score_of(user, cand)
        if n_seen:
            assert seen is not None
            scores[index.hits(cand, seen, n_items)] = -np.inf
        best = _best(cand, scores, width)
        if len(best) < width or not scores[best[-1]] > -np.inf:
            index.fell_back += 1
            return None  # too few left after the exclusions: the exact path pads with -inf
        idx[row], vals[row] = cand[best], scores[best]
    index.answered += 1
    return idx, vals


def _best(cand: np.ndarray, scores: np.ndarray, width: int) -> np.ndarray:
    """Positions of the ``width`` best ``scores``, best first, ties to the lower item index
    (``cand``); a partition first, so that a large delta set is not sorted whole."""
    if len(scores) > 4 * width:
        kth = -np.partition(-scores, width - 1)[width - 1]  # the width-th best score
        keep = np.flatnonzero(scores >= kth)  # every item tied with it too
        return keep[np.lexsort((cand[keep], -scores[keep]))[:width]]
    return np.lexsort((cand, -scores))[:width]
