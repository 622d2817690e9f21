"""NMRNNetwork: the recommender D of NMRN as a torch module (tensors in, tensors out).

Named dimensions: B events, T negative candidates per event, H memory slots, d embedding size,
N items, n users asked about.

The module holds the parameters; it knows nothing of ids, histories or optimizers. Its methods
take *vectors* (rows already gathered from the tables), so that a trainer can gather each touched
row once and update only those rows (see :class:`nmrn.training.nmrn.NMRN`). The value memory's
current *state* is not a parameter and is passed in and out explicitly.

Variants (all off by default, which is the paper-faithful model):

- ``addressing="neg_dist"``: attention from ``-||u - k_i||`` instead of ``u . k_i``.
- ``learn_temperature``: a learned softmax temperature (kept positive through its log).
- ``personal_offset``: the interest is ``s + u`` instead of ``s``.
- ``item_bias``: a learned per-item bias is added to the distance (``score = -d - b_v``).
- ``squared_distance``: ``||s - v||^2`` instead of ``||s - v||``.
- per-user value memories: pass ``[n, H, d]`` values (and an ``index`` to :meth:`forward`);
  the trainer owns them (see ``NMRNConfig.per_user_memory``).

References
----------
Wang, Yin, Hu, Lian, Wang, Huang. "Neural Memory Streaming Recommender Networks with
Adversarial Training", KDD 2018.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from nmrn.config import ModelConfig
from nmrn.model.memory import address, evolve, read
from nmrn.model.tables import grow_rows, normal_rows

_DIST_EPS = 1e-12


class NMRNNetwork(nn.Module):
    """User/item tables, key memory, learned initial value memory and write gates.

    Parameters
    ----------
    n_users, n_items
        Initial table sizes (they can grow, see :meth:`grow`).
    config
        The architecture (:class:`~nmrn.config.ModelConfig`; ``None``: the paper's). The
        network reads ``dim``, ``memory_slots``, ``addressing``, ``temperature``,
        ``learn_temperature``, ``personal_offset``, ``item_bias``, ``squared_distance`` and
        ``init_std``; the per-user memory and cold-user options belong to the trainer.
    generator
        Torch generator used for the initialisation (the caller's private one).
    **options
        Fields of :class:`~nmrn.config.ModelConfig`, applied on top of ``config``.

    Attributes
    ----------
    user_emb : Parameter ``[n_users, d]``
        A, the user table.
    item_emb : Parameter ``[n_items, d]``
        B, the item table.
    keys : Parameter ``[H, d]``
        M^k, the key memory.
    init_values : Parameter ``[H, d]``
        The learned initial value memory M^v_0.
    erase_weight, erase_bias, add_weight, add_bias
        W_e ``[d, d]``, b_e ``[d]``, W_a ``[d, d]``, b_a ``[d]``.
    bias : Parameter ``[n_items]`` or None
        Per-item bias (``item_bias=True``).

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> net = NMRNNetwork(3, 5, dim=4, memory_slots=2, generator=g)
    >>> u, v = net.user_emb[:2], net.item_emb[:2]
    >>> neg = net.item_emb[2:4][None].expand(2, 2, 4)
    >>> d_pos, d_neg, final = net(u, v, neg, net.init_values)
    >>> tuple(d_pos.shape), tuple(d_neg.shape), tuple(final.shape)
    ((2,), (2, 2), (2, 4))
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        config: ModelConfig | None = None,
        *,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        config = ModelConfig.build(config, options)
        self.config = config
        dim, memory_slots, init_std = config.dim, config.memory_slots, config.init_std
        self.dim = dim
        self.memory_slots = memory_slots
        self.addressing = config.addressing
        self.personal_offset = config.personal_offset
        self.squared_distance = config.squared_distance
        self.init_std = init_std
        g = generator

        def normal(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=g) * init_std

        self.user_emb = nn.Parameter(normal(n_users, dim))
        self.item_emb = nn.Parameter(normal(n_items, dim))
        self.keys = nn.Parameter(normal(memory_slots, dim))
        self.init_values = nn.Parameter(normal(memory_slots, dim))
        bound = 1.0 / math.sqrt(dim)  # the nn.Linear default range
        self.erase_weight = nn.Parameter((torch.rand(dim, dim, generator=g) * 2 - 1) * bound)
        self.erase_bias = nn.Parameter(torch.zeros(dim))
        self.add_weight = nn.Parameter((torch.rand(dim, dim, generator=g) * 2 - 1) * bound)
        self.add_bias = nn.Parameter(torch.zeros(dim))
        log_t = torch.tensor(math.log(config.temperature))
        if config.learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)
        self.bias = nn.Parameter(torch.zeros(n_items)) if config.item_bias else None
        # gamma**j for the j-th most recent item of the query's context (not learned)
        self.context_len = config.context_len
        decay = config.context_decay ** torch.arange(config.context_len, dtype=torch.float64)
        self.register_buffer(
            "context_weights", decay.to(torch.get_default_dtype()), persistent=False
        )
        # item-level memory (RUM): log of the attention scale a, and the read's weight b
        self.item_memory_len = config.item_memory_len
        if config.item_memory_len:
            self.item_log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
            self.item_weight = nn.Parameter(torch.tensor(1.0))

    # -- sizes and growth --------------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return self.user_emb.shape[0]

    @property
    def n_items(self) -> int:
        return self.item_emb.shape[0]

    def grow(self, n_users: int, n_items: int, generator: torch.Generator | None = None) -> None:
        """Append freshly initialised rows so the tables hold ``n_users`` / ``n_items`` rows.

        Existing rows are kept exactly and the Parameter objects are kept (their ``.data`` is
        replaced), so references held by a trainer stay valid. Never shrinks.
        """
        std = self.init_std
        self.user_emb.data = normal_rows(self.user_emb.data, n_users, std, generator)
        if n_items > self.n_items:
            self.item_emb.data = normal_rows(self.item_emb.data, n_items, std, generator)
            if self.bias is not None:
                self.bias.data = grow_rows(self.bias.data, n_items)

    # -- pieces -----------------------------------------------------------------------------------
    def temperature(self) -> Tensor:
        """The softmax temperature (0-d tensor)."""
        return self.log_temperature.exp()

    def query(self, u: Tensor, context: Tensor | None = None) -> Tensor:
        """The memory's query: ``u``, plus ``sum_j gamma**j c_j`` over the context vectors.

        ``u [B, d]``; ``context [B, L, d]`` (the vectors of each user's last L items, most
        recent first, zero rows where a user has fewer) or None -> ``[B, d]``.
        """
        if context is None or self.context_len == 0:
            return u
        recent = context[:, : self.context_len]  # the context may hold more (item memory)
        return u + torch.einsum("l,bld->bd", self.context_weights, recent)

    def item_read(self, v: Tensor, context: Tensor | None) -> Tensor | None:
        """The item-level memory read ``b * r(v)`` for candidate vectors ``v`` (``[B, d]`` or
        ``[B, T, d]``), over each row's last ``item_memory_len`` context vectors
        (``context [B, L, d]``; zero rows are absent items, never attended to); ``None`` when
        the option is off. A row without items reads 0.
        """
        if context is None or self.item_memory_len == 0:
            return None
        memory = context[:, : self.item_memory_len]  # [B, L_I, d]
        present = memory.abs().sum(dim=-1) > 0  # [B, L_I]
        single = v.dim() == 2
        cands = v[:, None, :] if single else v  # [B, T, d]
        logits = self.item_log_scale.exp() * torch.einsum("btd,bld->btl", cands, memory)
        logits = logits.masked_fill(~present[:, None, :], float("-inf"))
        att = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # a row of -inf: no item, reads 0
        read = self.item_weight * torch.einsum("btl,bld->btd", att, memory)
        return read[:, 0] if single else read

    def address(self, u: Tensor) -> Tensor:
        """Attention ``[B, H]`` of users ``u [B, d]`` over the slots."""
        return address(u, self.keys, self.addressing, self.temperature())

    def gates(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """Erase ``e = sigmoid(W_e v + b_e)`` and add ``a = tanh(W_a v + b_a)``, both ``[B, d]``."""
        erase = torch.sigmoid(torch.addmm(self.erase_bias, v, self.erase_weight.T))
        add = torch.tanh(torch.addmm(self.add_bias, v, self.add_weight.T))
        return erase, add

    def interest(self, u: Tensor, w: Tensor, values: Tensor) -> Tensor:
        """The user's current interest ``s = read(w, values)`` (``+ u`` with a personal offset).

        ``u [B, d]``, ``w [B, H]``, ``values [H, d]`` or ``[B, H, d]`` -> ``[B, d]``.
        """
        s = read(w, values)
        return s + u if self.personal_offset else s

    def distance(self, s: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
        """``||s - v||`` (or its square), plus the item bias when given.

        Parameters
        ----------
        s
            ``[B, d]`` interests.
        v
            ``[B, d]`` (one item per row) or ``[B, T, d]`` (T items per row).
        bias
            ``[B]`` or ``[B, T]`` item biases, or None.

        Returns
        -------
        Tensor
            ``[B]`` or ``[B, T]``. The square root has an epsilon inside, so its gradient is
            finite when ``s == v``.
        """
        diff = (s if s.dim() == v.dim() else s[:, None, :]) - v  # [B, d] or [B, T, d]
        sq = (diff * diff).sum(dim=-1)
        dist = sq if self.squared_distance else torch.sqrt(sq + _DIST_EPS)
        return dist if bias is None else dist + bias

    # -- the whole forward pass of a mini-batch ----------------------------------------------------
    def forward(
        self,
        u: Tensor,
        v_pos: Tensor,
        v_neg: Tensor,
        values0: Tensor,
        index: Tensor | None = None,
        pos_bias: Tensor | None = None,
        neg_bias: Tensor | None = None,
        context: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Score a time-ordered mini-batch of events, then apply their writes.

        Event ``t`` is scored against the memory as left by events ``< t``; its positive item
        then writes. Gradients flow through the writes (:func:`nmrn.model.memory.evolve`).

        Parameters
        ----------
        u
            ``[B, d]`` user vectors of the events.
        v_pos
            ``[B, d]`` positive item vectors.
        v_neg
            ``[B, T, d]`` negative candidate vectors (they never write).
        values0
            ``[H, d]`` the shared value memory before the batch, or ``[S, H, d]`` with
            ``index`` (per-user memories).
        index
            ``[B]`` long: which of the S memories each event uses, or None.
        pos_bias, neg_bias
            ``[B]`` and ``[B, T]`` item biases (``item_bias=True``), or None.
        context
            ``[B, L, d]`` the vectors of each event's context items (see :meth:`query`), or
            None.

        Returns
        -------
        d_pos : Tensor
            ``[B]``.
        d_neg : Tensor
            ``[B, T]``.
        final : Tensor
            The value memory after the batch, shaped like ``values0``.
        """
        s, final = self.read_batch(u, v_pos, values0, index, context)  # [B, d], like values0
        return (
            self.distance(self.candidate_interest(s, v_pos, context), v_pos, pos_bias),
            self.distance(self.candidate_interest(s, v_neg, context), v_neg, neg_bias),
            final,
        )

    def candidate_interest(self, s: Tensor, v: Tensor, context: Tensor | None) -> Tensor:
        """The interest a candidate is measured against: ``s``, plus the item-level read
        ``b * r(v)`` when that memory is on (``[B, d]``, or ``[B, T, d]`` for ``v [B, T, d]``)."""
        r = self.item_read(v, context)
        return s if r is None else (s if v.dim() == 2 else s[:, None, :]) + r

    def read_batch(
        self,
        u: Tensor,
        v_pos: Tensor,
        values0: Tensor,
        index: Tensor | None = None,
        context: Tensor | None = None,
        scan: Callable[..., tuple[Tensor, Tensor]] = evolve,
    ) -> tuple[Tensor, Tensor]:
        """Interests of a time-ordered mini-batch, and the memory after its writes.

        ``u [B, d]``, ``v_pos [B, d]``, ``values0 [H, d]`` (or ``[S, H, d]`` with ``index
        [B]``), ``context [B, L, d]`` or None -> ``(s [B, d], final)``: event ``t``'s interest
        is read from the memory as left by events ``< t``, addressed by its query
        (:meth:`query`); its positive item then writes where the query points
        (:func:`nmrn.model.memory.evolve`, or ``scan(values0, w, erase, add, index)`` in its
        place: the data-parallel step passes one that composes the slices of several ranks).
        """
        q = self.query(u, context)  # [B, d]
        w = self.address(q)  # [B, H]
        erase, add = self.gates(v_pos)  # [B, d] each
        s, final = scan(values0, w, erase, add, index)  # [B, d], like values0
        return (s + q if self.personal_offset else s), final

    @torch.no_grad()
    def score_all(
        self,
        u: Tensor,
        values: Tensor,
        items: Tensor | None = None,
        item_sq_norms: Tensor | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """Distances from each user's interest to every item (lower is better), in float64.

        The dot products ``s . v`` are computed in the tables' dtype as ``items @ s^T`` (one
        pass over the item table, which is what bounds the latency); the rest of
        ``||s||^2 - 2 s.v + ||v||^2`` and the square root in float64.

        Parameters
        ----------
        u
            ``[n, d]`` user vectors.
        values
            ``[H, d]`` the shared value memory, or ``[n, H, d]`` one per user.
        items
            ``[N, d]`` item vectors: the whole item table (the default) or its first ``N`` rows
            (the item bias is read for those rows).
        item_sq_norms
            ``[N]`` cached ``||v||^2`` of ``items`` (saves one pass over the table).
        context
            ``[n, L, d]`` the vectors of each user's last L items (see :meth:`query`), or None.

        Returns
        -------
        Tensor
            ``[n, N]`` float64 distances, with the item bias added when enabled.
        """
        items = self.item_emb if items is None else items
        q = self.query(u, context)  # [n, d]
        s = self.interest(q, self.address(q), values)  # [n, d]
        if self.item_memory_len and context is not None:  # candidate-dependent interests
            out = torch.empty(len(s), items.shape[0], dtype=torch.float64, device=items.device)
            for row in range(len(s)):
                r = self.item_read(items[None], context[row : row + 1])  # [1, N, d]
                assert r is not None
                out[row] = self.distance(s[row : row + 1] + r, items[None])[0].double()
            return out if self.bias is None else out + self.bias.double()[None, : len(items)]
        return self.distances_from(s, items, item_sq_norms)

    @torch.no_grad()
    def distances_from(
        self, s: Tensor, items: Tensor, item_sq_norms: Tensor | None = None
    ) -> Tensor:
        """:meth:`score_all`'s distances from interests ``s [n, d]`` (already read) to
        ``items [N, d]``, without the item-level memory: ``[n, N]`` float64."""
        if item_sq_norms is None:
            item_sq_norms = (items.double() ** 2).sum(dim=-1)
        dots = torch.mm(items, s.T).T.double()  # [n, N]; items row-major: a plain gemv for n=1
        s64 = s.double()
        # ||s - v||^2 = ||s||^2 - 2 s.v + ||v||^2, clamped against negative round-off
        sq = (item_sq_norms.double()[None, :] - 2.0 * dots).add_((s64 * s64).sum(-1, keepdim=True))
        dist = sq.clamp_min_(0.0)
        dist = dist if self.squared_distance else dist.sqrt_()
        return dist if self.bias is None else dist + self.bias.double()[None, : len(items)]
