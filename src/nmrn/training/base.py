"""The recommender facade shared by NMRN and every baseline.

:class:`Recommender` owns what is common to all models: the user and item :class:`IdMap`\\ s, the
per-user :class:`History` (for exclusions), item counts (the popularity fallback for unknown
users), argument checking, top-k with exclusions, and saving/loading without pickle. A model
subclass supplies only its own parts:

- ``_fit(users, items, timestamps, weights)`` and ``_learn(...)`` on *dense indices*. The tables
  have already been grown for new ids (``_grow``), and ``self.history`` still holds only the
  events *before* this batch (it is appended right after the call).
- ``_score_all(users) -> [n, n_items]`` for known user indices (higher is better).
- ``_state() -> (arrays, meta)`` and ``_load_state(arrays, meta)`` for checkpoints.

Unknown users. ``score`` and ``recommend`` answer an unknown user with the popularity of each
item over every event learned so far, and flag it (:attr:`Recommendations.cold`). Unknown items
in ``score`` raise :class:`~nmrn.errors.UnknownIdError`: there is no honest score for them.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import shutil
import tempfile
import time
import zipfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nmrn.data.events import as_events
from nmrn.data.history import History
from nmrn.data.idmap import IdMap, _as_id_array
from nmrn.errors import CheckpointError, ConfigError

FORMAT = "nmrn-checkpoint"
FORMAT_VERSION = 1
META_FILE = "meta.json"
ARRAYS_FILE = "arrays.npz"
MAX_K = 100_000
# How many of the best items a cached ranking keeps (see _Ranking); reads that need more fall
# back to scoring every item.
RANKING_PREFIX = 2048
# Rows at least this long take top_k's sampled-threshold path; TOPK_SAMPLE is the sample size.
TOPK_LONG_ROW = 8192
TOPK_SAMPLE = 1024

_REGISTRY: dict[str, type[Recommender]] = {}


class Recommendations(tuple):  # type: ignore[type-arg]
    """``(items, scores)`` as returned by :meth:`Recommender.recommend`; unpacks as a pair.

    Attributes
    ----------
    items
        External item ids, ``[n, k']`` for a list of users or ``[k']`` for one user, best first.
        ``k' = min(k, number of known items)``. A user with fewer than ``k'`` candidates left
        after exclusions gets ``None`` in the remaining slots (score ``-inf``), which makes the
        array ``object``-typed.
    scores
        float64, same shape; higher is better.
    cold
        bool ``[n]`` (or a bool for one user): the user was unknown and got the popularity
        fallback.
    """

    def __new__(cls, items: np.ndarray, scores: np.ndarray, cold: Any) -> Recommendations:
        obj = super().__new__(cls, (items, scores))
        obj.cold = cold
        return obj

    @property
    def items(self) -> np.ndarray:
        return self[0]  # type: ignore[no-any-return]

    @property
    def scores(self) -> np.ndarray:
        return self[1]  # type: ignore[no-any-return]


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__} {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > MAX_K:
        raise ValueError(f"k={k} is larger than the limit {MAX_K}")
    return int(k)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` largest entries of each row, best first.

    ``scores`` is ``[n, m]``; returns ``([n, k], [n, k])`` with ``k <= m``. Ties are broken by
    the lower column index, so results are deterministic.
    """
    n, m = scores.shape
    k = min(k, m)
    if k == 0:
        return np.empty((n, 0), np.int64), np.empty((n, 0), scores.dtype)
    if k < m and m >= TOPK_LONG_ROW:
        idx = np.empty((n, k), dtype=np.int64)
        for r in range(n):
            found = _top_k_long_row(scores[r], k)
            idx[r] = found if found is not None else _top_k_rows(scores[r : r + 1], k)[0]
        return idx, np.take_along_axis(scores, idx, axis=1)
    idx = _top_k_rows(scores, k)
    return idx, np.take_along_axis(scores, idx, axis=1)


