"""The NMRN ablation table of BENCHMARKS.md: variants of the paper's model on ML-100K.

Usage::

    python benchmarks/ablation_nmrn.py [--seeds 0] [--out benchmarks/results/ablation_nmrn.json]

Each row is ``nmrn-faithful`` (the paper's model, every option off) with some options switched
on, evaluated with the reference protocol (base 0.5; 5 blocks, and chunks of 1,000). This is a
*report*: the settings were chosen on the validation tail of the history (docs/tuning.md), and
this script only measures them on the test stream. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from nmrn.data.datasets import load_dataset
from nmrn.evaluation.protocol import evaluate
from nmrn.models import make_model

SHARP = {"addressing": "neg_dist", "temperature": 0.1}
VARIANTS: dict[str, dict[str, object]] = {
    "faithful (dot address, shared memory)": {},
    "+ sharp address (neg-dist, T=0.1)": SHARP,
    "+ personal offset s+u": {"personal_offset": True},
    "+ item bias": {"item_bias": True},
    "+ squared distance": {"squared_distance": True},
    "+ sharp address + per-user memory": {**SHARP, "per_user_memory": True},
    "nmrn preset (+ margin 1, 3 epochs)": {
        **SHARP,
        "per_user_memory": True,
        "margin": 1.0,
        "epochs": 3,
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "ablation_nmrn.json"
    )
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    events = load_dataset("ml-100k")
    rows = []
    for label, overrides in VARIANTS.items():
        row: dict[str, object] = {"variant": label, "overrides": overrides}
        for protocol in ("blocks", "chunks"):
            hits, fit_s, learn_rate = [], [], []
            for seed in seeds:
                start = time.perf_counter()
                model = make_model("nmrn-faithful", seed=seed, **overrides)
                result = evaluate(
                    model,
                    events,
                    protocol=protocol,
                    base_fraction=0.5,
                    n_blocks=5,
                    chunk_size=1000,
                    seed=seed,
                )
                hits.append(result.metrics["Hits@10"])
                fit_s.append(result.fit_seconds)
                learn_rate.append(result.learn_events_per_s)
                row[f"{protocol}_seconds"] = time.perf_counter() - start
            row[protocol] = float(np.mean(hits))
            row[f"{protocol}_std"] = float(np.std(hits))
            row[f"{protocol}_fit_s"] = float(np.median(fit_s))
            row[f"{protocol}_learn_ev_s"] = float(np.median(learn_rate))
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seeds": seeds, "rows": rows}, indent=1))
    print("\n| variant | Hits@10 blocks | Hits@10 chunks | fit s | learn ev/s (chunks) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['blocks']:.4f} | {r['chunks']:.4f} | "
            f"{r['blocks_fit_s']:.1f} | {r['chunks_learn_ev_s']:,.0f} |"
        )


if __name__ == "__main__":
    main()
