"""Is there evidence the table's models miss? Probes fitted on the test stream, never a choice.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/evidence_probe.py --walks chunks1000,blocks

The optimistic ceiling (``ceiling.py``) says the evidence of the table's models, however
weighed, cannot reach 1.10x the best non-NMRN model in chunks of 1,000. This script asks where
``nmrn`` loses and whether a candidate new evidence adds anything to it, with the same
machinery: each model is walked through the reference protocol (seed 0) and its score rows
recorded (``ceiling.Recorder``); a candidate evidence is computed from the events before each
segment only; the two-fold cross-fitted linear blend of ``ceiling.fit_blend`` of ``nmrn`` and the
candidate is scored on the half it was not fitted on. Like the ceiling, **this reads the test
stream** (the blend's weights, and a candidate's threshold, are picked on it): it says whether
an evidence is worth building and validating, never what to ship.

Printed per walk:

- Hits@10 of each model, over all tested events and by the age of the target item (events since
  its first event, at the start of the segment);
- each candidate alone and blended with ``nmrn``:
  ``cooc-<window>``: co-occurrence of a user's items consumed within ``window`` seconds of each
  other, read against the user's last items (does time-local co-occurrence, e.g. a page of
  ratings sent at once, know more than item-kNN's?); ``newest``: the youngest items first;
  ``trend``: ``log(1 + count in the last 2,000 events) - log(1 + age) / 2``;
  ``young-recent-pop-<T>``: recent popularity of the items younger than ``T`` events (the rest
  tied at the bottom).

Results go to ``benchmarks/results/evidence_probe.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_tables import WALKS
from ceiling import BASE_FRACTION, Recorder, TestedEvents, fit_blend

from nmrn.data.datasets import load_dataset
from nmrn.evaluation.protocol import _Stream, evaluate
from nmrn.models import make_model

AGE_BINS = (0, 5_000, 20_000, 50_000)
WINDOWS = (0, 60, 3600)  # seconds: the same second (one page sent at once), a minute, an hour
PROFILE = (10, 0.8)  # the user's last 10 items, the newest weighted 1, the one before 0.8, ...
THRESHOLDS = (10_000, 20_000, 50_000)


def segment_starts(n: int, walk: dict[str, Any]) -> np.ndarray:
    """Position of the first event of each segment of the walk (as ``TestedEvents`` numbers
    them)."""
    n_base = int(round(BASE_FRACTION * n))
    positions = np.arange(n_base, n)
    if walk["protocol"] == "blocks":
        return np.array([int(b[0]) for b in np.array_split(positions, walk["n_blocks"])])
    return np.arange(n_base, n, walk["chunk_size"])


def windowed_cooc(stream: _Stream, times: np.ndarray, starts: np.ndarray, tested: TestedEvents,
                  user_rows: np.ndarray) -> dict[int, np.ndarray]:
    """Score rows ``[n_tested, width]`` of co-occurrence within each of :data:`WINDOWS`."""
    n_items, width = len(stream.item_ids), tested.width
    counts = {w: np.zeros((n_items, n_items), np.float32) for w in WINDOWS}
    out = {w: np.zeros((len(tested), width), np.float32) for w in WINDOWS}
    recent: list[list[tuple[float, int]]] = [[] for _ in range(len(stream.user_ids))]
    longest, keep, decay = max(WINDOWS), PROFILE[0], PROFILE[1]
    pos = 0
    for p in range(int(tested.part.max()) + 1):
        while pos < starts[p]:
            u, i, t = int(stream.user_idx[pos]), int(stream.item_idx[pos]), float(times[pos])
            for t2, j in reversed(recent[u]):
                if t - t2 > longest:
                    break
                for w in WINDOWS:
                    if t - t2 <= w:
                        counts[w][i, j] += 1.0
                        counts[w][j, i] += 1.0
            recent[u].append((t, i))
            pos += 1
        for r in np.flatnonzero(tested.part == p).tolist():
            items = np.array([j for _, j in recent[user_rows[r]][-keep:]], dtype=np.int64)
            weights = decay ** np.arange(len(items))[::-1]
            for w in WINDOWS:
                out[w][r] = weights @ counts[w][items, :width]
    return out


def blend(tested: TestedEvents, mask: np.ndarray, features: list[np.ndarray]) -> float:
    """Headline Hits@10 of the two-fold cross-fitted linear blend of ``features`` (ceiling.py's
    fit: fitted on one half of the test stream, scored on the other)."""
    x = torch.from_numpy(np.stack(features, axis=2))
    m, t = torch.from_numpy(mask), torch.from_numpy(tested.targets)
    second = tested.part >= np.median(tested.part)
    out = np.empty(len(tested))
    for fit_on, score_on in ((~second, second), (second, ~second)):
        f = torch.from_numpy(fit_on)
        w = fit_blend(x[f], m[f], t[f], seed=0)
        rows = np.flatnonzero(score_on)
        with torch.no_grad():
            s = (x[torch.from_numpy(rows)] @ w).numpy()
        out[rows] = tested.hits(s, rows, mask)
    return round(tested.headline(out), 4)


def rank_rows(tested: TestedEvents, raw: np.ndarray) -> np.ndarray:
    """Per-event raw scores as the ceiling's scale-free ``-log(1 + rank)`` (ties at their mean
    rank); rows of one user in one segment are the same."""
    rows = {(int(p), u): r for p, u, r in zip(tested.part, tested.users, raw, strict=True)}
    return tested.evidence(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--walks", default="chunks1000,blocks")
    parser.add_argument("--models", default="nmrn,stan,item-knn,recent-pop")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "evidence_probe.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    events = load_dataset("ml-100k")
    stream = _Stream(events)
    times = np.asarray(events.timestamps, dtype=np.float64)
    user_of = {u: k for k, u in enumerate(stream.user_ids.tolist())}
    report = []
    for walk_name in args.walks.split(","):
        walk = WALKS[walk_name]
        tested = TestedEvents(events, walk)
        mask = tested.mask()
        every = np.arange(len(tested))
        segment_start = segment_starts(len(events), walk)
        starts = segment_start[tested.part]
        evidence = {}
        for name in args.models.split(","):
            recorder = Recorder(make_model(name, seed=0))
            evaluate(recorder, events, base_fraction=BASE_FRACTION, seed=0, name=name, **walk)
            evidence[name] = tested.evidence(recorder.rows)
        hits = {name: tested.hits(x, every, mask) for name, x in evidence.items()}
        target_age = starts - stream.item_first[tested.targets]
        by_age = []
        for lo, hi in zip(AGE_BINS, (*AGE_BINS[1:], None), strict=True):
            chosen = (target_age >= lo) & (target_age < (np.inf if hi is None else hi))
            by_age.append({"age": [lo, hi], "events": int(chosen.sum()),
                           **{m: round(float(h[chosen].mean()), 4) if chosen.any() else None
                              for m, h in hits.items()}})

        cols = np.arange(tested.width)
        age = (starts[:, None] - stream.item_first[None, : tested.width]).astype(np.float64)
        age = np.where(cols[None, :] < tested.known[:, None], age, 1e12)
        last = np.zeros((len(tested), tested.width), np.float32)
        for p in np.unique(tested.part).tolist():
            s = int(segment_start[p])
            rows_p = tested.part == p
            last[rows_p] = np.bincount(stream.item_idx[max(0, s - 2000) : s],
                                       minlength=len(stream.item_ids))[: tested.width]
        candidates = {"newest": rank_rows(tested, -age),
                      "trend": rank_rows(tested, np.log1p(last) - 0.5 * np.log1p(age))}
        user_rows = np.array([user_of[u] for u in tested.users])
        for w, raw in windowed_cooc(stream, times, starts, tested, user_rows).items():
            candidates[f"cooc-{w}s"] = rank_rows(tested, raw)
        recent = evidence["recent-pop"]
        for threshold in THRESHOLDS:
            candidates[f"young-recent-pop-{threshold}"] = np.where(
                age < threshold, recent, recent.min()).astype(np.float32)
        probes = {name: {"alone": round(tested.headline(tested.hits(x, every, mask)), 4),
                         "with_nmrn": blend(tested, mask, [evidence["nmrn"], x])}
                  for name, x in candidates.items()}
        row = {"walk": walk_name, "tested": len(tested),
               "models": {m: round(tested.headline(h), 4) for m, h in hits.items()},
               "nmrn_with_all_models": blend(tested, mask, list(evidence.values())),
               "by_target_age": by_age, "probes": probes}
        print(json.dumps(row), flush=True)
        report.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
