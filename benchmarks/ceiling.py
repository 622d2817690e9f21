"""How far can a blend of the table's models go? An optimistic bound, fitted on the test stream.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/ceiling.py \
        --models pop,recent-pop,item-knn,stan,bpr --walks blocks,chunks1000,chunks100 \
        --variant 'knn-directed=item-knn:{"history_len": 100, "recency_decay": 0.8811, \
            "cooc_decay": 0.9999, "directed": true}'

Each model is fitted on the history and walked through the reference protocol (ML-100K, base
0.5; 5 blocks, chunks of 1,000, chunks of 100) exactly as ``bench_tables.py`` does, and every
score row it gives the protocol is recorded. Offline, each row becomes a scale-free evidence
``-log(1 + rank)``; a linear blend of the models' evidence is fitted with a softmax loss (the
target against every eligible item, the protocol's exclusions applied) on one half of the test
stream and scored on the other half, and the other way round (two-fold cross-fitting), so every
tested event is scored by weights that never saw it.

**This bound reads the test stream** — the weights are fitted on the very walk they are scored
on, at its own horizon — so it is optimistic and is never used to choose a model: it answers one
question, whether the evidence of these models, however weighed, can reach a target at all. The
per-event union ("the target is in some model's top 10") is printed as a looser bound still.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import torch
from bench_tables import WALKS, parse_variant
from scipy.stats import rankdata

from nmrn.data.datasets import load_dataset
from nmrn.evaluation.metrics import expected_hits, rank_counts
from nmrn.evaluation.protocol import _Stream, evaluate
from nmrn.models import make_model

BASE_FRACTION = 0.5


class Recorder:
    """A model behind the protocol's interface that keeps every score row it is asked for."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.part, self.rows = inner, -1, {}

    def fit(self, events: Any) -> Recorder:
        self.inner.fit(events)
        self.part = 0
        return self

    def learn(self, events: Any) -> Recorder:
        self.inner.learn(events)
        self.part += 1
        return self

    def score(self, users: Any, items: Any) -> np.ndarray:
        scores = np.asarray(self.inner.score(users, items), dtype=np.float32)
        for user, row in zip(np.asarray(users).tolist(), scores, strict=True):
            self.rows[(self.part, user)] = row
        return scores


