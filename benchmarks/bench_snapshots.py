"""Fixed costs of an incremental snapshot version, in one process (issue 13, readers).

Loads a fitted checkpoint into a :class:`~nmrn.serving.service.LiveService`, publishes it with
a :class:`~nmrn.serving.snapshots.SnapshotPublisher` (incremental mode, in ``/dev/shm``) and
follows it with a :class:`~nmrn.serving.snapshots.SnapshotFollower`; then, ``--rounds`` times,
learns ``--events`` random events, publishes and polls. Rounds alternate between events of
known users and items (a version that adds no id) and events of which one has a new user and
one a new item. It reports, per kind of round, the median publication (ms; of which the model
lock was held), the median load by the follower, and the follower's first load. No readers,
no HTTP, no ingest thread: the costs of one version, not of a server (``bench_serve.py``).

``--compare SRC`` alternates processes running the package at ``SRC`` (an unpacked ``git
archive`` of the base) with processes running this one, ``--repeats`` times each, on the same
checkpoints (fitted once, by this version, on ``bench_serve.py``'s synthetic 100,000-item
catalogue: 20,000 users, 300,000 events), and gives the medians of both:

    git -C /work/main archive HEAD src | tar -x -C /tmp/snapbase
    OMP_NUM_THREADS=1 python benchmarks/bench_snapshots.py --compare /tmp/snapbase/src
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def measure(checkpoint: Path, rounds: int, events: int) -> dict[str, Any]:
    import torch

    from nmrn.models import load_model
    from nmrn.serving.service import LiveService
    from nmrn.serving.snapshots import SnapshotFollower, SnapshotPublisher

    torch.set_num_threads(1)
    model = load_model(checkpoint)
    service = LiveService(model, checkpoint_every=None, checkpoint_seconds=None, apply_wait=0)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    tmp = Path(tempfile.mkdtemp(dir=shm))
    publisher = SnapshotPublisher(service, tmp / "snap", publish_every=3600)
    users, items = model.known_users.tolist(), model.known_items.tolist()
    rng = np.random.default_rng(0)
    out: dict[str, list[float]] = {}
    try:
        publisher.publish()
        follower = SnapshotFollower(tmp / "snap")
        start = time.perf_counter()
        assert follower.poll() is not None, follower.last_error
        out["first load ms"] = [1e3 * (time.perf_counter() - start)]
        t = 1e9
        for n in range(rounds + 2):
            batch = [(users[int(rng.integers(len(users)))], items[int(rng.integers(len(items)))],
                      t + k) for k in range(events)]
            kind = "new ids" if n % 2 else "no new ids"
            if n % 2:
                batch[0] = (f"bench-user-{n}", batch[0][1], batch[0][2])
                batch[1] = (batch[1][0], f"bench-item-{n}", batch[1][2])
            t += events
            service.submit(batch)
            assert service.wait_applied()
            start = time.perf_counter()
            publisher.publish()
            published = time.perf_counter()
            assert follower.poll() is not None, follower.last_error
            loaded = time.perf_counter()
            if n < 2:  # warm-up
                continue
            for what, value in (("publish ms", published - start),
                                ("locked ms", publisher.last_locked_seconds),
                                ("load ms", loaded - published)):
                out.setdefault(f"{kind}: {what}", []).append(1e3 * value)
    finally:
        publisher.close()
        service.close(checkpoint=False)
    return {key: statistics.median(values) for key, values in out.items()}


def fit(directory: Path, models: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_serve import synthetic

    from nmrn.models import make_model

    frame = synthetic()
    for name in models:
        if not (directory / name).exists():
            options = {"retrieval": {"mode": "exact"}} if name.startswith("nmrn") else {}
            make_model(name, **options).fit(frame).save(directory / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="pop,nmrn-faithful")
    parser.add_argument("--rounds", type=int, default=12, help="publications per process")
    parser.add_argument("--events", type=int, default=50, help="events per publication")
    parser.add_argument("--repeats", type=int, default=3, help="processes per version")
    parser.add_argument("--compare", default=None, metavar="SRC")
    parser.add_argument("--checkpoints", default="/tmp/nmrn-bench-snapshots",
                        help="fitted checkpoints (made here when absent)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(Path(args.worker), args.rounds, args.events)))
        return
    ckpts = Path(args.checkpoints)
    ckpts.mkdir(parents=True, exist_ok=True)
    models = args.models.split(",")
    fit(ckpts, models)
    own = str(Path(__file__).resolve().parents[1] / "src")
    trees = [("before", args.compare), ("after", own)] if args.compare else [("after", own)]
    runs: dict[str, dict[str, list[dict[str, float]]]] = {m: {t: [] for t, _ in trees}
                                                          for m in models}
    for _ in range(args.repeats):
        for name in models:
            for label, src in trees:
                cmd = [sys.executable, __file__, "--worker", str(ckpts / name),
                       "--rounds", str(args.rounds), "--events", str(args.events)]
                env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
                done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True,
                                      timeout=1800)
                runs[name][label].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(name, label, runs[name][label][-1], file=sys.stderr, flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    print("| model | figure | " + " | ".join(t for t, _ in trees) + " |")
    print("|---|---|" + "---|" * len(trees))
    for name in models:
        for key in runs[name][trees[-1][0]][0]:
            cells = [statistics.median(r[key] for r in runs[name][t]) for t, _ in trees]
            print(f"| {name} | {key} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1)
                                   + "\n")


if __name__ == "__main__":
    main()
