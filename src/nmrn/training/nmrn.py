"""NMRN: the Neural Memory Recommender Network behind the public :class:`Recommender` contract.

Training loop (one mini-batch of B time-ordered events, T candidates each):

1. the sampler proposes T negative candidates per event (the model's private generator) and,
   for the adversarial sampler, G's pick among them;
2. gather each touched user row and positive item row once (``[U, d]``, ``[P, d]``) as leaf
   tensors, so that their gradients are the sparse row updates;
3. forward: address, gates, the memory evolution through the batch's writes (event t reads the
   memory as left by events < t, :func:`nmrn.model.memory.evolve`), the interests ``s``;
4. distances to all T candidates *without* autograd, pick the hardest (nearest) candidate per
   event (or G's pick), and compute its distance again with autograd: the hinge takes the
   minimum, whose gradient is zero except at the argmin, so this is the same gradient for a
   fraction of the cost;
5. rank-weighted hinge (:func:`nmrn.model.losses.rank_weighted_hinge`), mean over the batch;
   a non-finite loss raises :class:`~nmrn.errors.ModelFitError` before anything is updated;
6. gradients, optional global-norm clipping (``grad_clip``);
7. optimizer step: Adagrad (or SGD) on the touched rows only for the tables (their accumulators
   are tables of the same shape that grow with them, so growth keeps the optimizer state
   consistent; a new row starts with a zero accumulator), dense on the small parameters (keys,
   initial memory, gates, temperature);
8. norm bounds: touched table rows, the keys and the initial value memory are clipped to
   ``||row|| <= max_norm`` (as CML does). The evolving value-memory *state* is not clipped, so
   that it does not depend on how the stream is cut into mini-batches;
9. the memory state after the batch is kept, detached (truncated back-propagation);
10. ``sampler.update(users, positives, candidates, reward=-d_neg, chosen=..., violating=...)``:
    diagnostics for every sampler, and G's REINFORCE step for the adversarial one.

Adversarial training (``sampler="adversarial"``, DESIGN §2, Algorithm 1 of the paper): ``fit``
pre-trains D on uniform negatives for its first ``epochs - adversarial_epochs`` epochs, then
pre-trains G against the frozen D for ``pretrain_epochs`` passes over the history, then runs the
last ``adversarial_epochs`` epochs jointly: per mini-batch one D step on G's negative and one G
step (REINFORCE). ``learn`` runs the joint schedule. With G, the rank weight still comes from
D's distances to the T *uniform* candidates (an unbiased rank estimate) while the hinge is on
G's sampled negative. Options: :class:`nmrn.config.SamplerConfig` (``sampler_options``).

Threads: the library never calls ``torch.set_num_threads``; on a small, shared CPU one thread
(``torch.set_num_threads(1)``) is often fastest, since the ops are small.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nmrn.config import DEFAULT_RETRIEVAL, NMRNConfig, RetrievalConfig
from nmrn.errors import CheckpointError, ModelFitError
from nmrn.model.losses import rank_weighted_hinge
from nmrn.model.memory import evolve, evolve_across_ranks
from nmrn.model.network import NMRNNetwork
from nmrn.model.tables import grow_like, grow_rows, saved_tensor
from nmrn.sampling import AdversarialSampler, BaseSampler, make_sampler
from nmrn.training import distributed
from nmrn.training.contract import Recommender
from nmrn.training.registry import register
from nmrn.training.retrieval import CandidateIndex, ann_top_k, check_retrieval, faiss_module
from nmrn.training.schedule import fit_schedule

_ADAGRAD_EPS = 1e-10
# Config fields that fix the shapes and meaning of the saved tensors.
_ARCHITECTURE = (
    "dim",
    "memory_slots",
    "context_len",
    "context_decay",
    "item_memory_len",
    "addressing",
    "learn_temperature",
    "personal_offset",
    "item_bias",
    "squared_distance",
    "per_user_memory",
    "optimizer",
    "sampler",
)
# Architecture fields added after checkpoints were first written, with the value those had.
_ADDED_ARCHITECTURE = {"context_len": 0, "context_decay": 0.5, "item_memory_len": 0}
_TABLES = ("user_emb", "item_emb", "bias")  # row-sparse updates; the rest is dense


@register
class NMRN(Recommender):
    """Neural Memory Recommender Network (the recommender D of Wang et al., KDD 2018).

    Users attend over a key memory; their interest is the attention-weighted read of a value
    memory that every event writes to (erase/add gates from the positive item); items are
    ranked by Euclidean distance to the interest (``score = -distance``). See DESIGN §1 and
    :class:`nmrn.config.NMRNConfig` for every option.

    Parameters
    ----------
    config
        An :class:`~nmrn.config.NMRNConfig` (or a mapping of its sections and/or flat fields);
        ``None``: the defaults, i.e. the paper's model.
    **options
        Any field of :class:`~nmrn.config.ModelConfig` (``dim``, ``memory_slots``,
        ``addressing``, ...) or :class:`~nmrn.config.TrainConfig` (``lr``, ``epochs``, ...) by
        name, or ``sampler``, ``sampler_options``, ``device``, ``seed``; applied on top of
        ``config``. ``model.get_params()`` gives them all, flat.

    Notes
    -----
    Memory state. ``fit`` starts each epoch from the learned initial memory and leaves the
    state as it is at the end of the history. ``learn`` continues from the current state; with
    ``learn_passes > 1``, every pass starts from the state at the start of the call and only the
    last pass's state is kept, so the memory evolves exactly once per event. Event weights are
    ignored (implicit feedback).

    Examples
    --------
    >>> import pandas as pd
    >>> events = pd.DataFrame({"user": [1, 1, 2, 2, 3], "item": [10, 11, 10, 12, 11],
    ...                        "timestamp": [0, 1, 2, 3, 4]})
    >>> rec = NMRN(dim=8, memory_slots=4, epochs=2, batch_size=2).fit(events)
    >>> items, scores = rec.recommend(1, k=2, exclude_seen=False)
    >>> len(items), bool(scores[0] >= scores[1])
    (2, True)
    """

    config_class = NMRNConfig
    config: NMRNConfig

    @classmethod
    def _unit_test_params(cls) -> dict[str, dict[str, Any]]:
        small = {"dim": 8, "memory_slots": 4, "batch_size": 32, "epochs": 2, "n_candidates": 5,
                 "seed": 7}
        return {
            "faithful": small,
            "per-user-memory": {**small, "per_user_memory": True},
            "context": {**small, "context_len": 3, "context_decay": 0.6},
            "item-memory": {**small, "item_memory_len": 4, "per_user_memory": True},
            "variants": {
                **small,
                "addressing": "neg_dist",
                "learn_temperature": True,
                "personal_offset": True,
                "item_bias": True,
                "squared_distance": True,
                "cold_user_init": "item_mean",
                "learn_passes": 2,
            },
        }

    def __init__(self, config: NMRNConfig | Mapping[str, Any] | None = None, /,
                 **options: Any) -> None:
        super().__init__(config, **options)
        cfg = self.config
        self._device = torch.device(cfg.device)
        self._gen = torch.Generator().manual_seed(cfg.seed)  # private; never the global RNG
        self.network = NMRNNetwork(0, 0, cfg.model, generator=self._gen).to(self._device)
        self._sampler = make_sampler(cfg.sampler, options=cfg.sampler_options, generator=self._gen)
        # Value-memory state: None = at the learned initial memory. Per-user: [n_users, H, d]
        # plus a flag per user (False = still at the learned initial memory).
        self._memory: Tensor | None = None
        self._has_memory = torch.zeros(0, dtype=torch.bool, device=self._device)
        self._accumulators: dict[str, Tensor] = {
            name: torch.zeros_like(p) for name, p in self._parameters_by_name().items()
        }
        self._step = 0
        self._version = 0  # bumped whenever the item table changes (score cache key)
        self._score_cache: tuple[int, Tensor] | None = None
        # item rows changed since the score cache was built (None: any row, rebuild it all)
        self._dirty_items: list[Tensor] | None = None
        self._n_dirty = 0
        self._fresh_from: int | None = None  # first user index not yet seen by _learn
        # the dense (small) parameters, in the network's order; the Parameter objects outlive
        # growth and loading (their .data is replaced), so this is built once
        self._dense: dict[str, Tensor] = {
            n: p for n, p in self.network.named_parameters() if n not in _TABLES
        }
        # approximate candidates for recommend (config.retrieval; never saved, rebuilt on need)
        check_retrieval(self._retrieval_config, self._ann_unsupported(), "NMRN")
        self._ann = CandidateIndex(self._retrieval_config)

    # -- parameters and optimizer state ------------------------------------------------------------
    def _parameters_by_name(self) -> dict[str, Tensor]:
        return dict(self.network.named_parameters())

    def _grow(self, n_users: int, n_items: int) -> None:
        net = self.network
        old_users, old_items = net.n_users, net.n_items
        if n_users <= old_users and n_items <= old_items:
            return
        net.grow(n_users, n_items, self._gen)
        for name, param in self._parameters_by_name().items():
            # a table grew: new rows start with a zero accumulator
            self._accumulators[name] = grow_like(self._accumulators[name], param)
        if self.config.model.per_user_memory and n_users > old_users:
            h, d = self.config.model.memory_slots, self.config.model.dim
            bank = self._memory if self._memory is not None else net.init_values.new_zeros(0, h, d)
            self._memory = grow_rows(bank, n_users)  # a new user's row: "at the initial memory"
            self._has_memory = grow_rows(self._has_memory, n_users)
        if n_users > old_users and self._fresh_from is None:
            self._fresh_from = old_users
        self._sampler.grow(n_items, n_users=n_users, generator=self._gen)
        if n_items > old_items:  # new users alone leave the item table (and its norms) as is
            self._items_changed(None)

    # -- training ----------------------------------------------------------------------------------
    def _fit(
        self, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, weights: Any
    ) -> None:
        self._fresh_from = None  # cold_user_init applies to users first seen in learn()
        self._sampler.observe(torch.from_numpy(users), torch.from_numpy(items))
        epochs = self.config.train.epochs
        ctx = self._contexts(users, items)
        if epochs == 0:
            self._advance(users, items, ctx)

        def run_epoch(epoch: int) -> None:
            self._reset_memory()  # every epoch starts from the learned initial memory
            self._run_batches(users, items, ctx, where=f"fit epoch {epoch + 1}/{epochs}")

        fit_schedule(epochs, self._sampler, run_epoch,
                     lambda: self._pretrain_generator(users, items, ctx))
        self._ann.invalidate()  # fit moves most items: build afresh on the next read

    def _learn(
        self, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, weights: Any
    ) -> None:
        if self.config.model.cold_user_init == "item_mean" and self._fresh_from is not None:
            self._init_fresh_users(users, items, self._fresh_from)
        self._fresh_from = None
        self._sampler.observe(torch.from_numpy(users), torch.from_numpy(items))
        # Only the memory rows of this batch's users can change; a pass after the first
        # replays from their state before the batch. (Copying the whole per-user memory per
        # call cost 43 ms on a 20,000-user model, whatever the batch.)
        passes = self.config.train.learn_passes
        ctx = self._contexts(users, items)
        start = self._snapshot_rows(users) if passes > 1 else None
        for p in range(passes):
            if p > 0:  # replay from the same state: the memory evolves once per event
                assert start is not None
                self._restore_rows(start)
            self._run_batches(users, items, ctx, where=f"learn pass {p + 1}/{passes}")

    def _context_len(self) -> int:
        """How many recent items the query and the item-level memory use (0: none)."""
        return max(self.config.model.context_len, self.config.model.item_memory_len)

    def _contexts(self, users: np.ndarray, items: np.ndarray) -> Tensor | None:
        """``[N, L]`` each event's context items (its user's last L items before it, -1 where
        fewer), or None without a context query or item memory. The same however the stream is
        cut."""
        length = self._context_len()
        if length == 0:
            return None
        return torch.from_numpy(self.history.contexts(users, items, length))

    def _context_vectors(
        self, ctx: Tensor | None, *, leaf: bool
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """``(vectors [B, L, d], unique item rows, their leaf)`` of context items ``ctx [B, L]``
        (zero vectors at -1); with ``leaf`` the rows are a leaf tensor whose gradient is their
        sparse update, without it only the vectors are given (``(vectors, None, None)``)."""
        if ctx is None:
            return None, None, None
        table = self.network.item_emb.detach()
        b, length = ctx.shape
        if not leaf:
            # no leaf, so no unique rows: a gather and a select give the same values (the rows,
            # +0.0 where a user has fewer items) in 4 operator calls instead of 9 (every read)
            flat = ctx.reshape(-1, 1).to(self._device)
            picked = table.index_select(0, flat[:, 0].clamp_min(0))  # [B * L, d]
            return torch.where(flat >= 0, picked, 0.0).view(b, length, table.shape[1]), None, None
        valid = (ctx >= 0).reshape(-1)
        slots = torch.nonzero(valid).squeeze(1).to(self._device)  # [V]
        uniq, inverse = torch.unique(ctx.reshape(-1)[valid].to(self._device), return_inverse=True)
        rows = table[uniq]  # [C, d]
        rows.requires_grad_()
        flat = table.new_zeros(b * length, table.shape[1])
        picked = flat.index_copy(0, slots, rows.index_select(0, inverse))
        vectors = picked.view(b, length, table.shape[1])  # also for b = 0 (a rank with no events)
        return vectors, uniq, rows

    def _run_batches(
        self, users: np.ndarray, items: np.ndarray, ctx: Tensor | None, *, where: str
    ) -> None:
        u_all = torch.from_numpy(np.ascontiguousarray(users, dtype=np.int64))
        i_all = torch.from_numpy(np.ascontiguousarray(items, dtype=np.int64))
        size = self.config.train.batch_size
        for lo in range(0, len(u_all), size):
            part = None if ctx is None else ctx[lo : lo + size]
            self._train_batch(u_all[lo : lo + size], i_all[lo : lo + size], part, where)

    def _reset_memory(self) -> None:
        if self.config.model.per_user_memory:
            if self._memory is not None:
                self._memory.zero_()
            self._has_memory.zero_()
        else:
            self._memory = None

    def _snapshot_memory(self) -> tuple[Tensor | None, Tensor]:
        mem = None if self._memory is None else self._memory.clone()
        return mem, self._has_memory.clone()

    def _snapshot_rows(self, users: np.ndarray) -> tuple[Tensor | None, Tensor, Tensor | None]:
        """What events of ``users`` can change in the memory: their rows of a per-user memory
        (with the rows' indices), or the whole shared memory."""
        if not self.config.model.per_user_memory:
            mem, flags = self._snapshot_memory()
            return mem, flags, None
        assert self._memory is not None
        rows = torch.from_numpy(np.unique(users)).to(self._device)
        return self._memory[rows].clone(), self._has_memory[rows].clone(), rows

    def _restore_rows(self, snapshot: tuple[Tensor | None, Tensor, Tensor | None]) -> None:
        mem, flags, rows = snapshot
        if rows is None:
            self._restore_memory((mem, flags))
            return
        assert self._memory is not None and mem is not None
        self._memory[rows] = mem
        self._has_memory[rows] = flags

    def _restore_memory(self, snapshot: tuple[Tensor | None, Tensor]) -> None:
        mem, flags = snapshot
        self._memory = None if mem is None else mem.clone()
        self._has_memory = flags.clone()

    def _batch_memory(self, uniq_users: Tensor) -> Tensor:
        """Value memories the batch starts from: ``[H, d]`` shared or ``[U, H, d]`` per user.

        Where the state is at the learned initial memory, the parameter itself is used (not a
        copy), so that its gradient flows.
        """
        init = self.network.init_values
        if not self.config.model.per_user_memory:
            return init if self._memory is None else self._memory
        assert self._memory is not None
        has = self._has_memory[uniq_users][:, None, None]  # [U, 1, 1]
        return torch.where(has, self._memory[uniq_users], init[None])

    def _store_memory(self, uniq_users: Tensor, final: Tensor) -> None:
        if self.config.model.per_user_memory:
            assert self._memory is not None
            self._memory[uniq_users] = final.detach()
            self._has_memory[uniq_users] = True
        else:
            self._memory = final.detach()

    def _train_batch(self, users: Tensor, items: Tensor, ctx: Tensor | None, where: str) -> None:
        n_cand = self.config.train.n_candidates
        proposal = self._sampler.propose(users, items, n_cand, generator=self._gen)
        group = self._data_parallel()
        if group is not None:
            self._train_batch_on_ranks(group, users, items, proposal.candidates, ctx, where)
            return
        dev = self._device
        users, items, negatives = users.to(dev), items.to(dev), proposal.candidates.to(dev)
        pick = None  # G's negative, or None: the hardest of the T candidates
        if proposal.chosen is not None and proposal.use_chosen:
            pick = proposal.chosen.to(dev)
        step = self._forward(users, items, negatives, ctx, pick, evolve)
        loss = step.losses.mean()
        if not torch.isfinite(loss):
            raise ModelFitError(
                f"non-finite loss ({loss.item()}) at step {self._step + 1} ({where}, mini-batch "
                f"of {users.shape[0]} events): lower lr (now {self.config.train.lr}), set "
                "grad_clip, or check the model's weights for NaN/inf"
            )
        touched = self._apply_gradients(self._gradients(loss, step.leaves), step.rows)
        self._store_memory(step.rows[0], step.final)
        self._step += 1
        self._items_changed(touched)
        violating = self.config.train.margin + step.d_pos[:, None] - step.d_neg > 0  # [B, T]
        self._sampler.update(
            users, items, negatives, reward=-step.d_neg, chosen=proposal.chosen,
            violating=violating,
        )

    def _forward(
        self, users: Tensor, items: Tensor, negatives: Tensor, ctx: Tensor | None,
        pick: Tensor | None, scan: Callable[..., tuple[Tensor, Tensor]],
    ) -> _Pass:
        """Steps 2-5 of the loop (module docstring) on the events ``users``/``items`` (``[n]``)
        with candidates ``negatives [n, T]``: the loss of each event, and the leaves (touched
        rows) its gradient goes to."""
        net = self.network
        # Gather each touched row once, as a leaf: its gradient is the sparse row update.
        uniq_u, inv_u = torch.unique(users, return_inverse=True)  # [U], [B]
        uniq_p, inv_p = torch.unique(items, return_inverse=True)  # [P], [B]
        u_rows = net.user_emb.detach()[uniq_u].requires_grad_()  # [U, d]
        p_rows = net.item_emb.detach()[uniq_p].requires_grad_()  # [P, d]
        u = u_rows.index_select(0, inv_u)  # [B, d]; backward = index_add
        v_pos = p_rows.index_select(0, inv_p)  # [B, d]
        index = inv_u if self.config.model.per_user_memory else None
        context, uniq_c, c_rows = self._context_vectors(ctx, leaf=True)  # [B, L, d] or None
        s, final = net.read_batch(u, v_pos, self._batch_memory(uniq_u), index, context, scan)
        # Only the hardest of the T candidates gets a gradient (the hinge takes their min), so
        # all T distances are computed without autograd and the hardest one again with it.
        with torch.no_grad():
            neg_bias = None if net.bias is None else net.bias[negatives]
            v_neg = net.item_emb[negatives]  # [B, T, d]
            ctx_now = None if context is None else context.detach()
            s_neg = net.candidate_interest(s.detach(), v_neg, ctx_now)  # [B, d] or [B, T, d]
            d_neg = net.distance(s_neg, v_neg, neg_bias)  # [B, T]
            chosen = d_neg.argmin(dim=1, keepdim=True) if pick is None else pick[:, None]
            hard = negatives.gather(1, chosen).squeeze(1)  # [B]
        uniq_h, inv_h = torch.unique(hard, return_inverse=True)  # [Q], [B]
        h_rows = net.item_emb.detach()[uniq_h].requires_grad_()  # [Q, d]
        leaves, rows = [u_rows, p_rows, h_rows], [uniq_u, uniq_p, uniq_h]
        pos_bias = hard_bias = None
        if net.bias is not None:
            pb_rows = net.bias.detach()[uniq_p].requires_grad_()  # [P]
            hb_rows = net.bias.detach()[uniq_h].requires_grad_()  # [Q]
            pos_bias, hard_bias = pb_rows[inv_p], hb_rows[inv_h]
            leaves += [pb_rows, hb_rows]
            rows += [uniq_p, uniq_h]
        if c_rows is not None:
            assert uniq_c is not None
            leaves.append(c_rows)  # last: the context items' rows [C, d]
            rows.append(uniq_c)
        d_pos = net.distance(net.candidate_interest(s, v_pos, context), v_pos, pos_bias)  # [B]
        v_hard = h_rows.index_select(0, inv_h)  # [B, d]
        d_hard = net.distance(net.candidate_interest(s, v_hard, context), v_hard, hard_bias)
        margin = self.config.train.margin
        losses = rank_weighted_hinge(d_pos, d_neg, margin, net.n_items, hardest=d_hard)
        return _Pass(leaves, rows, losses, d_pos.detach(), d_neg, final)

    def _gradients(self, loss: Tensor, leaves: list[Tensor]) -> list[Tensor | None]:
        """The leaves' gradients (zeros where unused), then the dense parameters' (None where
        unused), in ``self._dense``'s order."""
        dense = self._dense
        grads = list(torch.autograd.grad(loss, leaves + list(dense.values()), allow_unused=True))
        return [_or_zeros(g, x) for g, x in zip(grads[: len(leaves)], leaves, strict=True)] + [
            g for g in grads[len(leaves) :]
        ]

    def _apply_gradients(self, grads: list[Tensor | None], rows: list[Tensor]) -> Tensor:
        """Steps 6-8 of the loop: clip, then update the touched rows (``rows[k]`` are leaf
        ``k``'s distinct table rows) and the dense parameters; returns the item rows whose
        embedding changed."""
        net = self.network
        if self.config.train.grad_clip:
            norms = torch.stack([torch.linalg.vector_norm(g) for g in grads if g is not None])
            total = torch.linalg.vector_norm(norms) + 1e-12
            scale = (self.config.train.grad_clip / total).clamp(max=1.0)
            grads = [None if g is None else g * scale for g in grads]
        n_leaves = len(rows)
        g = [x for x in grads[:n_leaves] if x is not None]
        assert len(g) == n_leaves  # a leaf's gradient is zeros, never None (_gradients)
        uniq_u, uniq_p, uniq_h = rows[:3]
        has_context = n_leaves > (5 if net.bias is not None else 3)
        with torch.no_grad():
            # A row can be a positive, a hardest negative and a context item: sum its gradients.
            uniq_i, inv_i = torch.unique(torch.cat([uniq_p, uniq_h]), return_inverse=True)
            self._update_rows("user_emb", uniq_u, g[0])
            touched = uniq_i  # item rows whose embedding changes
            if not has_context:
                merged = _merge(len(uniq_i), inv_i, g[1], g[2])
                self._update_rows("item_emb", uniq_i, merged)
            else:
                uniq_e, inv_e = torch.unique(torch.cat([uniq_p, uniq_h, rows[-1]]),
                                             return_inverse=True)
                merged = _merge(len(uniq_e), inv_e, g[1], g[2], g[n_leaves - 1])
                self._update_rows("item_emb", uniq_e, merged)
                touched = uniq_e
            if net.bias is not None:
                self._update_rows("bias", uniq_i, _merge(len(uniq_i), inv_i, g[3], g[4]))
            self._update_dense_all(
                [(name, param, grad) for (name, param), grad
                 in zip(self._dense.items(), grads[n_leaves:], strict=True) if grad is not None]
            )
            _clip_rows(net.user_emb.data, uniq_u, self.config.train.max_norm)
            _clip_rows(net.item_emb.data, touched, self.config.train.max_norm)
            for name in ("keys", "init_values"):
                _clip_rows(getattr(net, name).data, None, self.config.train.max_norm)
        return touched

    # -- data-parallel step (docs/scaling.md §2) -----------------------------------------------
    def _data_parallel(self) -> distributed.Context | None:
        """The group to split mini-batches across, or None: one process, or a configuration
        the data-parallel step does not cover, which every rank then runs whole (replicated:
        the same result, no speed-up), so the replicas stay identical either way. Covered:
        the CPU (gloo; the fused memory kernels) and the samplers that learn nothing from the
        step (uniform, popularity); G's REINFORCE step would need its own exchange."""
        group = distributed.context()
        if group is None or not self.data_parallel:
            return None
        return group

    @property
    def data_parallel(self) -> bool:
        """Whether, under a process group of several ranks, this model's steps are split across
        the ranks (True) or run whole on every rank (False; see :meth:`_data_parallel`)."""
        return self._device.type == "cpu" and not isinstance(self._sampler, AdversarialSampler)

    def _owners(self, users: Tensor, world: int) -> Tensor:
        """``[B]`` the rank that trains each event. One shared memory: contiguous slices (the
        recurrence is composed across them). Per-user memories: whole users, so that no memory
        crosses ranks; users go to the least-loaded rank, most events first (ties: the lower
        user, the lower rank), which every rank computes alike from the global batch."""
        n = len(users)
        if not self.config.model.per_user_memory:
            owner = torch.empty(n, dtype=torch.int64)
            for r in range(world):
                lo, hi = distributed.shard(n, distributed.Context(r, world))
                owner[lo:hi] = r
            return owner
        uniq, inv, counts = torch.unique(users, return_inverse=True, return_counts=True)
        loads = [(0, r) for r in range(world)]  # a heap of (events, rank)
        rank_of = [0] * len(uniq)
        for k in sorted(range(len(uniq)), key=lambda k: (-int(counts[k]), int(uniq[k]))):
            load, r = heapq.heappop(loads)
            rank_of[k] = r
            heapq.heappush(loads, (load + int(counts[k]), r))
        return torch.tensor(rank_of, dtype=torch.int64)[inv]

    def _train_batch_on_ranks(
        self, group: distributed.Context, users: Tensor, items: Tensor, negatives: Tensor,
        ctx: Tensor | None, where: str,
    ) -> None:
        """One mini-batch step split across the ranks (docs/scaling.md §2): every rank drew the
        same candidates for the whole batch, trains its own events (:meth:`_owners`) with the
        global mean's scale, then one all-gather carries every rank's summed row gradients,
        dense gradients, per-event distances (the sampler's statistics) and, per-user, the
        memories of its users; every rank sums a row's parts in rank order before the same
        Adagrad step, so the replicas stay identical."""
        n, world = len(users), group.world_size
        owner = self._owners(users, world)
        mine = torch.nonzero(owner == group.rank).squeeze(1)
        per_user = self.config.model.per_user_memory
        if per_user:
            scan: Callable[..., tuple[Tensor, Tensor]] = evolve
        else:
            def scan(values0: Tensor, w: Tensor, erase: Tensor, add: Tensor,
                     index: Tensor | None) -> tuple[Tensor, Tensor]:
                return evolve_across_ranks(
                    values0, w, erase, add, group.rank, world,
                    lambda t: distributed.all_gather(group, t, "NMRN memory maps"),
                )
        step = self._forward(users[mine], items[mine], negatives[mine],
                             None if ctx is None else ctx[mine], None, scan)
        loss = step.losses.sum() / n  # this rank's share of the global mean
        grads = self._gradients(loss, step.leaves)
        n_leaves = len(step.leaves)
        flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                          for p, g in zip(self._dense.values(), grads[n_leaves:], strict=True)])
        parts = [(r, _as_rows(x.detach(), len(r)))
                 for r, x in zip(step.rows, grads[:n_leaves], strict=True) if x is not None]
        parts.append((torch.zeros(1, dtype=torch.int64), flat[None]))
        parts.append((mine, torch.cat([step.d_pos[:, None], step.d_neg], dim=1)))
        if per_user:
            parts.append((step.rows[0], _as_rows(step.final.detach(), len(step.rows[0]))))
        losses, got = distributed.exchange(
            group, float(loss.detach()), parts, self._capacities(users, items, ctx, owner, world),
            "NMRN gradients",
        )
        bad = distributed.non_finite_ranks(losses)
        if bad:  # every rank sees the same losses, so every rank stops here, before updating
            raise ModelFitError(
                f"non-finite loss {[losses[r] for r in bad]} on rank(s) {bad} of {world} at "
                f"step {self._step + 1} ({where}, mini-batch of {n} events); every rank stopped "
                f"before the update: lower lr (now {self.config.train.lr}), set grad_clip, or "
                "check the model's weights for NaN/inf"
            )
        rows, summed = [], []
        for (r_all, v_all), leaf in zip(got[:n_leaves], step.leaves, strict=True):
            uniq, total = distributed.sum_rows(r_all, v_all)  # a row's parts of several ranks
            rows.append(uniq)
            summed.append(total.reshape((len(uniq), *leaf.shape[1:])))
        # [D], every rank's in rank order. A parameter unused on one rank (a None gradient)
        # may be used on another, so every one is updated, with zeros where no rank used it:
        # Adagrad then leaves it as it is, bit for bit, as skipping it would.
        dense_sum = got[n_leaves][1].sum(dim=0)
        at, global_dense = 0, []
        for p in self._dense.values():
            size = p.numel()
            global_dense.append(dense_sum[at : at + size].view_as(p))
            at += size
        positions, dist = got[n_leaves + 1]
        d_all = torch.empty((n, dist.shape[1]), dtype=dist.dtype)
        d_all[positions] = dist
        touched = self._apply_gradients(summed + global_dense, rows)
        if per_user:
            users_all, mem_all = got[n_leaves + 2]
            h, d = self.config.model.memory_slots, self.config.model.dim
            self._store_memory(users_all, mem_all.view(-1, h, d))
        else:
            self._store_memory(rows[0], step.final)  # the composed memory, the same everywhere
        self._step += 1
        self._items_changed(touched)
        d_pos, d_neg = d_all[:, 0], d_all[:, 1:]
        self._sampler.update(
            users, items, negatives, reward=-d_neg, chosen=None,
            violating=self.config.train.margin + d_pos[:, None] - d_neg > 0,
        )

    def _capacities(
        self, users: Tensor, items: Tensor, ctx: Tensor | None, owner: Tensor, world: int
    ) -> list[int]:
        """The most rows any rank sends in each part of :meth:`_train_batch_on_ranks`'s
        exchange, from the global batch (so every rank computes the same): distinct users,
        positives and context items are known; hardest negatives are at most one per event."""
        def most_distinct(ids: Tensor, ranks: Tensor) -> int:
            """The most distinct ``ids`` any rank holds (``ranks[t]`` holds ``ids[t]``): one
            unique over (rank, id) pairs instead of one per rank."""
            if len(ids) == 0:
                return 0
            pairs = torch.unique(ranks * (int(ids.max()) + 1) + ids)
            return int(torch.bincount(pairs // (int(ids.max()) + 1), minlength=world).max())

        n_users = most_distinct(users, owner)
        n_pos = most_distinct(items, owner)
        n_events = int(torch.bincount(owner, minlength=world).max())
        caps = [n_users, n_pos, n_events]
        if self.network.bias is not None:
            caps += [n_pos, n_events]
        if ctx is not None:
            valid = ctx >= 0
            caps.append(most_distinct(ctx[valid], owner[:, None].expand_as(ctx)[valid]))
        caps += [1, n_events]  # the dense gradients (one row), the per-event distances
        if self.config.model.per_user_memory:
            caps.append(n_users)
        return caps

    def _pretrain_generator(
        self, users: np.ndarray, items: np.ndarray, ctx: Tensor | None = None
    ) -> None:
        """Train G against the frozen D for ``pretrain_epochs`` passes (D and its memory unchanged).

        Each pass replays the events from the learned initial memory, as a ``fit`` epoch does,
        so that D's distances are those it would compute in training; the memory state is
        restored afterwards.
        """
        sampler = self._sampler
        assert isinstance(sampler, AdversarialSampler)
        sampler.training = True
        net, dev = self.network, self._device
        saved = self._snapshot_memory()
        u_all = torch.from_numpy(np.ascontiguousarray(users, dtype=np.int64))
        i_all = torch.from_numpy(np.ascontiguousarray(items, dtype=np.int64))
        for _ in range(sampler.options.pretrain_epochs):
            self._reset_memory()
            size, n_cand = self.config.train.batch_size, self.config.train.n_candidates
            for lo in range(0, len(u_all), size):
                u_cpu, i_cpu = u_all[lo : lo + size], i_all[lo : lo + size]
                proposal = sampler.propose(u_cpu, i_cpu, n_cand, generator=self._gen)
                u, i, cands = u_cpu.to(dev), i_cpu.to(dev), proposal.candidates.to(dev)
                with torch.no_grad():  # D is frozen: no autograd, no update
                    uniq_u, inv_u = torch.unique(u, return_inverse=True)
                    index = inv_u if self.config.model.per_user_memory else None
                    v_pos = net.item_emb[i]
                    context, _, _ = self._context_vectors(
                        None if ctx is None else ctx[lo : lo + size], leaf=False
                    )
                    s, final = net.read_batch(
                        net.user_emb[u], v_pos, self._batch_memory(uniq_u), index, context
                    )
                    bias = net.bias
                    s_pos = net.candidate_interest(s, v_pos, context)
                    d_pos = net.distance(s_pos, v_pos, None if bias is None else bias[i])  # [B]
                    v_neg = net.item_emb[cands]  # [B, T, d]
                    d_neg = net.distance(
                        net.candidate_interest(s, v_neg, context), v_neg,
                        None if bias is None else bias[cands],
                    )  # [B, T]
                self._store_memory(uniq_u, final)
                sampler.update(
                    u,
                    i,
                    cands,
                    reward=-d_neg,
                    chosen=proposal.chosen,
                    violating=self.config.train.margin + d_pos[:, None] - d_neg > 0,
                )
        self._restore_memory(saved)

    def _items_changed(self, rows: Tensor | None) -> None:
        """The item table changed in ``rows`` (``None``: possibly anywhere); the score cache
        will recompute those rows' norms only, or everything once a quarter of the table is
        dirty."""
        self._version += 1
        if rows is not None:  # None comes from growth, which keeps every existing row
            self._ann.changed(rows.cpu().numpy())
        if rows is None:
            self._dirty_items, self._n_dirty = None, 0
        elif self._dirty_items is not None:
            self._dirty_items.append(rows)
            self._n_dirty += len(rows)
            if self._n_dirty > self.network.n_items // 4:
                self._dirty_items, self._n_dirty = None, 0

    def _update_rows(self, name: str, rows: Tensor, grad: Tensor) -> None:
        param = self.network.get_parameter(name).data  # no dict of every parameter per call
        if self.config.train.optimizer == "sgd":
            param.index_add_(0, rows, grad, alpha=-self.config.train.lr)
            return
        acc = self._accumulators[name]
        new_acc = acc[rows].addcmul_(grad, grad)
        acc[rows] = new_acc
        step = grad / new_acc.sqrt_().add_(_ADAGRAD_EPS)
        param.index_add_(0, rows, step, alpha=-self.config.train.lr)

    def _update_dense_all(self, updates: list[tuple[str, Tensor, Tensor]]) -> None:
        """SGD or Adagrad steps of the dense parameters, as torch's ``_foreach`` ops: on a CPU
        they run the very per-tensor kernels one by one (the same numbers as a loop of
        ``addcmul_``/``sqrt``/``add_``/``addcdiv_``), in four calls instead of four per
        parameter; a small step is dominated by the cost of each call."""
        if not updates:
            return
        params = [param.data for _, param, _ in updates]
        grads = [grad for _, _, grad in updates]
        lr = self.config.train.lr
        if self.config.train.optimizer == "sgd":
            torch._foreach_add_(params, grads, alpha=-lr)
            return
        accs = [self._accumulators[name] for name, _, _ in updates]
        torch._foreach_addcmul_(accs, grads, grads)
        denoms = torch._foreach_sqrt(accs)
        torch._foreach_add_(denoms, _ADAGRAD_EPS)
        torch._foreach_addcdiv_(params, grads, denoms, value=-lr)

    @torch.no_grad()
    def _advance(self, users: np.ndarray, items: np.ndarray, ctx: Tensor | None) -> None:
        """Apply the events' memory writes without training (``epochs=0``)."""
        net = self.network
        self._reset_memory()
        u_all = torch.from_numpy(np.ascontiguousarray(users, dtype=np.int64)).to(self._device)
        i_all = torch.from_numpy(np.ascontiguousarray(items, dtype=np.int64)).to(self._device)
        size = self.config.train.batch_size
        for lo in range(0, len(u_all), size):
            u = u_all[lo : lo + size]
            uniq_u, inv_u = torch.unique(u, return_inverse=True)
            erase, add = net.gates(net.item_emb[i_all[lo : lo + size]])
            index = inv_u if self.config.model.per_user_memory else None
            context, _, _ = self._context_vectors(
                None if ctx is None else ctx[lo : lo + size], leaf=False
            )
            q = net.query(net.user_emb[u], context)
            _, final = evolve(self._batch_memory(uniq_u), net.address(q), erase, add, index)
            self._store_memory(uniq_u, final)

    @torch.no_grad()
    def _init_fresh_users(self, users: np.ndarray, items: np.ndarray, first_new: int) -> None:
        """``cold_user_init="item_mean"``: new users start at the mean of their items' vectors."""
        fresh = users >= first_new
        if not fresh.any():
            return
        u = torch.from_numpy(users[fresh]).to(self._device)
        i = torch.from_numpy(items[fresh]).to(self._device)
        table = self.network.user_emb.data
        sums = torch.zeros_like(table).index_add_(0, u, self.network.item_emb.data[i])
        counts = torch.zeros(table.shape[0], device=self._device).index_add_(
            0, u, torch.ones_like(u, dtype=table.dtype)
        )
        rows = torch.unique(u)
        table[rows] = sums[rows] / counts[rows, None]
        _clip_rows(table, rows, self.config.train.max_norm)
        self._version += 1

    # -- scoring ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _score_all(self, users: np.ndarray, n_items: int | None = None) -> np.ndarray:
        """``-distance`` to every item, ``[n] -> [n, N]`` float64 (to the first ``n_items``
        items only, ``[n, n_items]``, when given).

        Each user is scored on its own (a matrix-vector product over the item table), so that
        a user's scores are bit-for-bit the same whichever other users share the call; the
        table pass is memory-bound, so batching users would save little for a single user and
        cost this guarantee. The product's kernel, and so the last bit of every item's score,
        may depend on how many rows the table has (it does with MKL on an Intel Xeon):
        ``n_items`` scores exactly the rows an earlier, smaller table had, bit for bit as it
        scored them (the hybrid reuses such reads, :mod:`nmrn.training.hybrid`).
        """
        net = self.network
        n = net.n_items if n_items is None else min(int(n_items), net.n_items)
        sq_norms = self._item_sq_norms()[:n]
        items = net.item_emb[:n]
        out = np.empty((len(users), n), dtype=np.float64)
        for row, user in enumerate(np.asarray(users, dtype=np.int64).tolist()):
            u, values, context = self._read_inputs(user)
            dist = net.score_all(u, values, items=items, item_sq_norms=sq_norms,
                                 context=context)  # [1, n]
            out[row] = dist[0].neg_().cpu().numpy()
        return out

    def _item_sq_norms(self) -> Tensor:
        """``||v||^2`` of every item row, float64 ``[N]``, cached until the table changes."""
        net = self.network
        cache = self._score_cache
        if cache is None or cache[0] != self._version:
            table = net.item_emb.detach()
            if cache is not None and self._dirty_items is not None:
                # only the rows trained since: a full pass costs ~30 ms on 100,000 items
                sq_norms = cache[1]
                if self._dirty_items:
                    rows = torch.unique(torch.cat(self._dirty_items))
                    sq_norms[rows] = (table[rows].double() ** 2).sum(dim=-1)
            else:
                sq_norms = (table.double() ** 2).sum(dim=-1)  # [N]
            self._score_cache = (self._version, sq_norms)
            self._dirty_items, self._n_dirty = [], 0
        return self._score_cache[1]

    def _read_inputs(self, user: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(u [1, d], values, context [1, L, d] or None)``: what a read of ``user`` needs."""
        net = self.network
        u = net.user_emb[user : user + 1]  # [1, d]
        context = None
        length = self._context_len()
        if length:  # the user's last L items, now
            recent = torch.from_numpy(self.history.recent([user], length))
            context = self._context_vectors(recent, leaf=False)[0]  # [1, L, d]
        if not self.config.model.per_user_memory:
            values = net.init_values if self._memory is None else self._memory  # [H, d]
        elif self._memory is not None and bool(self._has_memory[user]):
            values = self._memory[user]
        else:
            values = net.init_values
        return u, values, context

    # -- approximate retrieval -------------------------------------------------------------------
    @property
    def _retrieval_config(self) -> RetrievalConfig:
        # the default is one shared instance: building a config validates every field (~50 us,
        # on every read)
        return self.config.retrieval or DEFAULT_RETRIEVAL

    def _ann_unsupported(self) -> str | None:
        """Why the score is not a distance to one query vector per user (``None``: it is).

        With the paper's model and every option except these two, the score is
        ``-||s - v||`` (or its square) for the user's read ``s``, whatever the memory (shared
        or per user), the context query or the personal offset: an L2 search for ``s``.
        """
        model = self.config.model
        if model.item_bias:
            return "item_bias adds a per-item term to the distance"
        if model.item_memory_len:
            return "the item-level memory (item_memory_len) reads a different vector per item"
        return None

    def uses_ann(self) -> bool:
        """Whether ``recommend`` answers from the ANN index now (``config.retrieval``)."""
        cfg = self._retrieval_config
        if cfg.mode == "exact" or self._ann_unsupported() is not None:
            return False
        if faiss_module() is None:
            return False  # "auto" without faiss: exact ("ann" was refused at construction)
        return cfg.mode == "ann" or self.network.n_items >= cfg.min_items

    @property
    def retrieval_index(self) -> CandidateIndex:
        """The ANN index and delta set behind ``recommend`` (built on the first read that
        needs it)."""
        return self._ann

    @torch.no_grad()
    def _candidate_top_k(
        self, u: np.ndarray, k: int, exclude_seen: bool
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Top-k from the index's candidates and the delta set, scored exactly as
        :meth:`_score_all` scores them (``nmrn.training.retrieval``); ``None`` (score every
        item) when ANN is off, for unknown users, or when too few candidates survive."""
        if (u < 0).any() or not self.uses_ann():
            return None
        net = self.network
        sq_norms = self._item_sq_norms()
        table = net.item_emb.detach()
        reads: dict[int, Tensor] = {}

        def query_of(user: int) -> np.ndarray:
            u_vec, values, context = self._read_inputs(user)
            q = net.query(u_vec, context)  # as score_all reads it
            reads[user] = s = net.interest(q, net.address(q), values)  # [1, d]
            return s[0].cpu().numpy()

        def score_of(user: int, cand: np.ndarray) -> np.ndarray:
            rows = torch.from_numpy(cand).to(self._device)
            # index_select, not table[rows]: the same rows, without advanced indexing's cost
            dist = net.distances_from(reads.pop(user), table.index_select(0, rows),
                                      sq_norms.index_select(0, rows))  # [1, C']
            return dist[0].neg_().cpu().numpy()

        return ann_top_k(
            self._ann, u, k, net.n_items,
            self.history.items_of if exclude_seen else None,
            lambda: table.cpu().numpy().astype(np.float32, copy=True),
            query_of, score_of,
            lambda rows: table[torch.from_numpy(rows).to(self._device)].cpu().numpy(),
        )

    def _retrieval_handover(self, old: Recommender) -> Callable[[], None] | None:
        """See :meth:`Recommender._retrieval_handover`: the rows of the item table that differ
        from ``old``'s are the adopted index's delta."""
        if (not isinstance(old, NMRN) or type(old) is not type(self) or not old._ann.ready
                or old._ann.config != self._ann.config
                or old.network.n_items > self.network.n_items):
            return None
        before = old.network.item_emb.detach().cpu().numpy()
        now = self.network.item_emb.detach().cpu().numpy()[: len(before)]
        changed = np.flatnonzero((before != now).any(axis=1))
        return lambda: self._ann.adopt(old._ann, changed)

    # -- checkpoints -------------------------------------------------------------------------------
    def _architecture(self) -> dict[str, Any]:
        params = self.config.to_params()
        return {k: params[k] for k in _ARCHITECTURE}

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays: dict[str, np.ndarray] = {}
        for name, tensor in self.network.state_dict().items():
            arrays[f"net.{name}"] = tensor.detach().cpu().numpy()
        for name, acc in self._accumulators.items():
            arrays[f"opt.{name}"] = acc.cpu().numpy()
        if self._memory is not None:
            arrays["memory"] = self._memory.detach().cpu().numpy()
        arrays["has_memory"] = self._has_memory.cpu().numpy()
        arrays["rng"] = self._gen.get_state().numpy()
        for key, value in self._sampler.state_dict().items():
            arrays[f"sampler.{key}"] = np.asarray(value)
        meta = {
            "architecture": self._architecture(),
            "step": self._step,
            "memory_at_init": self._memory is None,
            "fresh_from": self._fresh_from,
        }
        return arrays, meta

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        saved = meta.get("architecture")
        if isinstance(saved, dict):  # fields added since a checkpoint was written: their default
            saved = {**_ADDED_ARCHITECTURE, **saved}
        if saved != self._architecture():
            raise CheckpointError(
                f"checkpoint architecture {saved} does not match the model's {self._architecture()}"
            )
        state = {
            name: saved_tensor(arrays, f"net.{name}", tuple(tensor.shape), tensor.dtype)
            for name, tensor in self.network.state_dict().items()
        }
        self.network.load_state_dict(state)
        for name, acc in self._accumulators.items():
            self._accumulators[name] = saved_tensor(
                arrays, f"opt.{name}", tuple(acc.shape), acc.dtype
            ).to(self._device)
        if meta["memory_at_init"]:
            self._memory = None
        else:
            self._memory = torch.from_numpy(arrays["memory"].copy()).to(self._device)
        self._has_memory = torch.from_numpy(arrays["has_memory"].copy()).to(self._device)
        self._gen.set_state(torch.from_numpy(arrays["rng"].copy()))
        self._sampler.load_state_dict(
            {k[len("sampler.") :]: v for k, v in arrays.items() if k.startswith("sampler.")}
        )
        self._step = int(meta["step"])
        self._fresh_from = meta.get("fresh_from")
        self._version += 1
        self._score_cache = None
        self._ann.invalidate()

    # -- introspection -----------------------------------------------------------------------------
    @property
    def negative_sampler(self) -> BaseSampler:
        """The sampler object (``sampler`` is its name); ``.stats`` holds per-step diagnostics."""
        return self._sampler

    def sampler_diagnostics(self, last: int | None = None) -> dict[str, float]:
        """Means of the sampler's per-step statistics over the ``last`` steps (all if None).

        Every sampler reports ``violation_rate`` (fraction of the T candidates that violate the
        margin); the adversarial one adds ``reward``, ``baseline``, ``entropy``,
        ``max_entropy`` (``log T``), ``hardest_rate`` and ``uniform_violation_rate`` (with
        ``violation_rate`` then measured on G's negatives). See ``docs/sampling.md``.
        """
        return self._sampler.diagnostics(last)

    def bytes_per_row(self) -> dict[str, int]:
        """Bytes of model state per user and per item (tables, optimizer state, memories)."""
        elem = self.network.user_emb.element_size()
        opt = 2 if self.config.train.optimizer == "adagrad" else 1
        per_user = opt * self.config.model.dim * elem
        if self.config.model.per_user_memory:
            per_user += self.config.model.memory_slots * self.config.model.dim * elem + 1
        per_item = opt * (self.config.model.dim + int(self.config.model.item_bias)) * elem
        return {"user": per_user, "item": per_item}

    def to_config(self) -> NMRNConfig:
        """The effective configuration (an :class:`~nmrn.config.NMRNConfig`)."""
        return self.config


@dataclass
class _Pass:
    """The forward pass of a step: the leaves (touched rows) and their distinct table rows
    (users first; ``rows[0]`` also indexes the per-user memory ``final``), each event's loss,
    and the distances (detached) the sampler's statistics use."""

    leaves: list[Tensor]
    rows: list[Tensor]
    losses: Tensor  # [B]
    d_pos: Tensor  # [B]
    d_neg: Tensor  # [B, T]
    final: Tensor  # the value memory after the batch ([H, d], or [U, H, d] per user)


def _as_rows(x: Tensor, n: int) -> Tensor:
    """``x`` (``[n, ...]``) as ``[n, width]``; also when ``n`` is 0 (a rank with no context items
    or, with fewer events than ranks, no events at all)."""
    return x.reshape(n, math.prod(x.shape[1:]))


def _or_zeros(grad: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _merge(n_rows: int, inverse: Tensor, *grads: Tensor) -> Tensor:
    """Sum per-row gradients of several leaves onto their ``n_rows`` unique rows."""
    out = grads[0].new_zeros((n_rows,) + grads[0].shape[1:])
    return out.index_add_(0, inverse, torch.cat(grads))


def _clip_rows(table: Tensor, rows: Tensor | None, max_norm: float) -> None:
    """Rescale rows with ``||row|| > max_norm`` onto the ball (in place).

    A row whose norm overflows becomes NaN rather than silently zero, so that divergence is
    reported (as a non-finite loss) instead of hidden.
    """
    block = table if rows is None else table[rows]
    norms = torch.linalg.vector_norm(block, dim=-1, keepdim=True)
    if bool((norms <= max_norm).all()):
        # every scale below would be exactly 1.0 and x * 1.0 == x: nothing to write (a NaN or
        # an infinite norm fails the test and takes the path that reports it)
        return
    scale = (max_norm / norms.clamp_min(1e-12)).clamp(max=1.0)
    scale = torch.where(torch.isfinite(norms), scale, torch.full_like(scale, float("nan")))
    if rows is None:
        table.mul_(scale)
    else:
        table[rows] = block * scale


__all__ = ["NMRN"]
