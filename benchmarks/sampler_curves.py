"""Diagnostic curves of the adversarial sampler on ML-100K (for BENCHMARKS.md / docs/sampling.md).

Usage::

    python benchmarks/sampler_curves.py [--out benchmarks/plots/adversarial_diagnostics.png]

Trains ``nmrn-faithful`` with ``sampler="adversarial"`` on the history of the reference runs
(the first half of the log; Algorithm 1: uniform epochs for D, G pre-trained against the frozen
D, then joint epochs), then learns the test stream in chunks of 1,000, and plots G's per-step
statistics over all steps: mean reward and the baseline, the entropy of P_G against its
maximum log T, the fraction of sampled negatives that violate the margin (G's picks) against
the same fraction for uniform candidates, and how often G picks D's hardest candidate.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nmrn.data.datasets import load_dataset
from nmrn.models import make_model


def smooth(values: np.ndarray, width: int = 25) -> np.ndarray:
    if len(values) < width:
        return values
    kernel = np.ones(width) / width
    return np.convolve(values, kernel, mode="valid")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "plots" / "adversarial_diagnostics.png"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    events = load_dataset("ml-100k")
    half = len(events) // 2
    model = make_model(
        "nmrn-faithful",
        seed=args.seed,
        sampler="adversarial",
        sampler_options={"stats_window": 1_000_000},
    )
    model.fit(events[:half])
    n_fit = len(model.negative_sampler.stats)
    for lo in range(half, len(events), 1000):
        model.learn(events[lo : lo + 1000])
    rows = list(model.negative_sampler.stats)
    keys = (
        "reward",
        "baseline",
        "entropy",
        "max_entropy",
        "violation_rate",
        "uniform_violation_rate",
        "hardest_rate",
    )
    series = {k: np.array([r.get(k, np.nan) for r in rows], dtype=float) for k in keys}
    steps = np.arange(len(rows))
    fig = Figure(figsize=(11, 7))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    panels = [
        (axes[0, 0], ("reward", "baseline"), "reward  -d_D(u, v-)"),
        (axes[0, 1], ("entropy", "max_entropy"), "entropy of P_G (nats)"),
        (axes[1, 0], ("violation_rate", "uniform_violation_rate"), "margin-violation rate"),
        (axes[1, 1], ("hardest_rate",), "G picks D's hardest candidate"),
    ]
    for ax, names, title in panels:
        for name in names:
            y = smooth(series[name])
            ax.plot(steps[: len(y)], y, label=name, linewidth=1)
        ax.axvline(n_fit, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("G step (dashed: end of fit, then the stream)", fontsize=8)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    tail = {k: float(np.nanmean(v[-100:])) for k, v in series.items()}
    print(
        f"{len(rows)} G steps ({n_fit} in fit); last 100 steps: "
        + ", ".join(f"{k} {v:.3f}" for k, v in tail.items())
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
