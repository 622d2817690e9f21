"""Reports: the text table, the JSON file and the per-segment plot."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from nmrn.data.events import as_events
from nmrn.errors import DataError
from nmrn.evaluation.protocol import METRICS, EvalResult, SegmentResult, evaluate
from nmrn.evaluation.report import format_table, plot_segments, read_json, write_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Constant:
    def fit(self, events):
        pass

    def learn(self, events):
        pass

    def score(self, users, items):
        return np.zeros((len(users), len(items)))


def _log():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 6, 120), rng.integers(0, 10, 120)
    return as_events({"user": users, "item": items, "timestamp": np.arange(120.0)})


@pytest.fixture(scope="module")
def results():
    log = _log()
    return [
        evaluate(Constant(), log, name="constant", base_fraction=0.5, n_blocks=3),
        evaluate(Constant(), log, name="constant", protocol="chunks", chunk_size=7, n_sampled=20),
    ]


def test_json_round_trip_keeps_every_field(results, tmp_path):
    path = tmp_path / "sub" / "results.json"
    write_json(results, path)
    raw = json.loads(path.read_text())
    assert raw["format"] == "nmrn-evaluation" and raw["format_version"] == 1
    for entry in raw["results"]:
        assert set(entry) == {f.name for f in dataclasses.fields(EvalResult)}
        for segment in entry["segments"]:
            assert set(segment) == {f.name for f in dataclasses.fields(SegmentResult)}
            assert set(segment["metrics"]) == set(METRICS)
    assert read_json(path) == results


def test_json_writes_unmeasurable_values_as_null_and_reads_them_as_nan(tmp_path):
    nan = dict.fromkeys(METRICS, math.nan)
    result = EvalResult(
        "m", "blocks", {"n_sampled": 100}, nan, [SegmentResult(0, 5, 9, 0, 4, nan)],
        n_tested=0, n_skipped=4, n_base=5, fit_seconds=0.0, learn_seconds=0.0,
        fit_events_per_s=math.nan, learn_events_per_s=math.nan,
    )  # fmt: skip
    path = tmp_path / "nan.json"
    write_json([result], path)
    raw = json.loads(path.read_text())["results"][0]  # strict JSON: no NaN literal
    assert raw["metrics"]["Hits@10"] is None and raw["fit_events_per_s"] is None
    back = read_json(path)[0]
    assert math.isnan(back.metrics["MRR"]) and math.isnan(back.segments[0].metrics["Hits@1"])
    assert back.n_skipped == 4 and back.segments[0].stop == 9


def test_read_json_rejects_foreign_files(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(DataError, match="not an nmrn evaluation file"):
        read_json(path)


def test_plot_is_a_png_file(results, tmp_path):
    path = tmp_path / "plots" / "hits.png"
    plot_segments(results, path)
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC)
    import matplotlib.image

    assert matplotlib.image.imread(path).shape[:2] == (420, 850)
    with pytest.raises(ValueError, match="unknown metric"):
        plot_segments(results, path, metric="Recall@3")


def test_table_has_one_row_per_result_and_aligned_columns(results):
    table = format_table(results)
    lines = table.splitlines()
    assert len(lines) == 2 + len(results)
    header = lines[0]
    for column in ["model", "protocol", "Hits@1", "Hits@20", "NDCG@10", "MRR", "tested",
                   "skipped", "fit s", "learn ev/s", "Hits@10(sampled)"]:  # fmt: skip
        assert column in header
    assert set(lines[1]) == {"-", " "}
    assert len({len(line) for line in lines}) == 1  # last column right-aligned: equal widths
    rows = [line.split() for line in lines[2:]]
    assert [row[:3] for row in rows] == [
        ["constant", "blocks", f"{results[0].metrics['Hits@1']:.4f}"],
        ["constant", "chunks", "7"],  # the chunk size belongs to the setting
    ]
    for row, result in zip(rows, results, strict=True):
        new = result.new_user_metrics["Hits@10"]
        shown = "-" if math.isnan(new) else f"{new:.4f}"  # no new user: nothing to average
        assert row[-6:-2] == [str(result.n_tested), str(result.n_skipped), shown,
                              str(result.n_tested_new)]


def test_table_shows_sample_size_and_dashes_for_nan():
    nan = dict.fromkeys(METRICS, math.nan)
    result = EvalResult(
        "m", "chunks", {"n_sampled": 50}, nan, [], 0, 3, 5, 0.0, 0.0, math.nan, math.nan
    )
    lines = format_table([result]).splitlines()
    assert "Hits@10(50 sampled)" in lines[0]
    assert lines[2].split()[2:9] == ["-"] * 7
