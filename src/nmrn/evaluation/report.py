"""Reports of evaluation results: an aligned text table, a JSON file and a per-segment plot.

Nothing here prints; the CLI decides where the table goes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nmrn.errors import DataError
from nmrn.evaluation.protocol import METRICS, SAMPLED_HITS, EvalResult

__all__ = ["format_table", "plot_segments", "read_json", "write_json"]

JSON_FORMAT = "nmrn-evaluation"
JSON_FORMAT_VERSION = 1

_PLOT_METRIC = "Hits@10"


def _number(value: float, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _sampled_header(results: Sequence[EvalResult]) -> str:
    sizes = {r.params.get("n_sampled") for r in results}
    if len(sizes) == 1 and None not in sizes:
        return f"Hits@10({sizes.pop()} sampled)"
    return "Hits@10(sampled)"


def format_table(results: Sequence[EvalResult]) -> str:
    """An aligned text table, one row per result.

    Columns: model, protocol (with the chunk size), Hits@1/5/10/20, NDCG@10, MRR, the sampled
    Hits@10, tested and skipped events, Hits@10 over the tested events of new users (fewer than
    :data:`~nmrn.evaluation.protocol.NEW_USER_EVENTS` earlier events) and how many there were,
    fit seconds and learn events/s. Metrics have 4 decimals; a value that could
    not be measured (nothing tested) shows as ``-``.

    Parameters
    ----------
    results
        The results to tabulate, in row order.

    Returns
    -------
    str
        A header line, a rule, then one line per result (no trailing newline).

    Examples
    --------
    >>> from nmrn.evaluation.protocol import EvalResult, METRICS
    >>> r = EvalResult("pop", "blocks", {"n_sampled": 100}, dict.fromkeys(METRICS, 0.5), [],
    ...                n_tested=10, n_skipped=2, n_base=50, fit_seconds=0.25,
    ...                learn_seconds=0.5, fit_events_per_s=200.0, learn_events_per_s=120.0)
    >>> lines = format_table([r]).splitlines()
    >>> lines[0].split("  ")[-7:]
    ['Hits@10(100 sampled)', 'tested', 'skipped', 'new H@10', 'new', 'fit s', 'learn ev/s']
    >>> lines[2].split()[:3], lines[2].split()[-6:]
    (['pop', 'blocks', '0.5000'], ['10', '2', '-', '0', '0.25', '120'])
    """
    headers = ["model", "protocol", *METRICS[:-1], _sampled_header(results)]
    headers += ["tested", "skipped", "new H@10", "new", "fit s", "learn ev/s"]
    rows = []
    for r in results:
        row = [r.model, r.setting]
        row += [_number(r.metrics.get(name, math.nan)) for name in METRICS]
        row += [str(r.n_tested), str(r.n_skipped)]
        row += [_number(r.new_user_metrics.get("Hits@10", math.nan)), str(r.n_tested_new)]
        row += [_number(r.fit_seconds, 2)]
        row.append(_number(r.learn_events_per_s, 0))
        rows.append(row)
    widths = [max([len(h), *(len(row[j]) for row in rows)]) for j, h in enumerate(headers)]
    n_text = 2  # model and protocol are left-aligned, numbers right-aligned

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(w) if j < n_text else cell.rjust(w)
            for j, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    lines = [line(headers), line(["-" * w for w in widths])]
    lines += [line(row) for row in rows]
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    """NaN/inf become ``None`` (strict JSON has neither); containers are walked."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(results: Sequence[EvalResult], path: str | os.PathLike[str]) -> None:
    """Write every figure of ``results`` (segments included) to a JSON file.

    The file is ``{"format": "nmrn-evaluation", "format_version": 1, "results": [...]}``, each
    result as :meth:`EvalResult.to_dict`. Values that could not be measured (NaN) are written
    as ``null``; a model parameter JSON cannot hold is written as its ``str``. Parent
    directories are created. :func:`read_json` reads the file back.
    """
    doc = {
        "format": JSON_FORMAT,
        "format_version": JSON_FORMAT_VERSION,
        "results": [_json_safe(r.to_dict()) for r in results],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2, default=str, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike[str]) -> list[EvalResult]:
    """Read results written by :func:`write_json`."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != JSON_FORMAT:
        raise DataError(f"{path}: not an nmrn evaluation file (format is not {JSON_FORMAT!r})")
    if doc.get("format_version") != JSON_FORMAT_VERSION:
        raise DataError(
            f"{path}: evaluation file version {doc.get('format_version')!r} is not supported "
            f"(this nmrn reads {JSON_FORMAT_VERSION})"
        )
    try:
        return [EvalResult.from_dict(r) for r in doc["results"]]
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{path}: malformed result ({err!r})") from None


def plot_segments(
    results: Sequence[EvalResult],
    path: str | os.PathLike[str],
    *,
    metric: str = _PLOT_METRIC,
    title: str | None = None,
) -> None:
    """Plot a metric per segment (block, or fifth of the test stream), one line per result.

    Parameters
    ----------
    results
        Results to draw; each is labelled ``"model (protocol)"``.
    path
        Where to write the PNG (parent directories are created).
    metric
        Which metric to draw (default Hits@10; any name of
        :data:`~nmrn.evaluation.protocol.METRICS`).
    title
        The plot's title (e.g. the dataset and the setting); the metric is added to it.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    # The object-oriented API with an Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for r in results:
        xs = [s.index + 1 for s in r.segments]
        ys = [s.metrics.get(metric, math.nan) for s in r.segments]
        ax.plot(xs, ys, marker="o", label=f"{r.model} ({r.setting})")
    protocols = {r.protocol for r in results}
    if protocols == {"blocks"}:
        ax.set_xlabel("test block")
    elif protocols == {"chunks"}:
        ax.set_xlabel("fifth of the test stream")
    else:
        ax.set_xlabel("segment (test block, or fifth of the test stream for chunks)")
    ax.set_ylabel(metric if metric != SAMPLED_HITS else "Hits@10 (sampled candidates)")
    n_max = max((len(r.segments) for r in results), default=0)
    if n_max:
        ax.set_xticks(range(1, n_max + 1))
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0.0)  # a metric's zero is meaningful: differences are not magnified
    ax.set_title(f"{metric} per segment" + (f" — {title}" if title else ""), fontsize="medium")
    if results:  # outside the axes: never over the data
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")


