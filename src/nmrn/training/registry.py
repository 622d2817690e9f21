"""The model registry: every model class, by class name, registered where it is defined.

A model module registers its class at import with the :func:`register` decorator, so the
registry never has to import model modules itself (no import cycle, no string import). What
knows every model the package ships is one layer up: :mod:`nmrn.models` (the presets) imports
each model module, and its :func:`~nmrn.models.load_model` can therefore load any checkpoint.

Checkpoints record the class name (``"NMRN"``, ``"ItemKNN"``, ...); checkpoints of format 1
recorded a short name, which :func:`model_class` still understands.

Examples
--------
>>> from nmrn.baselines.popularity import Popularity
>>> model_class("Popularity") is Popularity
True
>>> model_class("pop") is Popularity  # the format-1 name
True
"""

from __future__ import annotations

from typing import Any, TypeVar

from nmrn.errors import CheckpointError

__all__ = ["model_class", "register", "registered_models"]

# The registry holds Recommender subclasses; it does not import the contract (which imports
# the registry to load checkpoints), so the classes are typed as plain classes here.
R = TypeVar("R", bound=type)

_MODELS: dict[str, type[Any]] = {}
# The names checkpoints of format 1 recorded, for the classes that existed then.
_FORMAT1_NAMES = {
    "pop": "Popularity",
    "recent-pop": "RecentPopularity",
    "item-knn": "ItemKNN",
    "bpr": "BPR",
    "nmrn": "NMRN",
}


def register(cls: R) -> R:
    """Class decorator: make ``cls`` loadable from checkpoints under its class name."""
    name = cls.__name__
    known = _MODELS.get(name)
    if known is not None and known is not cls and known.__qualname__ != cls.__qualname__:
        raise ValueError(
            f"two model classes are named {name!r} ({known.__module__} and {cls.__module__}); "
            "checkpoints could not tell them apart"
        )
    _MODELS[name] = cls
    return cls


def model_class(name: str) -> type[Any]:
    """The registered class called ``name`` (or its format-1 name).

    Raises
    ------
    CheckpointError
        No such class is registered: its module was not imported (``nmrn.models`` imports every
        model the package ships).
    """
    found = _MODELS.get(_FORMAT1_NAMES.get(name, name)) if isinstance(name, str) else None
    if found is None:
        raise CheckpointError(
            f"unknown model class {name!r}; known: {', '.join(sorted(_MODELS))} (a model defined "
            "outside nmrn must be imported before its checkpoints are loaded)"
        )
    return found


def registered_models() -> dict[str, type[Any]]:
    """Class names -> classes, for every registered model (in registration order)."""
    return dict(_MODELS)