class TestedEvents:
    """The protocol's tested events of one walk: part, user, target column, exclusions."""

    def __init__(self, events: Any, walk: dict[str, Any]) -> None:
        stream = _Stream(events)
        n = len(events)
        n_base = int(round(BASE_FRACTION * n))
        positions = np.arange(n_base, n)
        if walk["protocol"] == "blocks":
            self.blocks = True
            parts = [(int(b[0]), int(b[-1]) + 1) for b in np.array_split(positions,
                                                                          walk["n_blocks"])]
        else:
            self.blocks = False
            size = walk["chunk_size"]
            parts = [(s, min(s + size, n)) for s in range(n_base, n, size)]
        part, users, targets, known, excluded = [], [], [], [], []
        for p, (start, stop) in enumerate(parts):
            tested = np.arange(start, stop)[stream.warm(start, stop)]
            if not len(tested):
                continue
            n_known = stream.n_known_items(start)
            rows, items = stream.earlier_items(tested)
            for j, q in enumerate(tested):
                part.append(p)
                users.append(stream.user_ids[stream.user_idx[q]])
                targets.append(stream.item_idx[q])
                known.append(n_known)
                mine = items[rows == j]
                excluded.append(mine[(mine < n_known) & (mine != stream.item_idx[q])])
        self.part, self.users = np.array(part), users
        self.targets, self.known, self.excluded = np.array(targets), np.array(known), excluded
        self.width = int(self.known.max())

    def __len__(self) -> int:
        return len(self.targets)

    def evidence(self, rows: dict[tuple[int, Any], np.ndarray]) -> np.ndarray:
        """``[n_events, width]`` float32: ``-log(1 + rank)`` of each known item (ties at their
        mean rank, so they stay ties), 0 beyond the known items (masked anyway)."""
        out = np.zeros((len(self), self.width), dtype=np.float32)
        for e in range(len(self)):
            row = rows[(int(self.part[e]), self.users[e])]
            out[e, : len(row)] = -np.log1p(rankdata(-row, method="average") - 1.0)
        return out

    def mask(self) -> np.ndarray:
        """bool ``[n_events, width]``: items out of each event's ranking."""
        out = np.arange(self.width)[None, :] >= self.known[:, None]
        for e, items in enumerate(self.excluded):
            out[e, items] = True
        return out

    def hits(self, scores: np.ndarray, index: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Expected Hits@10 of ``scores`` (rows = ``index``), ties as the protocol counts them."""
        scores = np.where(mask[index], -np.inf, scores.astype(np.float64))
        greater, tied = rank_counts(scores, self.targets[index])
        return expected_hits(greater, tied, 10)

    def headline(self, values: np.ndarray) -> float:
        if self.blocks:  # the mean of the block means
            return float(np.mean([values[self.part == p].mean() for p in np.unique(self.part)]))
        return float(values.mean())


def fit_blend(x: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor,
              seed: int) -> torch.Tensor:
    """Weights of a linear blend of evidence ``x [n, m, F]``, softmax loss, Adam, 6 epochs."""
    weights = torch.full((x.shape[2],), 1.0 / x.shape[2], requires_grad=True)
    optimizer = torch.optim.Adam([weights], lr=0.01)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(6):
        order = torch.randperm(len(x), generator=generator)
        for lo in range(0, len(x), 128):
            idx = order[lo : lo + 128]
            logits = (x[idx] @ weights).masked_fill(mask[idx], -1e9)
            loss = torch.nn.functional.cross_entropy(logits, targets[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return weights.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="pop,recent-pop,item-knn,stan,bpr")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=PRESET:JSON options (repeatable)")
    parser.add_argument("--walks", default=",".join(WALKS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    events = load_dataset("ml-100k")
    specs = [(m, m, {}) for m in args.models.split(",") if m]
    specs += [parse_variant(v) for v in args.variant]
    for walk_name in args.walks.split(","):
        walk = WALKS[walk_name]
        tested = TestedEvents(events, walk)
        mask = tested.mask()
        every = np.arange(len(tested))
        features, single, top10 = [], {}, []
        for name, preset, options in specs:
            recorder = Recorder(make_model(preset, seed=0, **options))
            evaluate(recorder, events, base_fraction=BASE_FRACTION, seed=0, name=name, **walk)
            x = tested.evidence(recorder.rows)
            hits = tested.hits(x, every, mask)
            single[name] = round(tested.headline(hits), 4)
            top10.append(hits)
            features.append(x)
        x = torch.from_numpy(np.stack(features, axis=2))
        m = torch.from_numpy(mask)
        t = torch.from_numpy(tested.targets)
        second = tested.part >= np.median(tested.part)
        blended = np.empty(len(tested))
        weights = []
        for fit_on, score_on in ((~second, second), (second, ~second)):
            w = fit_blend(x[torch.from_numpy(fit_on)], m[torch.from_numpy(fit_on)],
                          t[torch.from_numpy(fit_on)], seed=0)
            rows = np.flatnonzero(score_on)
            with torch.no_grad():
                s = (x[torch.from_numpy(rows)] @ w).numpy()
            blended[rows] = tested.hits(s, rows, mask)
            weights.append([round(float(v), 3) for v in w])
        best = max(single, key=single.get)
        out = {"walk": walk_name, "tested": len(tested), "models": single,
               "best_single": best,
               "blend_cross_fitted_on_the_test_stream": round(tested.headline(blended), 4),
               "ratio_to_best": round(tested.headline(blended) / single[best], 3),
               "union_top10": round(tested.headline(np.max(np.stack(top10), axis=0)), 4),
               "weights_per_fold": dict(zip([s[0] for s in specs],
                                            zip(*weights, strict=True), strict=True))}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
