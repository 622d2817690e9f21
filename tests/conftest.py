"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    """The real MovieLens-100K log, fetched by nmrn itself into its cache when absent.

    ``NMRN_ML100K_INTER`` may point at a copy. Under CI (``CI`` set) a failure to obtain the
    data fails the test instead of skipping it, so the real-data checks cannot silently vanish.
    """
    env = os.environ.get("NMRN_ML100K_INTER")
    if env:
        return Path(env)
    from nmrn.data.datasets import fetch
    from nmrn.errors import DatasetError

    try:
        return fetch("ml-100k").path
    except DatasetError as err:  # pragma: no cover - depends on the network
        if os.environ.get("CI"):
            pytest.fail(f"MovieLens-100K could not be fetched under CI: {err}")
        pytest.skip(f"MovieLens-100K could not be fetched: {err}")
