"""The journal, and crash recovery of the live service: nothing accepted is lost, nothing is
applied twice."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nmrn.baselines.popularity import Popularity
from nmrn.serving.journal import Journal, JournalError
from nmrn.serving.service import SEQ_KEY, LiveService, default_journal_path
from nmrn.training.contract import Recommender


def _events(n: int, start: int = 0) -> list[tuple[int | str, int | str, float]]:
    return [(j % 3, f"i{j % 7}" if j % 2 else j % 7, float(start + j)) for j in range(n)]


def test_round_trip_keeps_types_and_numbers(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = Journal(path)
    assert j.append([(1, "a", 0.0), ("u", 2, 1.5, 3.0)]) == (1, 2)
    assert j.append([(2**62, "b", 2)]) == (3, 3)
    j.close()
    entries = list(Journal(path).entries())
    assert [(e.seq, e.last) for e in entries] == [(1, 2), (3, 3)]
    assert entries[0].events == [[1, "a", 0.0], ["u", 2, 1.5, 3.0]]
    assert entries[1].events == [[2**62, "b", 2.0]]


def test_numbering_continues_after_reopen_and_after_start_seq(tmp_path: Path) -> None:
    path = tmp_path / "j"
    Journal(path, start_seq=41).append(_events(2))
    j = Journal(path, start_seq=1)  # the file's entries win over a smaller start
    assert j.append(_events(1)) == (43, 43)
    assert Journal(tmp_path / "other", start_seq=100).append(_events(1)) == (100, 100)


def test_a_torn_last_line_is_dropped_and_appends_continue(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = Journal(path)
    j.append(_events(3))
    j.close()
    whole = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b'0badc0de {"seq": 4, "events": [[1, "a"')  # a crash mid-append
    j = Journal(path)
    assert path.read_bytes() == whole
    assert j.append(_events(1)) == (4, 4)
    assert [e.seq for e in Journal(path).entries()] == [1, 4]


@pytest.mark.parametrize("damage", [
    lambda b: b.replace(b'"seq":1', b'"seq":2', 1),  # checksum no longer matches
    lambda b: b"zz" + b[2:],                         # not a checksum at all
    lambda b: b.replace(b"\n", b"\n\n", 1),          # a blank line in the middle
])
def test_damage_before_the_last_line_is_an_error(tmp_path: Path, damage: object) -> None:
    path = tmp_path / "j"
    j = Journal(path)
    j.append(_events(2))
    j.append(_events(2))
    j.close()
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(JournalError, match="line 1 is damaged|line 2 is damaged|not an nmrn jour"):
        Journal(path)


def test_a_gap_in_sequence_numbers_is_an_error(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    Journal(a).append(_events(2))
    Journal(b, start_seq=10).append(_events(1))
    a.write_bytes(a.read_bytes() + b.read_bytes())
    with pytest.raises(JournalError, match="starts at seq 10, expected 3"):
        Journal(a)


def test_bad_events_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j")
    for bad in ([(1.5, "a", 0)], [(True, "a", 0)], [(1, "a", float("nan"))], [(1, "a")], []):
        with pytest.raises(ValueError):
            j.append(bad)
    assert j.next_seq == 1 and (tmp_path / "j").read_bytes() == b""


@settings(deadline=None, max_examples=40)
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=8), cut=st.integers(0, 45),
       after=st.integers(0, 45))
def test_truncate_and_entries_give_exactly_the_later_events(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], cut: int, after: int
) -> None:
    path = tmp_path_factory.mktemp("j") / "j"
    j = Journal(path, fsync=False)
    every: list[list[object]] = []
    for n in sizes:
        rows = _events(n, start=len(every))
        j.append(rows)
        every += [list(r) for r in rows]
    total = len(every)
    j.truncate(cut)
    # an entry straddling the cut is kept whole: no event after the cut is ever dropped
    kept = [ev for e in Journal(path).entries() for ev in e.events]
    assert kept == every[len(every) - len(kept):]
    assert len(kept) >= total - cut
    later = [(e.seq, ev) for e in Journal(path).entries(after=after) for ev in e.events]
    want_from = max(after, total - len(kept))
    assert [ev for _, ev in later] == every[want_from:]
    assert [s for s, _ in later][:1] == ([want_from + 1] if want_from < total else [])
    assert j.append(_events(1)) == (total + 1, total + 1)


# -- the service across crashes ----------------------------------------------------------------
def _reference(events: list[tuple[object, ...]]) -> Popularity:
    return Popularity().fit([(0, "seed", 0.0)]).learn(events)  # type: ignore[return-value]


def _same(a: Recommender, b: Recommender) -> None:
    assert a.n_events == b.n_events
    assert a.items.to_list() == b.items.to_list()
    assert a.users.to_list() == b.users.to_list()
    np.testing.assert_array_equal(a.item_counts, b.item_counts)


def test_crash_after_accept_loses_nothing_and_applies_nothing_twice(tmp_path: Path) -> None:
    ckpt = tmp_path / "m.ckpt"
    Popularity().fit([(0, "seed", 0.0)]).save(ckpt)
    sent = _events(30)
    svc = LiveService.open(ckpt, checkpoint_every=None, checkpoint_seconds=None)
    svc.submit(sent[:10])
    svc.wait_applied()
    svc.checkpoint()                       # the checkpoint holds events 1..10
    svc.submit(sent[10:20])
    svc.wait_applied()                     # applied, but only journalled
    svc.abandon()                          # crash: no final checkpoint
    assert Recommender.load(ckpt).extra[SEQ_KEY] == 10

    svc = LiveService.open(ckpt, checkpoint_every=None, checkpoint_seconds=None)
    assert svc.replayed == 10 and svc.applied_seq == 20
    _same(svc.model, _reference(sent[:20]))
    assert svc.submit(sent[20:]) == (21, 30)
    svc.abandon()                          # crash with events accepted but maybe not applied

    with LiveService.open(ckpt, checkpoint_every=None, checkpoint_seconds=None) as svc:
        _same(svc.model, _reference(sent))
    final = Recommender.load(ckpt)         # the clean close checkpointed everything
    _same(final, _reference(sent))
    assert final.extra[SEQ_KEY] == 30 and default_journal_path(ckpt).read_bytes() == b""


def test_crash_between_checkpoint_and_journal_truncation(tmp_path: Path) -> None:
    ckpt = tmp_path / "m.ckpt"
    Popularity().fit([(0, "seed", 0.0)]).save(ckpt)
    sent = _events(12)
    svc = LiveService.open(ckpt, checkpoint_every=None, checkpoint_seconds=None)
    svc.submit(sent[:5])
    svc.submit(sent[5:])
    svc.wait_applied()
    svc.model.extra[SEQ_KEY] = 7           # a checkpoint taken mid-stream, journal not cut
    svc.model.save(ckpt)
    svc.abandon()
    svc = LiveService.open(ckpt, checkpoint_every=None, checkpoint_seconds=None)
    try:
        # the checkpoint holds all 12 (it was saved after they were applied) but says 7, so
        # this checks the replay starts exactly after the recorded number, mid-entry
        assert svc.replayed == 5 and svc.applied_seq == 12
        assert svc.model.n_events == 1 + 12 + 5
    finally:
        svc.close(checkpoint=False)


def test_periodic_checkpoints_by_count(tmp_path: Path) -> None:
    ckpt = tmp_path / "m.ckpt"
    Popularity().fit([(0, "seed", 0.0)]).save(ckpt)
    with LiveService.open(ckpt, checkpoint_every=4, checkpoint_seconds=None, apply_batch=2) as svc:
        for j in range(5):
            svc.submit(_events(2, start=2 * j))
            svc.wait_applied()
        deadline = time.monotonic() + 10
        while svc.checkpoints < 2 and time.monotonic() < deadline:  # written after applying
            time.sleep(0.01)
        assert svc.checkpoints == 2 and svc.checkpoint_seq == 8
        assert Recommender.load(ckpt).extra[SEQ_KEY] == 8


def test_a_journal_newer_than_the_checkpoint_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "m.ckpt"
    Popularity().fit([(0, "seed", 0.0)]).save(ckpt)
    Journal(default_journal_path(ckpt), start_seq=50).append(_events(2))
    with pytest.raises(JournalError, match="events 1..49 are missing"):
        LiveService.open(ckpt)


@pytest.mark.parametrize("content", [b"user,item,timestamp\n", b"just one line, no newline",
                                     b"notes\nmore notes\n", b"\x00\x01binary"])
def test_a_file_that_is_not_a_journal_is_refused_untouched(tmp_path: Path, content: bytes) -> None:
    # issue 11: --journal notes.csv truncated an unrelated one-line file as a "torn tail"
    path = tmp_path / "notes.csv"
    path.write_bytes(content)
    with pytest.raises(JournalError, match="not an nmrn journal"):
        Journal(path)
    assert path.read_bytes() == content


def test_a_torn_first_line_is_still_repaired(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = Journal(path)
    j.append(_events(2))
    j.close()
    path.write_bytes(path.read_bytes()[:-10])  # the only line, cut short by a crash
    assert Journal(path).next_seq == 1 and path.read_bytes() == b""


def test_a_symlinked_journal_is_followed_and_rotation_keeps_the_link(tmp_path: Path) -> None:
    target = tmp_path / "real" / "events.journal"
    target.parent.mkdir()
    link = tmp_path / "link.journal"
    link.symlink_to(target)
    j = Journal(link)
    j.append(_events(2))
    j.append(_events(1))
    j.truncate(2)  # rewrite + rename: of the target, not of the link
    j.close()
    assert link.is_symlink() and target.is_file()
    assert [e.seq for e in Journal(link).entries()] == [3]
    (tmp_path / "dir.journal").mkdir()
    with pytest.raises(JournalError, match="not a regular file"):
        Journal(tmp_path / "dir.journal")


def test_serve_cleans_stale_temporaries_and_keeps_a_symlinked_checkpoint(tmp_path: Path) -> None:
    # issue 11: temporaries left by a killed save were never removed; a symlinked checkpoint
    # path was replaced by a directory
    from nmrn.baselines.popularity import Popularity
    from nmrn.serving.service import LiveService

    real = tmp_path / "store" / "model.ckpt"
    real.parent.mkdir()
    Popularity().fit([(1, "a", 0.0)]).save(real)
    stale = real.parent / ".model.ckpt.tmp123"
    stale.mkdir()
    (stale / "arrays.npz").write_bytes(b"half written")
    link = tmp_path / "model.ckpt"
    link.symlink_to(real)
    with LiveService.open(link, apply_wait=0) as service:
        service.submit([(2, "b", 1.0)])
        assert service.wait_applied()
        service.checkpoint()
    assert not stale.exists()
    assert link.is_symlink() and (real / "meta.json").is_file()
    assert [p.name for p in real.parent.iterdir()] == ["model.ckpt"]  # nothing else left there
    assert (tmp_path / "model.ckpt.journal").is_file()  # the journal goes next to the link
