"""ANN candidates + exact re-ranking for NMRN and BPR (issue 13.1, embedding models).

`recommend(user, k=10)` with every item scored (exact) and from the HNSW index's candidates
re-scored exactly (``retrieval={"mode": "ann"}``), timed alternately per user in one process on
the same model; recall@10 of the approximate answer against the exact one; index build time and
bytes per item (faiss's serialised index: vectors and graph).

The models are **not fitted** at 10^4-10^6 items (fitting that many is hours here): each is built
from its preset with ``epochs=0`` over a log that makes every item known (a catalogue user that
saw them all, plus the timed users with 20 events each), and its tables are then set to
**synthetic** vectors: a mixture of 1,000 Gaussian clusters (centres at norm 0.8, per-coordinate
std 0.05, rows clipped to norm 1, as NMRN's ``max_norm`` does), or ``--vectors random`` (unit
Gaussian directions, no structure: HNSW's hard case). NMRN's read ``s`` is then a function of the
synthetic memory: ``nmrn-memory`` (per-user memory) gets every slot of a user's memory set to one
query drawn like the items, so ``s`` is that query; ``nmrn-faithful`` (one shared memory) gets 20
value rows drawn like the items and keys of norm 20 (a peaked address), so ``s`` is close to one
of them (with keys of norm 5 the read is a blend near the origin, ||s|| ~ 0.2, where every item
is about as far as every other: BENCHMARKS.md shows what recall does there).
BPR's user and item vectors are drawn the same way (biases N(0, 0.1)).

The index is the ``RetrievalConfig`` default (IVF since 2026-12-07) unless ``--retrieval``
says otherwise (e.g. ``'{"index": "hnsw"}'``); ``--sweep`` also times other search settings
on the same built index (ANN reads only), and each NMRN row reports its reads' median norm and
relative contrast (mean item distance over the 10th-nearest one: near 1, a hard query).

    OMP_NUM_THREADS=1 python benchmarks/bench_ann.py --json benchmarks/results/ann.json
    OMP_NUM_THREADS=1 python benchmarks/bench_ann.py --break-even \
        --json benchmarks/results/ann_break_even.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

N_CLUSTERS = 1000


def _vectors(rng: np.random.Generator, n: int, d: int, kind: str,
             centres: np.ndarray) -> np.ndarray:
    if kind == "random":
        x = rng.normal(size=(n, d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return (x * rng.uniform(0.2, 1.0, size=(n, 1))).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + rng.normal(scale=0.05, size=(n, d))
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1.0)).astype(np.float32)


def build(preset: str, n_items: int, n_users: int, kind: str, retrieval: dict[str, Any],
          seed: int = 0) -> Any:
    """A preset's model over ``n_items`` items with synthetic tables (module docstring)."""
    from nmrn.models import make_model

    rng = np.random.default_rng(seed)
    per_user = 20
    users = np.concatenate([np.full(n_items, -1), np.repeat(np.arange(n_users), per_user)])
    items = np.concatenate([np.arange(n_items), rng.integers(0, n_items, n_users * per_user)])
    frame = pd.DataFrame({"user": users, "item": items, "timestamp": np.arange(len(users))})
    epochs = {"epochs": 0}
    model = make_model(preset, retrieval=retrieval, **epochs).fit(frame)
    d = model.config.dim if preset == "bpr" else model.config.model.dim
    centres = rng.normal(size=(N_CLUSTERS, d))
    centres *= 0.8 / np.linalg.norm(centres, axis=1, keepdims=True)
    vec = torch.from_numpy(_vectors(rng, n_items, d, kind, centres))
    queries = torch.from_numpy(_vectors(rng, n_users + 1, d, kind, centres))
    order = torch.from_numpy(model.items.encode(np.arange(n_items)))  # ids -> rows
    uidx = torch.from_numpy(model.users.encode(np.arange(n_users)))
    if preset == "bpr":
        model.item_emb[order] = vec
        model.item_bias[:] = torch.from_numpy(rng.normal(scale=0.1, size=n_items)).float()
        model.user_emb[uidx] = queries[:n_users]
    else:
        net = model.network
        with torch.no_grad():
            net.item_emb.data[order] = vec
            if model.config.model.per_user_memory:
                h = model.config.model.memory_slots
                model._memory[uidx] = queries[:n_users, None, :].expand(-1, h, -1)
                model._has_memory[uidx] = True
            else:
                h = net.init_values.shape[0]
                model._memory = torch.from_numpy(_vectors(rng, h, d, kind, centres))
                keys = torch.from_numpy(rng.normal(size=(h, d))).float()
                net.keys.data[:] = 20.0 * keys / keys.norm(dim=1, keepdim=True)
                net.user_emb.data[uidx] = queries[:n_users]
        model._items_changed(None)
    model._ann.invalidate()
    return model


