"""Tests of the log readers: formats, id rule, time order, duplicates and error messages."""

from __future__ import annotations

import gzip
import io
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nmrn.data.events import EventBatch
from nmrn.data.readers import (
    FORMATS,
    infer_format,
    iter_log_chunks,
    read_log,
    read_movielens_1m,
    read_movielens_100k,
    read_recbole_inter,
)
from nmrn.errors import DataError

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def assert_same(a: EventBatch, b: EventBatch) -> None:
    """Equal events, in the same order, with the same id dtypes."""
    assert a.users.dtype == b.users.dtype and a.items.dtype == b.items.dtype
    assert a.users.tolist() == b.users.tolist()
    assert a.items.tolist() == b.items.tolist()
    assert a.timestamps.tolist() == b.timestamps.tolist()
    if a.weights is None or b.weights is None:
        assert a.weights is None and b.weights is None
    else:
        assert a.weights.tolist() == b.weights.tolist()


def error_of(path: Path, **kwargs: object) -> str:
    with pytest.raises(DataError) as info:
        read_log(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert str(path) in message  # every error names the file
    return message


# Five events, out of time order in the file, with a tie at t=20 (lines 3 and 5).
CSV = "user,item,timestamp,rating\n1,10,30,4\n2,11,20,5\n1,12,10,3\n3,10,20,1\n2,12,40,2\n"
SORTED = {  # read_log(CSV): stable sort by timestamp
    "users": [1, 2, 3, 1, 2],
    "items": [12, 11, 10, 10, 12],
    "timestamps": [10.0, 20.0, 20.0, 30.0, 40.0],
    "weights": [3.0, 5.0, 1.0, 4.0, 2.0],
}


def check_sorted_known(batch: EventBatch) -> None:
    assert batch.users.dtype == np.int64 and batch.items.dtype == np.int64
    assert batch.timestamps.dtype == np.float64
    assert batch.users.tolist() == SORTED["users"]
    assert batch.items.tolist() == SORTED["items"]
    assert batch.timestamps.tolist() == SORTED["timestamps"]
    assert batch.weights is not None and batch.weights.tolist() == SORTED["weights"]


# ----------------------------------------------------------------------------------------------
# infer_format and arguments
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("log.csv", "csv"),
        ("LOG.CSV", "csv"),
        ("log.csv.gz", "csv"),
        ("log.tsv", "tsv"),
        ("log.tab", "tsv"),
        ("log.parquet", "parquet"),
        ("log.pq", "parquet"),
        ("log.jsonl", "jsonl"),
        ("log.ndjson", "jsonl"),
        ("log.json", "jsonl"),
        ("ml-100k.inter", "recbole"),
        ("data/ml-100k/u.data", "ml-100k"),
        ("ml-1m/ratings.dat", "ml-1m"),
    ],
)
def test_infer_format(name: str, fmt: str) -> None:
    assert infer_format(name) == fmt
    assert infer_format(Path(name)) == fmt


@pytest.mark.parametrize("name", ["log.txt", "u.item", "movies.dat", "log"])
def test_infer_format_unknown_names_file_and_formats(name: str) -> None:
    with pytest.raises(DataError, match=re.escape(name)) as info:
        infer_format(name)
    for fmt in FORMATS:
        assert fmt in str(info.value)


