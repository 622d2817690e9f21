"""nmrn: streaming recommendation with Neural Memory Recommender Networks.

Wang, Yin, Hu, Lian, Wang, Huang. "Neural Memory Streaming Recommender Networks with
Adversarial Training", KDD 2018, doi:10.1145/3219819.3220004.
"""

from __future__ import annotations

from nmrn._version import __version__
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
from nmrn.models import load_model, make_model
from nmrn.training.contract import Recommendations, Recommender
from nmrn.training.nmrn import NMRN

#: Load a checkpoint of any model the package ships (an alias of :func:`nmrn.models.load_model`).
load_recommender = load_model

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
    "load_model",
    "load_recommender",
    "make_model",
]
