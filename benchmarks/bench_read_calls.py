"""What one ``recommend(user, k=10)`` call costs in the library, on a 100,000-item catalogue.

The serving profile (BENCHMARKS.md, "Where the time goes") puts half of a live server's CPU in
the read itself. This times the read without HTTP: each preset is fitted (``--epochs``) on the
**synthetic** log of ``bench_serve.py`` (100,000 items, Zipf popularity, 20,000 users), saved,
and then, in a fresh process, loaded, warmed (the first reads build the retrieval index; the
build is waited for) and asked for ``--reads`` single-user top-10s in one seeded random order of
the known users. Prints the median, p99 and mean microseconds per call and a SHA-256 of every
answer (items and scores), so that two versions can be checked to answer the same.

    OMP_NUM_THREADS=1 python benchmarks/bench_read_calls.py

``--compare SRC`` alternates ``--rounds`` processes running the package at ``SRC`` (e.g. an
unpacked ``git archive`` of the base commit) and this one on the same checkpoints, and gives
the medians over rounds and their ratio:

    git archive main src | tar -x -C /tmp/base
    OMP_NUM_THREADS=1 python benchmarks/bench_read_calls.py --compare /tmp/base/src --tag reads

Synthetic data: the figures say how fast, never how accurate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def measure(args: argparse.Namespace, ckpt_dir: Path) -> list[dict[str, Any]]:
    from nmrn.models import load_model, make_model

    rows = []
    for preset in args.presets.split(","):
        path = ckpt_dir / preset
        if not path.exists():
            sys.path.insert(0, str(Path(__file__).parent))
            from bench_serve import synthetic

            make_model(preset, seed=0, epochs=args.epochs).fit(synthetic()).save(path)
        model = load_model(path)
        users = model.known_users
        order = users[np.random.default_rng(0).integers(0, len(users), args.reads)]
        for user in order[:50]:  # the first read builds the index; wait for it
            model.recommend([user], k=10)
        index = getattr(model, "retrieval_index", None)
        if index is not None:
            index.wait()
        for user in order[:200]:
            model.recommend([user], k=10)
        digest = hashlib.sha256()
        times = np.empty(len(order))
        for j, user in enumerate(order.tolist()):
            start = time.perf_counter()
            rec = model.recommend([user], k=10)
            times[j] = time.perf_counter() - start
            digest.update(np.asarray(rec.items).tobytes())
            digest.update(np.asarray(rec.scores).tobytes())
        rows.append({"preset": preset, "p50_us": 1e6 * float(np.median(times)),
                     "p99_us": 1e6 * float(np.percentile(times, 99)),
                     "mean_us": 1e6 * float(times.mean()), "sha256": digest.hexdigest(),
                     "ann": bool(getattr(model, "uses_ann", lambda: False)())})
    return rows


def compare(args: argparse.Namespace, ckpt_dir: Path) -> dict[str, Any]:
    own_src = str(Path(__file__).resolve().parents[1] / "src")
    runs: dict[str, list[list[dict[str, Any]]]] = {"before": [], "after": []}
    for _ in range(args.rounds):
        for label, src in (("before", args.compare), ("after", own_src)):
            out = ckpt_dir / f"{label}.json"
            cmd = [sys.executable, __file__, "--presets", args.presets, "--reads",
                   str(args.reads), "--epochs", str(args.epochs), "--checkpoints",
                   str(ckpt_dir), "--json", str(out)]
            subprocess.run(cmd, env={**os.environ, "PYTHONPATH": src}, check=True,
                           timeout=3600, stdout=subprocess.DEVNULL)
            runs[label].append(json.loads(out.read_text()))
    table = []
    print("| preset | before p50 µs | after p50 µs | before p99 µs | after p99 µs | "
          "before mean µs | after mean µs | after/before (mean) | same answers |")
    print("|---|---|---|---|---|---|---|---|---|")
    for j, row in enumerate(runs["after"][0]):
        med = {(label, key): statistics.median(r[j][key] for r in runs[label])
               for label in runs for key in ("p50_us", "p99_us", "mean_us")}
        same = len({r[j]["sha256"] for label in runs for r in runs[label]}) == 1
        table.append({"preset": row["preset"], **{f"{a}_{b}": v for (a, b), v in med.items()},
                      "same_answers": same})
        print(f"| {row['preset']} | {med['before', 'p50_us']:.0f} | {med['after', 'p50_us']:.0f}"
              f" | {med['before', 'p99_us']:.0f} | {med['after', 'p99_us']:.0f} | "
              f"{med['before', 'mean_us']:.0f} | {med['after', 'mean_us']:.0f} | "
              f"{med['after', 'mean_us'] / med['before', 'mean_us']:.2f}x | "
              f"{'yes' if same else 'NO'} |", flush=True)
    return {"compare": args.compare, "rounds": runs, "table": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="nmrn-faithful,nmrn-memory,bpr")
    parser.add_argument("--reads", type=int, default=5_000)
    parser.add_argument("--epochs", type=int, default=1, help="fitting epochs (speed only)")
    parser.add_argument("--compare", default=None, metavar="SRC")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--checkpoints", default=None, help="reuse/keep fitted checkpoints here")
    parser.add_argument("--json", default=None, help="write the rows to this file (a worker)")
    parser.add_argument("--tag", default=None, help="write benchmarks/results/read_calls_TAG.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt_dir = Path(args.checkpoints or tmp)
        if args.json:
            Path(args.json).write_text(json.dumps(measure(args, ckpt_dir)))
            return
        print(f"torch {torch.__version__}, 1 thread, python {platform.python_version()}, "
              f"{platform.machine()}; {args.reads} reads per preset, 100,000 items (synthetic)")
        if args.compare:
            measure(argparse.Namespace(**{**vars(args), "reads": 1}), ckpt_dir)  # fit once
            result: dict[str, Any] = compare(args, ckpt_dir)
        else:
            rows = measure(args, ckpt_dir)
            print("| preset | p50 µs | p99 µs | mean µs | ANN |")
            print("|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['preset']} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | "
                      f"{r['mean_us']:.0f} | {r['ann']} |")
            result = {"rows": rows}
    if args.tag:
        out = Path(__file__).parent / "results" / f"read_calls_{args.tag}.json"
        out.write_text(json.dumps({"torch": torch.__version__, "args": vars(args), **result},
                                  indent=1))


if __name__ == "__main__":
    main()