def test_bad_arguments(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", CSV)
    with pytest.raises(ValueError, match="unknown log format 'xlsx'.*csv, tsv"):
        read_log(path, format="xlsx")
    with pytest.raises(ValueError, match="unknown column role.*'usr'"):
        read_log(path, columns={"usr": "user"})
    with pytest.raises(ValueError, match="chunk_rows must be at least 1"):
        read_log(path, chunk_rows=0)
    with pytest.raises(ValueError, match="sep= applies to csv, tsv and recbole"):
        read_log(write(tmp_path / "u.data", "1\t2\t3\t4\n"), sep=",")
    with pytest.raises(ValueError, match="columns= does not apply to ml-100k"):
        read_log(tmp_path / "u.data", columns={"user": "x"})
    with pytest.raises(ValueError, match="duplicates='often'.*keep, drop, error"):
        read_log(path, duplicates="often")


# ----------------------------------------------------------------------------------------------
# Each format on good input
# ----------------------------------------------------------------------------------------------


def test_csv(tmp_path: Path) -> None:
    check_sorted_known(read_log(write(tmp_path / "log.csv", CSV)))


def test_tsv_and_tab(tmp_path: Path) -> None:
    text = CSV.replace(",", "\t")
    check_sorted_known(read_log(write(tmp_path / "log.tsv", text)))
    check_sorted_known(read_log(write(tmp_path / "log.tab", text)))


def test_csv_with_other_separator_quotes_and_gzip(tmp_path: Path) -> None:
    check_sorted_known(read_log(write(tmp_path / "log.csv", CSV.replace(",", ";")), sep=";"))
    path = tmp_path / "log.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(CSV)
    check_sorted_known(read_log(path))
    quoted = read_log(write(tmp_path / "q.csv", 'user,item,timestamp\n"a,b",x,1\n'))
    assert quoted.users.tolist() == ["a,b"]


def test_parquet(tmp_path: Path) -> None:
    frame = pd.read_csv(io.StringIO(CSV))
    path = tmp_path / "log.parquet"
    frame.to_parquet(path)
    check_sorted_known(read_log(path))
    # str ids and a datetime timestamp column (-> seconds since the epoch)
    frame = pd.DataFrame(
        {
            "user_id": ["u1", "u2"],
            "item_id": ["7", "8"],
            "time": pd.to_datetime(["1970-01-01 00:00:10", "1970-01-01 00:00:05"]),
        }
    )
    frame.to_parquet(path)
    batch = read_log(path)
    assert batch.users.tolist() == ["u2", "u1"] and batch.users.dtype == object
    assert batch.items.tolist() == [8, 7] and batch.items.dtype == np.int64  # integer literals
    assert batch.timestamps.tolist() == [5.0, 10.0]
    assert batch.weights is None


def test_jsonl(tmp_path: Path) -> None:
    rows = [
        dict(zip(["user", "item", "timestamp", "rating"], r, strict=True))
        for r in [(1, 10, 30, 4), (2, 11, 20, 5), (1, 12, 10, 3), (3, 10, 20, 1), (2, 12, 40, 2)]
    ]
    lines = [json.dumps(r) for r in rows]
    lines.insert(2, "")  # blank lines are skipped
    check_sorted_known(read_log(write(tmp_path / "log.jsonl", "\n".join(lines) + "\n")))
    # a JSON int and a JSON string of an int are the same id; a non-int string makes all str
    mixed = write(
        tmp_path / "m.ndjson",
        '{"user": 1, "item": "5", "ts": 1}\n{"user": "1", "item": 5, "ts": 2.5}\n',
    )
    batch = read_log(mixed)
    assert batch.users.tolist() == [1, 1] and batch.items.tolist() == [5, 5]
    assert batch.timestamps.tolist() == [1.0, 2.5]
    text = '{"user": 1, "item": 5, "ts": 1}\n{"user": "a", "item": 6.0, "ts": 2}\n'
    batch = read_log(write(tmp_path / "s.json", text))
    assert batch.users.tolist() == ["1", "a"] and batch.items.tolist() == [5, 6]


def test_movielens_100k(tmp_path: Path) -> None:
    path = write(
        tmp_path / "u.data",
        "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n",
    )
    batch = read_movielens_100k(path)
    assert batch.users.tolist() == [22, 196, 186] and batch.users.dtype == np.int64
    assert batch.items.tolist() == [377, 242, 302]
    assert batch.timestamps.tolist() == [878887116.0, 881250949.0, 891717742.0]
    assert batch.weights is not None and batch.weights.tolist() == [1.0, 3.0, 3.0]


def test_movielens_1m(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ratings.dat",
        "1::1193::5::978300760\n1::661::3::978302109\n2::1357::5::978298709\n",
    )
    batch = read_movielens_1m(path)
    assert batch.users.tolist() == [2, 1, 1] and batch.users.dtype == np.int64
    assert batch.items.tolist() == [1357, 1193, 661]
    assert batch.timestamps.tolist() == [978298709.0, 978300760.0, 978302109.0]
    assert batch.weights is not None and batch.weights.tolist() == [5.0, 5.0, 3.0]


def test_recbole_inter(tmp_path: Path) -> None:
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    path = write(tmp_path / "x.inter", header + "u7\t10\t4\t5\nu8\t11\t2.5\t1\n")
    batch = read_recbole_inter(path)
    assert batch.users.tolist() == ["u8", "u7"] and batch.items.tolist() == [11, 10]
    assert batch.items.dtype == np.int64  # :token read as text, then the id rule
    assert batch.weights is not None and batch.weights.tolist() == [2.5, 4.0]
    # columns= may name RecBole fields without their ":type"
    swapped = read_log(path, columns={"user": "item_id", "item": "user_id"})
    assert swapped.users.tolist() == [11, 10] and swapped.items.tolist() == ["u8", "u7"]


def test_movielens_100k_and_its_inter_form_are_identical(tmp_path: Path) -> None:
    rows = [
        (196, 242, 3, 881250949),
        (186, 302, 3, 891717742),
        (22, 377, 1, 878887116),
        (244, 51, 2, 880606923),
        (166, 346, 1, 886397596),
        (298, 474, 4, 884182806),
        (115, 265, 2, 881171488),
        (253, 465, 5, 891628467),
        (305, 451, 3, 886324817),
        (6, 86, 3, 883603013),
        (62, 257, 2, 879372434),
        (286, 1014, 5, 879781125),
        (200, 222, 5, 876042340),
        (210, 40, 3, 891035994),
        (224, 29, 3, 888104457),
        (303, 785, 3, 879485318),
        (122, 387, 5, 879270459),
        (194, 274, 2, 879539794),
        (291, 1042, 4, 874834944),
        (234, 1184, 2, 892079237),
        (6, 86, 3, 883603013),
    ]
    body = "".join("\t".join(map(str, r)) + "\n" for r in rows)
    u_data = write(tmp_path / "u.data", body)
    inter = write(
        tmp_path / "ml-100k.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + body,
    )
    a, b = read_movielens_100k(u_data), read_recbole_inter(inter)
    assert_same(a, b)
    assert len(a) == len(rows) and a.users.dtype == np.int64
    for chunk_a, chunk_b in zip(
        iter_log_chunks(u_data, chunk_rows=4), iter_log_chunks(inter, chunk_rows=4), strict=True
    ):
        assert_same(chunk_a, chunk_b)


# ----------------------------------------------------------------------------------------------
# Chunked reading
# ----------------------------------------------------------------------------------------------


def _all_formats(tmp_path: Path) -> dict[str, Path]:
    """The CSV rows written in every format (MovieLens formats carry the same five rows)."""
    frame = pd.read_csv(io.StringIO(CSV))
    paths = {
        "csv": write(tmp_path / "log.csv", CSV),
        "tsv": write(tmp_path / "log.tsv", CSV.replace(",", "\t")),
        "jsonl": write(tmp_path / "log.jsonl", frame.to_json(orient="records", lines=True)),
        "recbole": write(
            tmp_path / "log.inter",
            CSV.replace(",", "\t").replace(
                "user\titem\ttimestamp\trating",
                "user_id:token\titem_id:token\ttimestamp:float\trating:float",
            ),
        ),
    }
    body = frame[["user", "item", "rating", "timestamp"]].astype(str)
    paths["ml-100k"] = write(
        tmp_path / "u.data", "".join("\t".join(r) + "\n" for r in body.itertuples(index=False))
    )
    paths["ml-1m"] = write(
        tmp_path / "ratings.dat", "".join("::".join(r) + "\n" for r in body.itertuples(index=False))
    )
    paths["parquet"] = tmp_path / "log.parquet"
    frame.to_parquet(paths["parquet"])
    assert set(paths) == set(FORMATS)
    return paths


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_same_events_and_chunking_does_not_matter(tmp_path: Path, fmt: str) -> None:
    path = _all_formats(tmp_path)[fmt]
    whole = read_log(path)
    check_sorted_known(whole)
    for chunk_rows in (1, 2, 3):
        assert_same(read_log(path, chunk_rows=chunk_rows), whole)
    chunks = list(iter_log_chunks(path, chunk_rows=2))
    assert [len(c) for c in chunks] == [2, 2, 1]
    # chunks come in file order, not sorted
    assert np.concatenate([c.timestamps for c in chunks]).tolist() == [30, 20, 10, 20, 40]


def test_iter_log_chunks_checks_the_file_when_called(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        iter_log_chunks(tmp_path / "nope.csv")


def test_line_numbers_stay_right_across_chunks_and_blank_lines(tmp_path: Path) -> None:
    rows = [f"{u},{u + 100},{u}" for u in range(1, 9)]
    rows.insert(3, "")  # a blank line: skipped, but counted
    rows[7] = "5,105,soon"  # file line 9
    path = write(tmp_path / "log.csv", "user,item,timestamp\n" + "\n".join(rows) + "\n")
    for chunk_rows in (1, 2, 3, 500):
        message = error_of(path, chunk_rows=chunk_rows)
        assert "line 9: timestamp 'soon' is not a finite number" in message
    # blank lines alone are not events
    batch = read_log(write(tmp_path / "b.csv", "user,item,timestamp\n\n1,2,3\n\n"))
    assert len(batch) == 1


def test_chunks_are_validated_as_they_arrive(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "user,item,timestamp\n1,2,3\n4,5,6\n7,8,x\n")
    chunks = iter_log_chunks(path, chunk_rows=1)
    assert next(chunks).users.tolist() == [1]
    assert next(chunks).users.tolist() == [4]
    with pytest.raises(DataError, match="line 4: timestamp 'x'"):
        next(chunks)


# ----------------------------------------------------------------------------------------------
# Errors: file name + line + problem
# ----------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    message = error_of(tmp_path / "nope.csv")
    assert message.endswith("file not found")
    with pytest.raises(DataError, match="not a file"):
        read_log(tmp_path, format="csv")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("empty.csv", ""),
        ("header_only.csv", "user,item,timestamp\n"),
        ("blank.csv", "user,item,timestamp\n\n\n"),
        ("u.data", ""),
        ("empty.jsonl", "\n\n"),
        ("empty.inter", "user_id:token\titem_id:token\ttimestamp:float\n"),
    ],
)
def test_empty_input(tmp_path: Path, name: str, text: str) -> None:
    assert "no events (empty input" in error_of(write(tmp_path / name, text))
    with pytest.raises(DataError, match="empty input"):
        list(iter_log_chunks(tmp_path / name))