def _top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """:func:`top_k`'s indices, vectorised over rows (``1 <= k <= m``)."""
    n, m = scores.shape
    if k < m:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        # argpartition keeps an arbitrary subset of the items tied with the k-th best score;
        # the rule is the lowest indices, so a row with more such ties than slots is redone.
        kth = np.take_along_axis(scores, part, axis=1).min(axis=1)
        crowded = np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > k)
        for r in crowded.tolist():
            row, t = scores[r], kth[r]
            above = np.flatnonzero(row > t)
            part[r] = np.concatenate([above, np.flatnonzero(row == t)[: k - len(above)]])
    else:
        part = np.broadcast_to(np.arange(m), (n, m)).copy()
    vals = np.take_along_axis(scores, part, axis=1)
    # sort by (-score, index): lexsort keys go last-first
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1).astype(np.int64)


def _top_k_long_row(row: np.ndarray, k: int) -> np.ndarray | None:
    """:func:`top_k`'s indices for one long row, or ``None`` if NaN in the row gets in the way.

    The ``k``-th best of an evenly spaced sample of the row is at most the row's own ``k``-th
    best, so every item scoring at least that much is a candidate and the top ``k`` (ties
    included) are among them; the candidates are few, so ranking them is cheap. A select over
    the whole row (``argpartition``) costs about 10x more on 100,000 items, and numpy's
    selection slows down further on rows with many equal scores (popularity counts).
    """
    cand = _at_least_kth(row, row[:: max(1, len(row) // TOPK_SAMPLE)], k)
    if cand is None or len(cand) < k:
        return None
    # cand is in index order, so a stable sort by -score breaks ties by the lower index
    return cand[np.argsort(-row[cand], kind="stable")[:k]]


def _at_least_kth(row: np.ndarray, sample: np.ndarray, k: int) -> np.ndarray | None:
    """Indices (in order) of the items of ``row`` scoring at least the ``k``-th best of
    ``sample`` (a subset of ``row``), hence a superset of ``row``'s top ``k``; ``None`` if the
    sample is shorter than ``k`` or its ``k``-th best is NaN."""
    if len(sample) < k:
        return None
    t = np.sort(sample)[len(sample) - k]  # a sort of the sample: no selection worst case
    if np.isnan(t):
        return None
    return np.flatnonzero(row >= t)


class _Ranking:
    """The best ``size`` items of one score row, ranked once: best first, ties by lower index.

    Serves models whose row is shared by many users (popularity for every known user, the
    popularity fallback for every unknown one): a user's top-k is the first ``k`` ranked items
    they have not seen, so a read costs ``O(size + seen)`` instead of a pass over every item.
    Everything outside the prefix ranks below everything in it, so an answer found inside the
    prefix is exactly :func:`top_k`'s.
    """

    __slots__ = ("complete", "items", "scores", "version")

    def __init__(self, row: np.ndarray, size: int, version: int) -> None:
        n = len(row)
        cand = None
        if size < n:
            # Estimate the size-th best score from a sample (with a margin), take every item
            # scoring at least that, and check that there are at least `size` of them: then
            # they include the best `size`, ties and all. (numpy's selection is slow on rows
            # with many equal scores, such as popularity counts: 12 ms on 100,000 items.)
            sample = row[:: max(1, n // 8192)]
            want = min(len(sample), int(np.ceil(1.25 * size * len(sample) / n)) + 1)
            cand = _at_least_kth(row, sample, want)
            if cand is not None and len(cand) < size:
                cand = None  # the estimate fell short: rank everything
        if cand is None:
            cand = np.arange(n)
        # cand is in index order: a stable sort by -score breaks ties by the lower index
        ranked = cand[np.argsort(-row[cand], kind="stable")]
        self.items = ranked[:size].astype(np.int64)
        self.scores = row[self.items].astype(np.float64)
        self.complete = len(self.items) >= n
        self.version = version

    def top(self, k: int, seen: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
        """The first ``k`` ranked items not in ``seen``, or ``None`` if the prefix runs out."""
        if seen is None or len(seen) == 0:
            keep = slice(0, k)
            if k <= len(self.items):
                return self.items[keep], self.scores[keep]
        else:
            mask = ~np.isin(self.items, seen)
            idx = np.flatnonzero(mask)[:k]
            if len(idx) == k:
                return self.items[idx], self.scores[idx]
            keep = idx  # type: ignore[assignment]
        if not self.complete:
            return None
        return self.items[keep], self.scores[keep]  # every candidate, fewer than k


class Recommender(ABC):
    """Base class of every nmrn model: the public contract of DESIGN §5.

    Subclasses set ``name`` (the registry key used by ``nmrn evaluate --models`` and by
    checkpoints) and keep every constructor argument as an attribute of the same name, so that
    :meth:`get_params` and :meth:`clone` work (river's discipline).
    """

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            _REGISTRY[cls.name] = cls

    def __init__(self, *, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ConfigError(f"seed must be an int, got {type(seed).__name__}")
        self.seed = int(seed)
        self.users = IdMap(what="user")
        self.items = IdMap(what="item")
        self.history = History()
        self.item_counts = np.zeros(0, dtype=np.float64)
        self.n_events = 0
        self.last_timestamp = -np.inf
        self.fit_seconds = 0.0
        self.learn_seconds = 0.0
        # JSON-serialisable facts that travel with checkpoints (e.g. the last applied stream
        # position of a consumer); the model itself never reads it.
        self.extra: dict[str, Any] = {}
        # bumped by every fit/learn: cached rankings of an older state are stale
        self._state_version = 0
        self._rankings: dict[str, _Ranking] = {}  # "shared" / "cold" -> see _ranking

    # -- parameters ----------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, read back from the attributes of the same names."""
        sig = inspect.signature(type(self).__init__)
        return {
            p: getattr(self, p)
            for p in sig.parameters
            if p != "self" and sig.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD
        }

    def clone(self) -> Recommender:
        """An untrained model with the same hyper-parameters."""
        return type(self)(**self.get_params())

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    # -- learning ------------------------------------------------------------------------------
    def _ingest(self, events: Any, method: str) -> None:
        batch = as_events(events, where=f"{type(self).__name__}.{method}")
        if len(batch) == 0:
            return
        # Bumped before anything changes, so that cached rankings are stale even if the update
        # fails half-way (ids and tables may have grown by then).
        self._state_version += 1
        users = self.users.encode(batch.users, grow=True)
        items = self.items.encode(batch.items, grow=True)
        n_items = len(self.items)
        if n_items > len(self.item_counts):
            self.item_counts = np.concatenate(
                [self.item_counts, np.zeros(n_items - len(self.item_counts))]
            )
        self._grow(len(self.users), n_items)
        start = time.perf_counter()
        getattr(self, f"_{method}")(users, items, batch.timestamps, batch.weights)
        elapsed = time.perf_counter() - start
        if method == "fit":
            self.fit_seconds += elapsed
        else:
            self.learn_seconds += elapsed
        self.history.append(users, items)
        np.add.at(self.item_counts, items, 1.0)
        self.n_events += len(batch)
        self.last_timestamp = max(self.last_timestamp, float(batch.timestamps.max()))

    def fit(self, events: Any) -> Recommender:
        """Train on a history (in the order given; readers sort by time). Returns ``self``."""
        self._ingest(events, "fit")
        return self

    def learn(self, events: Any) -> Recommender:
        """Update on new events, in order; new users and items are added. Returns ``self``."""
        self._ingest(events, "learn")
        return self

    def _grow(self, n_users: int, n_items: int) -> None:  # noqa: B027 - optional hook
        """Make room for ``n_users`` users and ``n_items`` items (tables, counters)."""

    @abstractmethod
    def _fit(
        self,
        users: np.ndarray,
        items: np.ndarray,
        timestamps: np.ndarray,
        weights: np.ndarray | None,
    ) -> None: ...

    @abstractmethod
    def _learn(
        self,
        users: np.ndarray,
        items: np.ndarray,
        timestamps: np.ndarray,
        weights: np.ndarray | None,
    ) -> None: ...

    # -- scoring ---------------------------------------------------------------------------------
    @abstractmethod
    def _score_all(self, users: np.ndarray) -> np.ndarray:
        """Scores of every known item for known user indices: ``[n] -> [n, n_items]``."""

    def _cold_scores(self) -> np.ndarray:
        """Scores for an unknown user, ``[n_items]``: item popularity so far."""
        return self.item_counts.astype(np.float64)

    def _shared_scores(self) -> np.ndarray | None:
        """The one ``[n_items]`` score row every known user gets, for a model that ignores the
        user (popularity); ``None`` (the default) for a personalised model.

        When it is given, :meth:`recommend` ranks the items once per model state and answers
        each user by skipping the items they have seen (see :class:`_Ranking`).
        """
        return None

    def _ranking(self, which: str) -> _Ranking:
        """The cached ranking of the shared (``"shared"``) or cold (``"cold"``) score row,
        rebuilt when the model has learned since."""
        found = self._rankings.get(which)
        if found is None or found.version != self._state_version:
            row = self._shared_scores() if which == "shared" else self._cold_scores()
            assert row is not None
            found = self._rankings[which] = _Ranking(row, RANKING_PREFIX, self._state_version)
        return found

    def _ranked_top_k(
        self, u: np.ndarray, k: int, exclude_seen: bool
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """:func:`top_k` of the (excluded) scores of users ``u`` from cached rankings, or
        ``None`` when some user's row is personal or a ranking's prefix is too short."""
        known = u >= 0
        if known.any() and type(self)._shared_scores is Recommender._shared_scores:
            return None  # personalised scores
        shared = self._ranking("shared") if known.any() else None
        cold = self._ranking("cold") if (~known).any() else None
        width = min(k, len(self.items))
        idx = np.zeros((len(u), width), dtype=np.int64)
        vals = np.full((len(u), width), -np.inf)
        for row, user in enumerate(u.tolist()):
            ranking = shared if user >= 0 else cold
            assert ranking is not None
            seen = self.history.items_of(user) if exclude_seen and user >= 0 else None
            found = ranking.top(width, seen)
            if found is None:
                return None
            n = len(found[0])
            idx[row, :n], vals[row, :n] = found
        return idx, vals

    def _scores_for(self, user_idx: np.ndarray) -> np.ndarray:
        """``[n, n_items]`` float64 scores; rows of unknown users (index -1) use the fallback."""
        n_items = len(self.items)
        out = np.empty((len(user_idx), n_items), dtype=np.float64)
        known = user_idx >= 0
        if known.any():
            out[known] = self._score_all(user_idx[known])
        if (~known).any():
            out[~known] = self._cold_scores()[None, :]
        return out

    def _user_array(self, users: Any) -> tuple[np.ndarray, bool]:
        scalar = isinstance(users, (str, int, np.integer, np.str_)) and not isinstance(users, bool)
        return _as_id_array([users] if scalar else users, "user"), scalar

    def score(self, users: Any, items: Any) -> np.ndarray:
        """Scores (higher is better) of ``items`` for ``users``.

        Parameters
        ----------
        users
            ``[n]`` external user ids. Unknown users get the popularity fallback.
        items
            ``[n, c]`` external item ids (one row per user), or ``[c]`` (the same candidates for
            every user). Unknown items raise :class:`~nmrn.errors.UnknownIdError`.

        Returns
        -------
        numpy.ndarray
            float64 ``[n, c]``.
        """
        user_arr, _ = self._user_array(users)
        u = self.users.encode(user_arr, missing=-1)
        item_arr = np.asarray(items, dtype=object if not isinstance(items, np.ndarray) else None)
        if item_arr.ndim not in (1, 2):
            raise ValueError(f"items must be [c] or [n, c], got shape {item_arr.shape}")
        if item_arr.ndim == 2 and item_arr.shape[0] != len(u):
            raise ValueError(f"items has {item_arr.shape[0]} rows but {len(u)} users were given")
        cols = self.items.encode(item_arr.reshape(-1)).reshape(item_arr.shape)
        full = self._scores_for(u)
        if cols.ndim == 1:
            return full[:, cols]
        return np.take_along_axis(full, cols, axis=1)

    def recommend(self, users: Any, k: int = 10, exclude_seen: bool = True) -> Recommendations:
        """Top-``k`` items for each user, best first.

        Parameters
        ----------
        users
            One external user id, or a sequence of them.
        k
            How many items (clipped to the number of known items).
        exclude_seen
            Leave out items the user has already interacted with.

        Returns
        -------
        Recommendations
            ``(items, scores)`` with a ``cold`` flag per user; see :class:`Recommendations`.
        """
        k = _check_k(k)
        user_arr, scalar = self._user_array(users)
        u = self.users.encode(user_arr, missing=-1)
        ranked = self._ranked_top_k(u, k, exclude_seen) if len(u) else None
        if ranked is not None:
            idx, vals = ranked
        else:
            scores = self._scores_for(u)
            if exclude_seen and len(u):
                rows, cols = self.history.seen_pairs(u)
                scores[rows, cols] = -np.inf
            idx, vals = top_k(scores, k)
        valid = vals > -np.inf
        if valid.all():
            items = self.items.decode(idx)
        else:
            items = np.empty(idx.shape, dtype=object)
            items[valid] = self.items.decode(idx[valid])
            items[~valid] = None
        cold = u < 0
        if scalar:
            return Recommendations(items[0], vals[0], bool(cold[0]))
        return Recommendations(items, vals, cold)

    @property
    def known_items(self) -> np.ndarray:
        """External ids of every item the model knows, in index order."""
        return self.items.ids

    @property
    def known_users(self) -> np.ndarray:
        """External ids of every user the model knows, in index order."""
        return self.users.ids

    # -- checkpoints -----------------------------------------------------------------------------
    @abstractmethod
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The model's own arrays and JSON-serialisable metadata."""

    @abstractmethod
    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Restore what :meth:`_state` returned (tables are already grown)."""

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a checkpoint directory atomically (temporary directory, fsync, rename).

        The directory holds ``meta.json`` (format, versions, parameters, ids) and ``arrays.npz``
        (numbers only). Nothing is pickled, so loading never executes code from the file.
        """
        return write_checkpoint(path, *self.snapshot())

    def snapshot(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)``: everything :meth:`save` writes, as copies.

        Taking a snapshot is the only part of a save that must see a still model (a live
        service takes it under its model lock); :func:`write_checkpoint` can then write it,
        the slow part, while the model moves on.
        """
        from nmrn import __version__

        arrays, model_meta = self._state()
        indptr, hist_items = self.history.to_arrays()
        all_arrays = {f"model.{k}": np.array(v, copy=True) for k, v in arrays.items()}
        all_arrays.update(
            {
                "base.history_indptr": indptr,
                "base.history_items": hist_items,
                "base.item_counts": self.item_counts.copy(),
            }
        )
        for key, arr in all_arrays.items():
            if arr.dtype == object:
                raise CheckpointError(f"array {key!r} has dtype object; it cannot be saved safely")
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "nmrn_version": __version__,
            "model": self.name,
            "params": copy.deepcopy(self.get_params()),
            "users": self.users.to_list(),
            "items": self.items.to_list(),
            "n_events": self.n_events,
            "last_timestamp": self.last_timestamp if np.isfinite(self.last_timestamp) else None,
            "model_meta": copy.deepcopy(model_meta),
            "extra": copy.deepcopy(self.extra),
        }
        return all_arrays, meta

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Recommender:
        """Load a checkpoint written by :meth:`save`; the class is read from the checkpoint.

        Called on a subclass, the checkpoint must hold that model (else
        :class:`~nmrn.errors.CheckpointError`).
        """
        import nmrn.models  # noqa: F401  (registers every model class; a cycle at import time)

        recover_interrupted_save(Path(path))
        meta, arrays = read_checkpoint(path)
        model_cls = _REGISTRY.get(meta["model"])
        if model_cls is None:
            raise CheckpointError(
                f"{path}: unknown model {meta['model']!r}; known: {sorted(_REGISTRY)}"
            )
        if cls is not Recommender and not issubclass(model_cls, cls):
            raise CheckpointError(f"{path}: holds a {meta['model']!r} model, not a {cls.name!r}")
        try:
            rec = model_cls(**meta["params"])
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: bad parameters for {meta['model']!r}: {err}") from None
        try:
            rec.users = IdMap.from_list(meta["users"], what="user")
            rec.items = IdMap.from_list(meta["items"], what="item")
            rec.history = History.from_arrays(
                arrays.pop("base.history_indptr"), arrays.pop("base.history_items")
            )
            rec.item_counts = arrays.pop("base.item_counts").astype(np.float64)
            rec.n_events = int(meta["n_events"])
            rec.extra = dict(meta.get("extra") or {})
            last = meta["last_timestamp"]
            rec.last_timestamp = -np.inf if last is None else float(last)
            if len(rec.item_counts) != len(rec.items):
                raise CheckpointError(f"{path}: item counts do not match the item ids")
            rec._grow(len(rec.users), len(rec.items))
            model_arrays = {
                k[len("model.") :]: v for k, v in arrays.items() if k.startswith("model.")
            }
            rec._load_state(model_arrays, meta["model_meta"])
        except CheckpointError:
            raise
        except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as err:
            raise CheckpointError(f"{path}: inconsistent checkpoint: {err}") from None
        return rec


def write_checkpoint(
    path: str | os.PathLike[str], arrays: dict[str, np.ndarray], meta: dict[str, Any]
) -> Path:
    """Write a :meth:`Recommender.snapshot` as a checkpoint directory at ``path``, atomically:
    a temporary directory next to it, fsynced, then renamed over it (the old one, if any, is
    replaced only once the new one is complete). Returns ``path``.

    Raises
    ------
    CheckpointError
        ``path`` exists and is not an nmrn checkpoint (it is never replaced).
    """
    path = Path(path)
    if path.exists() and not _is_checkpoint(path):
        raise CheckpointError(
            f"{path}: exists and is not an nmrn checkpoint; refusing to replace it "
            f"(choose another path or remove it)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    # mkdtemp makes the directory 0700; give it the permissions a plain mkdir would have
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        with open(tmp / ARRAYS_FILE, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        with open(tmp / META_FILE, "w", encoding="utf-8") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a directory whose meta.json says it is an nmrn checkpoint."""
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that a rename inside it is durable (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_interrupted_save(path: Path) -> None:
    """Put back the previous checkpoint if a save was killed between its two renames.

    :meth:`Recommender.save` moves the old checkpoint to ``.<name>.old-<pid>`` and then renames
    the new one into place; a kill between the two renames leaves nothing at ``path``.
    """
    if path.exists() or not path.parent.is_dir():
        return
    for old in sorted(path.parent.glob(f".{path.name}.old-*")):
        if not (old / META_FILE).is_file():
            continue
        try:
            read_checkpoint(old)
        except CheckpointError:
            continue
        os.rename(old, path)
        return


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and check a checkpoint directory; returns ``(meta, arrays)``. Never unpickles."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory (missing or not a directory)")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: not an nmrn checkpoint ({META_FILE} is missing)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{meta_path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an nmrn checkpoint (format field is not {FORMAT!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is not supported (this nmrn reads "
            f"{FORMAT_VERSION})"
        )
    for key in ("model", "params", "users", "items", "n_events", "model_meta"):
        if key not in meta:
            raise CheckpointError(f"{path}: {META_FILE} lacks the field {key!r}")
    if not isinstance(meta["params"], dict) or not isinstance(meta["model_meta"], dict):
        raise CheckpointError(f"{path}: params and model_meta must be JSON objects")
    try:
        with np.load(path / ARRAYS_FILE, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {ARRAYS_FILE} is missing") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:  # pickled arrays too
        raise CheckpointError(f"{path}/{ARRAYS_FILE}: unreadable or unsafe ({err})") from None
    return meta, arrays


def load_recommender(path: str | os.PathLike[str]) -> Recommender:
    """Load any model's checkpoint (the model class is read from the checkpoint)."""
    return Recommender.load(path)


def registered_models() -> dict[str, type[Recommender]]:
    """Model names -> classes (every imported :class:`Recommender` subclass with a name)."""
    return dict(_REGISTRY)
