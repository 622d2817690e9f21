r"""Online BPR matrix factorisation (Rendle et al., UAI 2009), trained in PyTorch.

The score of item :math:`i` for user :math:`u` is :math:`x_{ui} = p_u \cdot q_i + b_i`. Each
training example is a consumed pair :math:`(u, i)` and a negative item :math:`j`; the loss is

.. math:: L = -\log \sigma(x_{ui} - x_{uj})
    + \tfrac{\lambda}{2}\left(\lVert p_u\rVert^2 + \lVert q_i\rVert^2 + \lVert q_j\rVert^2
    + b_i^2 + b_j^2\right)

with :math:`\lambda` = ``reg``. Its gradients are computed in closed form and applied to the
touched rows only (a sparse update), so a step costs :math:`O(B d)` whatever the catalogue size.

Negatives are drawn uniformly over the known items; a draw that the user has already consumed is
redrawn, up to ``n_resample`` times (after that it is kept: with a few redraws this is rare
unless a user has consumed most of the catalogue).

Optimiser. ``"adagrad"`` (the default, the usual choice for sparse rows) keeps a per-parameter
sum of squared gradients; ``"adam"`` is lazy Adam (moments updated only on the touched rows,
bias correction by the global step, like ``torch.optim.SparseAdam``). Either way the optimiser
state has the shape of the tables and grows with them: new users and items get fresh rows
(``N(0, init_std^2)`` embeddings, zero bias, zero optimiser state) while existing rows are left
untouched.

``fit`` runs ``epochs`` shuffled passes over its events with learning rate ``lr``; ``learn`` runs
``learn_passes`` shuffled passes over the new batch with ``learn_lr`` (``None``: ``lr``). All
randomness (initialisation, shuffling, negatives) comes from a private ``torch.Generator`` seeded
by ``seed``, so results on CPU are reproducible and checkpoints resume the exact same stream of
random numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nmrn.config import (
    DEFAULT_RETRIEVAL,
    Config,
    Int,
    Maybe,
    OneOf,
    Real,
    RetrievalConfig,
    SamplerConfig,
    Sub,
    Text,
    option,
)
from nmrn.data.history import SeenPairs
from nmrn.errors import ConfigError, ModelFitError
from nmrn.model.tables import grow_like, grow_rows, normal_rows, saved_tensor
from nmrn.sampling import AdversarialSampler, BaseSampler, make_sampler
from nmrn.training import distributed
from nmrn.training.contract import Recommender
from nmrn.training.registry import register
from nmrn.training.retrieval import (
    CandidateIndex,
    ann_top_k,
    check_retrieval,
    faiss_module,
)
from nmrn.training.schedule import fit_schedule

OPTIMIZERS = ("adagrad", "adam")
_EPS = 1e-8
_BETAS = (0.9, 0.999)


@dataclass(frozen=True)
class BPRConfig(Config):
    """Options of :class:`BPR` (see its docstring for each one's meaning)."""

    dim: int = option(64, Int(low=1))
    lr: float = option(0.05, Real(low=0.0, low_open=True))
    reg: float = option(1e-4, Real(low=0.0))
    epochs: int = option(20, Int(low=0))
    batch_size: int = option(256, Int(low=1))
    learn_passes: int = option(5, Int(low=0))
    learn_lr: float | None = option(0.1, Maybe(Real(low=0.0, low_open=True)))
    optimizer: str = option("adagrad", OneOf(OPTIMIZERS))
    n_resample: int = option(3, Int(low=0))
    init_std: float = option(0.1, Real(low=0.0))
    seed: int = option(0, Int())
    sampler: str | None = option(None, Maybe(Text()))
    sampler_options: SamplerConfig | None = option(None, Maybe(Sub(SamplerConfig)))
    n_candidates: int = option(10, Int(low=1))
    retrieval: RetrievalConfig | None = option(None, Maybe(Sub(RetrievalConfig)))


@register
class BPR(Recommender):
    """Bayesian personalised ranking with matrix factorisation, updated online.

    Parameters
    ----------
    dim
        Embedding size ``d``.
    lr
        Learning rate of ``fit``.
    reg
        L2 penalty ``lambda`` on the rows used by each example.
    epochs
        Passes over the events given to ``fit``.
    batch_size
        Examples per gradient step.
    learn_passes
        Passes over each batch given to ``learn``.
    learn_lr
        Learning rate of ``learn``; ``None`` uses ``lr``. The stream defaults (5 passes at 0.1)
        were picked on MovieLens-100K in the live setting (chunks of 1,000 events after fitting
        half the log): Hits@10 0.0614, against 0.0574 for 2 passes at ``lr``.
    optimizer
        ``"adagrad"`` or ``"adam"`` (lazy).
    n_resample
        Redraws of a negative that the user has already consumed.
    init_std
        Standard deviation of the initial embeddings.
    seed
        Seed of the model's private random generator.
    sampler
        ``None`` (the default): BPR's own uniform negatives, redrawn when already consumed.
        Otherwise a name of :data:`nmrn.sampling.SAMPLERS`: ``"uniform"`` or ``"popularity"``
        draw the negative; ``"adversarial"`` lets the generator G pick it among
        ``n_candidates`` uniform candidates, rewarded by BPR's score ``x_uj`` (a negative BPR
        ranks high is hard), on the schedule NMRN uses (``docs/sampling.md``): the last
        ``adversarial_epochs`` of ``fit`` are joint, after G is pre-trained on the frozen BPR.
    sampler_options
        :class:`~nmrn.config.SamplerConfig` fields, as a dict.
    n_candidates
        Candidates G chooses among (``sampler="adversarial"``).
    retrieval
        How ``recommend`` finds the top-k (:class:`~nmrn.config.RetrievalConfig`; ``None``:
        the defaults, exact below the measured break-even): an inner-product search, as an L2
        search over transformed vectors (``nmrn.training.retrieval``), re-ranked exactly.

    Examples
    --------
    >>> rec = BPR(dim=4, epochs=5, seed=0).fit(
    ...     [("a", "x", 0), ("a", "y", 1), ("b", "x", 2), ("c", "z", 3)])
    >>> rec.score(["a"], ["x", "y", "z"]).shape
    (1, 3)
    """

    config_class = BPRConfig
    #: fit and learn split each mini-batch across the ranks of a process group (docs/scaling.md)
    data_parallel = True

    @classmethod
    def _unit_test_params(cls) -> dict[str, dict[str, Any]]:
        small = {"dim": 8, "batch_size": 32, "seed": 7}
        return {
            "adagrad": {**small, "epochs": 3},
            "adam": {**small, "epochs": 2, "optimizer": "adam", "lr": 0.01},
        }

    def __init__(self, config: Any = None, /, **options: Any) -> None:
        super().__init__(config, **options)
        c = self.config
        self._gen = torch.Generator().manual_seed(c.seed)
        d = c.dim
        # parameters, then optimiser state per table: (first moment, second moment / sum of g^2)
        self.user_emb = torch.zeros(0, d)
        self.item_emb = torch.zeros(0, d)
        self.item_bias = torch.zeros(0)
        self._m = {"user": torch.zeros(0, d), "item": torch.zeros(0, d), "bias": torch.zeros(0)}
        self._v = {"user": torch.zeros(0, d), "item": torch.zeros(0, d), "bias": torch.zeros(0)}
        self._step = 0
        self._seen = SeenPairs()
        self._sampler = (
            None
            if c.sampler is None
            else make_sampler(c.sampler, options=c.sampler_options, generator=self._gen)
        )
        self.last_loss = float("nan")
        self._retrieval = c.retrieval or DEFAULT_RETRIEVAL
        check_retrieval(self._retrieval, None, "BPR")
        # never saved; built on the first read
        self._ann = CandidateIndex(self._retrieval, inner_product=True)

    # -- tables ----------------------------------------------------------------------------------
    def _grow(self, n_users: int, n_items: int) -> None:
        if self._sampler is not None:
            self._sampler.grow(n_items, n_users=n_users, generator=self._gen)
        std = self.config.init_std
        self.user_emb = normal_rows(self.user_emb, n_users, std, self._gen)
        self.item_emb = normal_rows(self.item_emb, n_items, std, self._gen)
        self.item_bias = grow_rows(self.item_bias, n_items)
        for state in (self._m, self._v):  # optimizer state: zero rows
            state["user"] = grow_like(state["user"], self.user_emb)
            state["item"] = grow_like(state["item"], self.item_emb)
            state["bias"] = grow_like(state["bias"], self.item_bias)

    # -- learning --------------------------------------------------------------------------------
    def _negatives(self, users: torch.Tensor) -> torch.Tensor:
        n_items = len(self.item_emb)
        neg = torch.randint(n_items, (len(users),), generator=self._gen)
        for _ in range(self.config.n_resample):
            bad = np.flatnonzero(self._seen.contains(users.numpy(), neg.numpy()))
            if len(bad) == 0:
                break
            neg[bad] = torch.randint(n_items, (len(bad),), generator=self._gen)
        return neg

    def _fit(
        self,
        users: np.ndarray,
        items: np.ndarray,
        timestamps: np.ndarray,
        weights: np.ndarray | None,
    ) -> None:
        self._seen.add(users, items)
        if self._sampler is not None:
            self._sampler.observe(torch.from_numpy(users), torch.from_numpy(items))
        epochs, lr = self.config.epochs, self.config.lr
        fit_schedule(
            epochs,
            self._sampler,
            lambda epoch: self._train_pass(users, items, lr, where=f"pass {epoch + 1} of {epochs}"),
            lambda: self._pretrain_generator(users, items),
        )
        self._ann.invalidate()  # fit moves most items: build afresh on the next read

    def _learn(
        self,
        users: np.ndarray,
        items: np.ndarray,
        timestamps: np.ndarray,
        weights: np.ndarray | None,
    ) -> None:
        self._seen.add(users, items)
        if self._sampler is not None:
            self._sampler.observe(torch.from_numpy(users), torch.from_numpy(items))
        lr = self.config.lr if self.config.learn_lr is None else self.config.learn_lr
        passes = self.config.learn_passes
        for p in range(passes):
            self._train_pass(users, items, lr, where=f"learn pass {p + 1} of {passes}")

    def _train_pass(self, users: np.ndarray, items: np.ndarray, lr: float, *, where: str) -> None:
        """One shuffled pass over the events at learning rate ``lr``."""
        u_all = torch.from_numpy(np.ascontiguousarray(users, dtype=np.int64))
        i_all = torch.from_numpy(np.ascontiguousarray(items, dtype=np.int64))
        n = len(u_all)
        batch_size = self.config.batch_size
        order = torch.randperm(n, generator=self._gen)
        total = 0.0
        for lo in range(0, n, batch_size):
            idx = order[lo : lo + batch_size]
            u, i = u_all[idx], i_all[idx]
            if self._sampler is None:
                total += self._step_on(u, i, self._negatives(u), lr)
                continue
            j, feedback = self._sampled_negatives(u, i)
            total += self._step_on(u, i, j, lr)
            feedback()
        self.last_loss = total / max(n, 1)
        if not np.isfinite(self.last_loss):
            raise ModelFitError(
                f"BPR: loss is {self.last_loss} in {where} over {n} events "
                f"(step {self._step}); lower lr (now {lr}) or raise reg"
            )

    def _candidate_scores(
        self, u: torch.Tensor, i: torch.Tensor, cands: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_ui [B]`` and ``x_uc [B, T]`` (no autograd: the tables are plain tensors)."""
        pu = self.user_emb[u]  # [B, d]
        x_pos = (pu * self.item_emb[i]).sum(-1) + self.item_bias[i]
        x_cand = (pu[:, None, :] * self.item_emb[cands]).sum(-1) + self.item_bias[cands]
        return x_pos, x_cand

    def _sampled_negatives(
        self, u: torch.Tensor, i: torch.Tensor
    ) -> tuple[torch.Tensor, Callable[[], None]]:
        """Negatives from the sampler, and the callback that gives it the step's feedback."""
        sampler = self._sampler
        assert sampler is not None
        learned = isinstance(sampler, AdversarialSampler)
        n_cand = self.config.n_candidates if learned else 1
        prop = sampler.propose(u, i, n_cand, generator=self._gen)
        cands = prop.candidates  # [B, T]
        if prop.chosen is not None and prop.use_chosen:
            j = cands.gather(1, prop.chosen[:, None])[:, 0]
        else:
            j = cands[:, 0]  # a draw from the sampler's own distribution
        x_pos, x_cand = self._candidate_scores(u, i, cands)  # before the step, as NMRN

        def feedback() -> None:
            sampler.update(
                u, i, cands, reward=x_cand, chosen=prop.chosen, violating=x_cand >= x_pos[:, None]
            )

        return j, feedback

    def _pretrain_generator(self, users: np.ndarray, items: np.ndarray) -> None:
        """G's passes over the events against the frozen BPR (``pretrain_epochs``)."""
        sampler = self._sampler
        assert isinstance(sampler, AdversarialSampler)
        u_all = torch.from_numpy(np.ascontiguousarray(users, dtype=np.int64))
        i_all = torch.from_numpy(np.ascontiguousarray(items, dtype=np.int64))
        for _ in range(sampler.options.pretrain_epochs):
            order = torch.randperm(len(u_all), generator=self._gen)
            for lo in range(0, len(u_all), self.config.batch_size):
                idx = order[lo : lo + self.config.batch_size]
                _, feedback = self._sampled_negatives(u_all[idx], i_all[idx])
                feedback()

    def _step_on(self, u: torch.Tensor, i: torch.Tensor, j: torch.Tensor, lr: float) -> float:
        """One gradient step on examples ``(u, i, j)`` (each ``[B]``); returns the summed loss."""
        ctx = distributed.context()
        if ctx is not None:
            return self._step_on_ranks(ctx, u, i, j, lr)
        loss, grad_u, items, grad_items, grad_bias = self._gradients(u, i, j)
        self._step += 1
        self._apply("user", self.user_emb, u, grad_u, lr)
        self._apply("item", self.item_emb, items, grad_items, lr)
        self._apply("bias", self.item_bias, items, grad_bias, lr)
        self._ann.changed(items.numpy())
        return float(loss)

    def _gradients(
        self, u: torch.Tensor, i: torch.Tensor, j: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Summed loss, per-example ``dL/dp_u [B, d]``, item rows ``[2B]`` (positives then
        negatives), their ``dL/dq [2B, d]`` and ``dL/db [2B]``."""
        reg = self.config.reg
        pu, qi, qj = self.user_emb[u], self.item_emb[i], self.item_emb[j]  # [B, d]
        bi, bj = self.item_bias[i], self.item_bias[j]  # [B]
        x = (pu * (qi - qj)).sum(dim=1) + bi - bj  # [B]
        loss = torch.nn.functional.softplus(-x).sum() + 0.5 * reg * (
            (pu * pu).sum() + (qi * qi).sum() + (qj * qj).sum() + (bi * bi).sum() + (bj * bj).sum()
        )
        g = -torch.sigmoid(-x)[:, None]  # dL/dx, [B, 1]
        grad_u = g * (qi - qj) + reg * pu
        grad_i = g * pu + reg * qi
        grad_j = -g * pu + reg * qj
        items = torch.cat([i, j])
        grad_items = torch.cat([grad_i, grad_j])
        grad_bias = torch.cat([g[:, 0] + reg * bi, -g[:, 0] + reg * bj])
        return loss, grad_u, items, grad_items, grad_bias

    def _step_on_ranks(
        self, ctx: distributed.Context, u: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
        lr: float,
    ) -> float:
        """The data-parallel step (``docs/scaling.md`` §2): this rank's contiguous slice of the
        global batch, its rows' gradients summed locally, all-gathered as (row, gradient) pairs
        and summed per row *before* the optimizer step (Adagrad squares the sum), then the same
        update on every rank. Returns the global summed loss (the ranks' sums in rank order)."""
        if self._sampler is not None:
            raise ConfigError(
                f"BPR: sampler={self.config.sampler!r} does not train data-parallel yet "
                f"({ctx.world_size} ranks); use the default sampler=None or one process"
            )
        lo, hi = distributed.shard(len(u), ctx)
        loss, grad_u, items, grad_items, grad_bias = self._gradients(u[lo:hi], i[lo:hi], j[lo:hi])
        users_r, summed_u = distributed.sum_rows(u[lo:hi], grad_u)
        items_r, summed_i = distributed.sum_rows(
            items, torch.cat([grad_items, grad_bias[:, None]], dim=1)
        )
        most = -(-len(u) // ctx.world_size)  # the largest slice: at most its users, 2x items
        losses, [(users_all, gu_all), (items_all, gi_all)] = distributed.exchange(
            ctx, float(loss), [(users_r, summed_u), (items_r, summed_i)], [most, 2 * most],
            "BPR row gradients",
        )
        bad = distributed.non_finite_ranks(losses)
        if bad:  # every rank sees the same losses, so every rank stops here, before updating
            raise ModelFitError(
                f"BPR: loss is {[losses[r] for r in bad]} on rank(s) {bad} of "
                f"{ctx.world_size} at step {self._step + 1}; every rank stopped before the "
                f"update; lower lr (now {lr}) or raise reg"
            )
        # a row touched on several ranks: its partial sums added here, in rank order
        users_g, summed_u = distributed.sum_rows(users_all, gu_all)
        items_g, summed_i = distributed.sum_rows(items_all, gi_all)
        self._step += 1
        self._apply_summed("user", self.user_emb, users_g, summed_u, lr)
        self._apply_summed("item", self.item_emb, items_g, summed_i[:, :-1], lr)
        self._apply_summed("bias", self.item_bias, items_g, summed_i[:, -1], lr)
        self._ann.changed(items_g.numpy())
        return sum(losses)

    def _apply(
        self, key: str, table: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, lr: float
    ) -> None:
        """Optimiser update of ``table[rows]`` with per-example gradients (duplicates summed)."""
        uniq, summed = distributed.sum_rows(rows, grad)
        self._apply_summed(key, table, uniq, summed, lr)

    def _apply_summed(
        self, key: str, table: torch.Tensor, uniq: torch.Tensor, summed: torch.Tensor, lr: float
    ) -> None:
        """Optimiser update of ``table[uniq]`` (distinct rows) with their summed gradients."""
        v = self._v[key]
        if self.config.optimizer == "adagrad":
            acc = v[uniq] + summed * summed
            v[uniq] = acc
            table[uniq] -= lr * summed / (acc.sqrt() + _EPS)
            return
        beta1, beta2 = _BETAS
        m = self._m[key]
        m_rows = beta1 * m[uniq] + (1 - beta1) * summed
        v_rows = beta2 * v[uniq] + (1 - beta2) * summed * summed
        m[uniq], v[uniq] = m_rows, v_rows
        corr1 = 1 - beta1**self._step
        corr2 = 1 - beta2**self._step
        table[uniq] -= lr * (m_rows / corr1) / ((v_rows / corr2).sqrt() + _EPS)

    @property
    def negative_sampler(self) -> BaseSampler | None:
        """The sampler object when ``sampler`` is set (``.stats``: per-step diagnostics)."""
        return self._sampler

    def sampler_diagnostics(self, last: int | None = None) -> dict[str, float]:
        """Means of the sampler's per-step statistics (empty without a sampler)."""
        return {} if self._sampler is None else self._sampler.diagnostics(last)

    # -- scoring ---------------------------------------------------------------------------------
    def _score_all(self, users: np.ndarray) -> np.ndarray:
        # float64, so that a user's scores do not depend (beyond ~1e-16) on the other users
        # of the batch, which can change the float32 BLAS kernel and its rounding
        p = self.user_emb[torch.from_numpy(np.asarray(users, dtype=np.int64))].double()
        scores = p @ self.item_emb.double().T + self.item_bias.double()[None, :]
        return scores.numpy()

    def uses_ann(self) -> bool:
        """Whether ``recommend`` answers from the ANN index now (``retrieval``)."""
        cfg = self._retrieval
        if cfg.mode == "exact" or faiss_module() is None:
            return False  # "auto" without faiss: exact ("ann" was refused at construction)
        return cfg.mode == "ann" or len(self.item_emb) >= cfg.min_items

    @property
    def retrieval_index(self) -> CandidateIndex:
        """The ANN index and delta set behind ``recommend``."""
        return self._ann

    def _candidate_top_k(
        self, u: np.ndarray, k: int, exclude_seen: bool
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Top-k of ``p . q + b`` from the index's candidates and the delta set, scored
        exactly as :meth:`_score_all` scores them; ``None`` (score every item) when ANN is
        off, for unknown users, or when too few candidates survive the exclusions."""
        if (u < 0).any() or not self.uses_ann():
            return None

        def vectors() -> np.ndarray:  # (q, b); the index makes it (q, b, sqrt(phi^2 - ...))
            return torch.cat([self.item_emb, self.item_bias[:, None]], dim=1).numpy()

        def rows_of(rows: np.ndarray) -> np.ndarray:
            r = torch.from_numpy(rows)
            return torch.cat([self.item_emb[r], self.item_bias[r, None]], dim=1).numpy()

        def query_of(user: int) -> np.ndarray:
            p = self.user_emb[user].numpy()
            return np.concatenate([p, [1.0, 0.0]]).astype(np.float32)  # (p, 1, 0)

        def score_of(user: int, cand: np.ndarray) -> np.ndarray:
            rows = torch.from_numpy(cand)
            p = self.user_emb[user : user + 1].double()
            # index_select, not [rows]: the same rows, without advanced indexing's cost
            scores = (p @ self.item_emb.index_select(0, rows).double().T
                      + self.item_bias.index_select(0, rows).double()[None, :])
            return scores[0].numpy()

        return ann_top_k(
            self._ann, u, k, len(self.item_emb),
            self.history.items_of if exclude_seen else None,
            vectors, query_of, score_of, rows_of,
        )

    def _retrieval_handover(self, old: Recommender) -> Callable[[], None] | None:
        """See :meth:`Recommender._retrieval_handover`: items whose vector or bias differ from
        ``old``'s are the adopted index's delta."""
        if (not isinstance(old, BPR) or not old._ann.ready or old._ann.config != self._ann.config
                or len(old.item_emb) > len(self.item_emb)):
            return None
        n = len(old.item_emb)
        changed = np.flatnonzero(
            (old.item_emb.numpy() != self.item_emb[:n].numpy()).any(axis=1)
            | (old.item_bias.numpy() != self.item_bias[:n].numpy())
        )
        return lambda: self._ann.adopt(old._ann, changed)

    # -- checkpoints -----------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {
            "user_emb": self.user_emb.numpy(),
            "item_emb": self.item_emb.numpy(),
            "item_bias": self.item_bias.numpy(),
            "seen": self._seen.keys,
            "rng": self._gen.get_state().numpy(),
        }
        for key in ("user", "item", "bias"):
            arrays[f"m_{key}"] = self._m[key].numpy()
            arrays[f"v_{key}"] = self._v[key].numpy()
        if self._sampler is not None:
            for key, value in self._sampler.state_dict().items():
                arrays[f"sampler.{key}"] = np.asarray(value)
        loss = self.last_loss if np.isfinite(self.last_loss) else None
        return arrays, {"step": self._step, "last_loss": loss}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        n_users, n_items, d = len(self.users), len(self.items), self.config.dim
        self.user_emb = saved_tensor(arrays, "user_emb", (n_users, d))
        self.item_emb = saved_tensor(arrays, "item_emb", (n_items, d))
        self.item_bias = saved_tensor(arrays, "item_bias", (n_items,))
        shapes = {"user": (n_users, d), "item": (n_items, d), "bias": (n_items,)}
        for key, shape in shapes.items():
            self._m[key] = saved_tensor(arrays, f"m_{key}", shape)
            self._v[key] = saved_tensor(arrays, f"v_{key}", shape)
        self._seen = SeenPairs(np.asarray(arrays["seen"], dtype=np.int64).copy())
        self._gen.set_state(torch.from_numpy(np.asarray(arrays["rng"], dtype=np.uint8).copy()))
        self._step = int(meta["step"])
        self.last_loss = float("nan") if meta["last_loss"] is None else float(meta["last_loss"])
        self._ann.invalidate()
        if self._sampler is not None:
            self._sampler.load_state_dict(
                {k[len("sampler.") :]: v for k, v in arrays.items() if k.startswith("sampler.")}
            )
