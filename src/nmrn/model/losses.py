"""Loss functions (pure functions of distances; no parameters, no state).

Shapes: B events, T negative candidates per event.
"""

from __future__ import annotations

import torch
from torch import Tensor


def hinge(d_pos: Tensor, d_neg: Tensor, margin: float) -> Tensor:
    """The margin hinge ``[m + d_pos - d_neg]_+``, elementwise (broadcast ``[B]`` vs ``[B, T]``).

    Parameters
    ----------
    d_pos
        ``[B]`` distance of each event's positive item.
    d_neg
        ``[B, T]`` distances of its negative candidates.
    margin
        m >= 0.

    Returns
    -------
    Tensor
        ``[B, T]``.

    Examples
    --------
    >>> hinge(torch.tensor([1.0]), torch.tensor([[2.0, 1.0]]), margin=1.0).tolist()
    [[0.0, 1.0]]
    """
    return torch.relu(margin + d_pos[:, None] - d_neg)


def rank_weight(d_pos: Tensor, d_neg: Tensor, margin: float, n_items: int) -> Tensor:
    """WARP/CML rank weight ``log(1 + rank)``, with ``rank = floor(N * #violators / T)``.

    A candidate violates when ``m + d_pos - d_neg > 0``. The weight is computed without
    gradient: it is a constant factor of the loss (as in WARP and CML).

    Parameters
    ----------
    d_pos
        ``[B]``.
    d_neg
        ``[B, T]``.
    margin
        m.
    n_items
        N, the number of items the candidates were drawn from.

    Returns
    -------
    Tensor
        ``[B]``, detached.

    Examples
    --------
    >>> rank_weight(torch.tensor([1.0]), torch.tensor([[1.2, 3.0]]), 0.5, n_items=10).tolist()
    [1.791759...]
    """
    with torch.no_grad():
        n_candidates = d_neg.shape[1]
        violators = (margin + d_pos[:, None] - d_neg > 0).sum(dim=1)  # [B]
        rank = torch.div(violators * n_items, n_candidates, rounding_mode="floor")
        return torch.log1p(rank.to(d_pos.dtype))


def rank_weighted_hinge(
    d_pos: Tensor,
    d_neg: Tensor,
    margin: float,
    n_items: int,
    hardest: Tensor | None = None,
) -> Tensor:
    """NMRN's loss per event (DESIGN §1):

    .. math::

        L = \\log(1 + \\widehat{rank}) \\cdot [m + d_D(u, v) - d_D(u, v^{-*})]_+,
        \\qquad \\widehat{rank} = \\lfloor N \\cdot \\#\\{t : m + d_{pos} - d_{neg,t} > 0\\} / T
        \\rfloor,

    where ``v^{-*}`` is the hardest of the T candidates (the one at the smallest distance), as
    CML does. The weight is a constant (no gradient flows through it); gradients reach
    ``d_pos`` and the hardest candidate's distance only.

    Parameters
    ----------
    d_pos
        ``[B]`` distance of each positive.
    d_neg
        ``[B, T]`` distances of the negative candidates.
    margin
        m >= 0.
    n_items
        N, the number of items candidates are drawn from.
    hardest
        Optional ``[B]``: the distance of the hardest candidate, computed separately with
        gradient. Then ``d_neg`` serves only for the rank weight and the argmin (it may be
        detached), which saves back-propagating through all T candidates, whose gradient is
        zero except at the argmin anyway.

    Returns
    -------
    Tensor
        ``[B]`` loss per event (reduce it yourself).

    Examples
    --------
    >>> d_pos, d_neg = torch.tensor([1.0]), torch.tensor([[1.0, 2.0]])
    >>> rank_weighted_hinge(d_pos, d_neg, margin=1.0, n_items=4).tolist()  # log(1 + 2) * 1
    [1.098612...]
    """
    if d_neg.dim() != 2 or d_pos.dim() != 1 or d_neg.shape[0] != d_pos.shape[0]:
        raise ValueError(
            f"d_pos must be [B] and d_neg [B, T]; got {tuple(d_pos.shape)} and {tuple(d_neg.shape)}"
        )
    if d_neg.shape[1] == 0:
        raise ValueError("d_neg needs at least one candidate per event (T >= 1)")
    weight = rank_weight(d_pos, d_neg, margin, n_items)  # [B]
    if hardest is None:
        hardest = d_neg.min(dim=1).values  # [B]
    elif hardest.shape != d_pos.shape:
        raise ValueError(f"hardest must be [B] like d_pos, got {tuple(hardest.shape)}")
    return weight * torch.relu(margin + d_pos - hardest)
