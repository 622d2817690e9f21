"""The command line, driven through its entry point on small files."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from nmrn.cli import main


@pytest.fixture
def log_csv(tmp_path):
    """A 600-event log with renamed columns, 30 users x 40 items, some structure."""
    rng = np.random.default_rng(0)
    n = 600
    users = rng.integers(0, 30, n)
    items = (users * 3 + rng.integers(0, 8, n)) % 40  # each user likes a band of items
    df = pd.DataFrame(
        {"uid": [f"u{u}" for u in users], "movie": items, "ts": rng.permutation(n) * 10}
    )
    path = tmp_path / "log.csv"
    df.to_csv(path, index=False)
    return path


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_evaluate_writes_table_json_and_plots(log_csv, tmp_path, capsys):
    out_dir = tmp_path / "res"
    code, out, err = run(
        [
            "evaluate", "--data", log_csv, "--columns", "user=uid,item=movie,timestamp=ts",
            "--models", "pop,item-knn", "--protocol", "both", "--base-fraction", "0.5",
            "--blocks", "3", "--chunk-size", "50,25", "--out", out_dir, "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    lines = [ln for ln in out.splitlines() if ln.startswith(("pop ", "item-knn "))]
    assert len(lines) == 6  # two models x (blocks, chunks of 50, chunks of 25)
    doc = json.loads((out_dir / "results.json").read_text())
    results = doc["results"] if isinstance(doc, dict) else doc
    assert sorted((r["model"], r["protocol"], r["params"].get("chunk_size")) for r in results) == [
        ("item-knn", "blocks", None), ("item-knn", "chunks", 25), ("item-knn", "chunks", 50),
        ("pop", "blocks", None), ("pop", "chunks", 25), ("pop", "chunks", 50),
    ]
    for r in results:
        assert 0.0 <= r["metrics"]["Hits@10"] <= 1.0
        assert r["n_tested"] + r["n_skipped"] == 300
        assert r["metrics"]["Hits@1"] <= r["metrics"]["Hits@10"] <= r["metrics"]["Hits@20"]
    blocks = [r for r in results if r["protocol"] == "blocks"]
    assert all(len(r["segments"]) == 3 for r in blocks)
    for setting in ("blocks", "chunks50", "chunks25"):
        png = (out_dir / f"hits10_{setting}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    # the structured items really are easier than random for item-knn
    knn = next(r for r in blocks if r["model"] == "item-knn")
    assert knn["metrics"]["Hits@10"] > 10 / 40


def test_train_then_recommend_round_trip(log_csv, tmp_path, capsys):
    ckpt = tmp_path / "model.ckpt"
    code, out, err = run(
        ["train", "--data", log_csv, "--columns", "user=uid,item=movie,timestamp=ts",
         "--model", "item-knn", "--out", ckpt],
        capsys,
    )
    assert code == 0, err
    assert (ckpt / "meta.json").is_file()
    code, out, err = run(
        ["recommend", "--checkpoint", ckpt, "--user", "u3", "--user", "nobody", "-k", "5",
         "--format", "json"],
        capsys,
    )
    assert code == 0, err
    answer = json.loads(out)
    assert [a["user"] for a in answer] == ["u3", "nobody"]
    assert answer[0]["cold"] is False and answer[1]["cold"] is True
    assert len(answer[0]["items"]) == 5 and len(set(answer[0]["items"])) == 5
    # the model's own recommend gives the same list
    from nmrn.training.contract import Recommender

    model = Recommender.load(ckpt)
    assert model.recommend("u3", k=5).items.tolist() == answer[0]["items"]
    # exclusion: nothing u3 has seen is recommended
    seen = set(pd.read_csv(log_csv).query("uid == 'u3'")["movie"])
    assert not seen & set(answer[0]["items"])
    # the other formats say the same: one line per user
    code, out, _ = run(["recommend", "--checkpoint", ckpt, "--user", "u3", "--user", "nobody",
                        "-k", "5", "--format", "jsonl"], capsys)
    assert [json.loads(line) for line in out.splitlines()] == answer
    code, out, _ = run(["recommend", "--checkpoint", ckpt, "--user", "u3", "--user", "77",
                        "-k", "5"], capsys)
    lines = out.splitlines()
    assert lines[0] == "u3: " + " ".join(map(str, answer[0]["items"]))
    assert lines[1].startswith("77 (unknown user: popular items): ")


def test_recommend_returns_ids_in_the_type_they_name(tmp_path, capsys):
    # issue 12: known users came back as ints, unknown ones as strings
    from nmrn.baselines.popularity import Popularity

    ckpt = Popularity().fit([(196, 1, 0), ("alice", 2, 1)]).save(tmp_path / "p")
    code, out, _ = run(["recommend", "--checkpoint", ckpt, "--user", "196", "--user", "999",
                        "--user", "alice", "--user", "007", "--format", "json"], capsys)
    assert [row["user"] for row in json.loads(out)] == [196, 999, "alice", "007"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["evaluate", "--dataset", "ml-100k", "--models", "pop,nope"], "unknown model 'nope'"),
        (["evaluate", "--dataset", "ml-100k", "--models", "pop", "--base-fraction", "1.5"],
         "expected a number in (0, 1)"),
        (["evaluate", "--dataset", "ml-100k", "--blocks", "0"], "expected a number >= 1"),
        (["evaluate", "--dataset", "ml-100k", "--chunk-size", "ten"], "expected a whole number"),
        (["evaluate", "--dataset", "ml-100k", "--protocol", "weekly"], "invalid choice"),
        (["evaluate", "--data", "x.csv", "--columns", "usr=a"], "unknown role 'usr'"),
        (["evaluate", "--data", "x.csv", "--columns", "user"], "ROLE=NAME"),
        (["evaluate", "--dataset", "ml-100k", "--models", "pop", "--param", "bpr.dim=3"],
         "not among"),
        (["evaluate", "--dataset", "ml-100k", "--models", "bpr", "--param", "bpr.dims=3"],
         "did you mean 'dim'"),
        (["evaluate", "--dataset", "ml-100k", "--models", "bpr", "--param", "oops"],
         "MODEL.KEY=VALUE"),
        (["evaluate"], "one of the arguments --dataset --data is required"),
        (["frobnicate"], "invalid choice"),
        (["recommend", "--checkpoint", "x", "--user", "1", "-k", "-3"], "expected a number >= 1"),
        (["serve", "--checkpoint", "x", "--switch-interval", "0"], "expected a finite number > 0"),
        (["serve", "--checkpoint", "x", "--switch-interval", "inf"], "finite number > 0, got inf"),
        (["consume", "--checkpoint", "x", "--source", "-", "--idle-timeout", "nan"],
         "finite number > 0"),
        (["serve", "--checkpoint", "x", "--apply-wait", "-1"], "finite number >= 0, got -1.0"),
        (["serve", "--checkpoint", "x", "--checkpoint-seconds", "inf"], "finite number >= 0"),
        (["serve", "--checkpoint", "x", "--apply-wait", "soon"], "number of seconds, got 'soon'"),
        (["serve", "--checkpoint", "x", "--port", "99999"], "expected a port in 0..65535"),
        (["recommend", "--checkpoint", "x", "--user", "1", "--format", "xml"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args, message, capsys):
    code, out, err = run(args, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_runtime_errors_exit_1_with_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.csv"
    code, _, err = run(["evaluate", "--data", missing, "--models", "pop"], capsys)
    assert code == 1 and "missing.csv" in err and "Traceback" not in err
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,timestamp\n1,2,3\n1,3,yesterday\n")
    code, _, err = run(["evaluate", "--data", bad, "--models", "pop"], capsys)
    assert code == 1 and "line 3" in err and "timestamp" in err
    code, _, err = run(["recommend", "--checkpoint", tmp_path, "--user", "1"], capsys)
    assert code == 1 and "not an nmrn checkpoint" in err
    code, _, err = run(["data", "info", "ml-10m"], capsys)
    assert code == 1 and "ml-100k" in err  # lists the known names


def test_console_script_entry_point(tmp_path):
    """The installed `nmrn` script is wired to cli.main and exits non-zero on bad input."""
    proc = subprocess.run(
        [sys.executable, "-m", "nmrn.cli", "evaluate", "--data", str(tmp_path / "nope.csv")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1 and "nope.csv" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "nmrn.cli", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("nmrn ")


def test_the_thread_policy_is_one_thread_unless_asked(log_csv, tmp_path, capsys):
    import torch

    ckpt = tmp_path / "pop.ckpt"
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert run(["train", "--data", log_csv, "--columns", "user=uid,item=movie,timestamp=ts",
                    "--model", "pop", "--out", ckpt], capsys)[0] == 0
        assert torch.get_num_threads() == 1  # the default: figures independent of the machine
        assert run(["recommend", "--checkpoint", ckpt, "--user", "1", "--threads", "2"],
                   capsys)[0] == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_output_paths_are_checked_before_the_work(tmp_path, log_csv, capsys):
    # issue 12: an existing file as --out was a traceback, after the whole evaluation
    afile = tmp_path / "results.txt"
    afile.write_text("not a directory")
    code, out, err = run(["evaluate", "--data", log_csv, "--columns",
                          "user=uid,item=movie,timestamp=ts", "--models", "pop", "--out", afile],
                         capsys)
    assert code == 2 and "exists and is not a directory" in err and "Traceback" not in err
    assert "pop" not in out  # nothing was evaluated
    code, _, err = run(["evaluate", "--data", log_csv, "--models", "pop",
                        "--out", afile / "below"], capsys)
    assert code == 2 and "cannot create it" in err
    code, _, err = run(["train", "--data", log_csv, "--columns",
                        "user=uid,item=movie,timestamp=ts", "--model", "pop", "--out", afile],
                       capsys)
    assert code == 2 and "is not an nmrn checkpoint" in err and afile.read_text() == (
        "not a directory")


def test_help_explains_every_option_and_shows_defaults(capsys, monkeypatch):
    from nmrn.cli import build_parser

    monkeypatch.setenv("COLUMNS", "300")  # no wrapping inside the words checked below
    from nmrn.models import model_names

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"nmrn {name} {action.option_strings[0]} has no help"
    train = " ".join(sub.choices["train"].format_help().split())
    assert all(preset in train for preset in model_names())
    assert "(default: item-knn)" in train and "seed of the model (default: 0)" in train
    assert "(default: 1000)" in " ".join(sub.choices["evaluate"].format_help().split())


def test_verbose_may_follow_the_command(tmp_path, log_csv, capsys):
    from nmrn.cli import build_parser

    args = build_parser().parse_args(["train", "--data", str(log_csv), "--out", "x", "-v"])
    assert args.verbose is True
    args = build_parser().parse_args(["-v", "train", "--data", str(log_csv), "--out", "x"])
    assert args.verbose is True
    args = build_parser().parse_args(["train", "--data", str(log_csv), "--out", "x"])
    assert args.verbose is False


def test_a_missing_column_hint_speaks_command_line(tmp_path, capsys):
    log = tmp_path / "log.csv"
    log.write_text("uid,movie,ts\n1,2,3\n")
    code, _, err = run(["evaluate", "--data", log, "--models", "pop"], capsys)
    assert code == 1 and "(on the command line: --columns item=<name>)" in err  # uid, ts: known


def test_report_rewrites_plots_and_a_self_contained_html(log_csv, tmp_path, capsys):
    out_dir = tmp_path / "res"
    assert run(["evaluate", "--data", log_csv, "--columns", "user=uid,item=movie,timestamp=ts",
                "--models", "pop,item-knn", "--protocol", "both", "--base-fraction", "0.5",
                "--blocks", "3", "--chunk-size", "40", "--out", out_dir], capsys)[0] == 0
    (out_dir / "hits10_blocks.png").unlink()
    code, out, err = run(["report", out_dir / "results.json", "--plots"], capsys)
    assert code == 0, err
    assert (out_dir / "hits10_blocks.png").read_bytes()[:4] == b"\x89PNG"
    page = (out_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # two metrics x two settings
    assert "src='http" not in page and "<script" not in page  # nothing to fetch, nothing to run
    for name in ("pop", "item-knn", "blocks", "chunks 40", "new users", "recency_decay"):
        assert name in page
    assert "item-knn" in out  # the table on stdout
    code, _, err = run(["report", tmp_path / "nope.json"], capsys)
    assert code == 1 and "nope.json" in err
