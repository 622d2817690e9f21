"""What the consumer tests read of a checkpoint while a consumer is running (not a test module)."""

from __future__ import annotations

import json
from pathlib import Path


def events_in(path: Path) -> int:
    """Applied events recorded in the checkpoint at ``path`` (0 if absent or being replaced)."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return 0
    return int((meta.get("extra", {}).get("stream") or {}).get("events", 0))
