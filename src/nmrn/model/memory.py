"""Key-value memory: addressing, reading, writing and the evolution of the value memory.

Notation (named dimensions used in every docstring): B events in a time-ordered mini-batch,
H memory slots, d embedding size, S value memories (1 when shared by all users).

The write of DESIGN §1, applied after event t is scored, is

.. math::

    M_i \\leftarrow M_i \\odot (1 - w_i e) + w_i a,
    \\qquad e = \\sigma(W_e v + b_e),\\; a = \\tanh(W_a v + b_a),

an elementwise *linear* recurrence ``M_t = F_t * M_{t-1} + G_t`` with ``F_t = 1 - w_t e_t^T``
and ``G_t = w_t a_t^T`` (both ``[H, d]``). :func:`evolve` runs it, with the reads, for a whole
mini-batch as one autograd node whose backward pass is the same recurrence run backwards:
if ``D_t`` is the gradient of the loss with respect to the state after event ``t``, then
``D_{t-1} = F_t * D_t + dL/d(state before t)``, ``dL/dG_t = D_t`` and
``dL/dF_t = D_t * M_{t-1}``. Both directions are exact (no division by running products, no
logarithms), so factors at or near 0 (sharp attention, saturated erase gates) are harmless.

Kernels. On CPU (float32/float64, one shared memory) the forward and backward passes are
fused numpy loops over the events, cut into chunks of 32 so that every ``[chunk, H, d]``
temporary stays in cache: each event costs two in-place ufunc calls on ``H*d`` floats each way,
and only the states the events read (``[B, H, d]``) are kept for the backward pass. We measured
this at about 2 ms for B=256, H=20, d=64 (forward + backward), against about 4.5 ms for the
same algebra on whole-batch ``[B, H, d]`` tensors, which is memory-bandwidth bound on a CPU.
With per-user memories on CPU, the scan steps through events with numpy as well. On other
devices, where each step would be a kernel launch, a chunked scan is used instead: events are
cut into chunks of ``c``; all chunks are scanned in parallel from a zero state while running
products of the factors are kept (a loop of ``c`` steps over ``[B/c, H, d]`` tensors), then
chunk start states are carried across chunks (a loop over ``B/c`` chunks), and every state is
``local + prefix_product * start``: no division by running products, so zero factors are safe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nmrn.config import ADDRESSING

ADDRESS_MODES = ADDRESSING  # the modes nmrn.config.ModelConfig.addressing accepts
_DIST_EPS = 1e-12


def address(
    u: Tensor, keys: Tensor, mode: str = "dot", temperature: Tensor | float = 1.0
) -> Tensor:
    """Attention of each user over the memory slots.

    ``w = softmax_i(u . k_i / temperature)`` (``mode="dot"``, DKVMN) or
    ``softmax_i(-||u - k_i|| / temperature)`` (``mode="neg_dist"``; a tiny epsilon inside the
    square root keeps the gradient finite when ``u == k_i``).

    Parameters
    ----------
    u
        ``[B, d]`` user vectors.
    keys
        ``[H, d]`` key memory ``M^k``.
    mode
        ``"dot"`` or ``"neg_dist"``.
    temperature
        A positive float or a 0-d tensor.

    Returns
    -------
    Tensor
        ``[B, H]``, rows on the probability simplex.

    Examples
    --------
    >>> w = address(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    >>> [round(x, 4) for x in w[0].tolist()]
    [0.7311, 0.2689]
    """
    if mode == "dot":
        logits = u @ keys.T  # [B, H]
    elif mode == "neg_dist":
        diff = u[:, None, :] - keys[None, :, :]  # [B, H, d]
        logits = -torch.sqrt((diff * diff).sum(dim=-1) + _DIST_EPS)  # [B, H]
    else:
        raise ValueError(f"address mode must be one of {ADDRESS_MODES}, got {mode!r}")
    return torch.softmax(logits / temperature, dim=-1)


def read(w: Tensor, values: Tensor) -> Tensor:
    """Read the memory: ``s = sum_i w_i M^v_i``.

    Parameters
    ----------
    w
        ``[B, H]`` attention.
    values
        ``[H, d]`` one value memory shared by the batch, or ``[B, H, d]`` one per row of ``w``
        (e.g. the states returned by :func:`evolve`).

    Returns
    -------
    Tensor
        ``[B, d]``.

    Examples
    --------
    >>> read(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 2.0], [3.0, 4.0]])).tolist()
    [[3.0, 4.0]]
    """
    if values.dim() == 2:
        return w @ values  # [B, d]
    return torch.bmm(w[:, None, :], values).squeeze(1)  # [B, 1, H] @ [B, H, d] -> [B, d]


def write(values: Tensor, w: Tensor, erase: Tensor, add: Tensor) -> Tensor:
    """One write: ``M_i <- M_i * (1 - w_i e) + w_i a`` (returns a new tensor).

    Parameters
    ----------
    values
        ``[H, d]`` value memory before the write.
    w
        ``[H]`` attention of the writing user.
    erase
        ``[d]`` erase gate ``e`` in (0, 1).
    add
        ``[d]`` add vector ``a`` in (-1, 1).

    Returns
    -------
    Tensor
        ``[H, d]`` value memory after the write.

    Examples
    --------
    >>> m = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    >>> w, e, a = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 1.0]), torch.tensor([0.1, 0.2])
    >>> write(m, w, e, a).tolist()
    [[0.6000000238418579, 0.20000000298023224], [2.0, 2.0]]
    """
    return values * (1 - w[:, None] * erase[None, :]) + w[:, None] * add[None, :]


def evolve(
    values0: Tensor,
    w: Tensor,
    erase: Tensor,
    add: Tensor,
    index: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Apply the writes of a time-ordered mini-batch; return what each event read.

    Event ``t`` reads the memory as left by events ``< t`` (of the same memory, when there are
    several), ``s_t = read(w_t, M_{t-1})``, and then writes. The result equals
    :func:`evolve_sequential` up to float rounding, gradients included, but it is a single
    autograd node with a hand-written backward pass instead of ``B`` nodes.

    Parameters
    ----------
    values0
        ``[H, d]`` the shared memory before the batch, or ``[S, H, d]`` with ``index``.
    w
        ``[B, H]`` attention of each event's user (it both reads and writes).
    erase
        ``[B, d]`` erase gates of each event's positive item.
    add
        ``[B, d]`` add vectors of each event's positive item.
    index
        Optional ``[B]`` long in ``[0, S)``: which memory event ``t`` reads and writes
        (per-user memories). ``None`` means one memory shared by every event.

    Returns
    -------
    reads : Tensor
        ``[B, d]``: ``s_t``, the read of event ``t`` before its own write.
    final : Tensor
        ``[H, d]`` (or ``[S, H, d]`` with ``index``): the memory after the whole batch.

    Examples
    --------
    >>> m0 = torch.zeros(2, 3)
    >>> w = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    >>> reads, final = evolve(m0, w, torch.full((2, 3), 0.5), torch.ones(2, 3))
    >>> reads.tolist(), final[0].tolist()
    ([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], [1.5, 1.5, 1.5])
    """
    shared = index is None
    if shared:
        if values0.dim() != 2:
            raise ValueError(f"values0 must be [H, d] without index, got {tuple(values0.shape)}")
        m0 = values0[None]  # [1, H, d]
    else:
        assert index is not None
        if values0.dim() != 3 or index.shape != w.shape[:1]:
            raise ValueError(
                f"with index, values0 must be [S, H, d] and index [B]; got "
                f"{tuple(values0.shape)} and {tuple(index.shape)}"
            )
        m0 = values0
    reads, final = _EvolveRead.apply(m0, w, erase, add, index)
    return reads, final[0] if shared else final


