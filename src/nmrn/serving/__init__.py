"""Serving a recommender live: durable ingest, one ordered writer, consistent reads, HTTP.

:class:`LiveService` and :class:`Journal` need only numpy; :func:`create_app` needs the ``serve``
extra (FastAPI, uvicorn) and is imported on first use.
"""

from __future__ import annotations

from typing import Any

from nmrn.serving.journal import Journal, JournalError
from nmrn.serving.schemas import BadRequest, Limits
from nmrn.serving.service import LiveService, ServiceUnavailable

__all__ = [
    "BadRequest",
    "Journal",
    "JournalError",
    "Limits",
    "LiveService",
    "ServiceUnavailable",
    "create_app",
]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from nmrn.serving.app import create_app

        return create_app
    raise AttributeError(f"module 'nmrn.serving' has no attribute {name!r}")
