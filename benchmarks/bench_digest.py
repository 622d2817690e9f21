"""What the replica check costs at a checkpoint cut of the partitioned consumer (issue 14).

With more than one rank, every cut all-gathers each replica's
:func:`~nmrn.streams.partitioned.state_digest` (a SHA-256 of the model's state) before rank 0
saves the checkpoint. This measures, per model fitted on ``bench_serve.py``'s synthetic
100,000-item catalogue (20,000 users, 300,000 events; ``--epochs`` for the embedding models),
the median over ``--repeats`` of the digest and of the checkpoint save (to ``/dev/shm`` where
there is one, so the disk does not dominate), and the state's size:

    OMP_NUM_THREADS=1 python benchmarks/bench_digest.py --models pop,item-knn,bpr,nmrn-faithful
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_serve  # noqa: E402
import torch  # noqa: E402

from nmrn.models import make_model  # noqa: E402
from nmrn.streams.partitioned import state_digest  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="pop,item-knn,bpr,nmrn-faithful")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    log = bench_serve.synthetic()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    rows = []
    for name in args.models.split(","):
        options = {"epochs": args.epochs} if name in ("bpr", "nmrn-faithful") else {}
        start = time.perf_counter()
        model = make_model(name, **options).fit(log)
        fit_s = time.perf_counter() - start
        arrays, _ = model.snapshot()
        size = sum(a.nbytes for a in arrays.values())
        digest, save = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            state_digest(model)
            digest.append(time.perf_counter() - start)
            tmp = Path(tempfile.mkdtemp(dir=shm))
            try:
                start = time.perf_counter()
                model.save(tmp / "ckpt")
                save.append(time.perf_counter() - start)
            finally:
                shutil.rmtree(tmp)
        row = {"model": name, "state MiB": size / 2**20, "fit s": fit_s,
               "digest ms": 1e3 * statistics.median(digest),
               "save ms": 1e3 * statistics.median(save)}
        row["digest / save"] = row["digest ms"] / row["save ms"]
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"repeats": args.repeats, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
