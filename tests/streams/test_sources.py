"""File / stdin sources, event validation, checkpoints with positions, and ``nmrn consume``."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streams.conftest import OrderModel

from nmrn.errors import CheckpointError, ConfigError
from nmrn.io import checkpoint_exists
from nmrn.streams.commands import add_consume_command, run_consume
from nmrn.streams.consumer import Consumer
from nmrn.streams.position import load_checkpoint, save_checkpoint
from nmrn.streams.sources import FileSource, InvalidEvent, SourceError, parse_event


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _jsonl(n: int, start: int = 0) -> list[str]:
    return [json.dumps({"user": t % 7, "item": f"i{t % 5}", "timestamp": 100 + t})
            for t in range(start, start + n)]


# -- validation --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [("196", 196), ("-3", -3), ("0", 0), ("007", "007"), ("+5", "+5"), ("1e3", "1e3"),
     ("-0", "-0"), ("u1", "u1"), (str(2**63), str(2**63)), (str(2**63 - 1), 2**63 - 1)],
)
def test_text_ids_that_are_integer_literals_become_ints(text: str, expected: Any) -> None:
    event = parse_event({"user": text, "item": "x", "timestamp": "1"}, text=True)
    assert event["user"] == expected and type(event["user"]) is type(expected)


@settings(deadline=None)
@given(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False))
def test_text_round_trip_of_int_ids_and_timestamps(user: int, ts: float) -> None:
    event = parse_event({"user": str(user), "item": "a", "timestamp": repr(ts)}, text=True)
    assert event == {"user": user, "item": "a", "timestamp": ts}


@pytest.mark.parametrize(
    ("record", "reason"),
    [({"user": 1, "item": 2}, "timestamp: missing"),
     ({"user": None, "item": 2, "timestamp": 1}, "user: must be an int or a string, got null"),
     ({"user": [1], "item": 2, "timestamp": 1}, "user: must be an int or a string, got array"),
     ({"user": 1, "item": "", "timestamp": 1}, "item: must not be an empty string"),
     ({"user": 1, "item": 2**70, "timestamp": 1}, "outside the 64-bit range"),
     ({"user": 1, "item": 2, "timestamp": True}, "timestamp: must be a number, got bool True"),
     ({"user": 1, "item": 2, "timestamp": float("inf")}, "timestamp: must be a finite number"),
     # the same rule as over HTTP: in JSON a string is not a number
     ({"user": 1, "item": 2, "timestamp": "5"}, "timestamp: must be a number, got str '5'"),
     ({"user": 1, "item": "\udc80", "timestamp": 1}, "item: is not valid Unicode text"),
     ({"user": "a\x00b", "item": 2, "timestamp": 1}, "user: contains the control character"),
     ({"user": 1, "item": 2, "timestamp": 1, "weight": float("nan")}, "weight: must be a finite")],
)
def test_bad_json_records_are_refused_with_the_reason(record: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse_event(record, text=False)


# -- the file source ---------------------------------------------------------------------------
def test_jsonl_lines_positions_and_invalid_lines(tmp_path: Path) -> None:
    path = tmp_path / "ev.jsonl"
    path.write_bytes(b'{"user": 1, "item": 2, "timestamp": 3}\n\n{"user": 1}\nnot json\n'
                     b'\xff\n{"user": "a", "item": "b", "timestamp": 4.5, "weight": 2}')
    with FileSource(path) as source:
        entries = source.poll(100, 0)
        assert source.exhausted
    assert [e.position["line"] for e in entries] == [1, 3, 4, 5, 6]
    assert [e.position["offset"] for e in entries][-1] == path.stat().st_size
    assert entries[0].value == {"user": 1, "item": 2, "timestamp": 3.0}
    assert [e.value.reason for e in entries[1:4]] == [
        "item: missing (an event needs user, item and timestamp)",
        "json: not valid JSON (Expecting value at line 1 column 1)", "line is not valid UTF-8"]
    assert entries[2].value.raw == {"line": "not json"}
    assert entries[4].value == {"user": "a", "item": "b", "timestamp": 4.5, "weight": 2.0}


def test_csv_header_extra_columns_and_bad_rows(tmp_path: Path) -> None:
    path = _write(tmp_path / "ev.csv", ["rating,timestamp,item,user", "5,10,242,196",
                                        "4,11,x", "3,12,007,u1"])
    with FileSource(path, format="csv") as source:
        entries = list(source)
    assert entries[0].value == {"user": 196, "item": 242, "timestamp": 10.0}
    assert isinstance(entries[1].value, InvalidEvent)
    assert entries[1].value.reason == "row has 3 fields, the header has 4"
    assert entries[2].value == {"user": "u1", "item": "007", "timestamp": 12.0}
    _write(tmp_path / "bad.csv", ["user,item", "1,2"])
    with pytest.raises(SourceError, match=r"lacks column\(s\) \['timestamp'\]"):
        FileSource(tmp_path / "bad.csv", format="csv").poll(10, 0)


@settings(deadline=None, max_examples=25)
@given(st.integers(0, 30), st.sampled_from(["jsonl", "csv"]))
def test_resuming_after_any_position_yields_exactly_the_rest(cut: int, fmt: str) -> None:
    import tempfile

    lines = _jsonl(30)
    if fmt == "csv":
        lines = ["user,item,timestamp"] + [
            ",".join(str(json.loads(x)[k]) for k in ("user", "item", "timestamp")) for x in lines]
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / "ev", lines)
        with FileSource(path, format=fmt) as source:
            everything = list(source)
        position = everything[cut - 1].position if cut else None
        with FileSource(path, format=fmt) as source:
            source.resume_after(position)
            rest = list(source)
    assert rest == everything[cut:]


def test_resume_refuses_a_changed_file_or_a_foreign_position(tmp_path: Path) -> None:
    path = _write(tmp_path / "ev.jsonl", _jsonl(4))
    with FileSource(path) as source:
        position = source.poll(2, 0)[-1].position
    with FileSource(path) as source:
        with pytest.raises(SourceError, match="not the start of a line"):
            source.resume_after({**position, "offset": position["offset"] - 3})
    with FileSource(path) as source:
        with pytest.raises(SourceError, match="was the file replaced or truncated"):
            source.resume_after({**position, "offset": 10**6})
    with FileSource(path) as source:
        with pytest.raises(SourceError, match="from a 'redis' source"):
            source.resume_after({"source": "redis", "id": "1-0"})
    with FileSource(path, format="csv") as source:
        with pytest.raises(SourceError, match="reading 'jsonl', not 'csv'"):
            source.resume_after(position)
    with pytest.raises(SourceError, match="cannot open"):
        FileSource(tmp_path / "missing.jsonl")


def test_follow_tails_a_growing_file_and_stops_at_the_sentinel(tmp_path: Path) -> None:
    path = _write(tmp_path / "ev.jsonl", _jsonl(2))
    lines = _jsonl(3, start=2)

    def writer() -> None:
        with open(path, "a") as f:
            for line in lines:
                time.sleep(0.05)
                f.write(line[:10])  # half a line first: it must be held back
                f.flush()
                time.sleep(0.05)
                f.write(line[10:] + "\n")
                f.flush()
            f.write("__END__\n" + _jsonl(1, start=9)[0] + "\n")

    thread = threading.Thread(target=writer)
    thread.start()
    with FileSource(path, follow=True, sentinel="__END__", poll_interval=0.01) as source:
        got = list(source)
    thread.join()
    assert [e.value["timestamp"] for e in got] == [100.0, 101.0, 102.0, 103.0, 104.0]


def test_follow_stops_when_told(tmp_path: Path) -> None:
    path = _write(tmp_path / "ev.jsonl", _jsonl(3))
    source = FileSource(path, follow=True, poll_interval=0.01)
    assert len(source.poll(10, 0.05)) == 3
    assert source.poll(10, 0.05) == [] and not source.exhausted
    source.stop()
    assert source.poll(10, 0.05) == [] and source.exhausted


# -- checkpoints -------------------------------------------------------------------------------
def _checkpoint(tmp_path: Path) -> Path:
    model = OrderModel().learn([(1, 2, 3.0), ("u", "i", 4.0)])
    return save_checkpoint(model, tmp_path / "ck", position={"source": "file", "line": 2})


def test_checkpoint_round_trip_keeps_the_position(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path)
    model, position = load_checkpoint(path)
    assert position == {"source": "file", "line": 2}
    assert model.n_events == 2 and model.known_users.tolist() == [1, "u"]
    save_checkpoint(model, path, position=None)
    assert load_checkpoint(path)[1] is None
    with pytest.raises(CheckpointError, match="cannot be saved as JSON"):
        save_checkpoint(model, path, position={"when": object()})
    assert load_checkpoint(path)[0].n_events == 2  # the failed save left the old one intact


def test_an_interrupted_save_is_repaired(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path)
    # killed between "move the old one aside" and "move the new one in"
    os.rename(path, tmp_path / ".ck.old-4242")
    (tmp_path / ".ck.abc123").mkdir()  # the new one, half written
    assert checkpoint_exists(path)
    assert load_checkpoint(path)[1] == {"source": "file", "line": 2}


@pytest.mark.parametrize("kind", ["missing", "file", "format", "version", "truncated", "pickle"])
def test_not_our_checkpoint_is_refused(tmp_path: Path, kind: str) -> None:
    path = _checkpoint(tmp_path)
    meta = json.loads((path / "meta.json").read_text())
    marker = tmp_path / "pwned"
    if kind == "missing":
        path = tmp_path / "nowhere"
        message = "not a checkpoint directory"
    elif kind == "file":
        path = tmp_path / "random.bin"
        path.write_bytes(os.urandom(256))
        message = "not a checkpoint directory"
    elif kind == "format":
        (path / "meta.json").write_text(json.dumps({**meta, "format": "keras"}))
        message = "not an nmrn checkpoint"
    elif kind == "version":
        (path / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
        message = "format version 99 is not supported"
    elif kind == "truncated":
        data = (path / "arrays.npz").read_bytes()
        (path / "arrays.npz").write_bytes(data[: len(data) // 2])
        message = "unreadable or unsafe"
    else:
        class Exploit:
            def __reduce__(self) -> Any:
                return (os.system, (f"touch {marker}",))

        bomb = np.empty(1, dtype=object)
        bomb[0] = Exploit()
        with open(path / "arrays.npz", "wb") as f:
            np.savez(f, **{"model.w": bomb})
        assert b"system" in pickle.dumps(Exploit())
        message = "has dtype object; only numbers and text are read"
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)
    assert not marker.exists()


# -- the consumer over a file ------------------------------------------------------------------
def test_a_stopped_and_resumed_consumer_equals_a_straight_run(tmp_path: Path) -> None:
    lines = _jsonl(53)
    lines.insert(20, '{"user": 1}')
    path = _write(tmp_path / "ev.jsonl", lines)
    straight = OrderModel()
    stats = Consumer(straight, FileSource(path), tmp_path / "a", checkpoint_every=10,
                     batch_size=4).run()
    assert (stats.applied, stats.invalid, stats.stopped) == (53, 1, "end")
    total = 0
    for limit in (7, 13, 1, 40):
        if (tmp_path / "b").exists():
            model, _ = load_checkpoint(tmp_path / "b")
        else:
            model = OrderModel()
        stats = Consumer(model, FileSource(path), tmp_path / "b", checkpoint_every=10,
                         batch_size=4).run(max_events=limit)
        total += stats.applied
    assert total == 53
    resumed, position = load_checkpoint(tmp_path / "b")
    assert position["events"] == 53 and position["invalid"] == 1
    assert position["line"] == 54
    np.testing.assert_array_equal(resumed.w, straight.w)
    assert resumed.history == straight.history


def _with_ids(pairs: list[tuple[int, str]]) -> list[str]:
    """JSONL lines: event ``t`` of each pair, carrying ``event_id``."""
    return [json.dumps({"user": t % 3, "item": t % 4, "timestamp": t, "event_id": eid})
            for t, eid in pairs]


def test_a_retried_event_id_is_applied_once_within_the_window(tmp_path: Path) -> None:
    # "a" and "b" are sent again (a producer's retry): same event, same id
    lines = _with_ids([(0, "a"), (1, "b"), (0, "a"), (2, "c"), (1, "b"), (3, "d")])
    path = _write(tmp_path / "ev.jsonl", lines)
    model = OrderModel()
    stats = Consumer(model, FileSource(path), tmp_path / "ck", batch_size=2).run()
    assert (stats.applied, stats.duplicates, stats.invalid) == (4, 2, 0)
    once = OrderModel()
    once.learn([(t % 3, t % 4, float(t)) for t in range(4)])
    np.testing.assert_array_equal(model.w, once.w)
    # without deduplication every copy is applied
    plain = Consumer(OrderModel(), FileSource(path), tmp_path / "ck2", dedupe_window=0).run()
    assert (plain.applied, plain.duplicates) == (6, 0)


def test_the_window_counts_ids_and_forgets_the_oldest(tmp_path: Path) -> None:
    # window 2: after "b" and "c", "a" is forgotten, so its copy is applied again
    lines = _with_ids([(0, "a"), (1, "b"), (2, "c"), (0, "a"), (1, "c")])
    path = _write(tmp_path / "ev.jsonl", lines)
    stats = Consumer(OrderModel(), FileSource(path), tmp_path / "ck", dedupe_window=2).run()
    assert (stats.applied, stats.duplicates) == (4, 1)
    _, position = load_checkpoint(tmp_path / "ck")
    assert position["event_ids"] == "c\na" and position["duplicates"] == 1


def test_the_window_survives_a_restart_so_replay_decides_the_same(tmp_path: Path) -> None:
    pairs = [(t, f"id{t}") for t in range(12)]
    pairs.insert(7, (2, "id2"))  # retries on both sides of the restart
    pairs.insert(11, (5, "id5"))
    path = _write(tmp_path / "ev.jsonl", _with_ids(pairs))
    straight = OrderModel()
    Consumer(straight, FileSource(path), tmp_path / "a", checkpoint_every=3).run()
    first = Consumer(OrderModel(), FileSource(path), tmp_path / "b", checkpoint_every=3)
    assert first.run(max_events=6).applied == 6
    model, _ = load_checkpoint(tmp_path / "b")
    stats = Consumer(model, FileSource(path), tmp_path / "b", checkpoint_every=3).run()
    model, position = load_checkpoint(tmp_path / "b")
    assert position["events"] == 12 and position["duplicates"] == 2
    np.testing.assert_array_equal(model.w, straight.w)
    assert stats.applied == 6


@pytest.mark.parametrize("given", ["", "x" * 256, "a\nb", "\x07", 1.5, True, None, ["a"]])
def test_an_event_id_that_cannot_serve_is_ignored_and_the_event_kept(given: Any) -> None:
    # a producer's odd id must never cost the event itself (it used to be dead-lettered)
    for text in (True, False):
        if text and not isinstance(given, str):
            continue
        record = {"user": "1" if text else 1, "item": "2" if text else 2,
                  "timestamp": "3" if text else 3, "event_id": given}
        event = parse_event(record, text=text)
        assert "event_id" not in event and event["user"] == 1 and event["timestamp"] == 3.0


@pytest.mark.parametrize(("given", "kept"), [("order 17", "order 17"), ("café", "café"),
                                             (12345, "12345"), ("x" * 255, "x" * 255)])
def test_event_ids_of_any_text_or_integer_serve(given: Any, kept: str) -> None:
    event = parse_event({"user": 1, "item": 2, "timestamp": 3, "event_id": given}, text=False)
    assert event["event_id"] == kept


# -- the command -------------------------------------------------------------------------------
def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_consume_command(parser.add_subparsers(dest="command"))
    return parser.parse_args(["consume", *argv])


def test_consume_command_over_a_file_then_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "ev.jsonl", _jsonl(30))
    ck = str(tmp_path / "ck")
    assert run_consume(_parse(["--checkpoint", ck, "--source", f"file:{path}", "--model", "pop",
                               "--max-events", "12", "--batch-size", "5"])) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["applied"], first["stopped"]) == (12, "max_events")
    assert run_consume(_parse(["--checkpoint", ck, "--source", f"file:{path}"])) == 0
    second = json.loads(capsys.readouterr().out)
    assert (second["applied"], second["total_applied"], second["stopped"]) == (18, 30, "end")
    model, _ = load_checkpoint(ck)
    assert model.n_events == 30 and model.preset == "pop"


def test_consume_command_reads_stdin(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    data = "\n".join(_jsonl(25)) + "\n"
    cmd = [sys.executable, "-m", "nmrn", "consume", "--checkpoint", str(ck),
           "--source", "-", "--model", "pop"]
    done = subprocess.run(cmd, input=data.encode(), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    # the same input again: stdin cannot seek, so the first 25 lines are skipped by number
    more = data + "\n".join(_jsonl(5, start=25)) + "\n"
    done = subprocess.run(cmd, input=more.encode(), capture_output=True, timeout=60)
    assert json.loads(done.stdout)["applied"] == 5
    assert load_checkpoint(ck)[0].n_events == 30


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--source", "file:x.jsonl"], "pass --model NAME"),
     (["--source", "kafka://x", "--model", "pop"], "is not understood"),
     (["--source", "redis://127.0.0.1:1/0", "--model", "pop"], "needs --stream KEY and --group"),
     (["--source", "-", "--follow", "--model", "pop"], "--follow tails a file"),
     (["--source", "file:x", "--stream", "s", "--model", "pop"], "redis:// source only")],
)
def test_consume_command_errors(tmp_path: Path, argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_consume(_parse(["--checkpoint", str(tmp_path / "ck"), *argv]))


def test_consume_command_refuses_another_model_for_an_existing_checkpoint(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path)
    held = r"holds a OrderModel \(no preset\) model but --model pop"
    with pytest.raises(ConfigError, match=held):
        run_consume(_parse(["--checkpoint", str(path), "--source", "-", "--model", "pop"]))


def test_consume_command_matches_the_checkpoints_preset_not_its_class(tmp_path: Path) -> None:
    # issue 9: a checkpoint made from preset nmrn-faithful recorded the class name "nmrn", so
    # --model nmrn-faithful was refused and --model nmrn (another preset) accepted
    from nmrn.models import make_model

    ck = tmp_path / "ck"
    model = make_model("nmrn-faithful", dim=4, memory_slots=2, epochs=1)
    save_checkpoint(model.fit([(1, 2, 0.0), (2, 3, 1.0)]), ck, position=None)
    events = _write(tmp_path / "ev.jsonl", _jsonl(4))
    with pytest.raises(ConfigError, match="holds a 'nmrn-faithful' model but --model nmrn was"):
        run_consume(_parse(["--checkpoint", str(ck), "--source", f"file:{events}",
                            "--model", "nmrn"]))
    assert run_consume(_parse(["--checkpoint", str(ck), "--source", f"file:{events}",
                               "--model", "nmrn-faithful"])) == 0
    resumed, _ = load_checkpoint(ck)
    assert resumed.preset == "nmrn-faithful" and resumed.n_events == 2 + 4
