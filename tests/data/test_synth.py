"""The synthetic log: deterministic per seed, time-ordered, streamed in windows, and shaped as its
docstring says (Zipf popularity, topical sessions, arrivals over time)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nmrn.cli import main
from nmrn.data.readers import read_log
from nmrn.data.synth import SynthConfig, item_topics, synth_chunks, write_synth
from nmrn.errors import DataError


def _whole(cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    chunks = list(synth_chunks(cfg))
    return (np.concatenate([c.users for c in chunks]), np.concatenate([c.items for c in chunks]),
            np.concatenate([c.timestamps for c in chunks]))


@settings(max_examples=30, deadline=None)
@given(users=st.integers(1, 300), items=st.integers(1, 300), events=st.integers(1, 3_000),
       chunk=st.integers(1, 1_000), seed=st.integers(0, 2**32))
def test_counts_order_and_ranges(users: int, items: int, events: int, chunk: int,
                                 seed: int) -> None:
    cfg = SynthConfig(users=users, items=items, events=events, seed=seed, chunk_events=chunk)
    sizes = [len(c) for c in synth_chunks(cfg)]
    assert sum(sizes) == events and max(sizes) <= chunk  # one window at a time, exact total
    u, i, t = _whole(cfg)
    assert (np.diff(t) >= 0).all()  # the whole log is in time order
    assert u.min() >= 0 and u.max() < users and i.min() >= 0 and i.max() < items
    assert (t == np.floor(t)).all() and t.min() >= cfg.start
    assert t.max() < cfg.start + cfg.span_days * 86_400


def test_same_seed_same_log_other_seed_other_log() -> None:
    cfg = SynthConfig(users=500, items=400, events=5_000, seed=3, chunk_events=700)
    a, b = _whole(cfg), _whole(cfg)
    c = _whole(SynthConfig(users=500, items=400, events=5_000, seed=4, chunk_events=700))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])


def test_arrivals_popularity_and_co_occurrence() -> None:
    cfg = SynthConfig(users=5_000, items=10_000, events=200_000, seed=0, chunk_events=10_000,
                      topics=50)
    u, i, _ = _whole(cfg)
    first = next(iter(synth_chunks(cfg)))
    # only the initial users and items exist in the first window; the others come later
    assert first.users.max() < round(cfg.initial_users * cfg.users)
    assert first.items.max() < round(cfg.initial_items * cfg.items)
    assert i.max() >= 0.9 * cfg.items
    users, first_seen = np.unique(u, return_index=True)
    assert (first_seen >= len(u) // 2).mean() > 0.2  # many users are new in the second half
    # Zipf: the 1% most consumed items take a large share of the events
    counts = np.sort(np.bincount(i, minlength=cfg.items))[::-1]
    assert counts[: cfg.items // 100].sum() / len(i) > 0.3
    # sessions: a user's consecutive events share a topic far above chance (1/50)
    topic = item_topics(cfg)
    order = np.lexsort((np.arange(len(u)), u))
    su, si = u[order], i[order]
    same_user = su[1:] == su[:-1]
    assert (topic[si[1:]] == topic[si[:-1]])[same_user].mean() > 0.6


@pytest.mark.parametrize("name", ["log.csv", "log.tsv.gz", "log.parquet"])
def test_file_round_trip(tmp_path: Path, name: str) -> None:
    cfg = SynthConfig(users=200, items=150, events=3_000, seed=1, chunk_events=1_000)
    stats = write_synth(cfg, tmp_path / name)
    batch = read_log(tmp_path / name)
    u, i, t = _whole(cfg)
    assert np.array_equal(batch.users, u) and np.array_equal(batch.items, i)
    assert np.array_equal(batch.timestamps, t)
    assert (stats.events, stats.users, stats.items) == (3_000, len(set(u)), len(set(i)))
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left


def test_same_config_same_bytes(tmp_path: Path) -> None:
    cfg = SynthConfig(users=300, items=300, events=4_000, seed=9, chunk_events=900)
    write_synth(cfg, tmp_path / "a.csv")
    write_synth(cfg, tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


@pytest.mark.parametrize(("field", "value"), [
    ("users", 0), ("items", -1), ("events", 1.5), ("seed", -1), ("zipf", float("nan")),
    ("affinity", 1.5), ("initial_users", 0.0), ("chunk_events", True), ("span_days", 0),
])
def test_bad_config_names_the_field(field: str, value: object) -> None:
    kwargs: dict[str, object] = {"users": 10, "items": 10, "events": 10, field: value}
    with pytest.raises(DataError, match=field):
        SynthConfig(**kwargs)  # type: ignore[arg-type]


def test_existing_file_unknown_format_and_interruption(tmp_path: Path) -> None:
    cfg = SynthConfig(users=50, items=50, events=2_000, seed=0, chunk_events=500)
    keep = tmp_path / "keep.csv"
    keep.write_text("mine\n")
    with pytest.raises(DataError, match="exists"):
        write_synth(cfg, keep)
    assert keep.read_text() == "mine\n"
    with pytest.raises(DataError, match="format"):
        write_synth(cfg, tmp_path / "log.json")

    def stop(n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_synth(cfg, tmp_path / "cut.csv", progress=stop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.csv"]  # all or nothing


def test_cli_writes_the_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.csv"
    rc = main(["data", "synth", "--users", "100", "--items", "80", "--events", "1500",
               "--seed", "2", "--out", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "1500 events" in printed and "synthetic" in printed
    assert len(read_log(out)) == 1_500
    assert os.stat(out).st_mode & 0o044  # an ordinary output file, not mkstemp's 0600
    assert main(["data", "synth", "--users", "0", "--items", "8", "--events", "1", "--out",
                 str(tmp_path / "t.csv")]) == 2
    assert "--users: expected a number >= 1, got 0" in capsys.readouterr().err
