"""The README's results table is what ``make demo`` prints.

The demo's command line is read from the Makefile, so the two cannot drift apart; the table's
rows must be the demo's models, in order; and the rows that are cheap to run (seconds: the
deterministic baselines) are run here, in this process, with the demo's exact arguments on the
real MovieLens-100K log, and must match the README to the printed digit. ``-m slow`` runs every
row (minutes).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAKEFILE = ROOT / "Makefile"
CHEAP = ("pop", "recent-pop", "item-knn")
TITLE = "## Results on MovieLens-100K"
# README column -> (protocol, chunk size, which figure)
COLUMNS = {
    "5 blocks": ("blocks", None, "all"),
    "chunks of 1,000": ("chunks", 1000, "all"),
    "chunks of 100": ("chunks", 100, "all"),
    "new users (chunks of 100)": ("chunks", 100, "new"),
}


def readme_table() -> dict[str, dict[str, str]]:
    """``{model: {column: text}}`` from the README's results table."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(TITLE):]
    lines = [line for line in section.splitlines()[1:] if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[0] == "model" and header[1:] == list(COLUMNS), header
    rows: dict[str, dict[str, str]] = {}
    for line in lines[2:]:
        cells = [cell.strip().strip("*") for cell in line.strip("|").split("|")]
        rows[cells[0].split()[0]] = dict(zip(header[1:], cells[1:], strict=True))
    return rows


def demo_arguments() -> tuple[list[str], list[str]]:
    """``(models, evaluate arguments without --models/--out)`` of the Makefile's demo."""
    text = MAKEFILE.read_text(encoding="utf-8")
    models = re.search(r"^MODELS \?= (\S+)$", text, re.M)
    assert models is not None
    command = re.search(r"nmrn evaluate (.*?)--out", text.replace("\\\n", " "), re.S)
    assert command is not None
    args = shlex.split(command.group(1))
    i = args.index("--models")
    del args[i : i + 2]
    return models.group(1).split(","), args


def figure(result: dict[str, Any], which: str) -> str:
    metrics = result["metrics"] if which == "all" else result["new_user_metrics"]
    return f"{metrics['Hits@10']:.4f}"


def check_rows(models: list[str], tmp_path: Path) -> None:
    from nmrn.cli import main

    _, args = demo_arguments()
    rows = readme_table()
    out = tmp_path / "demo"
    assert main(["evaluate", *args, "--models", ",".join(models), "--out", str(out),
                 "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    for model in models:
        for column, (protocol, chunk, which) in COLUMNS.items():
            [result] = [r for r in results if r["model"] == model and r["protocol"] == protocol
                        and r["params"].get("chunk_size") == chunk]
            assert rows[model][column] == figure(result, which), (model, column)


def test_the_table_lists_the_demo_models_in_order() -> None:
    models, args = demo_arguments()
    assert list(readme_table()) == models
    # the demo runs the three walks of the table
    assert args[args.index("--protocol") + 1] == "both"
    assert args[args.index("--chunk-size") + 1] == "100,1000"
    assert set(CHEAP) <= set(models)


def test_the_cheap_rows_are_what_the_demo_prints(tmp_path: Path) -> None:
    check_rows(list(CHEAP), tmp_path)


@pytest.mark.slow
def test_every_row_is_what_the_demo_prints(tmp_path: Path) -> None:
    models, _ = demo_arguments()
    check_rows(models, tmp_path)
