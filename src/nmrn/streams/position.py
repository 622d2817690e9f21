"""Checkpoints that carry a stream position: what a consumer restarts from.

A checkpoint is the directory :meth:`~nmrn.training.contract.Recommender.save` writes
(``meta.json`` + ``arrays.npz``, no pickle, written atomically). A stream consumer stores the
position of the last event it applied in ``model.extra["stream"]``, so that the model's state and
the position are one file system object: either both are durable or neither is.

Examples
--------
>>> import tempfile, os
>>> from nmrn.baselines.popularity import Popularity
>>> rec = Popularity().learn([("u1", 7, 1.0)])
>>> path = os.path.join(tempfile.mkdtemp(), "ckpt")
>>> _ = save_checkpoint(rec, path, position={"source": "file", "line": 1})
>>> model, position = load_checkpoint(path)
>>> type(model).__name__, model.n_events, position
('Popularity', 1, {'source': 'file', 'line': 1})
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nmrn.errors import CheckpointError
from nmrn.io import recover_interrupted_save
from nmrn.models import load_model
from nmrn.training.contract import Recommender

STREAM_KEY = "stream"

__all__ = ["STREAM_KEY", "load_checkpoint", "save_checkpoint"]


def save_checkpoint(
    model: Recommender, path: str | os.PathLike[str], *, position: dict[str, Any] | None
) -> Path:
    """Save ``model`` with the stream ``position`` inside, atomically.

    Parameters
    ----------
    model
        Any :class:`~nmrn.training.contract.Recommender`.
    path
        The checkpoint directory (replaced atomically if it exists).
    position
        A JSON-serialisable dict (the last applied stream position), or ``None`` for a model
        that has not consumed a stream yet.

    Returns
    -------
    pathlib.Path
        ``path``. When this returns, the checkpoint is durable (fsynced and renamed).
    """
    if not isinstance(model, Recommender):
        raise TypeError(f"save_checkpoint needs a Recommender, got {type(model).__name__}")
    if position is not None and not isinstance(position, dict):
        raise TypeError(f"position must be a dict or None, got {type(position).__name__}")
    if position is None:
        model.extra.pop(STREAM_KEY, None)
    else:
        model.extra[STREAM_KEY] = dict(position)
    try:
        return model.save(path)
    except TypeError as err:  # json.dump of a position that is not JSON-serialisable
        raise CheckpointError(
            f"{path}: the stream position cannot be saved as JSON: {err}"
        ) from None


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[Recommender, dict[str, Any] | None]:
    """Load a checkpoint; returns ``(model, position)`` (``position`` is ``None`` if absent).

    If a save was interrupted between its two renames (the old directory moved aside, the new
    one not yet in place), the previous checkpoint is put back first; it is consistent with the
    stream, because a consumer acknowledges events only after the save that contains them has
    returned.

    Raises
    ------
    CheckpointError
        The path is missing, not an nmrn checkpoint, of another format version, or corrupt.
    """
    path = Path(path)
    recover_interrupted_save(path)
    model = load_model(path)
    position = model.extra.get(STREAM_KEY)
    if position is not None and not isinstance(position, dict):
        raise CheckpointError(
            f"{path}: extra[{STREAM_KEY!r}] must be a JSON object, got {type(position).__name__}"
        )
    return model, position