def time_reads(model: Any, users: np.ndarray, k: int = 10) -> dict[str, Any]:
    """Exact and ANN reads alternately per user; latency percentiles and recall@10."""
    ann_path = model._candidate_top_k
    exact_t: list[float] = []
    ann_t: list[float] = []
    recall: list[float] = []
    model.recommend(users[0], k=k)  # builds the index (background=False), not timed
    build_s = model.retrieval_index.last_build_seconds
    for user in users.tolist():
        model._candidate_top_k = lambda *a: None
        t = time.perf_counter()
        a = model.recommend(user, k=k)
        exact_t.append(time.perf_counter() - t)
        model._candidate_top_k = ann_path
        t = time.perf_counter()
        b = model.recommend(user, k=k)
        ann_t.append(time.perf_counter() - t)
        recall.append(len(set(a.items.tolist()) & set(b.items.tolist())) / k)
    del model._candidate_top_k  # the class's method again
    n = len(model.items)
    return {
        "exact_p50_ms": 1e3 * float(np.median(exact_t)),
        "exact_p99_ms": 1e3 * float(np.percentile(exact_t, 99)),
        "ann_p50_ms": 1e3 * float(np.median(ann_t)),
        "ann_p99_ms": 1e3 * float(np.percentile(ann_t, 99)),
        "recall_at_10": float(np.mean(recall)),
        "recall_at_10_min": float(np.min(recall)),
        "build_s": build_s,
        "index_bytes_per_item": model.retrieval_index.nbytes() / n,
    }


def sweep(model: Any, users: np.ndarray, settings: list[dict[str, int]],
          k: int = 10) -> list[dict[str, Any]]:
    """Recall@10 and ANN latency per search setting (``ef_search``, ``nprobe``, ``candidates``)
    on one built index (the index does not depend on them); only ANN reads, so no full pass
    over the table evicts the index from the caches between them."""
    model._candidate_top_k = lambda *a: None
    exact = {u: model.recommend(u, k=k).items.tolist() for u in users.tolist()}
    del model._candidate_top_k
    index = model.retrieval_index
    base = index.config
    rows = []
    for setting in settings:
        index.config = base.replace(**setting)
        ts, recall = [], []
        for user in users.tolist():
            t = time.perf_counter()
            got = model.recommend(user, k=k).items.tolist()
            ts.append(time.perf_counter() - t)
            recall.append(len(set(got) & set(exact[user])) / k)
        rows.append({**setting,
                     "ann_p50_ms": 1e3 * float(np.median(ts)),
                     "ann_p99_ms": 1e3 * float(np.percentile(ts, 99)),
                     "recall_at_10": float(np.mean(recall)),
                     "recall_at_10_min": float(np.min(recall))})
        print(f"   {setting}: p50 {rows[-1]['ann_p50_ms']:.3f} p99 "
              f"{rows[-1]['ann_p99_ms']:.3f} ms recall@10 {rows[-1]['recall_at_10']:.4f} "
              f"(min {rows[-1]['recall_at_10_min']:.1f})", flush=True)
    index.config = base
    return rows


def contrast(model: Any, users: np.ndarray, k: int = 10) -> dict[str, float]:
    """The queries' relative contrast (mean item distance / 10th-nearest distance) and norm,
    for an NMRN model (what makes its nearest-neighbour search hard or easy)."""
    net = model.network
    table = net.item_emb.detach().cpu().numpy().astype(np.float64)
    rc, norms, d1 = [], [], []
    with torch.no_grad():
        for user in users.tolist()[:50]:
            row = int(model.users.encode(np.array([user]))[0])
            u_vec, values, context = model._read_inputs(row)
            q = net.query(u_vec, context)
            s = net.interest(q, net.address(q), values)[0].cpu().numpy().astype(np.float64)
            dist = np.sqrt(((table - s) ** 2).sum(axis=1))
            part = np.partition(dist, k)
            rc.append(float(dist.mean() / part[k - 1]))
            d1.append(float(part[0]))
            norms.append(float(np.linalg.norm(s)))
    return {"query_norm_median": float(np.median(norms)),
            "relative_contrast_median": float(np.median(rc)),
            "nearest_distance_median": float(np.median(d1))}


