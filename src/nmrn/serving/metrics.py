"""The live service's Prometheus metrics, with prometheus_client.

Each :class:`~nmrn.serving.service.LiveService` has a :class:`ServiceMetrics` of its own (its own
``CollectorRegistry``, so several services in one process never share or clash): histograms of
the time of ``learn`` runs and of reads, counters of errors by kind and of checkpoints, gauges of
the last checkpoint, and the service's progress (events accepted, applied, replayed; the apply
lag; the checkpoint's sequence number; known users and items), read from the service when
``/metrics`` is scraped rather than copied on every change.

Examples
--------
>>> class Idle:  # anything with the fields the progress collector reads
...     accepted_seq = applied_seq = replayed = checkpoint_seq = 0
...     class model:
...         users = items = ()
>>> metrics = ServiceMetrics(Idle())
>>> metrics.errors.labels(kind="invalid").inc()
>>> b'nmrn_errors_total{kind="invalid"} 1.0' in metrics.render()
True
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "ServiceMetrics"]

#: The content type of :meth:`ServiceMetrics.render` (Prometheus text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)


class ServiceMetrics:
    """The metrics of one live service.

    Parameters
    ----------
    service
        What the progress metrics are read from at scrape time: an object with
        ``accepted_seq``, ``applied_seq``, ``replayed``, ``checkpoint_seq`` and ``model`` (whose
        ``users`` and ``items`` have a length).

    Attributes
    ----------
    learn_seconds, recommend_seconds
        Histograms of one ``learn`` run and of one read (model lock held).
    errors
        Refused requests and internal failures, by ``kind``.
    checkpoints, checkpoint_seconds
        Checkpoints written since start, and the time spent writing them.
    checkpoint_last_seconds, checkpoint_last_snapshot_seconds
        The last checkpoint's duration, and the part of it during which reads waited.
    """

    def __init__(self, service: Any) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.learn_seconds = Histogram(
            "nmrn_learn_seconds", "Time of one learn call (one run of events).",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.recommend_seconds = Histogram(
            "nmrn_recommend_seconds", "Time of one recommend call (lock held).",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.errors = Counter(
            "nmrn_errors", "Refused requests and internal failures, by kind.", ["kind"], registry=r
        )
        self.checkpoints = Counter("nmrn_checkpoints", "Checkpoints written since start.",
                                   registry=r)
        self.checkpoint_seconds = Counter(
            "nmrn_checkpoint_seconds", "Time spent writing checkpoints.", registry=r
        )
        self.checkpoint_last_seconds = Gauge(
            "nmrn_checkpoint_last_seconds", "Duration of the last checkpoint.", registry=r
        )
        self.checkpoint_last_snapshot_seconds = Gauge(
            "nmrn_checkpoint_last_snapshot_seconds",
            "Part of the last checkpoint during which reads waited (the snapshot).", registry=r,
        )
        r.register(_Progress(service))

    def error_counts(self) -> dict[str, int]:
        """Errors counted so far, by kind."""
        counts: dict[str, int] = {}
        for metric in self.errors.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["kind"]] = int(sample.value)
        return counts

    def render(self) -> bytes:
        """Every metric in the Prometheus text exposition format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


class _Progress(Collector):
    """The service's progress, read from it at each scrape."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        s = self.service
        accepted, applied = s.accepted_seq, s.applied_seq
        yield CounterMetricFamily(
            "nmrn_events_accepted", "Events accepted (journalled) since sequence 0.", accepted
        )
        yield CounterMetricFamily(
            "nmrn_events_applied", "Events applied to the model since sequence 0.", applied
        )
        yield GaugeMetricFamily("nmrn_apply_lag_events", "Accepted events not applied yet.",
                                accepted - applied)
        yield CounterMetricFamily(
            "nmrn_events_replayed", "Journalled events replayed at start.", s.replayed
        )
        yield GaugeMetricFamily(
            "nmrn_checkpoint_seq", "Last event sequence number held by a checkpoint.",
            s.checkpoint_seq,
        )
        yield GaugeMetricFamily("nmrn_known_users", "Users the model knows.", len(s.model.users))
        yield GaugeMetricFamily("nmrn_known_items", "Items the model knows.", len(s.model.items))
        index = getattr(s.model, "retrieval_index", None)
        if index is not None:  # NMRN, BPR: the ANN candidates (config.retrieval)
            yield GaugeMetricFamily("nmrn_retrieval_ready", "1 when an ANN index answers reads.",
                                    float(index.ready))
            yield CounterMetricFamily("nmrn_retrieval_answered", "Reads answered from ANN "
                                      "candidates re-scored exactly.", index.answered)
            yield CounterMetricFamily("nmrn_retrieval_exact", "Reads that took the exact path "
                                      "with ANN on (no index yet, delta too large, too few "
                                      "candidates left).", index.fell_back)
            yield CounterMetricFamily("nmrn_retrieval_builds", "ANN index builds swapped in.",
                                      index.builds)
            yield GaugeMetricFamily("nmrn_retrieval_delta_items", "Items scored exactly on "
                                    "every read besides the candidates (changed since the "
                                    "index, not moved in place yet).",
                                    index.delta_size(len(s.model.items)))
        quality = getattr(s, "quality", None)
        if quality is not None:
            live = quality.snapshot()
            k = live["k"]
            yield GaugeMetricFamily(
                f"nmrn_live_hits_at_{k}", f"Moving Hits@{k} of incoming events against the "
                "recommendations their users would have got just before (NaN: none yet).",
                live["hits"],
            )
            yield GaugeMetricFamily(
                f"nmrn_live_ndcg_at_{k}", f"Moving NDCG@{k}, likewise.", live["ndcg"]
            )
            yield CounterMetricFamily(
                "nmrn_live_quality_events", "Incoming events ranked for the live quality.",
                live["total"],
            )
