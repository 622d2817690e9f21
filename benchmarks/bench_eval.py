"""The accuracy tables of BENCHMARKS.md: ``nmrn evaluate`` on ML-100K in both protocols.

Usage::

    python benchmarks/bench_eval.py [--models pop,recent-pop,item-knn,bpr] [--out results/bench]

Runs the same code path as the CLI (``nmrn evaluate --protocol both --base-fraction 0.5``), then
prints the results as Markdown tables (one per protocol) with the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
from pathlib import Path

from nmrn.cli import main as nmrn_main
from nmrn.models import model_names

COLUMNS = ["Hits@1", "Hits@5", "Hits@10", "Hits@20", "NDCG@10", "MRR", "Hits@10 (sampled)"]


def markdown(results: list[dict], protocol: str) -> str:
    rows = [r for r in results if r["protocol"] == protocol]
    head = "| model | " + " | ".join(COLUMNS) + " | tested | skipped | fit s | learn ev/s |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 5)]
    for r in rows:
        m = r["metrics"]
        cells = [f"{m.get(c, float('nan')):.4f}" for c in COLUMNS]
        lines.append(
            f"| {r['model']} | "
            + " | ".join(cells)
            + f" | {r['n_tested']} | {r['n_skipped']} | {r['fit_seconds']:.1f}"
            + f" | {r['learn_events_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(model_names()))
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-size", type=int, default=1000)
    args = parser.parse_args()
    status = nmrn_main(
        [
            "evaluate",
            "--dataset",
            "ml-100k",
            "--models",
            args.models,
            "--protocol",
            "both",
            "--base-fraction",
            "0.5",
            "--blocks",
            "5",
            "--chunk-size",
            str(args.chunk_size),
            "--seed",
            str(args.seed),
            "--out",
            str(args.out),
            "--no-progress",
        ]
    )
    if status:
        raise SystemExit(status)
    results = json.loads((args.out / "results.json").read_text())
    results = results["results"] if isinstance(results, dict) else results
    print(
        f"\n{dt.date.today()} on {platform.machine()} ({os.cpu_count()} cores), "
        f"python {platform.python_version()}\n"
    )
    for protocol in ("blocks", "chunks"):
        print(f"### {protocol}\n")
        print(markdown(results, protocol))
        print()


if __name__ == "__main__":
    main()
