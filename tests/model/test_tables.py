"""Growth by capacity (torch tables and numpy arrays): equal to concatenation, amortized, and a
stale view can never overwrite the rows of a newer one."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nmrn.data.growth import grow_array
from nmrn.model.tables import capacity, grow_rows

_sizes = st.lists(st.integers(0, 200), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None)
@given(sizes=_sizes, width=st.integers(1, 4), seed=st.integers(0, 100))
def test_grow_rows_equals_concatenation(sizes: list[int], width: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(1, width, generator=gen)
    reference = table.clone()
    for n in sizes:
        extra = n - len(table)
        new = torch.randn(max(extra, 0), width, generator=gen) if extra > 0 else None
        table = grow_rows(table, n, new)
        if extra > 0:
            reference = torch.cat([reference, new])  # type: ignore[list-item]
        assert torch.equal(table, reference)
        table[-1:] += 1.0  # the holder writes its rows in place, as trainers do
        reference[-1:] += 1.0


def test_growth_is_amortized_and_in_place() -> None:
    table = torch.zeros(0, 3)
    buffers = set()
    for n in range(1, 5_001):
        table = grow_rows(table, n)
        buffers.add(table.untyped_storage().data_ptr())
    # one buffer per 1.5x step, not one per call (5,000 copies of up to 5,000 rows before)
    assert len(buffers) <= 12
    assert capacity(table) >= len(table) == 5_000
    grown = grow_rows(table, 5_001)
    assert grown.untyped_storage().data_ptr() == table.untyped_storage().data_ptr() or \
        capacity(table) == 5_000


def test_a_stale_view_copies_instead_of_overwriting() -> None:
    old = grow_rows(torch.ones(2, 2), 3)
    new = grow_rows(old, 5, torch.full((2, 2), 5.0))
    other = grow_rows(old, 4, torch.full((1, 2), 9.0))  # old is stale now
    assert torch.equal(new[3:], torch.full((2, 2), 5.0))  # untouched
    assert torch.equal(other[3:], torch.full((1, 2), 9.0))
    assert other.untyped_storage().data_ptr() != new.untyped_storage().data_ptr()


def test_a_parameter_keeps_growing_in_place() -> None:
    param = torch.nn.Parameter(torch.zeros(2, 3))
    param.data = grow_rows(param.data, 3)
    first = param.data.untyped_storage().data_ptr()
    for n in range(4, 40):
        param.data = grow_rows(param.data, n)
    assert param.data.untyped_storage().data_ptr() == first
    assert param.shape == (39, 3) and not param.data[2:].any()


@settings(max_examples=60, deadline=None)
@given(sizes=_sizes, fill=st.integers(-5, 5))
def test_grow_array_equals_concatenation(sizes: list[int], fill: int) -> None:
    arr = np.arange(3, dtype=np.int64)
    reference = arr.copy()
    for n in sizes:
        extra = n - len(arr)
        arr = grow_array(arr, n, fill)
        if extra > 0:
            reference = np.concatenate([reference, np.full(extra, fill)])
        assert np.array_equal(arr, reference)
        arr[-1:] += 1
        reference[-1:] += 1


def test_grow_array_stale_view_and_foreign_arrays() -> None:
    a = grow_array(np.zeros(2), 3, 1.0)
    b = grow_array(a, 6, 2.0)
    c = grow_array(a, 4, 3.0)  # a is stale: a copy, b keeps its rows
    assert b.tolist() == [0, 0, 1, 2, 2, 2] and c.tolist() == [0, 0, 1, 3]
    # an array this module did not make is never extended in place, even if it has room
    big = np.zeros(10)
    part = big[:4]
    grown = grow_array(part, 6, 7.0)
    assert not big.any() and grown.tolist() == [0, 0, 0, 0, 7, 7]


def test_normal_rows_draws_as_before_outside_state_follows() -> None:
    """A fresh table's rows: ``N(0, std^2)`` draws of the generator, bit for bit as
    ``torch.randn`` gives them; within ``state_follows`` zero rows and nothing drawn."""
    from nmrn.data.growth import state_follows
    from nmrn.model.tables import normal_rows

    def seeded() -> torch.Generator:
        return torch.Generator().manual_seed(7)

    got = normal_rows(torch.zeros(2, 3), 6, 0.5, gen := seeded())
    assert torch.equal(got[2:], torch.randn(4, 3, generator=seeded()) * 0.5)
    assert torch.equal(gen.get_state(), (ref := seeded(), torch.randn(4, 3, generator=ref))[0]
                       .get_state())
    with state_follows():
        quiet = normal_rows(torch.ones(2, 3), 6, 0.5, gen := seeded())
    assert torch.equal(quiet, torch.cat([torch.ones(2, 3), torch.zeros(4, 3)]))
    assert torch.equal(gen.get_state(), seeded().get_state())
    assert torch.equal(normal_rows(torch.zeros(0, 3), 4, 0.5, seeded()),
                       torch.randn(4, 3, generator=seeded()) * 0.5)  # drawing again after


def test_state_follows_is_per_thread() -> None:
    """A load on one thread leaves another thread's growth (a writer's learn) drawing."""
    import threading

    from nmrn.data.growth import restoring, state_follows

    seen: list[bool] = []
    with state_follows():
        thread = threading.Thread(target=lambda: seen.append(restoring()))
        thread.start()
        thread.join()
        assert restoring()
    assert seen == [False] and not restoring()