def test_empty_parquet(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pd.DataFrame(
        {
            "user": pd.Series([], dtype="int64"),
            "item": pd.Series([], dtype="int64"),
            "timestamp": pd.Series([], dtype="float64"),
        }
    ).to_parquet(path)
    assert "no events (empty input" in error_of(path)


def test_missing_column_says_what_was_found_and_how_to_map(tmp_path: Path) -> None:
    message = error_of(write(tmp_path / "log.csv", "visitor,product_id,when\n1,2,3\n"))
    assert "line 1: missing column(s) for user, timestamp" in message
    assert "found columns ['visitor', 'product_id', 'when']" in message
    assert "columns={'user': '<name>', 'timestamp': '<name>'}" in message
    message = error_of(tmp_path / "log.csv", columns={"user": "visitor", "timestamp": "time"})
    assert "column 'time' (given for timestamp) not found" in message
    # the same checks for JSON lines and Parquet
    message = error_of(write(tmp_path / "log.jsonl", '{"user": 1, "t": 2}\n'))
    assert "line 1: missing column(s) for item, timestamp; found columns ['user', 't']" in message
    pd.DataFrame({"user": [1], "item": [2]}).to_parquet(tmp_path / "log.parquet")
    assert "missing column(s) for timestamp" in error_of(tmp_path / "log.parquet")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("1,2,3\n4,5,\n", "line 3: timestamp is missing"),
        ("1,2,3\n4,5,yesterday\n", "line 3: timestamp 'yesterday' is not a finite number"),
        ("1,2,3\n4,5,inf\n", "line 3: timestamp inf is not a finite number"),
        ("1,2,3\n,5,6\n", "line 3: user id is missing"),
        ("1,2,3\n4,  ,6\n", "line 3: item id is missing"),
        ("1,2,3\n4,5,6,\n", "line 3: malformed row: 4 field(s) where 3 are expected"),
        ("1,2,3\n4,5\n", "line 3: malformed row: 2 field(s) where 3 are expected"),
        ("1,2,3\n4,5,6\n7,8,9,10,11\n1,2,3\n", "line 4: malformed row: 5 field(s)"),
        ("1,2,3,4\n4,5,6\n", "line 2: malformed row: 4 field(s) where 3 are expected"),
        # the earliest problem in a chunk is the one reported
        ("1,2,\n,5,6\n", "line 2: timestamp is missing"),
    ],
)
def test_bad_rows(tmp_path: Path, body: str, problem: str) -> None:
    path = write(tmp_path / "log.csv", "user,item,timestamp\n" + body)
    assert problem in error_of(path)
    assert problem in error_of(path, chunk_rows=1)


