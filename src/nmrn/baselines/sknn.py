r"""Session-aware nearest neighbours: STAN (Garg et al., SIGIR 2019), with V-SKNN as a special case.

A session-based kNN recommends for the *current session* :math:`s` of a user the items of the
past sessions most similar to it. The stream has no session ids, so sessions are cut from the
log.

Sessions. Each user's events, in the order learned, form consecutive sessions. An event starts a
new session of its user when it is the user's first event, when it comes more than
``session_gap`` (timestamp units: seconds for MovieLens) after the user's previous event, or when
the user's session already holds ``max_session_len`` distinct items and the item is new to it (so
a long sitting becomes several sessions and every session is bounded). A session's content is its
distinct items in order of first occurrence (consuming an item again inside a session adds
nothing); its time :math:`t(n)` is the latest timestamp of its events. The *current session* of a
user, the one scored, is their latest session; finished sessions of every user, the user's own
earlier ones included, are the candidate neighbours.

Scoring (STAN's three factors). Let :math:`s = (s_1, \dots, s_l)` be the current session and
:math:`k(i)` the position (1-based) of item :math:`i` in it.

1. Position in the current session: :math:`w_1(i) = \exp((k(i) - l) / \lambda_1)`, so the last
   item weighs 1 (``position_weighting="exp"``, :math:`\lambda_1` = ``lambda_position``). With
   ``position_weighting="linear"`` the weight is V-SKNN's linear decay :math:`k(i) / l`.
   The similarity of a past session :math:`n` (a binary vector of its :math:`|n|` items) is

   .. math:: \mathrm{sim}_1(s, n) = \frac{\sum_{i \in s \cap n} w_1(i)}{\sqrt{l\,|n|}}

   (``similarity="cosine"``, STAN's) or the bare sum (``similarity="dot"``, V-SKNN's).
2. Recency of the neighbour: :math:`\mathrm{sim}_2 = \mathrm{sim}_1 \exp(-(t^* - t(n)) /
   \lambda_2)` with :math:`\lambda_2` = ``lambda_time`` (timestamp units). STAN measures the age
   from the current session's time; here :math:`t^*` is the latest time among :math:`s` and its
   candidates. Any common reference multiplies every score of the user by the same constant, so
   the ranking is the paper's; this one keeps the weights from underflowing and lets a neighbour
   more recent than the user's last event count as recent.
3. Position in the neighbour: the score of item :math:`i` is

   .. math:: \mathrm{score}(i \mid s) = \sum_{n \in N(s),\, i \in n} \mathrm{sim}_2(s, n)\,
       \exp\left(-\frac{|p_n(i) - p_n(i^*)|}{\lambda_3}\right)

   where :math:`N(s)` are the ``n_neighbours`` candidates with the largest :math:`\mathrm{sim}_2`,
   :math:`p_n` is the position in :math:`n`, :math:`i^*` is the most recent item of :math:`s`
   that :math:`n` contains, and :math:`\lambda_3` = ``lambda_neighbour``.

``None`` for a :math:`\lambda` removes its factor (:math:`\lambda = \infty`). V-SKNN (Ludewig &
Jannach 2018) is ``position_weighting="linear", similarity="dot", lambda_time=None,
lambda_neighbour=None`` (the ``"v-sknn"`` preset). Exact ties, e.g. a user whose session shares
no item with any other, are broken by all-time popularity: ``1e-9 * n_j / (n_events + 1)`` is
added, as in :class:`~nmrn.baselines.ItemKNN`.

Candidates (the papers' sampling, which bounds the cost). Every item keeps the sessions that most
recently added it: for each item of :math:`s`, its last ``sample_size`` sessions other than
:math:`s` are candidates; of all these the ``sample_size`` most recent (by :math:`t(n)`, ties by
the later session) are compared with :math:`s`. Scoring a user therefore reads at most
``max_session_len * sample_size`` index entries and ``sample_size`` sessions of at most
``max_session_len`` items, whatever the length of the log.

Streaming. ``fit`` and ``learn`` run the same event-by-event update (cut sessions, append to the
indexes), so the state after a batch does not depend on how the events were split into calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from nmrn.config import Config, Int, Maybe, OneOf, Real, option
from nmrn.data.growth import grow_array
from nmrn.errors import ConfigError
from nmrn.training.contract import Recommender
from nmrn.training.registry import register

TIE_EPS = 1e-9
POSITION_WEIGHTINGS = ("exp", "linear")
SIMILARITIES = ("cosine", "dot")
_MIN_CAP = 4


@dataclass(frozen=True)
class STANConfig(Config):
    """Options of :class:`STAN` (see its docstring for each one's meaning)."""

    session_gap: float = option(3600.0, Real(low=0.0))
    max_session_len: int = option(200, Int(low=1))
    n_neighbours: int = option(100, Int(low=1))
    sample_size: int = option(500, Int(low=1))
    position_weighting: str = option("exp", OneOf(POSITION_WEIGHTINGS))
    lambda_position: float | None = option(10.0, Maybe(Real(low=0.0, low_open=True)))
    similarity: str = option("cosine", OneOf(SIMILARITIES))
    lambda_time: float | None = option(7 * 86400.0, Maybe(Real(low=0.0, low_open=True)))
    lambda_neighbour: float | None = option(10.0, Maybe(Real(low=0.0, low_open=True)))
    seed: int = option(0, Int())

    def _validate(self) -> None:
        if self.position_weighting == "linear" and self.lambda_position is not None:
            raise ConfigError(
                "STAN: lambda_position applies to position_weighting='exp' only; pass "
                "lambda_position=None with position_weighting='linear'"
            )


#: STAN's options chosen on validation (docs/baselines.md): the ``stan`` preset, and the
#: session-neighbourhood evidence of :class:`~nmrn.training.hybrid.NMRNHybrid`.
VALIDATED = {
    "session_gap": 1.74e8,
    "max_session_len": 1000,
    "n_neighbours": 192,
    "sample_size": 500,
    "similarity": "dot",
    "lambda_position": 25.4,
    "lambda_time": 1.42e7,  # 164 days
    "lambda_neighbour": 932.0,
}


@register
class STAN(Recommender):
    """Sequence- and time-aware session neighbourhood (STAN), with V-SKNN as a special case.

    See the module docstring for the exact definitions.

    Parameters
    ----------
    session_gap
        A user's event more than this after their previous event starts a new session
        (timestamp units; seconds for MovieLens).
    max_session_len
        A session holding this many distinct items is closed; the next new item starts a new
        session. Bounds the cost of an update and of scoring.
    n_neighbours
        ``k``: the most similar candidate sessions that vote.
    sample_size
        ``m``: sessions kept per item in the index, and candidates compared per scored user.
    position_weighting
        ``"exp"`` (STAN: ``exp((k - l) / lambda_position)``) or ``"linear"`` (V-SKNN: ``k / l``)
        for the item at position ``k`` of a current session of length ``l``.
    lambda_position
        lambda_1 of the ``"exp"`` weighting (in positions), or ``None`` for equal weights.
    similarity
        ``"cosine"`` (STAN: divided by ``sqrt(l * |n|)``) or ``"dot"`` (V-SKNN).
    lambda_time
        lambda_2: time scale of the neighbour-recency weight (timestamp units), or ``None``.
    lambda_neighbour
        lambda_3: scale of the position weight inside a neighbour (in positions), or ``None``.
    seed
        Unused (no randomness); kept for a uniform constructor.

    References
    ----------
    Garg, Gupta, Malhotra, Vig and Shroff, "Sequence and time aware neighborhood for session-based
    recommendations: STAN", SIGIR 2019. Ludewig and Jannach, "Evaluation of session-based
    recommendation algorithms", User Modeling and User-Adapted Interaction 28 (2018).

    Examples
    --------
    >>> rec = STAN(lambda_position=None, lambda_time=None, lambda_neighbour=None).fit(
    ...     [("a", "x", 0), ("a", "y", 1), ("a", "z", 2), ("b", "x", 3), ("b", "w", 4),
    ...      ("c", "x", 5)])
    >>> rec.recommend("c", k=3).items.tolist()  # b shares x with c and is shorter than a
    ['w', 'y', 'z']
    >>> rec.session_of("a").tolist()
    ['x', 'y', 'z']
    """

    config_class = STANConfig

    @classmethod
    def _unit_test_params(cls) -> dict[str, dict[str, Any]]:
        return {
            # short sessions, a small index (trimmed while learning) and every STAN factor on
            "stan": {"session_gap": 30.0, "max_session_len": 6, "n_neighbours": 5,
                     "sample_size": 3, "lambda_position": 2.0, "lambda_time": 50.0,
                     "lambda_neighbour": 2.0},
            "v-sknn": {"position_weighting": "linear", "lambda_position": None,
                       "similarity": "dot", "lambda_time": None, "lambda_neighbour": None,
                       "n_neighbours": 4},
        }

    def __init__(self, config: Any = None, /, **options: Any) -> None:
        super().__init__(config, **options)
        # per user: their latest session (-1: none yet) and the timestamp of their last event
        self._user_session = np.zeros(0, dtype=np.int64)
        self._user_last = np.zeros(0, dtype=np.float64)
        # per session: owner, time t(n) (latest timestamp), content (distinct items, in order)
        self._n_sessions = 0
        self._sess_user = np.zeros(0, dtype=np.int64)
        self._sess_time = np.zeros(0, dtype=np.float64)
        self._sess_len = np.zeros(0, dtype=np.int64)
        self._sess_items: list[np.ndarray] = []  # buffers, valid up to _sess_len
        # per item: the sessions that added it, oldest first (only the last sample_size + 1 are
        # used, one of which may be the scored session; trimmed to them when the list doubles,
        # so the update is amortised O(1))
        self._item_sessions: list[list[int]] = []
        # user -> set of the items of their open (latest) session; a cache of _sess_items,
        # rebuilt on demand (not saved)
        self._open: dict[int, set[int]] = {}

    # -- tables ----------------------------------------------------------------------------------
    def _grow(self, n_users: int, n_items: int) -> None:
        if n_users > len(self._user_session):
            self._user_session = grow_array(self._user_session, n_users, -1)
            self._user_last = grow_array(self._user_last, n_users, -np.inf)
        if n_items > len(self._item_sessions):
            self._item_sessions.extend([] for _ in range(n_items - len(self._item_sessions)))

    def _new_session(self, user: int, timestamp: float) -> int:
        sid = self._n_sessions
        if sid == len(self._sess_user):
            cap = max(_MIN_CAP, 2 * sid)
            for key in ("_sess_user", "_sess_time", "_sess_len"):
                old = getattr(self, key)
                grown = np.zeros(cap, dtype=old.dtype)
                grown[:sid] = old
                setattr(self, key, grown)
        self._sess_user[sid] = user
        self._sess_time[sid] = timestamp
        self._sess_len[sid] = 0
        self._sess_items.append(np.empty(_MIN_CAP, dtype=np.int64))
        self._n_sessions += 1
        self._user_session[user] = sid
        self._open[user] = set()
        return sid

    def _open_items(self, user: int, sid: int) -> set[int]:
        found = self._open.get(user)
        if found is None:
            found = self._open[user] = set(self.content(sid).tolist())
        return found

    # -- learning --------------------------------------------------------------------------------
    def _fit(
        self,
        users: np.ndarray,
        items: np.ndarray,
        timestamps: np.ndarray,
        weights: np.ndarray | None,
    ) -> None:
        self._update(users, items, timestamps)

    _learn = _fit  # a session model learns a stream the way it fits a history

    def _update(self, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> None:
        cfg = self.config
        gap, max_len, keep = cfg.session_gap, cfg.max_session_len, cfg.sample_size + 1
        for u, i, t in zip(users.tolist(), items.tolist(), timestamps.tolist(), strict=True):
            sid = int(self._user_session[u])
            last = float(self._user_last[u])
            if sid < 0 or t - last > gap:
                sid = self._new_session(u, t)
            members = self._open_items(u, sid)
            if i not in members and len(members) >= max_len:
                sid = self._new_session(u, t)
                members = self._open[u]
            self._user_last[u] = max(last, t)
            self._sess_time[sid] = max(self._sess_time[sid], t)
            if i in members:
                continue
            members.add(i)
            n = int(self._sess_len[sid])
            buf = self._sess_items[sid]
            if n == len(buf):
                grown = np.empty(2 * n, dtype=np.int64)
                grown[:n] = buf
                buf = self._sess_items[sid] = grown
            buf[n] = i
            self._sess_len[sid] = n + 1
            added = self._item_sessions[i]
            added.append(sid)
            if len(added) > 2 * keep:
                del added[:-keep]

    # -- inspection ------------------------------------------------------------------------------
    @property
    def n_sessions(self) -> int:
        """Number of sessions cut from the log so far."""
        return self._n_sessions

    def content(self, session: int) -> np.ndarray:
        """Item indices of session ``session`` (distinct, in order of first occurrence)."""
        return self._sess_items[session][: self._sess_len[session]]

    def session_of(self, user: Any) -> np.ndarray:
        """External ids of the items of ``user``'s current session, oldest first."""
        idx = self.users.encode([user])[0]
        return self.items.decode(self.content(int(self._user_session[idx])))

    # -- scoring ---------------------------------------------------------------------------------
    def _position_weights(self, length: int) -> np.ndarray:
        """``w1`` of positions ``1..length`` of the current session, ``[length]``."""
        k = np.arange(1, length + 1, dtype=np.float64)
        if self.config.position_weighting == "linear":
            return k / length
        if self.config.lambda_position is None:
            return np.ones(length)
        return np.exp((k - length) / self.config.lambda_position)

    def _candidates(self, sid: int, current: np.ndarray) -> np.ndarray:
        """The sessions compared with ``sid``: at most ``sample_size``, most recent first."""
        m = self.config.sample_size
        lists = [self._item_sessions[i][-(m + 1) :] for i in current.tolist()]
        total = sum(len(x) for x in lists)
        if total == 0:
            return np.empty(0, dtype=np.int64)
        flat = np.fromiter(chain.from_iterable(lists), dtype=np.int64, count=total)
        # each list holds s at most once: keep its last m entries other than s
        sizes = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
        group = np.repeat(np.arange(len(lists)), sizes)
        has_sid = np.bincount(group, weights=flat == sid, minlength=len(lists)) > 0
        keep = flat != sid
        full = np.flatnonzero((sizes == m + 1) & ~has_sid)
        keep[np.cumsum(sizes)[full] - sizes[full]] = False  # their oldest entry
        # the distinct sessions in ascending order (np.unique's result) by marking them: the
        # lists hold up to ~10^5 entries for a long session and only ~10^3 sessions exist
        mark = np.zeros(self._n_sessions, dtype=bool)
        mark[flat[keep]] = True
        cand = np.flatnonzero(mark)
        # most recent first: by time, then by the later session
        order = np.lexsort((-cand, -self._sess_time[cand]))
        return cand[order[:m]]  # type: ignore[no-any-return]

    def _score_user(self, user: int) -> np.ndarray:
        """Raw scores ``[n_items]`` of one user (without the tie-break)."""
        n_items = len(self.items)
        scores = np.zeros(n_items)
        sid = int(self._user_session[user])
        current = self.content(sid)
        length = len(current)
        cand = self._candidates(sid, current)
        if length == 0 or len(cand) == 0:
            return scores
        w1 = self._position_weights(length)
        rank = np.zeros(n_items, dtype=np.int64)  # 1-based position in s, 0 if absent
        rank[current] = np.arange(1, length + 1)

        lens = self._sess_len[cand]
        parts = zip(cand.tolist(), lens.tolist(), strict=True)
        flat = np.concatenate([self._sess_items[n][:ln] for n, ln in parts])
        row = np.repeat(np.arange(len(cand)), lens)
        r = rank[flat]
        shared = r > 0
        overlap = np.bincount(row[shared], weights=w1[r[shared] - 1], minlength=len(cand))
        sim = overlap / np.sqrt(length * lens) if self.config.similarity == "cosine" else overlap
        times = self._sess_time[cand]
        if self.config.lambda_time is not None:
            ref = max(float(self._sess_time[sid]), float(times.max()))
            sim = sim * np.exp(-(ref - times) / self.config.lambda_time)

        # the n_neighbours most similar, ties to the more recent (cand is most recent first)
        top = np.argsort(-sim, kind="stable")[: self.config.n_neighbours]
        top = top[sim[top] > 0]
        if len(top) == 0:
            return scores
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        # the positions of the chosen neighbours' items in ``flat``, neighbour by neighbour
        top_lens = lens[top]
        local_row = np.repeat(np.arange(len(top)), top_lens)
        pick = (np.repeat(starts[top] - (np.cumsum(top_lens) - top_lens), top_lens)
                + np.arange(int(top_lens.sum())))
        weight = sim[top][local_row]
        if self.config.lambda_neighbour is not None:
            pos = pick - starts[row[pick]]  # 0-based position inside its session
            r_top = r[pick]
            # i*: the shared item latest in s; its position in each neighbour
            r_star = np.zeros(len(top), dtype=np.int64)
            np.maximum.at(r_star, local_row, r_top)
            is_star = (r_top == r_star[local_row]) & (r_top > 0)
            p_star = np.zeros(len(top), dtype=np.int64)
            p_star[local_row[is_star]] = pos[is_star]
            scale = self.config.lambda_neighbour
            weight = weight * np.exp(-np.abs(pos - p_star[local_row]) / scale)
        # bincount adds the contributions in neighbour order: a function of this user only
        return np.bincount(flat[pick], weights=weight, minlength=n_items)

    def _score_all(self, users: np.ndarray) -> np.ndarray:
        share = self.item_counts / (self.n_events + 1.0)
        out = np.empty((len(users), len(self.items)))
        for row, user in enumerate(users.tolist()):
            out[row] = self._score_user(user) + TIE_EPS * share
        return out

    # -- checkpoints -----------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        n = self._n_sessions
        lens = self._sess_len[:n]
        sess_indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        sess_items = (
            np.concatenate([self.content(s) for s in range(n)]) if n else np.empty(0, np.int64)
        )
        item_lens = np.array([len(x) for x in self._item_sessions], dtype=np.int64)
        item_indptr = np.concatenate([[0], np.cumsum(item_lens)]).astype(np.int64)
        item_sessions = np.fromiter(
            (s for lst in self._item_sessions for s in lst),
            dtype=np.int64,
            count=int(item_lens.sum()),
        )
        arrays = {
            "user_session": self._user_session.copy(),
            "user_last": self._user_last.copy(),
            "sess_user": self._sess_user[:n].copy(),
            "sess_time": self._sess_time[:n].copy(),
            "sess_indptr": sess_indptr,
            "sess_items": sess_items.astype(np.int64),
            "item_indptr": item_indptr,
            "item_sessions": item_sessions,
        }
        return arrays, {"n_sessions": n}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        n = int(meta["n_sessions"])
        n_users, n_items = len(self.users), len(self.items)
        user_session = np.asarray(arrays["user_session"], dtype=np.int64)
        user_last = np.asarray(arrays["user_last"], dtype=np.float64)
        sess_indptr = np.asarray(arrays["sess_indptr"], dtype=np.int64)
        sess_items = np.asarray(arrays["sess_items"], dtype=np.int64)
        item_indptr = np.asarray(arrays["item_indptr"], dtype=np.int64)
        item_sessions = np.asarray(arrays["item_sessions"], dtype=np.int64)
        if len(user_session) != n_users or len(user_last) != n_users:
            raise ValueError("STAN user arrays do not match the user ids")
        if len(sess_indptr) != n + 1 or sess_indptr[-1] != len(sess_items):
            raise ValueError("STAN session arrays are inconsistent")
        if len(item_indptr) != n_items + 1 or item_indptr[-1] != len(item_sessions):
            raise ValueError("STAN item index does not match the item ids")
        self._user_session = user_session.copy()
        self._user_last = user_last.copy()
        self._n_sessions = n
        self._sess_user = np.asarray(arrays["sess_user"], dtype=np.int64).copy()
        self._sess_time = np.asarray(arrays["sess_time"], dtype=np.float64).copy()
        self._sess_len = np.diff(sess_indptr)
        self._sess_items = [
            np.concatenate([sess_items[a:b], np.empty(_MIN_CAP, np.int64)])
            for a, b in zip(sess_indptr[:-1].tolist(), sess_indptr[1:].tolist(), strict=True)
        ]
        self._item_sessions = [
            item_sessions[a:b].tolist()
            for a, b in zip(item_indptr[:-1].tolist(), item_indptr[1:].tolist(), strict=True)
        ]
        self._open = {}

