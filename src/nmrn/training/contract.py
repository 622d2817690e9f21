"""The recommender contract shared by NMRN and every baseline (DESIGN §5).

:class:`Recommender` owns what is common to all models: the user and item :class:`IdMap`\\ s, the
per-user :class:`History` (for exclusions), item counts (the popularity fallback for unknown
users), the configuration, argument checking, top-k with exclusions, and saving/loading without
pickle. A model subclass supplies only its own parts:

- ``config_class``: its frozen, validated configuration (a :class:`~nmrn.config.Config`);
  ``Model(config=None, /, **options)`` builds it, and ``model.config`` holds it;
- ``_fit(users, items, timestamps, weights)`` and ``_learn(...)`` on *dense indices*. The tables
  have already been grown for new ids (``_grow``), and ``self.history`` still holds only the
  events *before* this batch (it is appended right after the call);
- ``_score_all(users) -> [n, n_items]`` for known user indices (higher is better);
- ``_state() -> (arrays, meta)`` and ``_load_state(arrays, meta)`` for checkpoints.

A model class is made loadable from checkpoints with :func:`nmrn.training.registry.register`.

Unknown users. ``score`` and ``recommend`` answer an unknown user with the popularity of each
item over every event learned so far, and flag it (:attr:`Recommendations.cold`). Unknown items
in ``score`` raise :class:`~nmrn.errors.UnknownIdError`: there is no honest score for them.
"""

from __future__ import annotations

import copy
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nmrn._version import __version__
from nmrn.config import Config, SeedConfig
from nmrn.data.events import as_events
from nmrn.data.growth import grow_array, state_follows
from nmrn.data.history import History
from nmrn.data.idmap import IdMap, as_id_array
from nmrn.errors import CheckpointError
from nmrn.io import (
    FORMAT,
    FORMAT_VERSION,
    read_checkpoint,
    recover_interrupted_save,
    write_checkpoint,
)
from nmrn.training.ranking import RANKING_PREFIX, Ranking, top_k
from nmrn.training.registry import model_class

__all__ = ["MAX_K", "Recommendations", "Recommender"]

MAX_K = 100_000


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




