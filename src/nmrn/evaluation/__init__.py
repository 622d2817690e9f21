"""Streaming evaluation: tie-aware ranking metrics, the test-then-train protocol, reports.

>>> from nmrn.evaluation import METRICS
>>> METRICS[:3]
('Hits@1', 'Hits@5', 'Hits@10')
"""

from __future__ import annotations

from nmrn.evaluation.metrics import expected_hits, expected_ndcg, expected_rr, rank_counts
from nmrn.evaluation.protocol import (
    METRICS,
    PROTOCOLS,
    SAMPLED_HITS,
    EvalResult,
    Evaluation,
    SegmentResult,
    evaluate,
    iter_evaluate,
    sample_negatives,
)
from nmrn.evaluation.report import format_table, plot_segments, read_json, write_json

__all__ = [
    "METRICS",
    "PROTOCOLS",
    "SAMPLED_HITS",
    "EvalResult",
    "Evaluation",
    "SegmentResult",
    "evaluate",
    "expected_hits",
    "expected_ndcg",
    "expected_rr",
    "format_table",
    "iter_evaluate",
    "plot_segments",
    "rank_counts",
    "read_json",
    "sample_negatives",
    "write_json",
]
