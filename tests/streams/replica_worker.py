"""One rank of a 2-process partitioned consumer started by a test (not a test module).

Run with ``multiprocessing``'s spawn context: joins a gloo group on a loopback port, consumes
into a fresh Popularity model (rank ``perturb`` first learns one extra event, so its replica
differs), and writes what happened to ``<out>/<rank>.json``.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path


def run_rank(rank: int, world: int, port: int, url: str, prefix: str, partitions: int,
             ckpt: str, out: str, perturb: int | None) -> None:
    import torch.distributed as dist

    from nmrn.baselines.popularity import Popularity
    from nmrn.streams.partitioned import PartitionedConsumer

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=30))
    result: dict[str, object] = {"rank": rank}
    try:
        model = Popularity()
        if rank == perturb:
            model.learn([("intruder", 1, 0.0)])
        consumer = PartitionedConsumer(model, url, prefix, "g", partitions, ckpt,
                                       batch_size=16, checkpoint_every=64, poll_timeout=0.05)
        try:
            stats = consumer.run(idle_timeout=0.3)
            result.update(ok=True, total_applied=stats.total_applied)
        finally:
            consumer.close()
    except Exception as err:  # noqa: BLE001 - reported to the test
        result.update(ok=False, error=type(err).__name__, message=str(err))
    Path(out, f"{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()