def _count(value: Any, field: str, path: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(f"{path}: {field} must be a whole number >= 0, got {value!r}")
    return value


def _base_arrays(
    arrays: dict[str, np.ndarray], n_users: int, n_items: int, path: Any
) -> tuple[np.ndarray, np.ndarray]:
    """The history's CSR arrays, checked against the ids before anything is built from them:
    an index out of range would load silently and break reads later."""
    try:
        indptr = arrays.pop("base.history_indptr")
        items = arrays.pop("base.history_items")
    except KeyError as err:
        raise CheckpointError(f"{path}: the array {err.args[0]!r} is missing") from None
    for name, arr in (("history_indptr", indptr), ("history_items", items)):
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise CheckpointError(f"{path}: base.{name} must be a 1-D integer array")
    if len(indptr) > n_users + 1:
        raise CheckpointError(f"{path}: the history has rows for {len(indptr) - 1} users but "
                              f"the checkpoint knows {n_users}")
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        raise CheckpointError(f"{path}: the history holds item indices outside 0..{n_items - 1}")
    return indptr, items


class Recommender(ABC):
    """Base class of every nmrn model: the public contract of DESIGN §5.

    Parameters
    ----------
    config
        The model's configuration: an instance of its ``config_class``, a mapping of its
        fields, or ``None`` (the defaults).
    **options
        Fields of the configuration, applied on top of ``config`` (every one given is applied;
        an unknown name raises :class:`~nmrn.errors.ConfigError` with a suggestion).

    Attributes
    ----------
    config
        The effective, frozen configuration.
    preset
        The name of the preset the model was built from (:func:`nmrn.models.make_model`), or
        ``None``; checkpoints record it.
    """

    #: The model's configuration class; its fields are the model's hyper-parameters (the
    #: default: a model whose only option is ``seed``).
    config_class: ClassVar[type[Config]] = SeedConfig

    def __init__(self, config: Config | Mapping[str, Any] | None = None, /, **options: Any) -> None:
        self.config = self.config_class.build(config, options)
        self.seed: int = getattr(self.config, "seed", 0)
        self.preset: str | None = None
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
        self._rankings: dict[str, Ranking] = {}  # "shared" / "cold" -> see _ranking

    # -- parameters ----------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this model's configuration (JSON-serialisable)."""
        return self.config.to_params()

    def clone(self) -> Recommender:
        """An untrained model with the same configuration (and preset name)."""
        twin = type(self)(self.config)
        twin.preset = self.preset
        return twin

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    @classmethod
    def _unit_test_params(cls) -> dict[str, dict[str, Any]]:
        """Named small configurations the conformance suite (``tests/test_conformance.py``)
        builds this model with, for every model in the registry (river's discipline): fast to
        train, and together covering the model's code paths."""
        return {"default": {}}

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
        self.item_counts = grow_array(self.item_counts, n_items, 0.0)
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
        each user by skipping the items they have seen (see :class:`Ranking`).
        """
        return None

    def _ranking(self, which: str) -> Ranking:
        """The cached ranking of the shared (``"shared"``) or cold (``"cold"``) score row,
        rebuilt when the model has learned since."""
        found = self._rankings.get(which)
        if found is None or found.version != self._state_version:
            row = self._shared_scores() if which == "shared" else self._cold_scores()
            assert row is not None
            found = self._rankings[which] = Ranking(row, RANKING_PREFIX, self._state_version)
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

    def _retrieval_handover(self, old: Recommender) -> Callable[[], None] | None:
        """A reader replacing ``old`` by this model (its next snapshot) may keep ``old``'s
        retrieval index instead of building one: this compares the two models (it may be
        called while ``old`` serves reads) and returns the function that moves the index over
        (to call while neither model is read), or ``None`` (nothing to keep)."""
        return None

    def _candidate_top_k(
        self, u: np.ndarray, k: int, exclude_seen: bool
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """:func:`top_k` of the (excluded) scores of users ``u`` without scoring every item, for
        a model that can name each user's candidates (item-kNN: the neighbours of the user's
        items); ``None`` (the default) to score every item. An override must return exactly
        what scoring every item would (the conformance tests compare the two)."""
        return None

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
        return as_id_array(users, "user"), scalar  # a scalar becomes a one-element array

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
        if ranked is None and len(u):
            ranked = self._candidate_top_k(u, k, exclude_seen)
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
        service takes it under its model lock); :func:`nmrn.io.write_checkpoint` can then write
        it, the slow part, while the model moves on.
        """
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
            "class": type(self).__name__,
            "preset": self.preset,
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
    def load(cls, path: str | os.PathLike[str], *, device: str | None = None) -> Recommender:
        """Load a checkpoint written by :meth:`save`; the class is read from the checkpoint.

        Called on a subclass, the checkpoint must hold that model (else
        :class:`~nmrn.errors.CheckpointError`). Called on :class:`Recommender`, the model's
        class must be registered, i.e. its module imported: :func:`nmrn.models.load_model`
        (``nmrn.load_recommender``) imports every model the package ships first.

        ``device`` puts a torch model's tensors on that device instead of the one it was saved
        from (a checkpoint written on a GPU loads on a CPU machine with ``device="cpu"``);
        models without a ``device`` option run on the CPU and ignore it.
        """
        recover_interrupted_save(Path(path))
        meta, arrays = read_checkpoint(path)
        return cls.from_state(meta, arrays, source=path, device=device)

    @classmethod
    def from_state(
        cls, meta: dict[str, Any], arrays: dict[str, np.ndarray], *, source: Any,
        device: str | None = None, ids: tuple[IdMap, IdMap] | None = None,
    ) -> Recommender:
        """The model that :meth:`load` builds from a checkpoint's ``(meta, arrays)`` (as
        :func:`nmrn.io.read_checkpoint` returns and checks them; ``source`` names them in
        errors). ``arrays`` is not changed; the model may keep references to its arrays.

        ``ids``: the ``(users, items)`` id maps of an earlier state of the same model (a
        snapshot reader's last one); when the meta's ids start with theirs, they are extended
        instead of rebuilt (the same maps, built faster).
        """
        path = source
        arrays = dict(arrays)
        version2 = meta["format_version"] >= 2
        try:
            model_cls = model_class(meta["class"] if version2 else meta["model"])
        except CheckpointError as err:
            raise CheckpointError(f"{path}: {err}") from None
        if not issubclass(model_cls, cls):
            raise CheckpointError(
                f"{path}: holds a {model_cls.__name__} model, not a {cls.__name__}"
            )
        params = dict(meta["params"])
        if device is not None and "device" in model_cls.config_class.param_names():
            params["device"] = device
        try:
            rec = model_cls(**params)
        except (TypeError, ValueError) as err:
            raise CheckpointError(
                f"{path}: bad parameters for {model_cls.__name__}: {err}"
            ) from None
        try:
            preset = meta.get("preset") if version2 else None
            if preset is not None and not isinstance(preset, str):
                raise CheckpointError(f"{path}: preset must be a string or null, got {preset!r}")
            rec.preset = preset
            for field in ("users", "items"):
                if not isinstance(meta[field], list):
                    raise CheckpointError(f"{path}: {field} must be a JSON list of ids")
            for field, what, at in (("users", "user", 0), ("items", "item", 1)):
                earlier = ids[at].extended(meta[field]) if ids is not None else None
                setattr(rec, field, earlier if earlier is not None
                        else IdMap.from_list(meta[field], what=what))
            indptr, hist_items = _base_arrays(arrays, len(rec.users), len(rec.items), path)
            rec.history = History.from_arrays(indptr, hist_items)
            rec.item_counts = arrays.pop("base.item_counts").astype(np.float64)
            rec.n_events = _count(meta["n_events"], "n_events", path)
            extra = meta.get("extra") or {}
            if not isinstance(extra, dict):
                raise CheckpointError(f"{path}: extra must be a JSON object")
            rec.extra = dict(extra)
            last = meta.get("last_timestamp")
            if last is not None and (isinstance(last, bool) or not isinstance(last, (int, float))
                                     or not np.isfinite(last)):
                raise CheckpointError(f"{path}: last_timestamp must be a finite number or null")
            rec.last_timestamp = -np.inf if last is None else float(last)
            counts = rec.item_counts
            if counts.ndim != 1 or len(counts) != len(rec.items):
                raise CheckpointError(f"{path}: item counts do not match the item ids")
            if not np.isfinite(counts).all() or (counts < 0).any():
                raise CheckpointError(f"{path}: item counts must be finite and >= 0")
            if len(hist_items) > rec.n_events:
                raise CheckpointError(f"{path}: the history holds more events than n_events")
            with state_follows():  # _load_state overwrites every row: none is drawn
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
