"""Ablation of NMRN's negative sampler on MovieLens-100K: uniform vs popularity vs adversarial.

Usage::

    python benchmarks/ablation_sampler.py [--seeds 0,1,2] [--protocols blocks,chunks]

The reported ablation (test protocol, not tuning): base fraction 0.5, the test stream walked in
5 blocks and in chunks of 1,000 events. Each sampler runs NMRN (the ``nmrn`` preset when it
exists, else ``nmrn-faithful``) with every other setting equal, for every seed. Prints a
Markdown table of Hits@10 (mean and standard deviation over seeds) and of training time
(``fit`` + ``learn`` seconds) as a ratio to uniform, and writes every run to
``benchmarks/results/ablation_sampler.json`` (rewritten after each run, so a partial run keeps
what it finished). ``--models nmrn,bpr`` adds BPR (the ``bpr`` preset) with its own uniform
negatives ("uniform" in the table) and with the adversarial sampler.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from nmrn.data.datasets import load_dataset
from nmrn.evaluation.protocol import evaluate
from nmrn.models import make_model

SAMPLERS = ("uniform", "popularity", "adversarial")


def table(runs: list[dict[str, Any]], protocols: list[str]) -> str:
    """Markdown tables, one per model family: Hits@10 mean ± std and time ratio per sampler."""
    return "\n\n".join(
        _table([r for r in runs if r["preset"] == preset], protocols)
        for preset in dict.fromkeys(r["preset"] for r in runs)
    )


def _table(runs: list[dict[str, Any]], protocols: list[str]) -> str:
    head = (
        f"| {runs[0]['preset']} sampler | "
        + " | ".join(f"Hits@10 {p} | time/uniform {p}" for p in protocols)
        + " |"
    )
    lines = [head, "|" + "---|" * (1 + 2 * len(protocols))]
    base_time = {
        p: statistics.mean(
            r["seconds"] for r in runs if r["sampler"] == "uniform" and r["protocol"] == p
        )
        for p in protocols
        if any(r["sampler"] == "uniform" and r["protocol"] == p for r in runs)
    }
    for sampler in SAMPLERS:
        cells = []
        for p in protocols:
            mine = [r for r in runs if r["sampler"] == sampler and r["protocol"] == p]
            if not mine:
                cells += ["-", "-"]
                continue
            hits = [r["metrics"]["Hits@10"] for r in mine]
            spread = statistics.stdev(hits) if len(hits) > 1 else 0.0
            ratio = statistics.mean(r["seconds"] for r in mine) / base_time.get(p, float("nan"))
            cells += [f"{statistics.mean(hits):.4f} ± {spread:.4f} (n={len(hits)})", f"{ratio:.2f}"]
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--protocols", default="blocks,chunks")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--models", default="nmrn", help="nmrn and/or bpr, comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # the sampler is an option of the memory model (NMRN), not of the hybrid behind "nmrn"
    nmrn_preset = "nmrn-memory"
    jobs = []  # (preset, sampler name, overrides)
    for family in args.models.split(","):
        for sampler in args.samplers.split(","):
            if family == "nmrn":
                jobs.append((nmrn_preset, sampler, {"sampler": sampler}))
            elif sampler in ("uniform", "adversarial"):  # BPR: own negatives, or G
                jobs.append(
                    ("bpr", sampler, {"sampler": None if sampler == "uniform" else sampler})
                )
    events = load_dataset("ml-100k")
    runs: list[dict[str, Any]] = []
    args.out.mkdir(parents=True, exist_ok=True)
    out_file = args.out / "ablation_sampler.json"
    protocols = args.protocols.split(",")
    for seed in (int(s) for s in args.seeds.split(",")):
        for protocol in protocols:
            for preset, sampler, overrides in jobs:
                model = make_model(preset, seed=seed, **overrides)
                # the protocol's own seed (the sampled-100 candidates) stays fixed for all runs
                result = evaluate(model, events, protocol=protocol, base_fraction=0.5)
                runs.append(
                    {
                        "preset": preset,
                        "sampler": sampler,
                        "protocol": protocol,
                        "seed": seed,
                        "metrics": result.metrics,
                        "fit_seconds": result.fit_seconds,
                        "learn_seconds": result.learn_seconds,
                        "seconds": result.fit_seconds + result.learn_seconds,
                        "diagnostics": model.sampler_diagnostics(last=100),  # type: ignore[attr-defined]
                    }
                )
                out_file.write_text(json.dumps(runs, indent=1))
                print(
                    f"seed {seed} {protocol:6s} {preset} {sampler:11s} "
                    f"Hits@10 {result.metrics['Hits@10']:.4f} "
                    f"time {runs[-1]['seconds']:.1f}s",
                    flush=True,
                )
    print(table(runs, protocols))


if __name__ == "__main__":
    main()
