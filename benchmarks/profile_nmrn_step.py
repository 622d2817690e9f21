"""Where the time of one NMRN training step goes (docs/scaling.md): a split in % by phase.

Fits NMRN (the paper's configuration, ``--dim`` 64, ``--slots`` 20) for one epoch on ML-100K's
first 50,000 events, then times ``--steps`` mini-batches of ``--batch`` events of the rest,
attributing wall time to the lines of ``NMRN._train_batch`` (a line tracer on that one frame;
every other frame runs untraced) and, inside them, to the fused memory recurrence kernels
(forward and backward, timed by wrapping them). Lines are classified by their source text, so
the split survives edits of the file. Prints the phases in ms per step and % of the step.

    OMP_NUM_THREADS=1 python benchmarks/profile_nmrn_step.py --batch 1024
"""

from __future__ import annotations

import argparse
import collections
import linecache
import sys
import time
from typing import Any

import torch

from nmrn.data.datasets import load_dataset
from nmrn.model import memory
from nmrn.training.nmrn import NMRN

# (phase, substrings of a line of NMRN's step that belong to it), first match wins
PHASES = [
    ("sampling of the T candidates", ("propose(",)),
    ("forward: addressing and gates", ("read_batch(",)),
    ("T candidate distances (no autograd)", ("v_neg", "s_neg", "d_neg =", "pick", "hard =")),
    ("backward (autograd)", ("autograd.grad",)),
    ("loss and hardest-negative distance", ("d_pos =", "d_hard", "v_hard", "loss", "isfinite")),
    ("sparse row updates (tables, Adagrad, clip)",
     ("_update_rows", "_merge", "uniq_i", "uniq_e", "_clip_rows(net.user", "_clip_rows(net.item")),
    ("dense updates (keys, memory, gates)", ("_update_dense", "_clip_rows(getattr")),
    ("gathers of touched rows, unique ids", ("unique(", "_rows =", "index_select", "to(dev)")),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--slots", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("ml-100k")
    model = NMRN(dim=args.dim, memory_slots=args.slots, epochs=1, batch_size=args.batch, seed=0)
    model.fit(data[:50_000])
    tail = data[50_000:]

    kernel = collections.Counter()

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any) -> Any:
            start = time.perf_counter()
            out = fn(*a)
            kernel[name] += time.perf_counter() - start
            return out
        return wrapper

    memory._fused_forward = timed("fwd", memory._fused_forward)  # type: ignore[assignment]
    memory._fused_backward = timed("bwd", memory._fused_backward)  # type: ignore[assignment]
    lines: collections.Counter[int] = collections.Counter()
    # the step and the pieces it is split into (one file, so a line number names a line)
    codes = {f.__code__ for f in (NMRN._train_batch, NMRN._forward, NMRN._gradients,
                                  NMRN._apply_gradients)}
    filename = NMRN._train_batch.__code__.co_filename
    state: dict[str, tuple[int, float]] = {}

    def local(frame: Any, event: str, arg: Any) -> Any:
        now = time.perf_counter()
        prev = state.get("at")
        if prev is not None:
            lines[prev[0]] += now - prev[1]
        state["at"] = (frame.f_lineno, time.perf_counter())
        if event == "return":
            state.pop("at")
        return local

    def outer(frame: Any, event: str, arg: Any) -> Any:
        return local if frame.f_code in codes else None

    step_times = []
    for k in range(args.steps + 2):
        part = tail[k * args.batch : (k + 1) * args.batch]
        if k == 2:  # two warm-up steps
            lines.clear()
            kernel.clear()
        start = time.perf_counter()
        sys.settrace(outer)
        model.learn(part)
        sys.settrace(None)
        if k >= 2:
            step_times.append(time.perf_counter() - start)
    total = sum(lines.values())
    split: collections.Counter[str] = collections.Counter()
    for lineno, secs in lines.items():
        text = linecache.getline(filename, lineno)
        phase = next((p for p, keys in PHASES if any(k in text for k in keys)), "other")
        split[phase] += secs
    split["forward: addressing and gates"] -= kernel["fwd"]  # the rest of read_batch
    split["backward (autograd)"] -= kernel["bwd"]
    split["recurrence over the H slots, forward"] = kernel["fwd"]
    split["recurrence over the H slots, backward"] = kernel["bwd"]
    total = sum(split.values())
    n = args.steps
    print(f"one step of {args.batch} events, d={args.dim}, H={args.slots}, "
          f"T={model.config.train.n_candidates}: {1e3 * total / n:.1f} ms in _train_batch "
          f"({1e3 * sum(step_times) / n:.1f} ms per learn call, tracer included), "
          f"mean of {n} steps")
    for phase, secs in split.most_common():
        print(f"  {phase:45s} {1e3 * secs / n:7.2f} ms  {100 * secs / total:5.1f} %")


if __name__ == "__main__":
    main()
