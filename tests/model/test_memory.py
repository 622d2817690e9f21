"""Memory addressing, read, write and the batched evolution (vs a plain loop)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nmrn.model import memory
from nmrn.model.memory import (
    _scan_chunked,
    _scan_loop_torch,
    _scan_numpy,
    address,
    evolve,
    evolve_sequential,
    read,
    write,
)

D64 = torch.float64


def _batch(seed: int, n: int, h: int, d: int, sharpness: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    w = torch.softmax(torch.randn(n, h, generator=g, dtype=D64) * sharpness, dim=-1)
    erase = torch.sigmoid(torch.randn(n, d, generator=g, dtype=D64) * sharpness)
    add = torch.tanh(torch.randn(n, d, generator=g, dtype=D64))
    values0 = torch.randn(h, d, generator=g, dtype=D64)
    return values0, w, erase, add


def test_one_hot_read_returns_that_slot() -> None:
    values = torch.arange(12.0).view(3, 4)
    w = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.equal(read(w, values), values[[1, 2]])
    # per-event values [B, H, d] too
    assert torch.equal(read(w, values[None].expand(2, 3, 4)), values[[1, 2]])


def test_write_by_hand() -> None:
    m = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=D64)
    w = torch.tensor([0.25, 0.75], dtype=D64)
    e = torch.tensor([0.5, 1.0], dtype=D64)
    a = torch.tensor([0.2, -0.4], dtype=D64)
    # slot 0: [1*(1-0.125) + 0.05, 2*(1-0.25) - 0.1]; slot 1: [3*(1-0.375) + 0.15, 4*0.25 - 0.3]
    expected = torch.tensor([[0.925, 1.4], [2.025, 0.7]], dtype=D64)
    assert torch.allclose(write(m, w, e, a), expected)


def test_address_by_hand() -> None:
    u = torch.tensor([[1.0, 0.0]], dtype=D64)
    keys = torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=D64)
    dot = address(u, keys, "dot")
    assert torch.allclose(dot, torch.softmax(torch.tensor([[2.0, 0.0]], dtype=D64), -1))
    dist = address(u, keys, "neg_dist", temperature=0.5)  # logits -1/0.5, -1/0.5 -> uniform
    assert torch.allclose(dist, torch.tensor([[0.5, 0.5]], dtype=D64))
    with pytest.raises(ValueError, match="address mode"):
        address(u, keys, "cosine")


@settings(deadline=None, max_examples=30)
@given(
    st.integers(1, 5),
    st.integers(1, 6),
    st.integers(0, 2**31 - 1),
    st.floats(0.1, 20.0),
)
def test_read_is_convex_combination(h: int, d: int, seed: int, sharp: float) -> None:
    g = torch.Generator().manual_seed(seed)
    u, keys = torch.randn(3, d, generator=g) * sharp, torch.randn(h, d, generator=g)
    values = torch.randn(h, d, generator=g)
    w = address(u, keys)
    assert torch.allclose(w.sum(-1), torch.ones(3))
    assert (w >= 0).all()
    norms = torch.linalg.vector_norm(read(w, values), dim=-1)
    assert (norms <= torch.linalg.vector_norm(values, dim=-1).max() + 1e-5).all()


@pytest.mark.parametrize("sharpness", [1.0, 60.0])  # 60: one-hot attention, erase gates ~1
@pytest.mark.parametrize("n", [1, 2, 37])
def test_batched_equals_sequential(n: int, sharpness: float) -> None:
    values0, w, erase, add = _batch(n, n, 4, 5, sharpness)
    if sharpness > 1 and n > 2:  # factors 1 - w e at (or within rounding of) zero
        assert (1 - w[:, :, None] * erase[:, None, :]).min() < 1e-12
    reads, final = evolve(values0, w, erase, add)
    reads_ref, final_ref = evolve_sequential(values0, w, erase, add)
    assert reads.shape == (n, 5) and final.shape == (4, 5)
    torch.testing.assert_close(reads, reads_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, final_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sharpness", [1.0, 60.0])
def test_gradients_equal_sequential(sharpness: float) -> None:
    inputs = [t.requires_grad_() for t in _batch(3, 23, 3, 4, sharpness)]
    g = torch.Generator().manual_seed(9)
    probe_r, probe_f = torch.randn(23, 4, generator=g, dtype=D64), torch.randn(3, 4, dtype=D64)

    def grads(fn):
        reads, final = fn(*inputs)
        loss = (reads * probe_r).sum() + (final * probe_f).sum()
        return torch.autograd.grad(loss, inputs)

    for got, want in zip(grads(evolve), grads(evolve_sequential), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_per_memory_index_equals_sequential() -> None:
    _, w, erase, add = _batch(4, 30, 3, 4)
    g = torch.Generator().manual_seed(1)
    values0 = torch.randn(5, 3, 4, generator=g, dtype=D64, requires_grad=True)
    index = torch.randint(0, 5, (30,), generator=g)
    reads, final = evolve(values0, w, erase, add, index)
    reads_ref, final_ref = evolve_sequential(values0, w, erase, add, index)
    torch.testing.assert_close(reads, reads_ref)
    torch.testing.assert_close(final, final_ref)
    # a memory no event touches is returned unchanged
    untouched = sorted(set(range(5)) - set(index.tolist()))
    assert torch.equal(final[untouched], values0[untouched])
    (g1,) = torch.autograd.grad((reads.sum() + final.sum()), [values0])
    (g2,) = torch.autograd.grad((reads_ref.sum() + final_ref.sum()), [values0])
    torch.testing.assert_close(g1, g2)


def test_chunked_kernel_equals_loop_kernel_both_directions() -> None:
    values0, w, erase, add = _batch(5, 45, 3, 4, 5.0)
    factor = 1 - w[:, :, None] * erase[:, None, :]
    shift = w[:, :, None] * add[:, None, :]
    for reverse in (False, True):
        a = _scan_chunked(factor, shift, values0[None], reverse=reverse)
        b = _scan_numpy(factor, shift, values0[None], None, reverse=reverse)
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[1], b[1])


def test_gradcheck_address_read_write_evolve() -> None:
    values0, w, erase, add = _batch(6, 4, 3, 4)
    g = torch.Generator().manual_seed(2)
    u = torch.randn(2, 4, generator=g, dtype=D64, requires_grad=True)
    keys = torch.randn(3, 4, generator=g, dtype=D64, requires_grad=True)
    for mode in ("dot", "neg_dist"):
        assert torch.autograd.gradcheck(lambda u, k, m=mode: address(u, k, m, 0.7), (u, keys))
    vals = values0.clone().requires_grad_()
    w_, e_, a_ = (t.clone().requires_grad_() for t in (w, erase, add))
    assert torch.autograd.gradcheck(read, (w_, vals))
    assert torch.autograd.gradcheck(write, (vals, w_[0], e_[0], a_[0]))
    assert torch.autograd.gradcheck(evolve, (vals, w_, e_, a_))
    index = torch.tensor([1, 0, 1, 1])
    vals2 = torch.randn(2, 3, 4, generator=g, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v, w, e, a: evolve(v, w, e, a, index), (vals2, w_, e_, a_)
    )


def test_empty_batch_leaves_memory() -> None:
    values0, w, erase, add = _batch(7, 0, 3, 4)
    reads, final = evolve(values0, w, erase, add)
    assert reads.shape == (0, 4)
    assert torch.equal(final, values0)


@pytest.mark.parametrize("per_user", [False, True])
def test_device_kernels_equal_sequential(monkeypatch: pytest.MonkeyPatch, per_user: bool) -> None:
    """The kernels used off-CPU (chunked scan, torch loop), run here on CPU through evolve."""

    def scan(factor, shift, m0, index, *, reverse):
        if index is None:
            return _scan_chunked(factor, shift, m0, reverse=reverse, chunk=4)
        return _scan_loop_torch(factor, shift, m0, index, reverse=reverse)

    monkeypatch.setattr(memory, "_numpy_ok", lambda *tensors: False)
    monkeypatch.setattr(memory, "_scan", scan)
    values0, w, erase, add = _batch(8, 19, 3, 4, 3.0)
    index = torch.randint(0, 3, (19,), generator=torch.Generator().manual_seed(0))
    if per_user:
        values0 = torch.stack([values0, values0 * 2, -values0])
    inputs = [t.clone().requires_grad_() for t in (values0, w, erase, add)]
    idx = index if per_user else None
    got = evolve(*inputs, idx)
    want = evolve_sequential(*inputs, idx)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
    g1 = torch.autograd.grad(got[0].sum() + got[1].sum(), inputs)
    g2 = torch.autograd.grad(want[0].sum() + want[1].sum(), inputs)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b)


# -- the batch cut across ranks (docs/scaling.md §2.4, §2.6) ------------------------------------
class _ThreadGather:
    """An all-gather between threads standing for ranks: the composition's algebra is tested
    here without processes; tests/training/test_distributed_nmrn.py runs it on real gloo ranks."""

    def __init__(self, world: int) -> None:
        import threading

        self.world, self.barrier = world, threading.Barrier(world, timeout=30)
        self.slots: list = [None] * world

    def for_rank(self, rank: int):
        def gather(t: torch.Tensor) -> list[torch.Tensor]:
            self.slots[rank] = t.clone()
            self.barrier.wait()
            out = list(self.slots)
            self.barrier.wait()  # nobody overwrites a slot before every rank has read them all
            return out

        return gather


def _across_ranks(inputs, probe_r, probe_f, world: int):
    """Per rank: (reads of its slice, final, gradients of (values0, w, erase, add) of the slice)."""
    import threading

    values0, w, erase, add = inputs
    n = w.shape[0]
    comm, out = _ThreadGather(world), [None] * world

    def run(rank: int) -> None:
        lo, hi = rank * n // world, (rank + 1) * n // world
        leaves = [values0.detach().clone().requires_grad_()] + [
            t[lo:hi].detach().clone().requires_grad_() for t in (w, erase, add)
        ]
        reads, final = memory.evolve_across_ranks(*leaves, rank, world, comm.for_rank(rank))
        loss = (reads * probe_r[lo:hi]).sum() + (final * probe_f).sum()  # final: once
        out[rank] = (reads.detach(), final.detach(), torch.autograd.grad(loss, leaves))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


@pytest.mark.parametrize(("world", "n", "sharpness"), [(2, 23, 1.0), (3, 70, 1.0), (3, 70, 60.0),
                                                       (4, 3, 1.0)])
def test_across_ranks_equals_one_process(world: int, n: int, sharpness: float) -> None:
    inputs = [t.requires_grad_() for t in _batch(5, n, 3, 4, sharpness)]
    g = torch.Generator().manual_seed(11)
    probe_r = torch.randn(n, 4, generator=g, dtype=D64)
    probe_f = torch.randn(3, 4, generator=g, dtype=D64)
    reads, final = evolve(*inputs)
    want = torch.autograd.grad((reads * probe_r).sum() + (final * probe_f).sum(), inputs)
    got = _across_ranks(inputs, probe_r, probe_f, world)
    torch.testing.assert_close(torch.cat([r for r, _, _ in got]), reads.detach(),
                               rtol=1e-10, atol=1e-12)
    for _, fin, _ in got:  # every rank ends with the same memory, bit for bit
        assert torch.equal(fin, got[0][1])
    torch.testing.assert_close(got[0][1], final.detach(), rtol=1e-10, atol=1e-12)
    # the gradient of values0 sums over ranks (rank 0 carries it all); the slices' concatenate
    torch.testing.assert_close(sum(gr[0] for _, _, gr in got), want[0], rtol=1e-10, atol=1e-12)
    for k in (1, 2, 3):
        torch.testing.assert_close(torch.cat([gr[k] for _, _, gr in got]), want[k],
                                   rtol=1e-10, atol=1e-12)
    # rank 0 ran the single process's own scan from the known start: its reads are bitwise
    values0, w, erase, add = (x.detach() for x in inputs)
    first = n // world
    assert torch.equal(got[0][0], evolve(values0, w[:first], erase[:first], add[:first])[0])
