r"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018), updated online.

Network. A user's last ``max_len`` items :math:`s_1, \dots, s_L` (left-padded) are embedded as
:math:`E_t = M_{s_t} + P_t`, with :math:`M` the item table (shared with the output) and :math:`P`
learned positional embeddings; padded slots are zero. ``n_blocks`` blocks follow, each

.. math::
    X \leftarrow X + \mathrm{Dropout}(\mathrm{Attn}(\mathrm{LN}(X))), \qquad
    X \leftarrow X + \mathrm{Dropout}(\mathrm{FFN}(\mathrm{LN}(X)))

where :math:`\mathrm{Attn}` is causal scaled dot-product attention (``n_heads`` heads over
:math:`Q, K, V = \mathrm{LN}(X) W^{Q,K,V}`; slot :math:`t` sees the real slots :math:`\le t`)
and :math:`\mathrm{FFN}(x) = W_2\,\mathrm{ReLU}(W_1 x + b_1) + b_2`; padded slots are zeroed
after every block and a last layer norm gives :math:`F`. The score of item :math:`i` after slot
:math:`t` is :math:`r_{i,t} = F_t \cdot M_i`. Dropout (rate ``dropout``) is applied to the
input embeddings and to both residual branches during training.

Loss. The paper's binary cross-entropy with one sampled negative per position:
:math:`-\sum_t [\log\sigma(r_{o_t,t}) + \log(1 - \sigma(r_{j_t,t}))]` over the trained positions
(averaged), with :math:`o_t` the next item and :math:`j_t` drawn uniformly among the known items,
redrawn up to ``n_resample`` times while the user has consumed it. Adam (``betas`` 0.9/0.98, as
in the paper) on every parameter; no weight decay.

Training on the history (``fit``). Each user's sequence (in event order) is cut, from its end,
into windows of ``max_len`` targets; window inputs are the ``max_len`` items before each target
(left-padded at the start of a sequence), so every event but a user's first is a target exactly
once per epoch. ``epochs`` shuffled passes in mini-batches of ``batch_size`` windows, at ``lr``.

Online update (``learn``). For the batch's events the same windows are built, with each user's
context taken from their history: the trained positions are exactly those whose target is an
event of the batch (a user's very first event has no input and is not trained; earlier positions
of a window are context only). Then ``learn_steps`` shuffled passes over these windows, one Adam
step per mini-batch of ``batch_size`` windows, at ``learn_lr``, continuing the optimiser state
(moments and step count) of ``fit``. New items get new rows of :math:`M`, drawn from
:math:`\mathcal N(0, d^{-1})` like the initial ones, with zero Adam moments; there is no user
table (a user is their sequence), so new users need nothing.

Scoring. A known user's last ``max_len`` items (however few) give :math:`F` at the last slot,
dotted with every row of :math:`M`; the forward pass runs in float64 on a copy of the parameters
(refreshed after each update), so a user's scores do not depend on who is scored alongside
beyond float64 rounding. Unknown users get the contract's popularity fallback.

All randomness (initialisation, shuffling, negatives, dropout masks) comes from a private
``torch.Generator`` seeded by ``seed``; checkpoints store its state, the parameters and the
optimiser state, so a loaded model scores and continues learning exactly like the original.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nmrn.config import Config, Int, Maybe, Real, option
from nmrn.data.history import SeenPairs
from nmrn.errors import ConfigError, ModelFitError
from nmrn.model.tables import saved_tensor
from nmrn.training.contract import Recommender
from nmrn.training.registry import register

_BETAS = (0.9, 0.98)
_EPS = 1e-8
_SCORE_USERS = 256  # users per float64 forward pass when scoring (bounds memory)

Params = dict[str, torch.Tensor]


# -- the network, as functions of a parameter dict ------------------------------------------------
def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, real: torch.Tensor
) -> torch.Tensor:
    """Scaled dot-product attention where slot ``t`` sees the real slots ``<= t``.

    ``q, k, v`` are ``[B, H, L, e]``; ``real`` is bool ``[B, L]`` (False for padding). A slot
    always sees itself, so a padded query (whose output is discarded) never has an empty row.
    Returns ``[B, H, L, e]``.
    """
    n_slots = q.shape[-2]
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [B, H, L(query), L(key)]
    causal = torch.ones(n_slots, n_slots, dtype=torch.bool).tril()
    allowed = causal[None, :, :] & real[:, None, :]  # [B, L, L]
    allowed = allowed | torch.eye(n_slots, dtype=torch.bool)[None]
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    return torch.softmax(logits, dim=-1) @ v


