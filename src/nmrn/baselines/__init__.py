"""Reference models behind the same facade as NMRN: the yardsticks its results are read against.

Every baseline subclasses :class:`nmrn.training.base.Recommender` and registers itself under its
``name``:

- ``"pop"``: :class:`Popularity`, all-time event counts;
- ``"recent-pop"``: :class:`RecentPopularity`, counts over a sliding window or with decay;
- ``"item-knn"``: :class:`ItemKNN`, streaming co-occurrence kNN with a recency-weighted profile;
- ``"bpr"``: :class:`BPR`, online BPR matrix factorisation.
"""

from __future__ import annotations

from nmrn.baselines.bpr import BPR
from nmrn.baselines.itemknn import ItemKNN
from nmrn.baselines.popularity import Popularity, RecentPopularity

__all__ = ["BPR", "ItemKNN", "Popularity", "RecentPopularity"]
