"""Per-call cost of ``learn``: events/s when a stream arrives in calls of 1, 10, 100, 1000 events.

Fits each preset on ML-100K's first ``--fit`` events (nmrn's own loader, cached in
``~/.cache/nmrn``), saves it, then for each call size and repeat loads that checkpoint and
times learning the next ``--stream`` events in calls of that size, the way a live service or a
stream consumer calls ``learn`` (an :class:`~nmrn.data.events.EventBatch`; ``--input frame``
passes pandas DataFrames instead, as a user of the Python API might). Prints, per preset and
call size, the median over repeats of events/s and of milliseconds per call (nothing is
asserted), and writes them to ``benchmarks/results/learn_calls_<tag>.json`` with ``--tag``.

    OMP_NUM_THREADS=1 python benchmarks/bench_learn_calls.py --tag after

(issue 14: a service learning small batches pays a fixed cost per call; this measures it.)

``--compare SRC`` measures two versions of the package in one run: the fitted checkpoints are
made once (by this version), then ``--rounds`` rounds alternate a process running the package
at ``SRC`` (e.g. an unpacked ``git archive`` of the base commit) with one running this one,
each timing every preset and call size once; the table gives the medians over rounds and the
ratio. (Both versions must load the same checkpoints.)

    git archive 437121b src | tar -x -C /tmp/base
    OMP_NUM_THREADS=1 python benchmarks/bench_learn_calls.py --compare /tmp/base/src --tag issue14

A ``--variant NAME=PRESET:JSON`` (repeatable) adds a preset with options under its own name, so
that options are compared in one run; the repeats go round every model and call size in turn
(repeat 1 of each, then repeat 2, ...), so that a change of load hits them alike. With
``--read-first`` every timed call is preceded by an untimed ``score`` of its users over the
known items, as in test-then-train (a model that keeps a read's work for the next ``learn``
is timed as the evaluation protocol runs it).

    OMP_NUM_THREADS=1 python benchmarks/bench_learn_calls.py --presets nmrn-faithful,nmrn \
        --variant 'nmrn-lp1=nmrn:{"learn_passes": 1}' --sizes 100,1000 --read-first
"""

from __future__ import annotations

import argparse
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
from bench_tables import parse_variant  # NAME=PRESET:JSON, as bench_tables takes it

from nmrn.data.datasets import load_dataset
from nmrn.models import load_model, make_model


def time_calls(path: Path, stream: Any, size: int, frame: bool, read_first: bool = False) -> float:
    """Seconds to learn ``stream`` in calls of ``size`` events, from the checkpoint at ``path``
    (with ``read_first``, each call's users are scored, untimed, before it is learned)."""
    model = load_model(path)
    calls = [stream[lo : lo + size] for lo in range(0, len(stream), size)]
    readers = [np.unique(c.users) for c in calls]
    if frame:
        calls = [c.to_frame() for c in calls]
    total = 0.0
    for call, users in zip(calls, readers, strict=True):
        if read_first:
            model.score(users, model.known_items)
        start = time.perf_counter()
        model.learn(call)
        total += time.perf_counter() - start
    return total


