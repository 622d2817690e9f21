"""The command line, driven through its entry point on small files."""

from __future__ import annotations

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
        ["recommend", "--checkpoint", ckpt, "--user", "u3", "--user", "nobody", "-k", "5"],
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
