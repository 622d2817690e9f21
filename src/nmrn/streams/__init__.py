"""Event streams: sources (file / stdin, Redis Streams) and the checkpointing consumer loop.

See ``docs/streams.md`` for the command line (``nmrn consume``) and the recovery guarantees.
The Redis source is imported lazily (it needs the ``redis`` client, in the ``serve`` extra).
"""

from __future__ import annotations

from typing import Any

from nmrn.streams.consumer import Consumer, ConsumeStats
from nmrn.streams.sources import Entry, EventSource, FileSource, InvalidEvent, SourceError

__all__ = [
    "ConsumeStats",
    "Consumer",
    "Entry",
    "EventSource",
    "FileSource",
    "InvalidEvent",
    "PartitionedConsumer",
    "PartitionedProducer",
    "RedisStreamSource",
    "SourceError",
    "partition_of",
]


def __getattr__(name: str) -> Any:
    if name == "RedisStreamSource":
        from nmrn.streams.redis_source import RedisStreamSource

        return RedisStreamSource
    if name in ("PartitionedConsumer", "PartitionedProducer", "partition_of"):
        from nmrn.streams import partitioned

        return getattr(partitioned, name)
    raise AttributeError(f"module 'nmrn.streams' has no attribute {name!r}")
