"""``nmrn consume``: keep a checkpointed model up to date from an event stream.

::

    nmrn consume --checkpoint model.ckpt --model bpr \\
        --source redis://127.0.0.1:6379/0 --stream events --group nmrn
    nmrn consume --checkpoint model.ckpt --source file:events.jsonl --follow --sentinel __END__
    cat events.jsonl | nmrn consume --checkpoint model.ckpt --source -

If the checkpoint exists it is loaded and consumption resumes after its stream position;
otherwise ``--model NAME`` builds a fresh model (:func:`nmrn.models.make_model`). The command
prints one JSON line of statistics when it stops (end of input, ``--max-events``,
``--idle-timeout``, or SIGTERM/SIGINT) and exits 0.

The module also runs on its own: ``python -m nmrn.streams.commands consume ...``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from nmrn.argtypes import int_at_least, positive_int, positive_seconds
from nmrn.errors import ConfigError
from nmrn.streams.consumer import Consumer
from nmrn.streams.sources import EventSource, FileSource

__all__ = ["add_consume_command", "add_produce_command", "make_source", "run_consume",
           "run_produce"]


def add_consume_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``consume`` sub-command to an ``argparse`` sub-parsers object; returns it."""
    p = subparsers.add_parser(
        "consume",
        help="apply a stream of events (Redis, file, stdin) to a checkpointed model",
        description=(
            "Read events in order, learn them in small batches, checkpoint every N events with "
            "the stream position inside, acknowledge only after the checkpoint is durable. "
            "A restart resumes after the checkpoint's position."
        ),
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (read and written)")
    p.add_argument(
        "--source",
        required=True,
        help="redis://HOST:PORT/DB, file:PATH, or - for stdin",
    )
    p.add_argument("--model", help="model preset for a fresh checkpoint (e.g. bpr, pop)")
    p.add_argument("--seed", type=int, default=0, help="seed of a fresh model (default 0)")
    redis_opts = p.add_argument_group("Redis")
    redis_opts.add_argument("--stream", help="the stream key")
    redis_opts.add_argument("--group", help="the consumer group (created if missing)")
    redis_opts.add_argument("--consumer", default="nmrn", help="consumer name (default nmrn)")
    redis_opts.add_argument("--dead-letter", help="dead-letter stream (default <stream>:dead)")
    file_opts = p.add_argument_group("file / stdin")
    file_opts.add_argument("--format", choices=("jsonl", "csv"), default="jsonl",
                           help="one JSON object per line, or CSV with a header (default: "
                           "%(default)s)")
    file_opts.add_argument("--follow", action="store_true", help="tail a growing file")
    file_opts.add_argument("--sentinel", help="a line that ends the stream, e.g. __END__")
    p.add_argument("--checkpoint-every", type=positive_int, default=1000, metavar="N",
                   help="checkpoint (and acknowledge) after N applied events (default "
                   "%(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=64, metavar="N",
                   help="events per learn call (default %(default)s)")
    p.add_argument("--dedupe-window", type=int_at_least(0), default=10_000, metavar="N",
                   help="remember the latest N event_id values (with --partitions: N per "
                   "partition); an entry carrying one of them is a producer's retry and is "
                   "skipped (0: off; default %(default)s)")
    p.add_argument("--max-events", type=positive_int, metavar="N", help="stop after N events")
    p.add_argument("--threads", type=positive_int, default=1, metavar="N",
                   help="threads torch may use for one operation (default %(default)s)")
    p.add_argument(
        "--idle-timeout", type=positive_seconds, metavar="S", help="stop after S idle seconds"
    )
    part = p.add_argument_group("partitioned Redis (see docs/scaling.md section 5)")
    part.add_argument("--partitions", type=positive_int, metavar="P",
                      help="read the P streams <--stream>:0 .. :P-1 that 'nmrn produce' wrote, "
                      "merged into one time order (--group applies to each)")
    part.add_argument("--nproc", type=positive_int, default=1, metavar="R",
                      help="reader processes (torch.distributed, gloo on loopback); rank r "
                      "reads the partitions p with p mod R = r (default 1). Under torchrun "
                      "(RANK/WORLD_SIZE set) this process is one rank and --nproc is ignored")
    part.add_argument("--dist-timeout", type=positive_seconds, default=60.0, metavar="S",
                      help="a rank that waits longer than S on a lost peer exits with an error "
                      "(default %(default)s)")
    part.add_argument("--no-verify-replicas", action="store_true",
                      help="with R > 1, do not compare the replicas' SHA-256 state digests at "
                      "each checkpoint (by default a divergence stops every rank, naming them)")
    p.set_defaults(handler=run_consume)
    return p


def add_produce_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``produce`` sub-command (partitioned Redis producer); returns it."""
    p = subparsers.add_parser(
        "produce",
        help="write events (file or stdin) to P partitioned Redis streams",
        description=(
            "Append each event to the stream <prefix>:p, p = crc32(str(user)) mod P, and record "
            "P in <prefix>:partitions (a producer or consumer with another P is refused)."
        ),
    )
    p.add_argument("--source", default="-", help="file:PATH or - for stdin (default -)")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl",
                   help="one JSON object per line, or CSV with a header (default %(default)s)")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="redis://HOST:PORT/DB")
    p.add_argument("--stream", required=True,
                   help="the stream prefix: events go to <prefix>:0 .. <prefix>:P-1")
    p.add_argument("--partitions", type=positive_int, required=True, metavar="P",
                   help="P, the number of partitions (fixed for the prefix once recorded)")
    p.set_defaults(handler=run_produce)
    return p


def run_produce(args: argparse.Namespace) -> int:
    """Run ``nmrn produce``: prints ``{"sent", "invalid", "per_partition"}`` as JSON."""
    import logging

    from nmrn.streams.partitioned import PartitionedProducer

    spec = args.source
    if spec != "-" and not spec.startswith("file:"):
        raise ConfigError(f"--source {spec!r}: use file:PATH or - for stdin")
    source = FileSource("-" if spec == "-" else spec[len("file:"):], format=args.format)
    producer = PartitionedProducer(args.redis, args.stream, args.partitions)
    invalid = 0

    def valid() -> Any:
        nonlocal invalid
        for entry in source:
            if entry.ok:
                yield entry.value
            else:
                invalid += 1
                logging.getLogger(__name__).warning(
                    "skipping malformed record at %s: %s", entry.position, entry.value.reason)

    try:
        sent = producer.send(valid())
    finally:
        producer.close()
        source.close()
    print(json.dumps({"sent": sent, "invalid": invalid, "per_partition": producer.sent}),
          flush=True)
    return 0


def make_source(args: argparse.Namespace) -> EventSource:
    """Build the event source named by ``--source`` (and its options)."""
    spec: str = args.source
    if spec.startswith(("redis://", "rediss://", "unix://")):
        if not args.stream or not args.group:
            raise ConfigError("--source redis://... needs --stream KEY and --group NAME")
        from nmrn.streams.redis_source import RedisStreamSource

        return RedisStreamSource(
            args.stream,
            args.group,
            args.consumer,
            url=spec,
            dead_letter=getattr(args, "dead_letter", None),
        )
    if spec == "-" or spec.startswith("file:"):
        if args.stream or args.group:
            raise ConfigError("--stream and --group apply to a redis:// source only")
        path = "-" if spec == "-" else spec[len("file:") :]
        if not path:
            raise ConfigError("--source file: needs a path, e.g. file:events.jsonl")
        if args.follow and path == "-":
            raise ConfigError("--follow tails a file; stdin is read until it is closed anyway")
        return FileSource(path, format=args.format, follow=args.follow, sentinel=args.sentinel)
    raise ConfigError(
        f"--source {spec!r} is not understood; use redis://HOST:PORT/DB, file:PATH, or -"
    )


def run_consume(args: argparse.Namespace) -> int:
    """Run ``nmrn consume``; returns the exit status (errors raise :class:`NMRNError`)."""
    if getattr(args, "partitions", None):
        from nmrn.streams.launch import run_partitioned

        return run_partitioned(args)
    if args.nproc != 1:
        raise ConfigError("--nproc needs --partitions P (a single stream has one reader)")
    from nmrn.streams.launch import load_or_make

    model = load_or_make(args)
    source = make_source(args)
    try:
        consumer = Consumer(
            model,
            source,
            args.checkpoint,
            checkpoint_every=args.checkpoint_every,
            batch_size=args.batch_size,
            dedupe_window=args.dedupe_window,
        )
        stats = consumer.run(max_events=args.max_events, idle_timeout=args.idle_timeout)
    finally:
        source.close()
    print(
        json.dumps(
            {
                "applied": stats.applied,
                "invalid": stats.invalid,
                "duplicates": stats.duplicates,
                "checkpoints": stats.checkpoints,
                "total_applied": stats.total_applied,
                "stopped": stats.stopped,
                "position": {k: v for k, v in (stats.position or {}).items()
                             if k != "event_ids"} or None,
                "elapsed_s": round(stats.elapsed_s, 3),
                "events_per_s": round(stats.events_per_s, 1),
            }
        ),
        flush=True,
    )
    return 0
