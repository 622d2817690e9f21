"""Growing row tables: how every embedding table, optimizer state and memory bank gets room for
new users and items (one rule for NMRN, its generator G and BPR).

A table grows by appending rows, never by renumbering: row ``i`` keeps its values, so ids
encoded before the growth stay valid. New rows are zeros (optimizer state, memories, biases) or
``N(0, std^2)`` draws from the caller's private generator (embeddings).

Examples
--------
>>> t = torch.ones(2, 3)
>>> grow_rows(t, 4).tolist()
[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
>>> grow_rows(t, 1) is t  # never shrinks
True
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["grow_like", "grow_rows", "normal_rows"]


def grow_rows(table: Tensor, n_rows: int, new_rows: Tensor | None = None) -> Tensor:
    """``table`` with rows appended so that it holds ``n_rows`` (itself if it already does).

    ``new_rows`` are the appended rows (``[n_rows - len(table), ...]``); ``None`` appends zeros.
    """
    extra = n_rows - table.shape[0]
    if extra <= 0:
        return table
    if new_rows is None:
        new_rows = table.new_zeros((extra, *table.shape[1:]))
    elif new_rows.shape[0] != extra:
        raise ValueError(f"grow_rows: {new_rows.shape[0]} new rows for {extra} missing ones")
    return torch.cat([table.detach(), new_rows.to(device=table.device, dtype=table.dtype)])


def grow_like(state: Tensor, table: Tensor) -> Tensor:
    """An optimizer state or flag array grown with zeros to as many rows as ``table`` (a 0-d
    state, e.g. of a scalar parameter, is returned as it is)."""
    return state if state.dim() == 0 else grow_rows(state, table.shape[0])


def normal_rows(
    table: Tensor, n_rows: int, std: float, generator: torch.Generator | None
) -> Tensor:
    """``table`` grown to ``n_rows`` with ``N(0, std^2)`` rows drawn from ``generator``."""
    extra = n_rows - table.shape[0]
    if extra <= 0:
        return table
    new = torch.randn(extra, *table.shape[1:], generator=generator) * std
    return grow_rows(table, n_rows, new)
