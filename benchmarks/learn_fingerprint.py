"""Fingerprint of NMRN ``learn``: a hash of the final state and scores after a fixed stream.

Fits each preset on ML-100K's first ``--fit`` events, then, for each call size, starts from
that same fitted checkpoint and learns the next ``--stream`` events in calls of that size. It
prints one SHA-256 per (preset, call size) over every array the checkpoint would hold and the
scores of every known item for ``--users`` users, plus one over all of them. A change that
claims not to alter any result must leave every line identical (issue 14, per-call overhead).

    OMP_NUM_THREADS=1 python benchmarks/learn_fingerprint.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np


def _digest(model: object, users: np.ndarray) -> str:
    arrays, meta = model.snapshot()  # type: ignore[attr-defined]
    h = hashlib.sha256()
    for key in sorted(arrays):
        arr = np.ascontiguousarray(arrays[key])
        h.update(key.encode())
        h.update(str(arr.dtype).encode())
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    meta = dict(meta)
    meta.pop("nmrn_version", None)
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    items = model.known_items  # type: ignore[attr-defined]
    scores = model.score(users, np.broadcast_to(items, (len(users), len(items))))  # type: ignore[attr-defined]
    h.update(np.ascontiguousarray(scores, dtype=np.float64).tobytes())
    return h.hexdigest()


def main() -> None:
    import torch

    from nmrn.data.datasets import load_dataset
    from nmrn.models import load_model, make_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="nmrn-faithful,nmrn-memory")
    parser.add_argument("--sizes", default="1,10,100,1000")
    parser.add_argument("--fit", type=int, default=50_000)
    parser.add_argument("--stream", type=int, default=3_000)
    parser.add_argument("--users", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("ml-100k")
    head, tail = data[: args.fit], data[args.fit : args.fit + args.stream]
    overall = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            fitted = make_model(preset, seed=0).fit(head)
            path = fitted.save(Path(tmp) / preset)
            users = np.asarray(fitted.known_users[: args.users])
            line = _digest(fitted, users)
            print(f"{preset:14s} fit        {line}")
            overall.update(line.encode())
            for size in (int(s) for s in args.sizes.split(",")):
                model = load_model(path)
                for lo in range(0, len(tail), size):
                    model.learn(tail[lo : lo + size])
                line = _digest(model, users)
                print(f"{preset:14s} calls {size:<5d}{line}")
                overall.update(line.encode())
    print(f"all            {overall.hexdigest()}")


if __name__ == "__main__":
    main()