def delta_reads(model: Any, users: np.ndarray, sizes: list[int], seed: int = 1) -> list[dict]:
    """ANN read latency with ``D`` items changed since the build (their vectors moved)."""
    rng = np.random.default_rng(seed)
    rows = []
    index = model.retrieval_index
    index.config = index.config.replace(rebuild_fraction=1.0)  # no rebuild: the delta grows
    n = len(model.items)
    for size in sizes:
        changed = rng.choice(n, size=size, replace=False) if size else np.empty(0, np.int64)
        index.changed(changed)
        ts = []
        for user in users.tolist():
            t = time.perf_counter()
            model.recommend(user, k=10)
            ts.append(time.perf_counter() - t)
        rows.append({"delta": index.delta_size(n), "ann_p50_ms": 1e3 * float(np.median(ts)),
                     "ann_p99_ms": 1e3 * float(np.percentile(ts, 99))})
        print(f"   delta {rows[-1]['delta']:>8,}: p50 {rows[-1]['ann_p50_ms']:.3f} "
              f"p99 {rows[-1]['ann_p99_ms']:.3f} ms", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["nmrn-faithful", "nmrn-memory", "bpr"])
    p.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--vectors", choices=["clustered", "random"], default="clustered")
    p.add_argument("--break-even", action="store_true",
                   help="small catalogues, nmrn-faithful and bpr: where ANN starts to pay")
    p.add_argument("--delta", nargs="*", type=int, default=[],
                   help="also time reads with this many changed items (largest size only)")
    p.add_argument("--retrieval", type=json.loads, default={},
                   help="RetrievalConfig fields, as JSON, on top of mode=ann")
    p.add_argument("--sweep", nargs="*", default=[], metavar="K=V,K=V",
                   help="after each build, also measure these search settings, e.g. "
                   "ef_search=512,candidates=100 or nprobe=128")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.break_even:
        args.sizes = [1_000, 2_000, 5_000, 10_000, 20_000, 50_000]
    retrieval = {"mode": "ann", "background": False, **args.retrieval}
    rows = []
    for preset in args.presets:
        for size in args.sizes:
            n_users = min(args.users, 1000)
            model = build(preset, size, n_users, args.vectors, retrieval)
            users = np.arange(n_users)
            row = {"preset": preset, "items": size, "vectors": args.vectors,
                   **time_reads(model, users)}
            print(f"{preset:14s} {size:>9,} items  exact p50 {row['exact_p50_ms']:.3f} p99 "
                  f"{row['exact_p99_ms']:.3f} ms  ann p50 {row['ann_p50_ms']:.3f} p99 "
                  f"{row['ann_p99_ms']:.3f} ms  recall@10 {row['recall_at_10']:.4f} (min "
                  f"{row['recall_at_10_min']:.1f})  build {row['build_s']:.1f} s  "
                  f"{row['index_bytes_per_item']:.0f} B/item", flush=True)
            if preset != "bpr":
                row.update(contrast(model, users))
                print(f"   query norm {row['query_norm_median']:.3f}, relative contrast "
                      f"{row['relative_contrast_median']:.3f}, nearest item at "
                      f"{row['nearest_distance_median']:.3f}", flush=True)
            if args.sweep:
                row["sweep"] = sweep(model, users, [
                    {k: int(v) for k, v in (kv.split("=") for kv in x.split(","))}
                    for x in args.sweep])
            if args.delta and size == max(args.sizes):
                row["delta"] = delta_reads(model, users[:100], args.delta)
            rows.append(row)
            del model
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": date.today().isoformat(), "machine": platform.platform(),
            "processor": platform.processor(), "command": " ".join(sys.argv),
            "synthetic": True, "retrieval": retrieval, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