def test_non_numeric_or_missing_weight(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "user,item,timestamp,rating\n1,2,3,4\n1,2,3,good\n")
    assert "line 3: weight 'good' is not a finite number" in error_of(path)
    path = write(tmp_path / "log.csv", "user,item,timestamp,rating\n1,2,3,\n")
    assert "line 2: weight is missing" in error_of(path)


def test_wrong_separator(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", CSV.replace(",", "\t"))
    message = error_of(path)
    assert "line 1: wrong separator?" in message
    assert "read with sep=','" in message and "'user\\titem\\ttimestamp\\trating'" in message
    assert "pass sep='\\t' (or format='tsv')" in message
    # a comma-separated u.data: each row is one field
    message = error_of(write(tmp_path / "u.data", "1,2,3,4\n"))
    assert "line 1: malformed row: 1 field(s) where 4 are expected" in message
    assert "wrong separator? the row contains ','" in message


def test_malformed_movielens_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.dat", "1::2::3::4\n1::2::3\n")
    message = error_of(path)
    assert "line 2: malformed row: 3 field(s) where 4 are expected" in message
    assert "UserID::MovieID::Rating::Timestamp" in message
    path = write(tmp_path / "ratings.dat", "1::2::3::4\n1::2::3::4::5\n")
    assert "line 2: malformed row: 5 field(s)" in error_of(path)
    path = write(tmp_path / "ratings.dat", "1::2::3::4\n1:x:2:y:3:z:4\n")
    assert "line 2: malformed row" in error_of(path)
    path = write(tmp_path / "u.data", "1\t2\t3\t4\n1\t2\t3\t4\t5\n")
    assert "line 2: malformed row: 5 field(s) where 4 are expected" in error_of(path)


def test_bad_json_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", '{"user": 1, "item": 2, "ts": 3}\n\n{"user": 1,\n')
    assert "line 3: not valid JSON" in error_of(path)
    path = write(tmp_path / "log.jsonl", '{"user": 1, "item": 2, "ts": 3}\n[1, 2, 3]\n')
    assert "line 2: expected a JSON object per line, got a JSON list" in error_of(path)
    path = write(tmp_path / "log.jsonl", '{"user": 1, "item": 2, "ts": 3}\n{"user": 1, "ts": 4}\n')
    assert "line 2: item id is missing" in error_of(path, chunk_rows=1)
    path = write(tmp_path / "log.jsonl", '{"user": true, "item": 2, "ts": 3}\n')
    assert "line 1: user id True is a boolean" in error_of(path)
    path = write(tmp_path / "log.jsonl", '{"user": 1, "item": 2.5, "ts": 3}\n')
    assert "line 1: item id 2.5 is not an integer" in error_of(path)


def test_bad_parquet_rows_are_named_by_row(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pd.DataFrame({"user": ["a", "b", None], "item": [1, 2, 3], "timestamp": [1, 2, 3]}).to_parquet(
        path
    )
    assert "row 3: user id is missing" in error_of(path, chunk_rows=2)
    pd.DataFrame({"user": [1, 2], "item": [1, 2], "timestamp": [1.0, None]}).to_parquet(path)
    assert "row 2: timestamp is missing" in error_of(path, chunk_rows=1)
    write(tmp_path / "fake.parquet", "user,item,timestamp\n")
    assert "not a readable Parquet file" in error_of(tmp_path / "fake.parquet")


def test_parquet_without_pyarrow_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log.parquet"
    pd.DataFrame({"user": [1], "item": [2], "timestamp": [3]}).to_parquet(path)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import now fails
    with pytest.raises(ImportError, match=re.escape("pip install nmrn[parquet]")):
        read_log(path)


# ----------------------------------------------------------------------------------------------
# Policies: time order, duplicates
# ----------------------------------------------------------------------------------------------


def test_stable_sort_keeps_ties_in_file_order(tmp_path: Path) -> None:
    # ties at t=5 appear in file order a, b, c, d, interleaved with out-of-order rows
    text = "user,item,timestamp\na,1,5\nx,1,9\nb,1,5\ny,1,1\nc,1,5\nz,1,7\nd,1,5\n"
    batch = read_log(write(tmp_path / "log.csv", text), chunk_rows=2)
    assert batch.users.tolist() == ["y", "a", "b", "c", "d", "z", "x"]
    assert batch.timestamps.tolist() == [1, 5, 5, 5, 5, 7, 9]
    # long enough that an unstable sort (numpy's default introsort) would mix up the ties
    n = 300
    rows = "".join(f"{j},1,{(7 * j) % 4}\n" for j in range(n))
    batch = read_log(write(tmp_path / "long.csv", "user,item,timestamp\n" + rows))
    assert batch.users.tolist() == sorted(range(n), key=lambda j: ((7 * j) % 4, j))


def test_duplicates_policies(tmp_path: Path) -> None:
    text = (
        "user,item,timestamp,rating\n"
        "1,10,5,1\n"  # line 2
        "1,10,6,2\n"  # re-consumption later: never a duplicate
        "2,10,5,3\n"
        "1,10,5,4\n"  # line 5: repeats line 2 (the rating does not matter)
        "1,10,5,5\n"
    )
    path = write(tmp_path / "log.csv", text)
    kept = read_log(path)
    assert len(kept) == 5 and kept.weights is not None
    assert kept.weights.tolist() == [1, 3, 4, 5, 2]
    dropped = read_log(path, duplicates="drop", chunk_rows=2)
    assert dropped.users.tolist() == [1, 2, 1] and dropped.timestamps.tolist() == [5, 5, 6]
    assert dropped.weights is not None and dropped.weights.tolist() == [1, 3, 2]  # first kept
    message = error_of(path, duplicates="error", chunk_rows=2)
    assert "line 5: duplicate event (user 1, item 10, timestamp 5) repeats line 2" in message
    assert len(read_log(write(tmp_path / "ok.csv", CSV), duplicates="error")) == 5


# ----------------------------------------------------------------------------------------------
# Column mapping and the id rule
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "user_id,movie_id,ts,rating",
        "UserID,ItemId,Time,Score",
        "uid,iid,unix_time,weight",
        "user_id:token,item_id:token,timestamp:float,rating:float",
    ],
)
def test_column_aliases(tmp_path: Path, header: str) -> None:
    check_sorted_known(read_log(write(tmp_path / "log.csv", header + CSV[CSV.index("\n") :])))