def measure(args: argparse.Namespace, ckpt_dir: Path) -> list[dict[str, Any]]:
    """Time every model and call size ``args.repeats`` times, the repeats going round them all
    in turn; fit a model's checkpoint in ``ckpt_dir`` first unless it is there."""
    data = load_dataset("ml-100k")
    head, tail = data[: args.fit], data[args.fit : args.fit + args.stream]
    models = [(p, p, {}) for p in args.presets.split(",") if p]
    models += [parse_variant(v) for v in args.variant]
    sizes = [int(s) for s in args.sizes.split(",")]
    for name, preset, options in models:
        path = ckpt_dir / name
        if not path.exists():
            make_model(preset, seed=0, **options).fit(head).save(path)
    secs: dict[tuple[str, int], list[float]] = {(m[0], s): [] for m in models for s in sizes}
    for _ in range(args.repeats):
        for name, _preset, _options in models:
            for size in sizes:
                secs[name, size].append(time_calls(ckpt_dir / name, tail, size,
                                                   args.input == "frame", args.read_first))
    rows: list[dict[str, Any]] = []
    for (name, size), values in secs.items():
        sec = statistics.median(values)
        rows.append({"preset": name, "size": size, "events_per_s": len(tail) / sec,
                     "ms_per_call": 1e3 * sec / -(-len(tail) // size), "seconds": values})
    return rows


def compare(args: argparse.Namespace, ckpt_dir: Path) -> dict[str, Any]:
    """Alternate processes running the package at ``args.compare`` and this one."""
    own_src = str(Path(__file__).resolve().parents[1] / "src")
    measure(argparse.Namespace(**{**vars(args), "sizes": "1"}), ckpt_dir)  # fit once, here
    runs: dict[str, list[list[dict[str, Any]]]] = {"before": [], "after": []}
    for _ in range(args.rounds):
        for label, src in (("before", args.compare), ("after", own_src)):
            out = ckpt_dir / f"{label}.json"
            cmd = [sys.executable, __file__, "--presets", args.presets, "--sizes", args.sizes,
                   "--fit", str(args.fit), "--stream", str(args.stream), "--repeats", "1",
                   "--input", args.input, "--checkpoints", str(ckpt_dir), "--json", str(out)]
            cmd += [f"--variant={v}" for v in args.variant]
            cmd += ["--read-first"] if args.read_first else []
            env = {**os.environ, "PYTHONPATH": src}
            subprocess.run(cmd, env=env, check=True, timeout=3600, stdout=subprocess.DEVNULL)
            runs[label].append(json.loads(out.read_text()))
    table = []
    print("| preset | events per call | before events/s | after events/s | after/before |")
    print("|---|---|---|---|---|")
    for j, row in enumerate(runs["after"][0]):
        before = statistics.median(r[j]["events_per_s"] for r in runs["before"])
        after = statistics.median(r[j]["events_per_s"] for r in runs["after"])
        table.append({"preset": row["preset"], "size": row["size"], "before": before,
                      "after": after, "ratio": after / before})
        print(f"| {row['preset']} | {row['size']:,} | {before:,.0f} | {after:,.0f} | "
              f"{after / before:.2f}x |", flush=True)
    return {"compare": args.compare, "rounds": runs, "table": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="nmrn-faithful,nmrn-memory,nmrn,bpr")
    parser.add_argument("--sizes", default="1,10,100,1000")
    parser.add_argument("--fit", type=int, default=50_000)
    parser.add_argument("--stream", type=int, default=3_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--input", choices=("batch", "frame"), default="batch")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=PRESET:JSON options, timed as model NAME (repeatable)")
    parser.add_argument("--read-first", action="store_true",
                        help="score each call's users (untimed) before learning it")
    parser.add_argument("--compare", default=None, metavar="SRC",
                        help="also run the package at SRC, alternating, and give the ratio")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --compare")
    parser.add_argument("--checkpoints", default=None, help="reuse/keep fitted checkpoints here")
    parser.add_argument("--json", default=None, help="write the rows to this file")
    parser.add_argument("--tag", default=None, help="write benchmarks/results/learn_calls_TAG.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt_dir = Path(args.checkpoints or tmp)
        if args.json:  # a worker of --compare, or a caller that wants the numbers only
            Path(args.json).write_text(json.dumps(measure(args, ckpt_dir)))
            return
        print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, python "
              f"{platform.python_version()}, {platform.machine()}; fit {args.fit} events, "
              f"learn {args.stream} ({args.input})")
        if args.compare:
            result: dict[str, Any] = compare(args, ckpt_dir)
        else:
            rows = measure(args, ckpt_dir)
            print("| preset | events per call | events/s | ms per call |")
            print("|---|---|---|---|")
            for row in rows:
                print(f"| {row['preset']} | {row['size']:,} | {row['events_per_s']:,.0f} | "
                      f"{row['ms_per_call']:.2f} |")
            result = {"rows": rows}
    if args.tag:
        out = Path(__file__).parent / "results" / f"learn_calls_{args.tag}.json"
        meta = {"torch": torch.__version__, "python": platform.python_version(),
                "machine": platform.machine(), "args": vars(args)}
        out.write_text(json.dumps({"meta": meta, **result}, indent=1) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
