"""``nmrn consume --partitions P [--nproc R]``: run one rank, or launch R of them on loopback.

Under ``torchrun`` (or this launcher) the environment names the rank (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``) and this process is that rank. Otherwise, with ``--nproc 1``
the consumer runs here, reading all P partitions; with ``--nproc R`` this process becomes a
launcher: it re-runs the same command line R times with the torchrun variables set (a free
loopback port), forwards SIGTERM/SIGINT to the ranks, and is their watchdog: when a rank exits
with an error (or is killed), the others are given ``grace`` seconds to notice (gloo reports
the lost peer) and are then killed by PID, and the launcher exits 1 naming the rank. The
checkpoint stays consistent: it is written atomically at a consistent cut, and entries are
acknowledged only after it is durable.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from nmrn.errors import ConfigError, NMRNError

__all__ = ["launch", "run_partitioned"]

GRACE_S = 5.0


class RankError(NMRNError, RuntimeError):
    """A rank of a partitioned consumer failed (a lost peer, a collective that timed out)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_partitioned(args: argparse.Namespace) -> int:
    if not args.source.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("--partitions needs a redis:// --source")
    if not args.stream or not args.group:
        raise ConfigError("--partitions needs --stream PREFIX and --group NAME")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return _run_rank(args)
    if args.nproc == 1:
        return _run_rank(args)
    return launch(list(getattr(args, "argv", None) or sys.argv[1:]), args.nproc)


def launch(argv: list[str], nproc: int, *, grace: float = GRACE_S) -> int:
    """Run ``python -m nmrn ARGV`` as ranks 0..nproc-1 on a free loopback port; watch them."""
    port = _free_port()
    procs: list[subprocess.Popen[bytes]] = []
    for rank in range(nproc):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(nproc),
               "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "nmrn", *argv], env=env))

    def forward(signum: int, frame: Any) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        failed: tuple[int, int] | None = None
        while True:
            codes = [proc.poll() for proc in procs]
            if all(c is not None for c in codes):
                break
            bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                failed = bad[0]
                deadline = time.monotonic() + grace
                while time.monotonic() < deadline and any(p.poll() is None for p in procs):
                    time.sleep(0.05)
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()  # by PID: a rank that did not notice its lost peer
                        proc.wait()
                break
            time.sleep(0.05)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    if failed is None:
        failed = next(((r, p.returncode) for r, p in enumerate(procs) if p.returncode), None)
    if failed is not None:
        rank, code = failed
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        print(f"nmrn: error: rank {rank} (pid {procs[rank].pid}) {how}; stopped the other "
              f"ranks (exit statuses {[p.returncode for p in procs]}). The checkpoint is the "
              "last consistent cut: rerun the same command to resume.", file=sys.stderr,
              flush=True)
        return 1
    return 0


def load_or_make(args: argparse.Namespace) -> Any:
    """The model of ``nmrn consume``: resumed from ``--checkpoint``, else a fresh ``--model``."""
    from nmrn.io import checkpoint_exists
    from nmrn.streams.position import load_checkpoint

    if checkpoint_exists(args.checkpoint):
        model, _ = load_checkpoint(args.checkpoint)
        if args.model and args.model != model.preset:
            held = repr(model.preset) if model.preset else f"{type(model).__name__} (no preset)"
            raise ConfigError(
                f"{args.checkpoint} holds a {held} model but --model {args.model} was "
                "given; drop --model to resume it, or use another --checkpoint path"
            )
        return model
    if args.model:
        from nmrn.models import make_model

        return make_model(args.model, seed=args.seed)
    raise ConfigError(
        f"{args.checkpoint} does not exist; pass --model NAME to start a fresh model"
    )


def _run_rank(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from nmrn.streams.partitioned import PartitionedConsumer, init_distributed

    try:
        rank, world = init_distributed(args.dist_timeout)
    except (RuntimeError, ValueError) as err:
        raise RankError(f"cannot join the process group: {err}") from None
    consumer = None
    try:
        # rank 0 loads first (and repairs an interrupted save); the others after it
        if rank == 0:
            model = load_or_make(args)
        if world > 1:
            dist.barrier()
        if rank != 0:
            model = load_or_make(args)
        consumer = PartitionedConsumer(
            model, args.source, args.stream, args.group, args.partitions, args.checkpoint,
            checkpoint_every=args.checkpoint_every, batch_size=args.batch_size,
            dead_letter=args.dead_letter, dedupe_window=args.dedupe_window,
            verify_replicas=not getattr(args, "no_verify_replicas", False),
        )

        def stop(signum: int, frame: Any) -> None:
            assert consumer is not None
            consumer.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop)
        stats = consumer.run(max_events=args.max_events, idle_timeout=args.idle_timeout)
    except RuntimeError as err:  # gloo: a peer is gone, or a collective timed out
        if isinstance(err, NMRNError):
            raise
        raise RankError(f"rank {rank} of {world}: lost the other ranks: {err}") from None
    finally:
        if consumer is not None:
            consumer.close()
    if rank == 0:
        print(json.dumps({
            "applied": stats.applied, "invalid": stats.invalid,
            "duplicates": stats.duplicates, "total_duplicates": stats.total_duplicates,
            "checkpoints": stats.checkpoints, "total_applied": stats.total_applied,
            "stopped": stats.stopped, "ranks": world, "partitions": args.partitions,
            "ids": stats.ids, "elapsed_s": round(stats.elapsed_s, 3),
            "events_per_s": round(stats.events_per_s, 1),
        }), flush=True)
    if world > 1:
        dist.destroy_process_group()
    return 0
