"""nmrn: streaming recommendation with Neural Memory Recommender Networks.

Wang, Yin, Hu, Lian, Wang, Huang. "Neural Memory Streaming Recommender Networks with
Adversarial Training", KDD 2018, doi:10.1145/3219819.3220004.
"""

from __future__ import annotations

__version__ = "0.1.0"

from nmrn.data.events import EventBatch, as_events
from nmrn.data.history import History
from nmrn.data.idmap import IdMap
from nmrn.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DatasetError,
    ModelFitError,
    NMRNError,
    UnknownIdError,
)
from nmrn.training.base import Recommendations, Recommender, load_recommender
from nmrn.training.nmrn import NMRN

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DatasetError",
    "EventBatch",
    "History",
    "IdMap",
    "ModelFitError",
    "NMRN",
    "NMRNError",
    "Recommendations",
    "Recommender",
    "UnknownIdError",
    "__version__",
    "as_events",
    "load_recommender",
]
