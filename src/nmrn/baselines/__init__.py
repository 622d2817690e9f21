"""Reference models behind the same facade as NMRN: the yardsticks its results are read against.

Every baseline subclasses :class:`nmrn.training.contract.Recommender` and registers its class
(:func:`nmrn.training.registry.register`); the presets (:mod:`nmrn.models`) name them:

- ``"pop"``: :class:`Popularity`, all-time event counts;
- ``"recent-pop"``: :class:`RecentPopularity`, counts over a sliding window or with decay;
- ``"item-knn"``: :class:`ItemKNN`, streaming co-occurrence kNN with a recency-weighted profile;
- ``"bpr"``: :class:`BPR`, online BPR matrix factorisation;
- ``"stan"``, ``"v-sknn"``: :class:`STAN`, session-aware neighbours (STAN; V-SKNN as a special
  case);
- ``"sasrec"``: :class:`SASRec`, self-attentive sequential model, updated online;
- ``"ease"``: :class:`EASE`, the closed-form item-item linear model of Steck (2019), kept exact
  online.
"""

from __future__ import annotations

from nmrn.baselines.bpr import BPR
from nmrn.baselines.ease import EASE
from nmrn.baselines.itemknn import ItemKNN
from nmrn.baselines.popularity import Popularity, RecentPopularity
from nmrn.baselines.sasrec import SASRec
from nmrn.baselines.sknn import STAN

__all__ = ["BPR", "EASE", "STAN", "ItemKNN", "Popularity", "RecentPopularity", "SASRec"]
