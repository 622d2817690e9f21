"""Two diagnostics of the SASRec preset quoted in BENCHMARKS.md (neither chose a setting).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/sasrec_diagnostics.py curve --seed 0 [--set batch_size=32]
    OMP_NUM_THREADS=1 python benchmarks/sasrec_diagnostics.py new-items

``curve``: on the validation split of ``tune_optuna.py`` (fit on the first 40,000 events, then
test-then-train on the next 10,000), Hits@10 in blocks and in chunks of 100 after 10, 20, ...,
60 epochs of fit (the same windows, trained on from where the previous point stopped).

``new-items``: on the reference split (history = the first 50,000 events), fit, learn the next
20,000, then the share of the top-10 of the next block's users that are items first seen after
the history, against the share of that block's targets that are (item-kNN for comparison).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from tune_optuna import HISTORY, _Fitted

from nmrn.data.datasets import load_dataset
from nmrn.evaluation.protocol import evaluate
from nmrn.models import make_model
from nmrn.training.contract import Recommender

N_FIT = 40_000


def curve(seed: int, overrides: dict[str, object]) -> None:
    events = load_dataset("ml-100k")[:HISTORY]
    model = make_model("sasrec", seed=seed, **{**overrides, "epochs": 0})
    model.fit(events[:N_FIT])  # ids, history, tables; no training yet
    fresh = make_model("sasrec", seed=seed, **{**overrides, "epochs": 0})
    fresh._grow(len(model.users), len(model.items))
    windows = fresh._windows(
        model.users.encode(events.users[:N_FIT]), model.items.encode(events.items[:N_FIT])
    )
    done = 0
    for epochs in (10, 20, 30, 40, 50, 60):
        model._train(*windows, epochs - done, model.lr)  # type: ignore[attr-defined]
        done = epochs
        hits = []
        with tempfile.TemporaryDirectory() as tmp:
            path = model.save(Path(tmp) / "fitted")
            for options in ({"protocol": "blocks"}, {"protocol": "chunks", "chunk_size": 100}):
                result = evaluate(_Fitted(Recommender.load(path), N_FIT), events,
                                  base_fraction=N_FIT / HISTORY, seed=seed, **options)
                hits.append(round(result.metrics["Hits@10"], 4))
        loss = model.last_loss  # type: ignore[attr-defined]
        print(f"seed {seed} {overrides} epochs {epochs}: loss {loss:.4f}, "
              f"Hits@10 blocks {hits[0]}, chunks of 100 {hits[1]}", flush=True)


def new_items() -> None:
    events = load_dataset("ml-100k")
    for name in ("sasrec", "item-knn"):
        model = make_model(name, seed=0).fit(events[:50_000])
        old = set(model.known_items.tolist())
        model.learn(events[50_000:70_000])
        known = set(model.known_items.tolist())
        new = known - old
        block = events[70_000:80_000]
        targets = [i for i in block.items.tolist() if i in known]
        users = [u for u in np.unique(block.users).tolist() if model.users.get(u) >= 0]
        top = model.recommend(users, k=10).items.ravel().tolist()
        print(f"{name}: {len(new)} of {len(known)} items are new; new items are "
              f"{np.mean([i in new for i in targets]):.3f} of the next block's targets and "
              f"{np.mean([i in new for i in top]):.3f} of its users' top-10", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["curve", "new-items"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="preset override k=v")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.what == "curve":
        overrides = {}
        for item in args.set:
            key, value = item.split("=", 1)
            overrides[key] = int(value) if value.isdigit() else float(value)
        curve(args.seed, overrides)
    else:
        new_items()


if __name__ == "__main__":
    main()