def test_explicit_column_mapping(tmp_path: Path) -> None:
    text = (
        "who,what,when,stars,user\n1,10,30,4,z\n2,11,20,5,z\n1,12,10,3,z\n3,10,20,1,z\n"
        "2,12,40,2,z\n"
    )
    path = write(tmp_path / "log.csv", text)
    mapping = {"user": "who", "item": "what", "timestamp": "when", "weight": "stars"}
    check_sorted_known(read_log(path, columns=mapping))
    check_sorted_known(read_log(path, columns=mapping, chunk_rows=2))
    # without a weight mapping and no weight-like column, there are no weights
    no_weight = read_log(path, columns={"user": "who", "item": "what", "timestamp": "when"})
    assert no_weight.weights is None
    # an explicitly mapped column is not taken again by an alias
    batch = read_log(path, columns={"item": "user", "user": "who", "timestamp": "when"})
    assert set(batch.items.tolist()) == {"z"}


def test_ambiguous_alias_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "user_id,userId,item,ts\n1,2,3,4\n")
    message = error_of(path)
    assert "columns ['user_id', 'userId'] could each be the user" in message
    assert read_log(path, columns={"user": "userId"}).users.tolist() == [2]


def test_id_rule(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "user,item,timestamp\n 007 ,+3,1\n7,-4,2\n")
    batch = read_log(path)
    assert batch.users.dtype == np.int64 and batch.users.tolist() == [7, 7]  # "007" is 7
    assert batch.items.tolist() == [3, -4]
    path = write(tmp_path / "log.csv", "user,item,timestamp\n007,1.0,1\n7,NA,2\na1,x,3\n")
    batch = read_log(path)
    assert batch.users.dtype == object and batch.users.tolist() == ["007", "7", "a1"]
    assert batch.items.tolist() == ["1.0", "NA", "x"]  # "NA" is an id, not a missing value
    big = write(tmp_path / "big.csv", "user,item,timestamp\n99999999999999999999,1,1\n")
    assert read_log(big).users.tolist() == ["99999999999999999999"]  # beyond int64: str


