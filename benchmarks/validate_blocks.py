"""A validation walk inside the history, closer to the test stream's blocks than the rolling-origin
folds: the reference base (the first 50,000 events of ML-100K) split in half, the second half
walked in 5 blocks of 5,000 events (or chunks). Never reads the test stream.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/validate_blocks.py blocks stan nmrn \\
        'nmrn:{"features": ["knn"]}'
    OMP_NUM_THREADS=1 python benchmarks/validate_blocks.py 1000 nmrn   # chunks of 1,000

Each argument after the walk is ``PRESET`` or ``PRESET:JSON`` (options); prints Hits@10, seed 0.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from nmrn.data.datasets import load_dataset
from nmrn.evaluation.protocol import evaluate
from nmrn.models import make_model


def main() -> None:
    torch.set_num_threads(1)
    events = load_dataset("ml-100k")
    history = events[: len(events) // 2]  # the reference runs' base; the test stream is the rest
    walk = sys.argv[1]
    kw: dict[str, object] = ({"protocol": "blocks", "n_blocks": 5} if walk == "blocks"
                             else {"protocol": "chunks", "chunk_size": int(walk)})
    for spec in sys.argv[2:]:
        preset, _, opts = spec.partition(":")
        start = time.perf_counter()
        result = evaluate(make_model(preset, seed=0, **(json.loads(opts) if opts else {})),
                          history, base_fraction=0.5, seed=0, name=preset, **kw)
        print(walk, spec, f"{result.to_dict()['metrics']['Hits@10']:.4f}",
              f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