def evolve_sequential(
    values0: Tensor,
    w: Tensor,
    erase: Tensor,
    add: Tensor,
    index: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Reference implementation of :func:`evolve`: a plain loop of :func:`write` (for tests).

    Same parameters and returns as :func:`evolve`.
    """
    states = list(values0[None] if index is None else values0)  # S tensors [H, d]
    slots = [0] * w.shape[0] if index is None else index.tolist()
    reads = []
    for t, slot in enumerate(slots):
        reads.append(w[t] @ states[slot])  # [d]
        states[slot] = write(states[slot], w[t], erase[t], add[t])
    final = torch.stack(states)
    out = torch.stack(reads) if reads else w.new_zeros(0, values0.shape[-1])
    return out, final[0] if index is None else final


def evolve_across_ranks(
    values0: Tensor,
    w: Tensor,
    erase: Tensor,
    add: Tensor,
    rank: int,
    world: int,
    gather: Callable[[Tensor], list[Tensor]],
) -> tuple[Tensor, Tensor]:
    """:func:`evolve` of one shared memory when the batch is cut across ``world`` processes.

    This process holds the contiguous slice ``rank`` of a time-ordered batch (``w``, ``erase``,
    ``add`` are the slice's rows); ``values0 [H, d]`` is the memory before the *whole* batch,
    the same on every rank; ``gather(t)`` all-gathers a tensor of the same shape from every rank
    in rank order (a collective: every rank calls it at the same point). A slice acts on the
    memory as one affine map ``M_end = P * M_start + Q`` (``P`` the product of its factors,
    ``Q`` its scan from a zero state), so each rank sends ``(P, Q)`` and composes the maps of
    the ranks before it, in rank order, to get its own start state; then it runs its slice's
    reads and writes from there (docs/scaling.md §2.4). Rank 0 knows its start and sends
    ``(0, its end state)``. The backward pass is the same thing against time: the last rank
    sends ``(0, D_start)``, ranks in between ``(P, their backward scan from zero)`` (rank 0's
    map is nobody's to compose: it sends zeros), and each rank runs its slice's backward from
    the composed gradient of the state after its slice (§2.6).

    Cost: a rank after the first runs its slice's scan twice (the map, then the reads), and it
    cannot start the second before the slices before it are composed, so the recurrence's
    critical path is about two slices' scans: ``R`` ranks cut it by about ``R / 2`` (nothing at
    ``R = 2``; BENCHMARKS.md "Data-parallel NMRN" has the measured figures).
    Every rank composes the same gathered maps in the same order, so ``final`` is bitwise the
    same on every rank; rank 0's reads are bitwise the single process's, the others' agree up
    to float rounding. The gradient of ``values0`` is rank 0's (zero on the others), so that
    the ranks' gradients sum to the single process's. ``final`` is replicated: its gradient
    must be the same on every rank, and it counts once (the last rank's).

    Returns ``(reads [slice, d], final [H, d])`` (the memory after the whole batch). CPU
    float32/float64 only (the fused kernels).
    """
    if values0.dim() != 2:
        raise ValueError(f"values0 must be [H, d], got {tuple(values0.shape)}")
    if not _numpy_ok(values0, w, erase, add):
        raise ValueError("evolve_across_ranks runs the fused CPU kernels: float32/64 on CPU")
    return _EvolveReadRanks.apply(values0, w, erase, add, (rank, world, gather))


# -- the scan -----------------------------------------------------------------------------------
class _EvolveRead(torch.autograd.Function):
    """Reads and writes of a batch, ``M_t = F_t * M_{t-1} + G_t``, with an exact backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, m0: Tensor, w: Tensor, erase: Tensor, add: Tensor, index: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        ctx.index = index
        ctx.m0_shape = m0.shape
        ctx.fused = index is None and _numpy_ok(m0, w, erase, add)
        if ctx.fused:
            reads_np, before_np, final_np = _fused_forward(
                m0[0].detach().numpy(), *(_np(t) for t in (w, erase, add))
            )
            before = torch.from_numpy(before_np)
            ctx.save_for_backward(w, erase, add, before)
            return torch.from_numpy(reads_np), torch.from_numpy(final_np)[None]
        factor = (w[:, :, None] * erase[:, None, :]).neg_().add_(1)  # F_t: [B, H, d]
        shift = w[:, :, None] * add[:, None, :]  # G_t: [B, H, d]
        before, final = _scan(factor, shift, m0.detach(), index, reverse=False)  # [B, H, d]
        reads = torch.bmm(w[:, None, :], before).squeeze(1)  # [B, d]
        ctx.save_for_backward(w, erase, add, before, factor)
        return reads, final

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_reads: Tensor | None, grad_final: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        w, erase, add, before, *rest = ctx.saved_tensors
        if grad_reads is None:
            grad_reads = before.new_zeros(before.shape[0], before.shape[2])
        if grad_final is None:
            grad_final = before.new_zeros(ctx.m0_shape)
        if ctx.fused:
            grads = _fused_backward(
                *(_np(t) for t in (w, erase, add, before, grad_reads)), _np(grad_final[0])
            )
            grad_m0, grad_w, grad_erase, grad_add = (torch.from_numpy(g) for g in grads)
            return grad_m0[None], grad_w, grad_erase, grad_add, None
        (factor,) = rest
        grad_before = w[:, :, None] * grad_reads[:, None, :]  # [B, H, d]
        # The same recurrence run backwards: with D_t the gradient w.r.t. the state after event
        # t, D_{t-1} = F_t * D_t + grad_before_t. The "before" states of this reverse scan are
        # the D_t, and its final state is the gradient w.r.t. the initial memory.
        grad_after, grad_m0 = _scan(factor, grad_before, grad_final, ctx.index, reverse=True)
        # dL/dG_t = D_t and dL/dF_t = D_t * M_{t-1}. Through G_t = w_t a_t^T, F_t = 1 - w_t e_t^T
        # and the read s_t = w_t M_{t-1}:
        #   dL/dw_t[h] = sum_d D_t[h] * (a_t - e_t * M_{t-1}[h]) + M_{t-1}[h] * ds_t
        grad_factor = grad_after * before  # [B, H, d]
        grad_w = (grad_after * add[:, None, :]).sum(dim=-1)  # [B, H]
        grad_w -= (grad_factor * erase[:, None, :]).sum(dim=-1)
        grad_w += (before * grad_reads[:, None, :]).sum(dim=-1)
        grad_add = torch.bmm(w[:, None, :], grad_after).squeeze(1)  # [B, d]
        grad_erase = torch.bmm(w[:, None, :], grad_factor).squeeze(1).neg_()  # [B, d]
        return grad_m0, grad_w, grad_erase, grad_add, None


class _EvolveReadRanks(torch.autograd.Function):
    """:func:`evolve_across_ranks`: the fused kernels on a slice, composed across ranks."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, m0: Tensor, w: Tensor, erase: Tensor, add: Tensor,
        group: tuple[int, int, Callable[[Tensor], list[Tensor]]],
    ) -> tuple[Tensor, Tensor]:
        rank, world, gather = group
        arrays = [_np(t) for t in (w, erase, add)]
        start = m0.detach().numpy()
        if rank == 0:  # rank 0 starts from the known state: its own scan is the real one
            reads, before, end = _fused_forward(start, *arrays)
            mine = np.stack([np.zeros_like(end), end])
        else:
            mine = np.stack(_fused_affine(*arrays))
        maps = [g.numpy() for g in gather(torch.from_numpy(mine))]  # [2, H, d] per rank
        state = start.copy()
        for r, (p, q) in enumerate(maps):  # in rank order, the same on every rank
            if r == rank:
                start = state.copy()
            state = p * state + q
        if rank > 0:
            reads, before, _ = _fused_forward(start, *arrays)
        ctx.group = group
        ctx.product = maps[rank][0]  # this slice's P, which the backward sends
        ctx.save_for_backward(w, erase, add, torch.from_numpy(before))
        return torch.from_numpy(reads), torch.from_numpy(state)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_reads: Tensor | None, grad_final: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        rank, world, gather = ctx.group
        w, erase, add, before = ctx.saved_tensors
        if grad_reads is None:
            grad_reads = before.new_zeros(before.shape[0], before.shape[2])
        if grad_final is None:
            grad_final = before.new_zeros(before.shape[1:])
        arrays = [_np(t) for t in (w, erase, add, before, grad_reads)]
        carry = _np(grad_final)
        if rank == world - 1:  # the gradient after the last slice is known: the real pass
            grads = _fused_backward(*arrays, carry)
            mine = np.stack([np.zeros_like(carry), grads[0]])
        elif rank == 0:  # no slice comes before rank 0's: nobody composes its map
            mine = np.zeros((2, *carry.shape), dtype=carry.dtype)
        else:
            mine = np.stack([ctx.product, _fused_backward_from_zero(
                arrays[0], arrays[1], arrays[4])])
        maps = [g.numpy() for g in gather(torch.from_numpy(mine))]
        for r in range(world - 1, rank, -1):  # against time, composing the later slices
            p, q = maps[r]
            carry = p * carry + q
        if rank < world - 1:
            grads = _fused_backward(*arrays, carry)
        grad_m0, grad_w, grad_erase, grad_add = (torch.from_numpy(g) for g in grads)
        if rank > 0:  # the dependence on values0 is all in rank 0's gradient
            grad_m0 = torch.zeros_like(grad_m0)
        return grad_m0, grad_w, grad_erase, grad_add, None


# -- fused CPU kernels ----------------------------------------------------------------------------
# Events are processed in chunks of _CHUNK so that every [chunk, H, d] temporary stays in cache;
# only the states each event read ([B, H, d]) are kept for the backward pass. Materialising the
# factors, shifts and gradients for the whole batch instead is memory-bandwidth bound on CPU.
_CHUNK = 32


def _numpy_ok(*tensors: Tensor) -> bool:
    return all(
        t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors
    )


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _fused_forward(
    m0: np.ndarray, w: np.ndarray, erase: np.ndarray, add: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(reads [B, d], before [B, H, d], final [H, d])`` for one shared memory."""
    n, h = w.shape
    d = erase.shape[1]
    before = np.empty((n, h, d), dtype=w.dtype)
    reads = np.empty((n, d), dtype=w.dtype)
    final = m0.copy()
    if n == 0:
        return reads, before, final
    factor = np.empty((_CHUNK, h, d), dtype=w.dtype)
    shift = np.empty((_CHUNK, h, d), dtype=w.dtype)
    before[0] = m0
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        f, g = factor[: hi - lo], shift[: hi - lo]
        np.multiply(w[lo:hi, :, None], erase[lo:hi, None, :], out=f)
        np.subtract(1.0, f, out=f)  # F_t = 1 - w_t e_t^T
        np.multiply(w[lo:hi, :, None], add[lo:hi, None, :], out=g)  # G_t = w_t a_t^T
        for t in range(lo, hi):  # M_t = F_t * M_{t-1} + G_t, written into event t+1's slot
            nxt = before[t + 1] if t + 1 < n else final
            np.multiply(f[t - lo], before[t], out=nxt)
            np.add(nxt, g[t - lo], out=nxt)
        np.matmul(w[lo:hi, None, :], before[lo:hi], out=reads[lo:hi, None, :])  # s_t
    return reads, before, final


def _fused_backward(
    w: np.ndarray,
    erase: np.ndarray,
    add: np.ndarray,
    before: np.ndarray,
    grad_reads: np.ndarray,
    grad_final: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gradients ``(m0 [H, d], w [B, H], erase [B, d], add [B, d])`` of :func:`_fused_forward`."""
    n, h = w.shape
    d = erase.shape[1]
    grad_w = np.empty((n, h), dtype=w.dtype)
    grad_erase = np.empty((n, d), dtype=w.dtype)
    grad_add = np.empty((n, d), dtype=w.dtype)
    carry = grad_final.copy()  # D: gradient w.r.t. the state after the current event
    factor = np.empty((_CHUNK, h, d), dtype=w.dtype)
    grad_before = np.empty((_CHUNK, h, d), dtype=w.dtype)
    after = np.empty((_CHUNK, h, d), dtype=w.dtype)
    for hi in range(n, 0, -_CHUNK):
        lo = max(0, hi - _CHUNK)
        k = hi - lo
        f, gb, dk = factor[:k], grad_before[:k], after[:k]
        np.multiply(w[lo:hi, :, None], erase[lo:hi, None, :], out=f)
        np.subtract(1.0, f, out=f)
        np.multiply(w[lo:hi, :, None], grad_reads[lo:hi, None, :], out=gb)  # dL/dM_{t-1} by s_t
        dk[k - 1] = carry
        for j in range(k - 1, -1, -1):  # D_{t-1} = F_t * D_t + grad_before_t
            nxt = dk[j - 1] if j > 0 else carry
            np.multiply(f[j], dk[j], out=nxt)
            np.add(nxt, gb[j], out=nxt)
        b = before[lo:hi]
        wk = w[lo:hi, None, :]  # [k, 1, H]
        np.matmul(wk, dk, out=grad_add[lo:hi, None, :])  # dL/da_t = w_t^T D_t
        gf = np.multiply(dk, b, out=f)  # dL/dF_t = D_t * M_{t-1}
        np.matmul(wk, gf, out=grad_erase[lo:hi, None, :])
        np.negative(grad_erase[lo:hi], out=grad_erase[lo:hi])  # F = 1 - w e^T
        gw = np.matmul(dk, add[lo:hi, :, None])[..., 0]  # from G_t = w_t a_t^T
        gw -= np.matmul(gf, erase[lo:hi, :, None])[..., 0]  # from F_t
        gw += np.matmul(b, grad_reads[lo:hi, :, None])[..., 0]  # from the read s_t
        grad_w[lo:hi] = gw
    return carry, grad_w, grad_erase, grad_add


def _fused_affine(
    w: np.ndarray, erase: np.ndarray, add: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(P, Q)``, both ``[H, d]``: the batch's writes as one map ``M -> P * M + Q``."""
    n, h = w.shape
    d = erase.shape[1]
    prod = np.ones((h, d), dtype=w.dtype)
    state = np.zeros((h, d), dtype=w.dtype)
    factor = np.empty((_CHUNK, h, d), dtype=w.dtype)
    shift = np.empty((_CHUNK, h, d), dtype=w.dtype)
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        f, g = factor[: hi - lo], shift[: hi - lo]
        np.multiply(w[lo:hi, :, None], erase[lo:hi, None, :], out=f)
        np.subtract(1.0, f, out=f)
        np.multiply(w[lo:hi, :, None], add[lo:hi, None, :], out=g)
        for j in range(hi - lo):
            np.multiply(f[j], state, out=state)
            np.add(state, g[j], out=state)
            np.multiply(prod, f[j], out=prod)
    return prod, state


def _fused_backward_from_zero(
    w: np.ndarray, erase: np.ndarray, grad_reads: np.ndarray
) -> np.ndarray:
    """``[H, d]``: the gradient w.r.t. the state before the batch when the state after it has
    none (the backward recurrence alone, without the parameters' gradients)."""
    n, h = w.shape
    d = erase.shape[1]
    carry = np.zeros((h, d), dtype=w.dtype)
    factor = np.empty((_CHUNK, h, d), dtype=w.dtype)
    grad_before = np.empty((_CHUNK, h, d), dtype=w.dtype)
    for hi in range(n, 0, -_CHUNK):
        lo = max(0, hi - _CHUNK)
        k = hi - lo
        f, gb = factor[:k], grad_before[:k]
        np.multiply(w[lo:hi, :, None], erase[lo:hi, None, :], out=f)
        np.subtract(1.0, f, out=f)
        np.multiply(w[lo:hi, :, None], grad_reads[lo:hi, None, :], out=gb)
        for j in range(k - 1, -1, -1):
            np.multiply(f[j], carry, out=carry)
            np.add(carry, gb[j], out=carry)
    return carry


def _scan(
    factor: Tensor, shift: Tensor, m0: Tensor, index: Tensor | None, *, reverse: bool
) -> tuple[Tensor, Tensor]:
    """Run the recurrence; ``before[t]`` is the state event ``t`` sees, in traversal order."""
    if factor.shape[0] == 0:
        return torch.empty_like(factor), m0.clone()
    if factor.device.type == "cpu" and factor.dtype in (torch.float32, torch.float64):
        return _scan_numpy(factor, shift, m0, index, reverse=reverse)
    if index is None:
        return _scan_chunked(factor, shift, m0, reverse=reverse)
    return _scan_loop_torch(factor, shift, m0, index, reverse=reverse)


def _scan_numpy(
    factor: Tensor, shift: Tensor, m0: Tensor, index: Tensor | None, *, reverse: bool
) -> tuple[Tensor, Tensor]:
    f = factor.contiguous().numpy()  # [B, H, d]
    g = shift.contiguous().numpy()
    n = f.shape[0]
    before = np.empty_like(f)
    order = range(n - 1, -1, -1) if reverse else range(n)
    if index is None:
        # Each step writes straight into the next event's slot: two ufunc calls per event.
        steps = list(order)
        final = np.empty_like(f[0])[None]  # [1, H, d]
        before[steps[0]] = m0[0].numpy()
        for prev, t in zip(steps[:-1], steps[1:], strict=True):
            np.multiply(f[prev], before[prev], out=before[t])
            np.add(before[t], g[prev], out=before[t])
        last = steps[-1]
        np.multiply(f[last], before[last], out=final[0])
        np.add(final[0], g[last], out=final[0])
        return torch.from_numpy(before), torch.from_numpy(final)
    states = m0.numpy().copy()  # [S, H, d]
    slots = index.tolist()
    for t in order:
        state = states[slots[t]]
        before[t] = state
        np.multiply(f[t], state, out=state)
        np.add(state, g[t], out=state)
    return torch.from_numpy(before), torch.from_numpy(states)


def _scan_loop_torch(
    factor: Tensor, shift: Tensor, m0: Tensor, index: Tensor, *, reverse: bool
) -> tuple[Tensor, Tensor]:
    states = m0.clone()  # [S, H, d]
    before = torch.empty_like(factor)
    slots = index.tolist()
    order = range(len(slots) - 1, -1, -1) if reverse else range(len(slots))
    for t in order:
        before[t] = states[slots[t]]
        states[slots[t]] = torch.addcmul(shift[t], factor[t], before[t])
    return before, states


def _scan_chunked(
    factor: Tensor, shift: Tensor, m0: Tensor, *, reverse: bool, chunk: int = 16
) -> tuple[Tensor, Tensor]:
    if reverse:
        before, final = _scan_chunked(factor.flip(0), shift.flip(0), m0, reverse=False)
        return before.flip(0), final
    n, h, d = factor.shape
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n
    if pad:  # identity steps (F = 1, G = 0) at the end do not change anything
        factor = torch.cat([factor, factor.new_ones(pad, h, d)])
        shift = torch.cat([shift, shift.new_zeros(pad, h, d)])
    f = factor.view(n_chunks, chunk, h, d)
    g = shift.view(n_chunks, chunk, h, d)
    local = f.new_empty(n_chunks, chunk + 1, h, d)  # state from a zero start, per chunk
    prod = f.new_empty(n_chunks, chunk + 1, h, d)  # running product of the factors
    local[:, 0] = 0
    prod[:, 0] = 1
    for j in range(chunk):
        local[:, j + 1] = torch.addcmul(g[:, j], f[:, j], local[:, j])
        prod[:, j + 1] = prod[:, j] * f[:, j]
    starts = f.new_empty(n_chunks + 1, h, d)
    starts[0] = m0[0]
    for c in range(n_chunks):
        starts[c + 1] = torch.addcmul(local[:, chunk][c], prod[:, chunk][c], starts[c])
    before = torch.addcmul(local[:, :chunk], prod[:, :chunk], starts[:n_chunks, None])
    return before.reshape(n_chunks * chunk, h, d)[:n].contiguous(), starts[n_chunks][None]