def test_id_rule_over_the_whole_file_in_read_log_per_chunk_in_iter(tmp_path: Path) -> None:
    text = "user,item,timestamp\n007,1,1\n8,2,2\nu9,3,3\n"
    path = write(tmp_path / "log.csv", text)
    for chunk_rows in (1, 2, 10):
        batch = read_log(path, chunk_rows=chunk_rows)
        assert batch.users.tolist() == ["007", "8", "u9"] and batch.items.dtype == np.int64
    chunks = list(iter_log_chunks(path, chunk_rows=2))
    assert chunks[0].users.tolist() == [7, 8] and chunks[0].users.dtype == np.int64
    assert chunks[1].users.tolist() == ["u9"]


@settings(deadline=None, max_examples=40)
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.integers(-50, 50), st.sampled_from(["a", "b", "u-1", "07"])),
            st.integers(0, 20),
            st.integers(0, 5),  # few distinct timestamps: many ties
        ),
        min_size=1,
        max_size=30,
    ),
    chunk_rows=st.integers(1, 7),
)
def test_property_read_log_is_a_stable_sort_of_the_file(
    rows: list[tuple[int | str, int, int]], chunk_rows: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.csv"
        path.write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
        batch = read_log(path, chunk_rows=chunk_rows)
        chunks = list(iter_log_chunks(path, chunk_rows=chunk_rows))
    order = sorted(range(len(rows)), key=lambda j: rows[j][2])  # Python's sort is stable
    texts = [str(rows[j][0]) for j in order]
    all_int = all(re.fullmatch(r"-?[0-9]+", s) for s in texts)
    expected_users = [int(s) for s in texts] if all_int else texts
    assert batch.users.tolist() == expected_users
    assert batch.items.tolist() == [rows[j][1] for j in order]
    assert batch.timestamps.tolist() == [float(rows[j][2]) for j in order]
    assert sum(len(c) for c in chunks) == len(rows)
    assert np.concatenate([c.timestamps for c in chunks]).tolist() == [r[2] for r in rows]


# ----------------------------------------------------------------------------------------------
# The real MovieLens-100K file
# ----------------------------------------------------------------------------------------------


def test_real_movielens_100k_inter(ml100k_path: Path) -> None:
    batch = read_recbole_inter(ml100k_path)
    assert len(batch) == 100_000
    assert len(np.unique(batch.users)) == 943 and len(np.unique(batch.items)) == 1682
    assert batch.users.dtype == np.int64 and batch.items.dtype == np.int64
    assert np.all(np.diff(batch.timestamps) >= 0)
    assert batch.weights is not None and set(np.unique(batch.weights)) == {1, 2, 3, 4, 5}


def test_a_registered_format_is_inferred_and_read(tmp_path: Path, monkeypatch: Any) -> None:
    # the worked example of CONTRIBUTING.md: a pipe-separated log is one register_format call
    import csv

    from nmrn.data import readers

    monkeypatch.setattr(readers, "LOG_FORMATS", dict(readers.LOG_FORMATS))
    readers.register_format(
        readers.LogFormat("psv", readers.delimited("|", csv.QUOTE_NONE), (".psv",), takes_sep=True)
    )
    path = tmp_path / "log.psv"
    path.write_text("user|item|timestamp\nb|x|2\na|y|1\n")
    assert readers.infer_format(path) == "psv"
    batch = readers.read_log(path)
    assert batch.users.tolist() == ["a", "b"] and batch.items.tolist() == ["y", "x"]
    with pytest.raises(ValueError, match=r"\['.csv'\] already mean the log format 'csv'"):
        readers.register_format(readers.LogFormat("other", readers.delimited(",", 0), (".csv",)))
    with pytest.raises(ValueError, match="'psv' is already registered"):
        readers.register_format(readers.LogFormat("psv", readers.delimited(",", 0)))


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_iso_8601_timestamps_are_seconds_since_the_epoch(tmp_path: Path, suffix: str) -> None:
    # issue 12: only numeric timestamps were read
    rows = [("a", "x", "2024-03-05T14:30:00+01:00"), ("b", "y", "2024-03-05"),
            ("c", "z", "2024-03-05 13:30:01")]
    path = tmp_path / f"log.{suffix}"
    if suffix == "csv":
        path.write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    else:
        path.write_text("".join(json.dumps({"user": u, "item": i, "timestamp": t}) + "\n"
                                for u, i, t in rows))
    events = read_log(path)
    day = 1709596800.0  # 2024-03-05T00:00:00Z, worked out by hand: 19787 days after 1970-01-01
    assert events.users.tolist() == ["b", "a", "c"]  # sorted by time
    assert events.timestamps.tolist() == [day, day + 13.5 * 3600, day + 13.5 * 3600 + 1]
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,timestamp\na,x,2024-03-05\nb,y,next tuesday\n")
    with pytest.raises(DataError, match="line 3"):
        read_log(bad)