def _dropout(x: torch.Tensor, rate: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout with masks from ``generator`` (identity when ``generator`` is None)."""
    if generator is None or rate == 0.0:
        return x
    keep = torch.rand(x.shape, generator=generator, dtype=x.dtype) >= rate
    return x * keep / (1.0 - rate)


def encode(
    params: Params,
    seq: torch.Tensor,
    *,
    n_blocks: int,
    n_heads: int,
    dropout: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The SASRec encoder: ``seq`` ``[B, L]`` of item rows (0 = padding) -> ``F`` ``[B, L, d]``.

    Dropout is applied only when a ``generator`` is given (training).
    """
    batch, n_slots = seq.shape
    dim = params["pos_emb"].shape[1]
    real = seq > 0  # [B, L]
    keep = real[..., None].to(params["pos_emb"].dtype)  # [B, L, 1]
    x = params["item_emb"][seq] + params["pos_emb"][None, -n_slots:]  # [B, L, d]
    x = _dropout(x, dropout, generator) * keep
    for b in range(n_blocks):
        p = f"block{b}."
        h = torch.nn.functional.layer_norm(x, (dim,), params[p + "ln1_w"], params[p + "ln1_b"])

        def heads(w: torch.Tensor, bias: torch.Tensor, h: torch.Tensor = h) -> torch.Tensor:
            # [B, L, d] -> [B, H, L, d / H]
            return (h @ w + bias).view(batch, n_slots, n_heads, dim // n_heads).transpose(1, 2)

        q = heads(params[p + "wq"], params[p + "bq"])
        k = heads(params[p + "wk"], params[p + "bk"])
        v = heads(params[p + "wv"], params[p + "bv"])
        att = causal_attention(q, k, v, real).transpose(1, 2).reshape(batch, n_slots, dim)
        x = x + _dropout(att, dropout, generator)
        h = torch.nn.functional.layer_norm(x, (dim,), params[p + "ln2_w"], params[p + "ln2_b"])
        ffn = torch.relu(h @ params[p + "w1"] + params[p + "b1"]) @ params[p + "w2"]
        x = (x + _dropout(ffn + params[p + "b2"], dropout, generator)) * keep
    return torch.nn.functional.layer_norm(x, (dim,), params["ln_w"], params["ln_b"])


def bce_loss(
    out: torch.Tensor,
    item_emb: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Mean over ``mask`` of ``-log sigma(F_t . M_pos) - log(1 - sigma(F_t . M_neg))``.

    ``out`` is ``[B, L, d]``; ``pos``, ``neg`` ``[B, L]`` item rows; ``mask`` bool ``[B, L]``.
    """
    pos_logit = (out * item_emb[pos]).sum(-1)
    neg_logit = (out * item_emb[neg]).sum(-1)
    per_slot = torch.nn.functional.softplus(-pos_logit) + torch.nn.functional.softplus(neg_logit)
    return (per_slot * mask).sum() / mask.sum().clamp(min=1)


def init_params(
    dim: int, max_len: int, n_blocks: int, generator: torch.Generator
) -> Params:
    """Initial parameters (without item rows but the padding row): weights ``N(0, 1/fan_in)``,
    positional embeddings ``N(0, 1/d)``, layer norms ``(1, 0)``, biases 0."""
    std = dim**-0.5
    params: Params = {
        "item_emb": torch.zeros(1, dim),  # row 0: padding, stays zero
        "pos_emb": torch.randn(max_len, dim, generator=generator) * std,
    }
    for b in range(n_blocks):
        p = f"block{b}."
        for name in ("wq", "wk", "wv", "w1", "w2"):
            params[p + name] = torch.randn(dim, dim, generator=generator) * std
        for name in ("bq", "bk", "bv", "b1", "b2", "ln1_b", "ln2_b"):
            params[p + name] = torch.zeros(dim)
        params[p + "ln1_w"] = torch.ones(dim)
        params[p + "ln2_w"] = torch.ones(dim)
    params["ln_w"] = torch.ones(dim)
    params["ln_b"] = torch.zeros(dim)
    return params


@dataclass(frozen=True)
class SASRecConfig(Config):
    """Options of :class:`SASRec` (see its docstring for each one's meaning)."""

    dim: int = option(64, Int(low=1))
    max_len: int = option(50, Int(low=1))
    n_blocks: int = option(2, Int(low=0))
    n_heads: int = option(1, Int(low=1))
    dropout: float = option(0.2, Real(low=0.0, high=1.0, high_open=True))
    lr: float = option(1e-3, Real(low=0.0, low_open=True))
    epochs: int = option(30, Int(low=0))
    batch_size: int = option(128, Int(low=1))
    learn_steps: int = option(1, Int(low=0))
    learn_lr: float | None = option(None, Maybe(Real(low=0.0, low_open=True)))
    n_resample: int = option(3, Int(low=0))
    seed: int = option(0, Int())

    def _validate(self) -> None:
        if self.dim % self.n_heads:
            raise ConfigError(f"SASRec: n_heads={self.n_heads} must divide dim={self.dim}")


@register
class SASRec(Recommender):
    """Self-attentive sequential recommendation, fitted on the history and updated online.

    See the module docstring for the network, the loss and the exact update rules.

    Parameters
    ----------
    dim
        Embedding size ``d`` (items, positions, every layer).
    max_len
        ``L``: how many of a user's last items the model reads.
    n_blocks
        Self-attention blocks.
    n_heads
        Attention heads (must divide ``dim``); the paper uses one.
    dropout
        Dropout rate on the embeddings and the residual branches during training.
    lr
        Adam learning rate of ``fit``.
    epochs
        Passes over the history's windows in ``fit``.
    batch_size
        Windows (of ``max_len`` positions) per gradient step.
    learn_steps
        Passes over the windows of each batch given to ``learn``.
    learn_lr
        Adam learning rate of ``learn``; ``None`` uses ``lr``.
    n_resample
        Redraws of a negative that the user has already consumed.
    seed
        Seed of the model's private random generator.

    References
    ----------
    Kang and McAuley, "Self-attentive sequential recommendation", ICDM 2018.

    Examples
    --------
    >>> log = [(u, i, t) for t, (u, i) in enumerate([("a", "x"), ("a", "y"), ("b", "x")])]
    >>> rec = SASRec(dim=8, max_len=4, epochs=2, seed=0).fit(log)
    >>> rec.score(["b"], ["x", "y"]).shape
    (1, 2)
    """

    config_class = SASRecConfig

    @classmethod
    def _unit_test_params(cls) -> dict[str, dict[str, Any]]:
        # two heads, dropout on, several passes per learned batch
        return {"small": {"dim": 8, "max_len": 6, "n_heads": 2, "epochs": 3, "batch_size": 16,
                          "learn_steps": 2, "seed": 7}}

    def __init__(self, config: Any = None, /, **options: Any) -> None:
        super().__init__(config, **options)
        self._gen = torch.Generator().manual_seed(self.seed)
        cfg = self.config
        self.params = init_params(cfg.dim, cfg.max_len, cfg.n_blocks, self._gen)
        for p in self.params.values():
            p.requires_grad_(True)
        # Adam moments, one per parameter, shaped like it (grown with the item table)
        self._m = {k: torch.zeros_like(p) for k, p in self.params.items()}
        self._v = {k: torch.zeros_like(p) for k, p in self.params.items()}
        self._step = 0
        self._seen = SeenPairs()
        self.last_loss = float("nan")
        self._eval: tuple[int, Params] | None = None  # (state version, float64 copy)

    # -- tables ----------------------------------------------------------------------------------
    def _grow(self, n_users: int, n_items: int) -> None:
        extra = n_items + 1 - len(self.params["item_emb"])
        if extra <= 0:
            return
        rows = torch.randn(extra, self.config.dim, generator=self._gen) * self.config.dim**-0.5
        with torch.no_grad():
            grown = torch.cat([self.params["item_emb"], rows])
        self.params["item_emb"] = grown.requires_grad_(True)
        for state in (self._m, self._v):
            state["item_emb"] = torch.cat([state["item_emb"], torch.zeros(extra, self.config.dim)])

    # -- learning --------------------------------------------------------------------------------
    def _fit(
        self,
        users: np.ndarray,
        items: np.ndarray,
        timestamps: np.ndarray,
        weights: np.ndarray | None,
    ) -> None:
        self._seen.add(users, items)
        self._train(*self._windows(users, items), self.config.epochs, self.config.lr)

    def _learn(
        self,
        users: np.ndarray,
        items: np.ndarray,
        timestamps: np.ndarray,
        weights: np.ndarray | None,
    ) -> None:
        self._seen.add(users, items)
        lr = self.config.lr if self.config.learn_lr is None else self.config.learn_lr
        self._train(*self._windows(users, items), self.config.learn_steps, lr)

    def _windows(
        self, users: np.ndarray, items: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training windows for a batch of events: ``(inputs, targets, mask, user)``.

        ``inputs``, ``targets`` ``[W, L]`` item rows (0 = padding); ``mask`` bool ``[W, L]`` marks
        the positions whose target is an event of the batch; ``user`` ``[W]``. Each user's
        context comes from their history (the events before the batch).
        """
        size = self.config.max_len
        order = np.argsort(users, kind="stable")
        su, si = users[order], items[order]
        cuts = np.flatnonzero(np.diff(su)) + 1
        starts = np.concatenate([[0], cuts]).tolist()
        ends = np.concatenate([cuts, [len(su)]]).tolist()
        slots = np.arange(size)
        inputs, targets, masks, owners = [], [], [], []
        for s, e in zip(starts, ends, strict=True):
            user = int(su[s])
            context = self.history.items_of(user)[-size:]
            seq = np.concatenate([context, si[s:e]]) + 1  # rows: item + 1
            first = max(len(context), 1)  # first trained target position
            last = len(seq) - 1
            if last < first:
                continue
            ends_at = np.arange(last, first - 1, -size)[::-1]  # each window's last target
            in_pos = ends_at[:, None] - size + slots[None, :]  # [w, L] input positions
            tgt_pos = in_pos + 1
            valid = in_pos >= 0
            inputs.append(np.where(valid, seq[np.maximum(in_pos, 0)], 0))
            mask = valid & (tgt_pos >= first)
            targets.append(np.where(mask, seq[np.clip(tgt_pos, 0, last)], 0))
            masks.append(mask)
            owners.append(np.full(len(ends_at), user))
        if not inputs:
            empty = torch.zeros(0, size, dtype=torch.int64)
            return empty, empty, empty.bool(), torch.zeros(0, dtype=torch.int64)
        return (
            torch.from_numpy(np.concatenate(inputs)),
            torch.from_numpy(np.concatenate(targets)),
            torch.from_numpy(np.concatenate(masks)),
            torch.from_numpy(np.concatenate(owners)),
        )

    def _negatives(self, user: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """Item rows ``[B, L]`` drawn uniformly, redrawn while the user has consumed them."""
        n_items = len(self.params["item_emb"]) - 1
        neg = torch.randint(n_items, shape, generator=self._gen)
        owner = user[:, None].expand(shape).numpy()
        for _ in range(self.config.n_resample):
            bad = np.flatnonzero(self._seen.contains(owner.reshape(-1), neg.numpy().reshape(-1)))
            if len(bad) == 0:
                break
            redraw = torch.randint(n_items, (len(bad),), generator=self._gen)
            neg.view(-1)[torch.from_numpy(bad)] = redraw
        return neg + 1

    def _train(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        mask: torch.Tensor,
        owner: torch.Tensor,
        passes: int,
        lr: float,
    ) -> None:
        n = len(inputs)
        if n == 0:
            return
        for epoch in range(passes):
            order = torch.randperm(n, generator=self._gen)
            total, count = 0.0, 0
            for lo in range(0, n, self.config.batch_size):
                idx = order[lo : lo + self.config.batch_size]
                neg = self._negatives(owner[idx], tuple(inputs[idx].shape))  # type: ignore[arg-type]
                out = encode(
                    self.params, inputs[idx], n_blocks=self.config.n_blocks,
                    n_heads=self.config.n_heads, dropout=self.config.dropout, generator=self._gen,
                )
                loss = bce_loss(out, self.params["item_emb"], targets[idx], neg, mask[idx])
                loss.backward()  # type: ignore[no-untyped-call]
                self._adam(lr)
                n_pos = int(mask[idx].sum())
                total += float(loss.detach()) * n_pos
                count += n_pos
            self.last_loss = total / max(count, 1)
            if not math.isfinite(self.last_loss):
                raise ModelFitError(
                    f"SASRec: loss is {self.last_loss} in pass {epoch + 1} of {passes} (step "
                    f"{self._step}); lower the learning rate (now {lr})"
                )

    def _adam(self, lr: float) -> None:
        """One Adam step on every parameter (bias-corrected by the global step)."""
        self._step += 1
        beta1, beta2 = _BETAS
        corr1 = 1 - beta1**self._step
        corr2 = 1 - beta2**self._step
        with torch.no_grad():
            for key, p in self.params.items():
                grad = p.grad
                if grad is None:
                    continue
                m, v = self._m[key], self._v[key]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                p.sub_(lr * (m / corr1) / ((v / corr2).sqrt() + _EPS))
                p.grad = None

    # -- scoring ---------------------------------------------------------------------------------
    def _eval_params(self) -> Params:
        if self._eval is None or self._eval[0] != self._state_version:
            copy = {k: p.detach().double() for k, p in self.params.items()}
            self._eval = (self._state_version, copy)
        return self._eval[1]

    def sequences(self, users: np.ndarray) -> torch.Tensor:
        """The encoder's input for user indices: their last ``max_len`` items as rows,
        left-padded, ``[n, L]``."""
        size = self.config.max_len
        seq = np.zeros((len(users), size), dtype=np.int64)
        for row, user in enumerate(np.asarray(users).tolist()):
            tail = self.history.items_of(user)[-size:]
            if len(tail):
                seq[row, size - len(tail) :] = tail + 1
        return torch.from_numpy(seq)

    @torch.no_grad()
    def user_vectors(self, users: np.ndarray) -> torch.Tensor:
        """``F`` at the last slot for user indices, float64 ``[n, d]``."""
        params = self._eval_params()
        parts = [
            encode(params, self.sequences(users[lo : lo + _SCORE_USERS]),
                   n_blocks=self.config.n_blocks, n_heads=self.config.n_heads)[:, -1]
            for lo in range(0, len(users), _SCORE_USERS)
        ]
        return torch.cat(parts) if parts else torch.zeros(0, self.config.dim, dtype=torch.float64)

    def _score_all(self, users: np.ndarray) -> np.ndarray:
        item_emb = self._eval_params()["item_emb"][1:]
        return (self.user_vectors(users) @ item_emb.T).numpy()

    # -- checkpoints -----------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {"seen": self._seen.keys, "rng": self._gen.get_state().numpy()}
        for key, p in self.params.items():
            arrays[f"param.{key}"] = p.detach().numpy()
            arrays[f"m.{key}"] = self._m[key].numpy()
            arrays[f"v.{key}"] = self._v[key].numpy()
        loss = self.last_loss if math.isfinite(self.last_loss) else None
        return arrays, {"step": self._step, "last_loss": loss}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        for key, p in list(self.params.items()):
            shape = tuple(p.shape)
            self.params[key] = saved_tensor(arrays, f"param.{key}", shape).requires_grad_(True)
            self._m[key] = saved_tensor(arrays, f"m.{key}", shape)
            self._v[key] = saved_tensor(arrays, f"v.{key}", shape)
        self._seen = SeenPairs(np.asarray(arrays["seen"], dtype=np.int64).copy())
        self._gen.set_state(torch.from_numpy(np.asarray(arrays["rng"], dtype=np.uint8).copy()))
        self._step = int(meta["step"])
        self.last_loss = float("nan") if meta["last_loss"] is None else float(meta["last_loss"])
        self._eval = None