def _png_bytes(results: Sequence[EvalResult], metric: str, title: str) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plot.png"
        plot_segments(results, path, metric=metric, title=title)
        return path.read_bytes()


def write_html(
    results: Sequence[EvalResult], path: str | os.PathLike[str], *, title: str = "nmrn evaluation"
) -> Path:
    """One self-contained HTML report (plots embedded): per setting, the results table (with
    the new-user figures and the timings), Hits@10 and NDCG@10 per segment, each segment's
    figures, and every run's parameters. Opens in any browser, offline.
    """
    import base64
    import html

    def esc(x: Any) -> str:
        return html.escape(str(x))

    settings = list(dict.fromkeys(r.setting for r in results))
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}",
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}",
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}",
        "td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}",
        "img{max-width:100%}details{margin:0.5em 0}code{font-size:12px}",
        "</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<p>Test-then-train evaluation (docs/protocol.md): every figure is a mean over tested "
        "events, Hits@k over all known items unless marked sampled; 'new users' are tested "
        "events whose user had fewer than 5 earlier events.</p>",
    ]
    for setting in settings:
        rows = [r for r in results if r.setting == setting]
        parts.append(f"<h2>{esc(setting)}</h2><table><tr><th>model</th>")
        parts += [f"<th>{esc(m)}</th>" for m in METRICS]
        parts.append("<th>tested</th><th>new users: Hits@10 (n)</th><th>fit s</th>"
                     "<th>learn ev/s</th></tr>")
        for r in rows:
            cells = [_number(r.metrics.get(m, math.nan)) for m in METRICS]
            new = r.new_user_metrics.get("Hits@10", math.nan)
            parts.append(
                f"<tr><td>{esc(r.model)}</td>" + "".join(f"<td>{c}</td>" for c in cells)
                + f"<td>{r.n_tested}</td><td>{_number(new)} ({r.n_tested_new})</td>"
                f"<td>{_number(r.fit_seconds, 2)}</td>"
                f"<td>{_number(r.learn_events_per_s, 0)}</td></tr>"
            )
        parts.append("</table>")
        for metric in ("Hits@10", "NDCG@10"):
            png = base64.b64encode(_png_bytes(rows, metric, setting)).decode("ascii")
            parts.append(f"<img alt='{esc(metric)} per segment, {esc(setting)}' "
                         f"src='data:image/png;base64,{png}'>")
        for r in rows:
            parts.append(f"<details><summary>{esc(r.model)}: per segment and parameters"
                         "</summary><table><tr><th>segment</th><th>events</th><th>tested</th>"
                         "<th>Hits@10</th><th>NDCG@10</th><th>MRR</th></tr>")
            for seg in r.segments:
                parts.append(
                    f"<tr><td>{seg.index + 1}</td><td>{seg.start}-{seg.stop}</td>"
                    f"<td>{seg.n_tested}</td><td>{_number(seg.metrics.get('Hits@10', math.nan))}"
                    f"</td><td>{_number(seg.metrics.get('NDCG@10', math.nan))}</td>"
                    f"<td>{_number(seg.metrics.get('MRR', math.nan))}</td></tr>"
                )
            params = json.dumps(_json_safe(r.params), indent=1, default=str)
            parts.append(f"</table><pre><code>{esc(params)}</code></pre></details>")
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path

