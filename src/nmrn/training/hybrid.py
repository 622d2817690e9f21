r"""NMRN-Hybrid: the memory network meets the neighbourhood inside one model, with a learned gate.

Jannach & Ludewig (RecSys 2017) found that what beats a neural session model on data of this
size is a hybrid in which the neural model meets the neighbourhood. A fixed blend of NMRN and
item-kNN is known not to help (BENCHMARKS.md); here the blend is learned, per user and per
moment, online, on the stream.

For a user ``u`` and a candidate item ``j``, with the model's state as it stands, the score is

.. math:: s(u, j) = w \cdot x(u, j) + v \cdot \tanh(W [x(u, j); c(u)] + b)

a linear term plus a one-hidden-layer gate over the evidence ``x(u, j)`` and the user's context
``c(u)``, so that the weight of each piece of evidence can depend on who the user is now and on
the other evidence. The evidence (each normalised per user, so that scales are comparable
across users; any subset can be chosen with ``features``):

``memory``
    NMRN's read: ``-||s_u - v_j||`` of an inner :class:`~nmrn.training.nmrn.NMRN` (configured
    by ``memory``; the paper's model by default), standardised over the items.
``knn``, ``knn_slow``
    Recency-weighted co-occurrence with the user's recent items (an inner
    :class:`~nmrn.baselines.itemknn.ItemKNN`), read with a fast (``knn_decay``) and a slow
    (``knn_slow_decay``) profile decay: ``log(eps + k_j / max_j k_j)``.
``follows``
    What tends to follow the user's last items (a directed ItemKNN over their last
    ``follow_history`` items), normalised the same way.
``sessions``
    The votes of similar sessions of other users (an inner :class:`~nmrn.baselines.sknn.STAN`
    with the options ``sessions``; by default the ones chosen on validation for ``stan``),
    normalised the same way.
``pop``, ``recent_pop``
    All-time popularity and popularity decayed with a half-life of ``pop_half_life`` events
    (log-scaled into [0, 1]).
``stage_pop``
    What users at the same stage of their life consume: counts per stage
    ``floor(log2(1 + n_u))`` of the user's event count ``n_u`` (new users rate a few items a
    lot).
``taste``
    A user's long-term taste as a latent-factor model sees it: the scores of an inner
    :class:`~nmrn.baselines.bpr.BPR` (options ``taste``), standardised like ``memory``. Off by
    default (not in ``features`` unless named).
``ease``
    The whole of a user's past through a closed-form item-item linear model: the scores of an
    inner :class:`~nmrn.baselines.ease.EASE` (options ``ease``), standardised like ``memory``.
    Off by default.
``age``
    How long an item has been in the catalogue: the events since its first event,
    ``log(1 + age) / log(1 + max age)`` (the oldest item 1). Not evidence on its own (the
    newest items are rarely the next ones) but an input the gate can combine with the others:
    on ML-100K, items 5,000-50,000 events old are the targets that recent popularity finds and
    the memory and the neighbourhoods miss (docs/tuning.md, "Item age"). Off by default.

``transform="rank"`` replaces each of these scalings by one scale-free form, ``-log(1 + r)``
with ``r`` the item's rank in the user's row of that evidence (0 for the best; ties at their
mean rank), so that the gate weighs orders, not units.

The context ``c(u)`` is ``log(1 + n_u) / 6`` and ``log(1 + events since u's last event) / 10``.

Training (online; the same code in ``fit`` and ``learn``). A batch of events is first used to
train the gate, with features computed from the state *before* the batch, for its warm events
(user and item known before it, the evaluation protocol's rule): ``learn_passes`` passes of
Adam on a list-wise softmax loss, the positive against every item the user has not consumed,
``-log(e^{s(u,v)} / (e^{s(u,v)} + sum_j e^{s(u,j)}))``. Then every component learns the batch
(the inner NMRN with its own rank-weighted hinge, the counts exactly) and the batch joins the
history. ``fit`` replays the history in chunks of ``fit_chunk`` events the same way
(prequential), keeping each chunk's training rows, and then trains the gate for ``fit_epochs``
passes over all of them: the gate learns on the same kind of evidence it will score with, never
on evidence that already saw the event. With ``gate_fraction`` below 1 only the last
``gate_fraction`` of the history is replayed this way: the components are first fitted, with
their own ``fit`` (NMRN's and BPR's epochs), on the events before it — a component that had only
one online pass over the history gives weak evidence, and the replay still shows the gate
evidence that has not seen the event it is trained on (stacking on a held-out tail).

Streaming semantics. Scoring never sees events it has not been given. The counts after a batch
do not depend on how it is split (the components' own guarantee); the gate and the inner NMRN
take gradient steps per batch, so their state depends on the batch boundaries, as any online
learner's does.

Reads before a learn. In test-then-train (the evaluation protocol; a service that recommends and
then sees what was clicked) the users of a batch were read from the very state the batch starts
from, and the gate's training rows are the evidence that read computed. A read keeps them (up to
:data:`EVIDENCE_CACHE_BYTES`) and the next ``learn`` takes them instead of computing them again.
This changes nothing but the cost: a user's evidence never depends on which other users are
scored with them, and a batch that adds items leaves the evidence over the items known before it
bit for bit as it was (the memory's evidence is scored over the rows of the items known
before the batch only, since a matrix-vector product over a longer table may round otherwise;
the exceptions, EASE and BPR evidence and item-kNN counts that the batch's new items turn from
dense to sparse storage, turn the reuse off for such a batch); a test checks
that a model read before every batch ends bit for bit where one never read does (what a replay
computes).

The softmax loss, not NMRN's rank-weighted hinge, trains the gate: on validation the hinge
against the hardest of 20 negatives drove the gate's weights to zero, and the hinge averaged over
negatives scored below the softmax (docs/tuning.md, "NMRN-Hybrid").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor

from nmrn.baselines.bpr import BPR, BPRConfig
from nmrn.baselines.ease import EASE, EASEConfig
from nmrn.baselines.itemknn import ItemKNN
from nmrn.baselines.popularity import RecentPopularity
from nmrn.baselines.sknn import STAN, STANConfig
from nmrn.baselines.sknn import VALIDATED as STAN_VALIDATED
from nmrn.config import Config, Int, Maybe, NMRNConfig, OneOf, Real, Sub, option
from nmrn.data.growth import grow_array
from nmrn.data.history import History
from nmrn.errors import CheckpointError, ConfigError, ModelFitError
from nmrn.model.tables import saved_tensor
from nmrn.training.contract import Recommender
from nmrn.training.nmrn import NMRN
from nmrn.training.registry import register

__all__ = ["FEATURES", "HybridConfig", "NMRNHybrid"]

FEATURES = ("memory", "knn", "knn_slow", "follows", "sessions", "pop", "recent_pop", "stage_pop",
            "taste", "ease", "age")
DEFAULT_FEATURES = FEATURES[:-3]  # every evidence but ``taste``, ``ease`` and ``age``
TRANSFORMS = ("log_share", "rank")
N_CONTEXT = 2
N_STAGES = 12
_EPS = 1e-3
_TIE = 1e-9


@dataclass(frozen=True)
class _FeatureNames:
    """A non-empty list of distinct names of :data:`FEATURES` (kept as a tuple)."""

    def __call__(self, where: str, value: Any) -> tuple[str, ...]:
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"{where} must be a non-empty list of {', '.join(FEATURES)}")
        names = tuple(OneOf(FEATURES)(where, v) for v in value)
        if len(set(names)) != len(names):
            raise ConfigError(f"{where} names a feature twice: {list(names)}")
        return names


@dataclass(frozen=True)
class HybridConfig(Config):
    """Options of :class:`NMRNHybrid` (see the module docstring for each feature).

    Parameters
    ----------
    memory
        The inner NMRN's configuration (:class:`~nmrn.config.NMRNConfig` or a mapping of its
        sections or flat fields); its seed is the hybrid's.
    features
        Which evidence the gate sees (the ablations drop some).
    knn_history, knn_decay, knn_slow_decay, knn_cooc_decay
        The co-occurrence component: how many of a user's last items pair with a new one, the
        profile decays of ``knn`` and ``knn_slow``, and the per-event decay of the counts
        (1: never forget; :class:`~nmrn.baselines.itemknn.ItemKNN`'s ``cooc_decay``).
    follow_history, follow_decay, follow_cooc_decay
        The directed ("what follows") component, likewise.
    sessions
        The session-neighbourhood component's options (:class:`~nmrn.baselines.sknn.STANConfig`
        or a mapping).
    pop_half_life
        Half-life, in events, of ``recent_pop``.
    gate
        ``"mlp"`` (learned, with a hidden layer over the evidence and the user's context),
        ``"linear"`` (learned weights of the evidence only) or ``"sum"``: the plain sum of the
        features (an ablation).
    hidden
        Units of the gate's hidden layer.
    lr, batch_size, learn_passes, learn_lr
        Adam's learning rate, events per step, passes over each ``learn`` batch, and the
        learning rate of those passes (``None``: ``lr``).
    fit_chunk, fit_epochs
        ``fit``'s replay: chunk size, and passes of the gate over the replayed rows.
    gate_fraction
        The share of ``fit``'s events replayed for the gate (the tail); the components fit on
        the events before it with their own ``fit``. 1: all replayed, nothing fitted.
    taste
        The ``taste`` component's options (:class:`~nmrn.baselines.bpr.BPRConfig`).
    ease
        The ``ease`` component's options (:class:`~nmrn.baselines.ease.EASEConfig`).
    transform
        ``"log_share"`` (each evidence scaled its own way) or ``"rank"`` (``-log(1 + rank)``).
    seed
        Seed of every random choice (gate initialisation, shuffles, the inner NMRN).
    """

    memory: NMRNConfig = option(check=Sub(NMRNConfig), default_factory=NMRNConfig)
    features: tuple[str, ...] = option(DEFAULT_FEATURES, _FeatureNames())
    knn_history: int = option(400, Int(low=1))
    knn_decay: float = option(0.7, Real(low=0.0, high=1.0, low_open=True))
    knn_slow_decay: float = option(0.95, Real(low=0.0, high=1.0, low_open=True))
    knn_cooc_decay: float = option(1.0, Real(low=0.0, high=1.0, low_open=True))
    follow_history: int = option(20, Int(low=1))
    follow_decay: float = option(0.7, Real(low=0.0, high=1.0, low_open=True))
    follow_cooc_decay: float = option(1.0, Real(low=0.0, high=1.0, low_open=True))
    sessions: STANConfig = option(
        check=Sub(STANConfig), default_factory=lambda: STANConfig(**STAN_VALIDATED)
    )
    pop_half_life: float = option(5000.0, Real(low=0.0, low_open=True))
    taste: BPRConfig = option(check=Sub(BPRConfig), default_factory=lambda: BPRConfig(dim=32))
    ease: EASEConfig = option(check=Sub(EASEConfig), default_factory=EASEConfig)
    transform: str = option("log_share", OneOf(TRANSFORMS))
    gate: str = option("mlp", OneOf(("mlp", "linear", "sum")))
    hidden: int = option(16, Int(low=1))
    lr: float = option(0.01, Real(low=0.0, low_open=True))
    batch_size: int = option(64, Int(low=1))
    learn_passes: int = option(1, Int(low=0))
    learn_lr: float | None = option(None, Maybe(Real(low=0.0, low_open=True)))
    fit_chunk: int = option(1000, Int(low=1))
    fit_epochs: int = option(3, Int(low=0))
    gate_fraction: float = option(1.0, Real(low=0.0, high=1.0, low_open=True))
    seed: int = option(0, Int())

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["features"] = list(self.features)
        out["memory"] = self.memory.to_params()  # the flat form NMRN itself records
        return out


class _EvidenceCache:
    """The gate's inputs ``(x [n, F], c [1, C])`` of the users a read just scored, for the
    ``learn`` that follows from the same state (test-then-train: the protocol, a live service
    that recommends and then sees the click). Keyed by ``(state version, n items)``; rows are
    kept only up to :data:`EVIDENCE_CACHE_BYTES`; never saved."""

    def __init__(self) -> None:
        self.key: tuple[int, int] | None = None
        self.rows: dict[int, tuple[Tensor, Tensor]] = {}
        self.nbytes = 0
        self.hits = 0  # rows reused by a learn (tests, benchmarks)
        self.misses = 0

    def keep(self, key: tuple[int, int], users: np.ndarray, x: Tensor, c: Tensor) -> None:
        if key != self.key:
            self.clear()
            self.key = key
        if not len(x):
            return
        row_bytes = x[0].numel() * x.element_size() + c[0].numel() * c.element_size()
        for r, user in enumerate(users.tolist()):
            if user in self.rows:
                continue
            if self.nbytes + row_bytes > EVIDENCE_CACHE_BYTES:
                break
            self.rows[user] = (x[r].clone(), c[r].clone())
            self.nbytes += row_bytes

    def take(self, key: tuple[int, int],
             users: np.ndarray) -> list[tuple[Tensor, Tensor] | None] | None:
        """Each user's kept rows (``None`` where not kept), or None when nothing is kept for
        ``key``."""
        if key != self.key or not self.rows:
            return None
        found = [self.rows.get(u) for u in users.tolist()]
        hits = sum(f is not None for f in found)
        self.hits += hits
        self.misses += len(found) - hits
        return found

    def clear(self) -> None:
        self.key, self.rows, self.nbytes = None, {}, 0


EVIDENCE_CACHE_BYTES = 64 << 20
"""At most this many bytes of gate inputs are kept between a read and the next ``learn``
(~54 KB a user on ML-100K: 1,682 items x 8 features x float32, so every user of a 10,000-event
block fits). A model that is read and never learns (a reader process) holds up to this much."""


class _Gate(torch.nn.Module):
    """``w . x + v . tanh(W [x; c] + b)`` (``"mlp"``), ``w . x`` (``"linear"``) or ``sum(x)``
    without learning (``"sum"``)."""

    def __init__(self, n_features: int, hidden: int, kind: str, generator: torch.Generator):
        super().__init__()
        self.learned = kind != "sum"
        self.hidden = kind == "mlp"
        self.linear = torch.nn.Parameter(torch.zeros(n_features))
        self.w1 = torch.nn.Parameter(
            torch.randn(n_features + N_CONTEXT, hidden, generator=generator) * 0.3
        )
        self.b1 = torch.nn.Parameter(torch.zeros(hidden))
        self.w2 = torch.nn.Parameter(torch.randn(hidden, generator=generator) * 0.1)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """``x [..., F]``, ``c [..., C]`` (broadcast over the items) -> ``[...]``."""
        if not self.learned:
            return x.sum(dim=-1)
        if not self.hidden:
            return x @ self.linear.to(x.dtype)
        c = c.to(x.dtype).expand(*x.shape[:-1], c.shape[-1])
        w1, b1, w2, linear = (p.to(x.dtype) for p in (self.w1, self.b1, self.w2, self.linear))
        h = torch.tanh(torch.cat([x, c], dim=-1) @ w1 + b1)
        return x @ linear + h @ w2


def _stage(counts: np.ndarray) -> np.ndarray:
    """The life stage of users with ``counts`` earlier events: ``floor(log2(1 + n))``, capped."""
    return np.minimum(np.floor(np.log2(np.asarray(counts, np.float64) + 1.0)).astype(np.int64),
                      N_STAGES - 1)


def _rank_evidence(v: np.ndarray) -> np.ndarray:
    """``-log(1 + rank)`` of each item in its row, best first (rank 0), ties at their mean rank:
    a scale-free form of any evidence (``transform="rank"``)."""
    return -np.log1p(rankdata(-v, axis=1, method="average") - 1.0)


def _log_share(v: np.ndarray) -> np.ndarray:
    """``log(eps + v / max v)`` row by row (``log eps`` for a row without evidence)."""
    top = v.max(axis=-1, keepdims=True)
    return np.log(_EPS + np.where(top > 0, v / np.where(top > 0, top, 1.0), 0.0))


@register
class NMRNHybrid(Recommender):
    """NMRN's memory and the neighbourhood, weighed by a gate learned online (module docstring).

    Examples
    --------
    >>> log = [(u % 5, (u * 7 + t) % 9, t) for t, u in enumerate(range(60))]
    >>> rec = NMRNHybrid(memory={"dim": 8, "memory_slots": 2, "epochs": 1}, fit_chunk=20)
    >>> rec = rec.fit(log)
    >>> len(rec.recommend(0, k=3).items)
    3
    """

    config_class = HybridConfig
    config: HybridConfig

    def __init__(self, config: HybridConfig | Mapping[str, Any] | None = None, /,
                 **options: Any) -> None:
        super().__init__(config, **options)
        cfg = self.config
        use = set(cfg.features)
        self._gen = torch.Generator().manual_seed(cfg.seed)
        self.components: dict[str, Recommender] = {}
        if "memory" in use:
            self.components["memory"] = NMRN(cfg.memory.replace(seed=cfg.seed))
        if use & {"knn", "knn_slow"}:
            self.components["knn"] = ItemKNN(
                history_len=cfg.knn_history, recency_decay=cfg.knn_decay, alpha=1.0,
                cooc_decay=cfg.knn_cooc_decay,
            )
        if "follows" in use:
            self.components["follows"] = ItemKNN(
                history_len=cfg.follow_history, recency_decay=cfg.follow_decay, directed=True,
                cooc_decay=cfg.follow_cooc_decay,
            )
        if "sessions" in use:
            self.components["sessions"] = STAN(cfg.sessions)
        if "taste" in use:
            self.components["taste"] = BPR(cfg.taste.replace(seed=cfg.seed))
        if "ease" in use:
            self.components["ease"] = EASE(cfg.ease)
        if "recent_pop" in use:
            self.components["recent_pop"] = RecentPopularity(half_life=cfg.pop_half_life)
        for component in self.components.values():  # one set of ids for everyone
            component.users, component.items = self.users, self.items
        self.gate = _Gate(len(cfg.features), cfg.hidden, cfg.gate, self._gen)
        self._optimizer = torch.optim.Adam(self.gate.parameters(), lr=cfg.lr)
        self._stage_counts = np.zeros((N_STAGES, 0))  # [stage, item]
        self._user_last = np.zeros(0, dtype=np.int64)  # event number of each user's last event
        self._item_first = np.zeros(0, dtype=np.int64)  # event number of each item's first event
        self._n_known = 0  # items known before the batch being learned
        self.last_loss = math.nan
        self._evidence = _EvidenceCache()

    @classmethod
    def _unit_test_params(cls) -> dict[str, dict[str, Any]]:
        small = {"memory": {"dim": 4, "memory_slots": 2, "epochs": 1, "batch_size": 32},
                 "fit_chunk": 40, "fit_epochs": 2, "hidden": 4, "seed": 3}
        return {"all": small, "no-memory-sum": {**small, "features": ["knn", "pop", "follows"],
                                               "gate": "sum"},
                "stacked-rank-taste": {**small, "features": list(FEATURES), "gate": "linear",
                                       "transform": "rank", "gate_fraction": 0.5,
                                       "taste": {"dim": 4, "epochs": 2}, "learn_lr": 0.001,
                                       "ease": {"l2": 3.0, "recency_decay": 0.9}}}

    # -- shared state ------------------------------------------------------------------------
    def _sync(self, history: History, counts: np.ndarray, n_events: int) -> None:
        """Give every component the hybrid's view of the stream so far."""
        for component in self.components.values():
            component.history, component.item_counts = history, counts
            component.n_events = n_events

    def _grow(self, n_users: int, n_items: int) -> None:
        dense = [c for c in self.components.values() if isinstance(c, ItemKNN) and not c.is_sparse]
        for component in self.components.values():
            component._grow(n_users, n_items)
        if any(c.is_sparse for c in dense):
            # item-kNN counts that turn sparse are read as float32 products, not the dense
            # float64 sums a read before the batch made: its evidence is not this state's
            self._evidence.clear()
        extra = n_items - self._stage_counts.shape[1]
        if extra > 0:
            self._stage_counts = np.concatenate([self._stage_counts,
                                                 np.zeros((N_STAGES, extra))], axis=1)
        self._user_last = grow_array(self._user_last, n_users)
        # a grown item's first event is set when the batch that brought it is counted
        self._item_first = grow_array(self._item_first, n_items, fill=self.n_events)

    # -- evidence ----------------------------------------------------------------------------
    def _features(
        self, users: np.ndarray, n: int, history: History, counts: np.ndarray, n_seen: int
    ) -> tuple[Tensor, Tensor]:
        """``x [U, n, F]`` over the first ``n`` items and ``c [U, 1, C]`` for known users,
        from the state as it stands (``history``, ``counts``: the stream so far)."""
        cfg = self.config
        self._sync(history, counts, n_seen)
        x = np.zeros((len(users), n, len(cfg.features)), dtype=np.float32)
        lengths = np.array([history.length(u) for u in users.tolist()], dtype=np.int64)
        for f, name in enumerate(cfg.features):
            raw = self._raw_evidence(name, users, n, counts, lengths, n_seen)
            x[:, :, f] = _rank_evidence(raw) if cfg.transform == "rank" else self._scaled(name, raw)
        since = n_seen - self._user_last[users]
        c = np.stack([np.log1p(lengths) / 6.0,
                      np.where(lengths > 0, np.log1p(since) / 10.0, 1.0)], axis=1)
        return torch.from_numpy(x), torch.from_numpy(c.astype(np.float32))[:, None, :]

    def _raw_evidence(self, name: str, users: np.ndarray, n: int, counts: np.ndarray,
                      lengths: np.ndarray, n_seen: int) -> np.ndarray:
        """Evidence ``name`` for ``users`` over the first ``n`` items, in its own units
        (``[U, n]``, or ``[1, n]`` where it is the same for every user); higher is better."""
        if name == "knn_slow":
            knn = self.components["knn"]
            assert isinstance(knn, ItemKNN)
            return knn.scores_with_decay(users, self.config.knn_slow_decay)[:, :n]
        if name == "knn":
            knn = self.components["knn"]
            assert isinstance(knn, ItemKNN)
            return knn.scores_with_decay(users, self.config.knn_decay)[:, :n]
        if name == "memory":  # its first n items scored as a table of n items would be
            memory = self.components["memory"]
            assert isinstance(memory, NMRN)
            return memory._score_all(users, n_items=n)
        if name in ("follows", "sessions", "taste", "ease"):
            return self.components[name]._score_all(users)[:, :n]
        if name == "pop":
            return counts[None, :n]
        if name == "recent_pop":
            return self.components["recent_pop"]._score_all(users[:1])[:1, :n]
        if name == "age":
            return (n_seen - self._item_first[None, :n]).astype(np.float64)
        return self._stage_counts[_stage(lengths), :n]  # stage_pop

    def _scaled(self, name: str, raw: np.ndarray) -> np.ndarray:
        """``transform="log_share"``: each evidence in a scale of its own (module docstring)."""
        if name in ("memory", "taste", "ease"):
            return (raw - raw.mean(axis=1, keepdims=True)) / (raw.std(axis=1, keepdims=True) + 1e-9)
        if name == "pop":
            top = max(float(raw.max(initial=0.0)), 1.0)
            return np.log1p(raw) / math.log1p(top)
        if name == "recent_pop":
            share = raw / max(float(raw.max(initial=0.0)), 1e-12)
            return np.log1p(100.0 * share) / math.log1p(100.0)
        if name == "age":
            return np.log1p(raw) / math.log1p(max(float(raw.max(initial=0.0)), 1.0))
        return _log_share(raw)

    def _score_all(self, users: np.ndarray) -> np.ndarray:
        n = len(self.items)
        users = np.asarray(users, np.int64)
        x, c = self._features(users, n, self.history, self.item_counts, self.n_events)
        self._evidence.keep((self._state_version, n), users, x, c)
        scores = np.empty((len(users), n))
        with torch.no_grad():  # user by user: a user's scores never depend on who else is asked
            # (in float64: float32 kernels round differently with the data's alignment)
            for row in range(len(users)):
                scores[row] = self.gate(x[row : row + 1].double(), c[row : row + 1])[0].numpy()
        share = self.item_counts / (self.n_events + 1.0)
        return scores + _TIE * share[None, :]  # ties: the more popular item first

    # -- training ----------------------------------------------------------------------------
    def _rows(
        self, users: np.ndarray, items: np.ndarray, history: History, counts: np.ndarray,
        n_seen: int, reuse: tuple[int, int] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, np.ndarray, np.ndarray] | None:
        """The gate's training rows for a batch about to be learned: ``(x, c, seen, row of each
        warm event, its item)`` with features from the state before the batch, or None.
        ``reuse``: the key under which :meth:`_score_all` kept the rows of that state (users
        whose rows it kept are not computed again)."""
        n = self._n_known
        known_user = np.array([history.length(u) > 0 for u in users.tolist()], dtype=bool)
        warm = (items < n) & known_user
        if not warm.any():
            return None
        uniq, row = np.unique(users[warm], return_inverse=True)
        kept = self._evidence.take(reuse, uniq) if reuse is not None else None
        if kept is None:
            x, c = self._features(uniq, n, history, counts, n_seen)
        else:
            x = torch.empty((len(uniq), n, len(self.config.features)), dtype=torch.float32)
            c = torch.empty((len(uniq), 1, 2), dtype=torch.float32)
            have = np.array([r is not None for r in kept], dtype=bool)
            for r in np.flatnonzero(have).tolist():
                x[r], c[r] = kept[r]
            if not have.all():
                missing = np.flatnonzero(~have)
                x_m, c_m = self._features(uniq[missing], n, history, counts, n_seen)
                index = torch.from_numpy(missing)
                x[index], c[index] = x_m, c_m
        seen = np.zeros((len(uniq), n), dtype=bool)  # consumed before, or elsewhere in the batch
        for r, u in enumerate(uniq.tolist()):
            seen[r, history.items_of(u)] = True
        seen[row, items[warm]] = True
        return x, c, torch.from_numpy(seen), row, items[warm]

    def _loss_and_grads(self, x: Tensor, c: Tensor, seen: Tensor, rows: np.ndarray,
                        items: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """The summed softmax loss of events (gate rows ``rows``, positives ``items``) and its
        gradient with respect to the gate's learned parameters, in closed form and in numpy
        float32 (no autograd; on this machine numpy's ``tanh``, ``exp`` and small products run
        3-13x faster than torch's; the autograd version's rounding aside, the same: a test
        checks both on random inputs). A user's scores are the same for all their events of a
        batch, so each user is scored once.

        With scores ``s``, ``z_e = log(e^{s_pos} + sum_{j unseen} e^{s_j})`` and the loss
        ``sum_e z_e - s_pos(e)``: ``dL/ds_j = sum_e e^{s_j - z_e}`` over the user's events
        for an unseen ``j``, plus ``e^{s_pos - z_e} - 1`` at each event's positive, then
        back through ``w . x + v . tanh(W [x; c] + b)`` by hand."""
        gate = self.gate
        users, at = np.unique(rows, return_inverse=True)
        xu = x.numpy()[users].astype(np.float32, copy=False)  # [R, n, F]
        n_users, n, n_features = xu.shape
        flat_x = xu.reshape(-1, n_features)
        lin = gate.linear.detach().numpy()
        scores = (flat_x @ lin).reshape(n_users, n)
        if gate.hidden:
            w1, b1, w2 = (p.detach().numpy() for p in (gate.w1, gate.b1, gate.w2))
            cu = c.numpy()[users, 0, :].astype(np.float32, copy=False)  # [R, C]
            h = (flat_x @ w1[:n_features]).reshape(n_users, n, -1)
            h += (cu @ w1[n_features:] + b1)[:, None, :]
            np.tanh(h, out=h)
            flat_h = h.reshape(-1, h.shape[-1])
            scores += (flat_h @ w2).reshape(n_users, n)
        unseen = ~seen.numpy()[users]
        masked = np.where(unseen, scores, np.float32(-np.inf))
        top = masked.max(axis=1)
        top = np.where(np.isfinite(top), top, np.float32(0.0))  # a user with nothing unseen
        e = np.exp(masked - top[:, None])  # 0 where seen
        total = e.sum(axis=1)
        with np.errstate(divide="ignore"):
            others = np.log(total) + top  # [R]; -inf for a user with nothing unseen
        pos = scores[at, items]
        z = np.logaddexp(others[at], pos)
        loss = float((z - pos).sum(dtype=np.float64))
        # dL/ds: the unseen items' softmax times each user's sum over events of e^{others - z}
        weight = np.bincount(at, np.exp(others[at] - z), minlength=n_users)
        share = np.divide(weight, total, out=np.zeros_like(weight), where=total > 0)
        g = e * share.astype(np.float32)[:, None]
        np.add.at(g, (at, items), np.exp(pos - z) - np.float32(1.0))
        flat_g = g.reshape(-1)
        grads = {"linear": flat_x.T @ flat_g}
        if gate.hidden:
            dpre = np.square(h)  # d tanh = 1 - h^2, then times v and dL/ds
            np.subtract(np.float32(1.0), dpre, out=dpre)
            dpre *= w2
            dpre *= g[:, :, None]
            per_user = dpre.sum(axis=1)  # [R, H]
            grads["w1"] = np.concatenate([flat_x.T @ dpre.reshape(-1, dpre.shape[-1]),
                                          cu.T @ per_user])
            grads["b1"] = per_user.sum(axis=0)
            grads["w2"] = flat_h.T @ flat_g
        return loss, grads

    def _train_gate(self, parts: list[tuple[Tensor, Tensor, Tensor, np.ndarray, np.ndarray]],
                    passes: int, lr: float) -> None:
        """``passes`` shuffled passes of Adam at ``lr`` over the events of ``parts``."""
        if not self.gate.learned or not parts or passes == 0:
            return
        for group in self._optimizer.param_groups:
            group["lr"] = lr
        index = np.concatenate([np.stack([np.full(len(p[3]), k), np.arange(len(p[3]))], axis=1)
                                for k, p in enumerate(parts)])
        size = self.config.batch_size
        params = dict(self.gate.named_parameters())
        for _ in range(passes):
            order = torch.randperm(len(index), generator=self._gen).numpy()
            for lo in range(0, len(order), size):
                chosen = index[order[lo : lo + size]]
                total = 0.0
                grads: dict[str, np.ndarray] = {}
                for k in np.unique(chosen[:, 0]).tolist():
                    x, c, seen, rows, items = parts[k]
                    pick = chosen[chosen[:, 0] == k, 1]
                    part_loss, part_grads = self._loss_and_grads(x, c, seen, rows[pick],
                                                                 items[pick])
                    total = total + part_loss
                    for name, grad in part_grads.items():
                        grads[name] = grads[name] + grad if name in grads else grad
                loss = total / len(chosen)
                if not math.isfinite(loss) or not all(np.isfinite(g).all()
                                                       for g in grads.values()):
                    raise ModelFitError(f"NMRNHybrid: the gate's loss is {loss}; lower lr "
                                        f"(now {self.config.lr})")
                for name, param in params.items():  # None where a gate kind does not use it
                    param.grad = (torch.from_numpy(grads[name] / np.float32(len(chosen)))
                                  if name in grads else None)
                self._optimizer.step()
                self.last_loss = loss

    def _absorb(self, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray,
                weights: Any, history: History, counts: np.ndarray, n_seen: int) -> None:
        """Every component learns the batch, then the hybrid's own counts take it."""
        self._sync(history, counts, n_seen)
        for component in self.components.values():
            component._learn(users, items, timestamps, weights)
        self._count(users, items, history, n_seen)

    def _count(self, users: np.ndarray, items: np.ndarray, history: History, n_seen: int) -> None:
        """The hybrid's own counts take a batch (life stages, last events, known items)."""
        # each event's stage is its user's event count before it (history, then the batch)
        lengths = np.array([history.length(u) for u in users.tolist()], dtype=np.int64)
        order = np.argsort(users, kind="stable")
        su = users[order]
        first = np.r_[True, su[1:] != su[:-1]]
        rank = np.arange(len(su)) - np.maximum.accumulate(np.where(first, np.arange(len(su)), 0))
        before = lengths.copy()
        before[order] += rank
        np.add.at(self._stage_counts, (_stage(before), items), 1.0)
        self._user_last[users] = n_seen + np.arange(len(users))
        if int(items.max()) >= self._n_known:  # the batch brings items: their first events
            distinct, first_at = np.unique(items, return_index=True)
            new = distinct >= self._n_known
            self._item_first[distinct[new]] = n_seen + first_at[new]
        self._n_known = max(self._n_known, int(items.max()) + 1)

    def _fit(self, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray,
             weights: Any) -> None:
        # Replay the events chunk by chunk on copies of the history and counts (the base class
        # appends the whole batch to the real ones after this returns).
        indptr, hist_items = self.history.to_arrays()
        history = History.from_arrays(indptr, hist_items)
        counts = self.item_counts.copy()
        n_seen = self.n_events
        # The components are fitted (their own epochs) on the events before ``split``; the gate
        # learns from the replay of the rest, which the components have not seen.
        split = len(users) - math.ceil(self.config.gate_fraction * len(users))
        if split > 0:
            self._sync(history, counts, n_seen)
            w = None if weights is None else weights[:split]
            for component in self.components.values():
                component._fit(users[:split], items[:split], timestamps[:split], w)
            self._count(users[:split], items[:split], history, n_seen)
            history.append(users[:split], items[:split])
            np.add.at(counts, items[:split], 1.0)
            n_seen += split
        parts = []
        size = self.config.fit_chunk
        for lo in range(split, len(users), size):
            u, i = users[lo : lo + size], items[lo : lo + size]
            t = timestamps[lo : lo + size]
            w = None if weights is None else weights[lo : lo + size]
            found = self._rows(u, i, history, counts, n_seen)
            if found is not None:
                x, c, seen, rows, pos = found
                parts.append((x.half(), c, seen, rows, pos))  # half: 50 chunks of ~2 MB
            self._absorb(u, i, t, w, history, counts, n_seen)
            history.append(u, i)
            np.add.at(counts, i, 1.0)
            n_seen += len(u)
        self._train_gate(parts, self.config.fit_epochs, self.config.lr)
        self._sync(self.history, self.item_counts, self.n_events)

    def _learn(self, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray,
               weights: Any) -> None:
        # The rows a read computed from the state this batch starts from are the rows computed
        # here (a user's evidence never depends on who else is scored, and growing the
        # catalogue leaves the first n items' evidence as it was), so they are reused: in
        # test-then-train every learned user was just read. _ingest bumped the version once.
        grew = len(self.items) > self._n_known
        exact = not grew or self._growth_exact()
        reuse = (self._state_version - 1, self._n_known) if exact else None
        cfg = self.config
        found = None
        try:  # no gate step to take (learn_passes 0, or a gate that does not learn): no rows
            if cfg.learn_passes and self.gate.learned:
                found = self._rows(users, items, self.history, self.item_counts, self.n_events,
                                   reuse)
        finally:
            self._evidence.clear()
        if found is not None:
            self._train_gate([found], cfg.learn_passes,
                             cfg.lr if cfg.learn_lr is None else cfg.learn_lr)
        self._absorb(users, items, timestamps, weights, self.history, self.item_counts,
                     self.n_events)

    def _growth_exact(self) -> bool:
        """Whether the evidence of known users over the items known before a batch stays bit
        for bit the same when the batch adds items: not with EASE, whose solve over a larger
        system may round the old items' weights otherwise, nor with BPR, whose products over a
        larger item table may round otherwise (the memory is scored over the old items' rows
        only, :meth:`NMRN._score_all`'s ``n_items``). (Item-kNN's growth only widens its main
        and pending counts: the old items' products are unchanged.)"""
        return not any(isinstance(c, (EASE, BPR)) for c in self.components.values())

    # -- checkpoints -------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays: dict[str, np.ndarray] = {
            "stage_counts": self._stage_counts,
            "user_last": self._user_last,
            "item_first": self._item_first,
            "rng": self._gen.get_state().numpy(),
        }
        for name, tensor in self.gate.state_dict().items():
            arrays[f"gate.{name}"] = tensor.detach().numpy()
        optim = self._optimizer.state_dict()
        steps = {}
        for pid, state in optim["state"].items():
            arrays[f"adam.{pid}.exp_avg"] = state["exp_avg"].numpy()
            arrays[f"adam.{pid}.exp_avg_sq"] = state["exp_avg_sq"].numpy()
            steps[str(pid)] = float(state["step"])
        meta: dict[str, Any] = {"n_known": self._n_known, "adam_steps": steps,
                                "last_loss": None if math.isnan(self.last_loss)
                                else self.last_loss, "components": {}}
        self._sync(self.history, self.item_counts, self.n_events)
        for name, component in self.components.items():
            sub_arrays, sub_meta = component._state()
            arrays.update({f"{name}.{k}": v for k, v in sub_arrays.items()})
            meta["components"][name] = sub_meta
        return arrays, meta

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        n_users, n_items = len(self.users), len(self.items)
        stage = np.asarray(arrays["stage_counts"], dtype=np.float64)
        last = np.asarray(arrays["user_last"], dtype=np.int64)
        if stage.shape != (N_STAGES, n_items) or last.shape != (n_users,):
            raise CheckpointError(f"NMRNHybrid arrays have shapes {stage.shape}, {last.shape}")
        # checkpoints written before the ``age`` evidence lack ``item_first``: only a model that
        # reads it needs it
        if "item_first" in arrays or "age" in self.config.features:
            if "item_first" not in arrays:
                raise CheckpointError("NMRNHybrid checkpoint lacks item_first, which the age "
                                      "evidence reads")
            first = np.asarray(arrays["item_first"], dtype=np.int64)
            if first.shape != (n_items,):
                raise CheckpointError(f"NMRNHybrid item_first has shape {first.shape}, "
                                      f"expected ({n_items},)")
            self._item_first = first.copy()
        self._stage_counts, self._user_last = stage.copy(), last.copy()
        self.gate.load_state_dict({
            name: saved_tensor(arrays, f"gate.{name}", tuple(tensor.shape))
            for name, tensor in self.gate.state_dict().items()
        })
        optim = self._optimizer.state_dict()
        for pid_text, step in meta["adam_steps"].items():
            pid = int(pid_text)
            optim["state"][pid] = {
                "step": torch.tensor(float(step)),
                "exp_avg": torch.from_numpy(np.array(arrays[f"adam.{pid}.exp_avg"])),
                "exp_avg_sq": torch.from_numpy(np.array(arrays[f"adam.{pid}.exp_avg_sq"])),
            }
        self._optimizer.load_state_dict(optim)
        self._gen.set_state(torch.from_numpy(np.array(arrays["rng"], dtype=np.uint8)))
        self._n_known = int(meta["n_known"])
        loss = meta.get("last_loss")
        self.last_loss = math.nan if loss is None else float(loss)
        self._sync(self.history, self.item_counts, self.n_events)
        for name, component in self.components.items():
            component.users, component.items = self.users, self.items  # load replaced them
            prefix = f"{name}."
            sub = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            component._grow(n_users, n_items)
            component._load_state(sub, meta["components"][name])
