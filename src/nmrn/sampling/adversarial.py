r"""Adversarial negatives: the generator G of NMRN, trained by REINFORCE against the recommender D.

Shapes: B events, T candidates per event, k G's embedding size, h the MLP width.

G has its own user and item tables E ``[n_users, k]``, F ``[n_items, k]`` and an MLP distance

.. math::

    d_G(u, v) = w_2^\top \operatorname{relu}\big(W_1 [e_u;\ f_v;\ e_u \odot f_v] + b_1\big)

(``W_1`` is ``[h, 3k]``, ``w_2`` is ``[h]``): a learned dissimilarity, unconstrained in sign
(only its differences over a candidate set matter). For each positive ``(u, v)``, T candidates
are drawn uniformly from the known items other than ``v``, and one negative is sampled from

.. math:: P_G(v^-) = \frac{\exp(-d_G(u, v^-) / \tau)}{\sum_{v' \in C_u} \exp(-d_G(u, v') / \tau)}

with ``torch.multinomial`` and the caller's private generator. D trains on it; G then takes one
REINFORCE step with the reward ``r = -d_D(u, v^-)`` (detached: a negative D finds close to the
user is a hard one) and the baseline ``b``, the mean reward of the previous mini-batch
(``b_0 = 0``), by gradient *ascent* on

.. math::

    J = \frac{1}{B}\sum_i (r_i - b) \log P_G(v^-_i)
        + \lambda \frac{1}{B}\sum_i H(P_G(\cdot \mid u_i))

(the per-example reward ``r_i - b``: DESIGN §2 reads line 17 of the paper's Algorithm 1 this
way, as KBGAN does; ``λ`` is ``entropy_weight``, 0 by default). G's optimizer is its own
Adagrad (row-sparse on E and F, dense on the MLP), with state that grows with the tables.

G never sees D's parameters and D's loss never reaches G: the candidates and the pick are
integers drawn without autograd, and the reward arrives detached. G is used only in training.

References
----------
Wang, Yin, Hu, Lian, Wang, Huang. "Neural Memory Streaming Recommender Networks with
Adversarial Training", KDD 2018 (Algorithm 1). Cai, Wang. "KBGAN: Adversarial Learning for
Knowledge Graph Embeddings", NAACL 2018.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Generator, Tensor, nn

from nmrn.errors import CheckpointError
from nmrn.model.tables import grow_like, normal_rows
from nmrn.sampling.base import BaseSampler, Proposal
from nmrn.sampling.uniform import UniformSampler

_ADAGRAD_EPS = 1e-10
_TABLES = ("user_emb", "item_emb")


def generator_probabilities(distances: Tensor, temperature: float = 1.0) -> Tensor:
    """``P_G`` over each row's candidates: ``softmax(-distances / temperature)``.

    Parameters
    ----------
    distances
        ``[B, T]`` G's distances ``d_G(u, v')`` to the candidates.
    temperature
        tau > 0.

    Returns
    -------
    Tensor
        ``[B, T]``, rows summing to 1.

    Examples
    --------
    >>> d = torch.tensor([[0.0, math.log(2.0), math.log(4.0)]])
    >>> [round(p, 6) for p in generator_probabilities(d)[0].tolist()]  # 1 : 1/2 : 1/4
    [0.571429, 0.285714, 0.142857]
    """
    return torch.softmax(-distances / temperature, dim=-1)


def reinforce_objective(
    log_prob: Tensor,
    reward: Tensor,
    baseline: float | Tensor,
    entropy: Tensor | None = None,
    entropy_weight: float = 0.0,
) -> Tensor:
    """G's objective to *maximise*: ``mean((r - b) log P_G(v-)) + entropy_weight * mean(H)``.

    Parameters
    ----------
    log_prob
        ``[B]`` ``log P_G`` of each sampled negative (with autograd).
    reward
        ``[B]`` the recommender's reward of each sampled negative (detached here anyway).
    baseline
        b: the mean reward of the previous mini-batch (a float), or ``[B]`` per event.
    entropy
        Optional ``[B]`` entropy of ``P_G`` per event (with autograd).
    entropy_weight
        lambda >= 0.

    Returns
    -------
    Tensor
        A scalar.

    Examples
    --------
    >>> lp = torch.tensor([-1.0, -2.0])
    >>> reinforce_objective(lp, torch.tensor([1.0, 0.0]), baseline=0.5).item()  # (.5*-1 + -.5*-2)/2
    0.25
    """
    objective = ((reward.detach() - baseline) * log_prob).mean()
    if entropy is not None and entropy_weight:
        objective = objective + entropy_weight * entropy.mean()
    return objective


class GeneratorNetwork(nn.Module):
    """G's parameters: tables E, F and the distance MLP (see the module docstring).

    Parameters
    ----------
    dim
        k, the embedding size.
    hidden
        h, the MLP width.
    init_std
        Std of the normal initialisation of the tables.
    generator
        Torch generator for the initialisation.

    Attributes
    ----------
    user_emb : Parameter ``[n_users, k]``
        E.
    item_emb : Parameter ``[n_items, k]``
        F.
    hidden_weight : Parameter ``[h, 3k]``, hidden_bias : Parameter ``[h]``
        W_1, b_1.
    out_weight : Parameter ``[h]``
        w_2.
    """

    def __init__(self, dim: int, hidden: int, init_std: float, generator: Generator) -> None:
        super().__init__()
        self.dim, self.init_std = dim, init_std
        self.user_emb = nn.Parameter(torch.zeros(0, dim))
        self.item_emb = nn.Parameter(torch.zeros(0, dim))
        scale = 1.0 / math.sqrt(3 * dim)
        self.hidden_weight = nn.Parameter(torch.randn(hidden, 3 * dim, generator=generator) * scale)
        self.hidden_bias = nn.Parameter(torch.zeros(hidden))
        self.out_weight = nn.Parameter(torch.randn(hidden, generator=generator) / math.sqrt(hidden))

    def grow(self, n_users: int, n_items: int, generator: Generator) -> None:
        """Append normally initialised rows so the tables hold ``n_users`` and ``n_items``."""
        for name, size in (("user_emb", n_users), ("item_emb", n_items)):
            table = getattr(self, name)
            extra = size - table.shape[0]
            if extra > 0:
                grown = normal_rows(table, size, self.init_std, generator)
                setattr(self, name, nn.Parameter(grown))

    def distance(self, user_vecs: Tensor, item_vecs: Tensor) -> Tensor:
        """``d_G`` of ``[B, k]`` users to ``[B, T, k]`` items: ``[B, T]``."""
        e = user_vecs[:, None, :].expand_as(item_vecs)  # [B, T, k]
        x = torch.cat([e, item_vecs, e * item_vecs], dim=-1)  # [B, T, 3k]
        hidden = torch.relu(x @ self.hidden_weight.T + self.hidden_bias)  # [B, T, h]
        return hidden @ self.out_weight  # [B, T]


class AdversarialSampler(BaseSampler):
    """The generator G: proposes a hard negative among T uniform candidates, learns by REINFORCE.

    Options come from :class:`~nmrn.config.SamplerConfig` (``generator_dim``, ``hidden``,
    ``temperature``, ``lr``, ``entropy_weight``, ``warmup_steps``, ``init_std``).

    Use with a recommender: :meth:`propose` gives the T uniform candidates (for the rank
    estimate) and G's pick; after the recommender's step, :meth:`update` takes the rewards of
    the candidates and the pick, and takes one REINFORCE step. While ``training`` is False
    (the recommender's pre-training on uniform negatives) G neither picks nor learns. For the
    first ``warmup_steps`` updates G learns but ``Proposal.use_chosen`` is False, so the
    recommender keeps training on the hardest uniform candidate.

    :meth:`sample` (the common sampler interface) draws T uniform candidates per event, with
    T the option ``n_candidates`` if set, else the last ``n_candidates`` given to
    :meth:`propose` (10 before any), and ``n`` picks from ``P_G`` over them, with replacement.
    A pool larger than the recommender's T (option ``n_candidates``) lets G find negatives
    harder than the hardest of T uniform ones, which is what the uniform sampler already gives
    NMRN (see ``docs/sampling.md``).

    Attributes
    ----------
    network : GeneratorNetwork
        G's parameters.
    baseline : float
        b, the mean reward of the previous REINFORCE step.
    steps : int
        REINFORCE steps taken.
    stats : deque of dict
        Per step: ``reward`` (mean r), ``baseline`` (b used), ``entropy`` (mean entropy of
        ``P_G``), ``max_entropy`` (``log T``), ``violation_rate`` (fraction of G's negatives
        with ``m + d_pos - d_neg > 0``) and ``uniform_violation_rate`` (the same over all T
        uniform candidates, i.e. for uniform sampling), ``hardest_rate`` (how often G's pick is
        D's hardest candidate).

    Examples
    --------
    >>> s = AdversarialSampler(n_items=5)
    >>> s.grow(5, n_users=2)
    >>> g = torch.Generator().manual_seed(0)
    >>> prop = s.propose(torch.tensor([0, 1]), torch.tensor([0, 4]), 3, generator=g)
    >>> tuple(prop.candidates.shape), tuple(prop.chosen.shape), prop.use_chosen
    ((2, 3), (2,), True)
    """

    name = "adversarial"

    def __init__(
        self, n_items: int = 0, options: Any = None, generator: Generator | None = None
    ) -> None:
        super().__init__(n_items, options)
        opts = self.options
        self.temperature = float(opts.temperature)
        self.n_users = 0
        self.pool_size = self.options.n_candidates or 10
        self.baseline = 0.0
        self.steps = 0
        #: False while the recommender pre-trains on uniform negatives: no pick, no learning.
        self.training = True
        init_gen = generator if generator is not None else torch.Generator().manual_seed(0)
        self.network = GeneratorNetwork(opts.generator_dim, opts.hidden, opts.init_std, init_gen)
        self._uniform = UniformSampler(n_items)
        self._acc = {n: torch.zeros_like(p) for n, p in self.network.named_parameters()}
        if n_items:
            self.grow(n_items, generator=init_gen)

    def __repr__(self) -> str:
        return (
            f"AdversarialSampler(n_items={self.n_items}, n_users={self.n_users}, "
            f"steps={self.steps})"
        )

    # -- tables ----------------------------------------------------------------------------------
    def grow(
        self, n_items: int, *, n_users: int | None = None, generator: Generator | None = None
    ) -> None:
        super().grow(n_items)
        self._uniform.grow(n_items)
        self.n_users = max(self.n_users, int(n_users or 0))
        net = self.network
        if self.n_users <= net.user_emb.shape[0] and self.n_items <= net.item_emb.shape[0]:
            return
        net.grow(self.n_users, self.n_items, generator or torch.Generator().manual_seed(0))
        for name, param in net.named_parameters():
            self._acc[name] = grow_like(self._acc[name], param)  # new rows: zero accumulator

    def _check_users(self, users: Tensor) -> None:
        if users.numel() and int(users.max()) >= self.n_users:
            # a user G has no row for yet (a sampler used on its own): make room
            self.grow(self.n_items, n_users=int(users.max()) + 1)

    # -- sampling --------------------------------------------------------------------------------
    def distances(self, users: Tensor, candidates: Tensor) -> Tensor:
        """``d_G(u, v')``: ``[B]`` users and ``[B, T]`` candidates -> ``[B, T]`` (autograd on)."""
        users = users.to("cpu", torch.long)
        self._check_users(users)
        net = self.network
        return net.distance(net.user_emb[users], net.item_emb[candidates.to("cpu", torch.long)])

    @torch.no_grad()
    def probabilities(self, users: Tensor, candidates: Tensor) -> Tensor:
        """``P_G`` over each row of ``candidates``: ``[B]``, ``[B, T]`` -> ``[B, T]``."""
        return generator_probabilities(self.distances(users, candidates), self.temperature)

    def choose(self, users: Tensor, candidates: Tensor, n: int, generator: Generator) -> Tensor:
        """``n`` draws (with replacement) of a column of each row of ``candidates`` from ``P_G``.

        ``[B]`` users, ``[B, T]`` candidates -> ``[B, n]`` long columns (``torch.multinomial``
        with the caller's generator).
        """
        probs = self.probabilities(users, candidates)  # [B, T]
        return torch.multinomial(probs, n, replacement=True, generator=generator)  # [B, n]

    def propose(
        self,
        users: Tensor,
        positives: Tensor,
        n_candidates: int,
        *,
        generator: Generator,
        exclude: Tensor | None = None,
    ) -> Proposal:
        self.pool_size = self.options.n_candidates or int(n_candidates)
        cands = self._uniform.sample(
            users, positives, self.pool_size, generator=generator, exclude=exclude
        )  # [B, T]
        if not self.training:
            return Proposal(cands)
        chosen = self.choose(users, cands, 1, generator)[:, 0]  # [B]
        return Proposal(cands, chosen, self.steps >= self.options.warmup_steps)

    def sample(
        self,
        users: Tensor,
        positives: Tensor,
        n: int,
        *,
        generator: Generator,
        exclude: Tensor | None = None,
    ) -> Tensor:
        cands = self._uniform.sample(
            users, positives, self.pool_size, generator=generator, exclude=exclude
        )  # [B, T]
        return cands.gather(1, self.choose(users, cands, n, generator))  # [B, n]

    # -- learning --------------------------------------------------------------------------------
    def update(
        self,
        users: Tensor,
        positives: Tensor,
        negatives: Tensor,
        reward: Tensor | None = None,
        *,
        chosen: Tensor | None = None,
        violating: Tensor | None = None,
    ) -> dict[str, float]:
        if not self.training or chosen is None or reward is None:
            return super().update(users, positives, negatives, reward, violating=violating)
        users = users.to("cpu", torch.long)
        cands = negatives.to("cpu", torch.long)  # [B, T]
        chosen = chosen.to("cpu", torch.long)
        self._check_users(users)
        r = reward.detach().to("cpu", torch.float32).gather(1, chosen[:, None])[:, 0]  # [B]
        net = self.network
        # gather each touched row once as a leaf: its gradient is the row-sparse update
        uniq_u, inv_u = torch.unique(users, return_inverse=True)
        uniq_c, inv_c = torch.unique(cands, return_inverse=True)
        u_rows = net.user_emb.detach()[uniq_u].requires_grad_()  # [U, k]
        c_rows = net.item_emb.detach()[uniq_c].requires_grad_()  # [C, k]
        dist = net.distance(u_rows[inv_u], c_rows[inv_c])  # [B, T]
        log_p = torch.log_softmax(-dist / self.temperature, dim=-1)  # [B, T]
        entropy = -(log_p.exp() * log_p).sum(dim=-1)  # [B]
        chosen_log_p = log_p.gather(1, chosen[:, None])[:, 0]  # [B]
        weight = self.options.entropy_weight
        if self.options.baseline == "candidates":  # E_{P_G}[r] over each event's candidates
            rewards = reward.detach().to("cpu", torch.float32)
            base: float | Tensor = (log_p.detach().exp() * rewards).sum(dim=-1)  # [B]
        else:
            base = self.baseline
        objective = reinforce_objective(chosen_log_p, r, base, entropy, weight)
        dense = {n: p for n, p in net.named_parameters() if n not in _TABLES}
        grads = torch.autograd.grad(-objective, [u_rows, c_rows, *dense.values()])
        with torch.no_grad():
            self._adagrad_rows("user_emb", uniq_u, grads[0])
            self._adagrad_rows("item_emb", uniq_c, grads[1])
            for (name, param), grad in zip(dense.items(), grads[2:], strict=True):
                acc = self._acc[name]
                acc.addcmul_(grad, grad)
                param.addcdiv_(grad, acc.sqrt().add_(_ADAGRAD_EPS), value=-self.options.lr)
        stats = {
            "reward": float(r.mean()),
            "baseline": self.baseline,
            "entropy": float(entropy.detach().mean()),
            "max_entropy": math.log(cands.shape[1]),
            "hardest_rate": float((reward.to("cpu").argmax(dim=1) == chosen).float().mean()),
        }
        if violating is not None:
            violating = violating.to("cpu")
            stats["violation_rate"] = float(violating.gather(1, chosen[:, None]).float().mean())
            stats["uniform_violation_rate"] = float(violating.float().mean())
        self.baseline = float(r.mean())  # b for the next mini-batch
        self.steps += 1
        self.stats.append(stats)
        return stats

    def _adagrad_rows(self, name: str, rows: Tensor, grad: Tensor) -> None:
        table = getattr(self.network, name).data
        acc = self._acc[name]
        new_acc = acc[rows].addcmul_(grad, grad)
        acc[rows] = new_acc
        table.index_add_(0, rows, grad / new_acc.sqrt_().add_(_ADAGRAD_EPS), alpha=-self.options.lr)

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["n_users"] = np.asarray(self.n_users, dtype=np.int64)
        state["pool_size"] = np.asarray(self.pool_size, dtype=np.int64)
        state["steps"] = np.asarray(self.steps, dtype=np.int64)
        state["baseline"] = np.asarray(self.baseline, dtype=np.float64)
        state["training"] = np.asarray(self.training)
        for name, param in self.network.named_parameters():
            state[f"g.{name}"] = param.detach().numpy().copy()
            state[f"opt.{name}"] = self._acc[name].numpy().copy()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._uniform.grow(self.n_items)
        self.n_users = int(np.asarray(state["n_users"]))
        self.pool_size = int(np.asarray(state["pool_size"]))
        self.steps = int(np.asarray(state["steps"]))
        self.baseline = float(np.asarray(state["baseline"]))
        self.training = bool(np.asarray(state["training"]))
        for name, param in list(self.network.named_parameters()):
            arr, acc = state.get(f"g.{name}"), state.get(f"opt.{name}")
            if arr is None or acc is None or np.shape(arr) != np.shape(acc):
                raise CheckpointError(f"generator state for {name!r} is missing or inconsistent")
            expected = tuple(param.shape[1:] if name in _TABLES else param.shape)
            if tuple(np.shape(arr)[1:] if name in _TABLES else np.shape(arr)) != expected:
                raise CheckpointError(
                    f"generator parameter {name!r}: checkpoint shape {np.shape(arr)}, "
                    f"model {tuple(param.shape)} (generator_dim/hidden differ)"
                )
            setattr(self.network, name, nn.Parameter(torch.from_numpy(np.array(arr))))
            self._acc[name] = torch.from_numpy(np.array(acc))
