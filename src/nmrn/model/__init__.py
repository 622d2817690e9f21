"""Pure tensor code of NMRN: memory (address/read/write/evolve), the network D, the losses."""

from __future__ import annotations

from nmrn.model.losses import hinge, rank_weight, rank_weighted_hinge
from nmrn.model.memory import address, evolve, evolve_sequential, read, write
from nmrn.model.network import NMRNNetwork

__all__ = [
    "NMRNNetwork",
    "address",
    "evolve",
    "evolve_sequential",
    "hinge",
    "rank_weight",
    "rank_weighted_hinge",
    "read",
    "write",
]
