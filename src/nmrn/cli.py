"""The ``nmrn`` command line: argument parsing and wiring only.

::

    nmrn data fetch ml-100k                   # download, verify, cache
    nmrn data info ml-100k                    # what is cached, and the log's size
    nmrn evaluate --dataset ml-100k --models pop,item-knn --protocol both --out results/
    nmrn train --dataset ml-100k --model item-knn --out model.ckpt
    nmrn recommend --checkpoint model.ckpt --user 196 -k 10

Every error a user can cause ends in one line on stderr (``nmrn: error: ...``) and a non-zero
exit status: 2 for bad arguments, 1 for everything else. Never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nmrn._version import __version__
from nmrn.argtypes import fraction, int_at_least, positive_int
from nmrn.errors import ConfigError, NMRNError

log = logging.getLogger("nmrn")
_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]{0,18}")


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments as ``nmrn: error: ...`` with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def _columns(text: str) -> dict[str, str]:
    """``user=uid,item=movie,timestamp=ts[,weight=rating]`` -> mapping of roles to names."""
    roles = {"user", "item", "timestamp", "weight"}
    out: dict[str, str] = {}
    for part in text.split(","):
        if "=" not in part:
            raise argparse.ArgumentTypeError(
                f"expected ROLE=NAME pairs such as user=uid,item=movie,timestamp=ts; got {part!r}"
            )
        role, name = (s.strip() for s in part.split("=", 1))
        if role not in roles:
            raise argparse.ArgumentTypeError(f"unknown role {role!r}; roles are {sorted(roles)}")
        if not name:
            raise argparse.ArgumentTypeError(f"empty column name for role {role!r}")
        out[role] = name
    return out


def _sizes(text: str) -> list[int]:
    """``--chunk-size 100,1000``: one or more whole numbers >= 1, in the order given."""
    sizes = [positive_int(part.strip()) for part in text.split(",") if part.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError(f"expected one or more whole numbers, got {text!r}")
    return list(dict.fromkeys(sizes))


def _param(text: str) -> tuple[str, str, Any]:
    """``MODEL.KEY=VALUE`` with VALUE parsed as JSON when it is JSON, else kept as text."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise argparse.ArgumentTypeError(
            f"expected MODEL.KEY=VALUE (e.g. bpr.dim=32), got {text!r}"
        )
    lhs, raw = text.split("=", 1)
    model, key = lhs.split(".", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return model.strip(), key.strip(), value


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help that keeps the description's line breaks and shows each option's default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            default is not None
            and default is not False
            and default is not argparse.SUPPRESS
            and default != []
            and "%(default)" not in text
            and action.option_strings
        ):
            shown = ",".join(map(str, action.default)) if isinstance(action.default, list) else (
                "%(default)s")
            text += f" (default: {shown})"
        return text


def build_parser() -> argparse.ArgumentParser:
    from nmrn.models import model_names

    models = ", ".join(model_names())
    # -v works before or after the command (`nmrn -v evaluate ...`, `nmrn evaluate -v ...`)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log progress details")
    parser = _Parser(prog="nmrn", description="Streaming recommendation with NMRN.",
                     formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"nmrn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, parents=[common],  # type: ignore[no-any-return]
                              formatter_class=_Formatter)

    data = command("data", "fetch and inspect datasets")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", parser_class=_Parser)
    data_sub.required = True
    for action, text in (("fetch", "download, verify and cache"), ("info", "describe the cache")):
        p = data_sub.add_parser(action, help=f"{text} a dataset", parents=[common],
                                formatter_class=_Formatter)
        p.add_argument("name", help="dataset name (ml-100k, ml-1m)")
        p.add_argument(
            "--data-dir",
            type=Path,
            help="cache directory (default: $NMRN_DATA_DIR, else ~/.cache/nmrn)",
        )
        if action == "fetch":
            p.add_argument(
                "--source",
                default="auto",
                choices=["auto", "grouplens", "pypi"],
                help="where to download from (auto: official host, then fallback)",
            )

    syn = data_sub.add_parser(
        "synth", parents=[common], formatter_class=_Formatter,
        help="write a synthetic log (for scale benchmarks; not data)",
        description="Write a synthetic interaction log: Zipf item popularity, sessions of "
        "co-occurring items, drift, users and items arriving over time. Synthetic: use it to "
        "measure speed and memory at scale, never accuracy. Generated in time windows, so any "
        "--events fits in memory; the same arguments always write the same file.")
    syn.add_argument("--users", type=positive_int, required=True, help="users in the population")
    syn.add_argument("--items", type=positive_int, required=True, help="items in the catalogue")
    syn.add_argument("--events", type=positive_int, required=True, help="events to write")
    syn.add_argument("--seed", type=int_at_least(0), default=0, help="random seed")
    syn.add_argument("--topics", type=positive_int, default=100,
                     help="groups of items that co-occur in sessions")
    syn.add_argument("--zipf", type=float, default=1.1, help="exponent of item popularity")
    syn.add_argument("--initial-users", type=fraction, default=0.3,
                     help="share of users present at the start (the rest arrive over time)")
    syn.add_argument("--initial-items", type=fraction, default=0.5,
                     help="share of items present at the start (the rest arrive over time)")
    syn.add_argument("--out", type=Path, required=True,
                     help="file to write: .csv or .tsv (optionally .gz/.bz2/.xz) or .parquet")

    def add_input(p: argparse.ArgumentParser) -> None:
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--dataset", help="a named dataset, fetched if needed (ml-100k, ml-1m)")
        src.add_argument("--data", type=Path, help="a log file (csv, tsv, parquet, jsonl, ...)")
        p.add_argument("--format", help="log format when the file name does not tell")
        p.add_argument(
            "--columns",
            type=_columns,
            help="column mapping, e.g. user=uid,item=movie,timestamp=ts,weight=rating",
        )
        p.add_argument("--sep", help="field separator for csv/tsv files")
        p.add_argument("--data-dir", type=Path, help="dataset cache directory")

    def add_threads(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--threads",
            type=positive_int,
            default=1,
            metavar="N",
            help="threads torch may use for one operation (1: the figures do not depend on the "
            "machine, and NMRN's and BPR's small operations run fastest on one thread; more "
            "threads change results in the last decimals)",
        )

    def add_progress(p: argparse.ArgumentParser) -> None:
        p.add_argument("--quiet", "--no-progress", action="store_true", dest="quiet",
                       help="no progress bars (they are also off when stderr is not a terminal)")

    add_progress(syn)

    ev = command("evaluate", "test-then-train evaluation of models on a log")
    add_input(ev)
    add_threads(ev)
    ev.add_argument(
        "--models",
        default="pop,recent-pop,item-knn,bpr,nmrn,nmrn-faithful",
        help=f"comma-separated model names, of: {models}",
    )
    ev.add_argument("--protocol", choices=["blocks", "chunks", "both"], default="blocks",
                    help="blocks: the paper's setting (test a block, then learn it); chunks: the "
                    "live setting (chunks of --chunk-size events); both: each in turn")
    ev.add_argument(
        "--chunk-size",
        type=_sizes,
        default=[1000],
        help="events per chunk in the chunks protocol; several, comma-separated, run each "
        "(e.g. 100,1000)",
    )
    ev.add_argument("--base-fraction", type=fraction, default=0.6,
                    help="share of the log (time-sorted) that is the history the models fit on")
    ev.add_argument("--blocks", type=positive_int, default=5,
                    help="number of equal test blocks in the blocks protocol")
    ev.add_argument("--seed", type=int, default=0,
                    help="seed of the models and of the sampled negatives of the sampled metric")
    ev.add_argument(
        "--param",
        type=_param,
        action="append",
        default=[],
        metavar="MODEL.KEY=VALUE",
        help="override a model parameter (repeatable), e.g. item-knn.recency_decay=0.9",
    )
    ev.add_argument(
        "--out",
        type=Path,
        default=Path("results"),
        help="directory for results.json and the plots",
    )
    add_progress(ev)

    tr = command("train", "fit a model on a whole log and save a checkpoint")
    add_input(tr)
    add_threads(tr)
    tr.add_argument("--model", default="item-knn", help=f"the model to train, of: {models}")
    tr.add_argument("--seed", type=int, default=0, help="seed of the model")
    tr.add_argument("--param", type=_param, action="append", default=[], metavar="MODEL.KEY=VALUE",
                    help="override a model parameter (repeatable), e.g. item-knn.alpha=0.5")
    tr.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    tr.add_argument("--nproc", type=positive_int, default=1, metavar="N",
                    help="data-parallel ranks on this machine (gloo on loopback; docs/scaling.md); "
                    "rank 0 writes the checkpoint. Under torchrun, its ranks are used instead")
    add_progress(tr)

    rc = command("recommend", "top-k items for users from a checkpoint")
    add_threads(rc)
    rc.add_argument("--checkpoint", type=Path, required=True,
                    help="a checkpoint directory (nmrn train, nmrn serve, nmrn consume)")
    rc.add_argument("--user", action="append", required=True, help="a user id (repeatable)")
    rc.add_argument("-k", type=positive_int, default=10, help="how many items per user")
    rc.add_argument("--include-seen", action="store_true",
                    help="also recommend items the user has already consumed")
    rc.add_argument("--format", choices=["table", "json", "jsonl"], default="table",
                    dest="output", help="table: one line per user; json: one document; jsonl: "
                    "one JSON object per user")

    rp = command("report", "re-plot a results.json and write one self-contained HTML report")
    rp.add_argument("results", type=Path, help="a results.json written by nmrn evaluate")
    rp.add_argument("--html", type=Path, default=None,
                    help="the HTML report to write (default: report.html next to the results)")
    rp.add_argument("--plots", action="store_true",
                    help="also re-draw hits10_<setting>.png next to the results")

    from nmrn.serving.commands import add_serve_command
    from nmrn.streams.commands import add_consume_command, add_produce_command

    for add in (add_serve_command, add_consume_command, add_produce_command):
        p = add(sub)
        p.formatter_class = _Formatter
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="log progress details")
    return parser


# -- commands ----------------------------------------------------------------------------------
def _load_events(args: argparse.Namespace) -> tuple[str, Any]:
    from nmrn.data.datasets import load_dataset
    from nmrn.data.readers import read_log

    if args.dataset:
        if args.columns or args.format or args.sep:
            raise _UsageError("--columns/--format/--sep apply to --data files, not to --dataset")
        return args.dataset, load_dataset(args.dataset, data_dir=args.data_dir)
    return str(args.data), read_log(
        args.data, format=args.format, columns=args.columns, sep=args.sep
    )


def _overrides(args: argparse.Namespace, models: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {m: {} for m in models}
    for model, key, value in args.param:
        if model not in out:
            raise _UsageError(f"--param names model {model!r}, which is not among {list(models)}")
        out[model][key] = value
    return out


def _cmd_data(args: argparse.Namespace) -> int:
    from nmrn.data.datasets import dataset_info, fetch

    if args.data_command == "synth":
        return _cmd_synth(args)
    if args.data_command == "fetch":
        fetched = fetch(
            args.name, data_dir=args.data_dir, source=args.source, progress=_download_bar()
        )
        print(f"{fetched.name}: {fetched.path}")
        print(f"source: {fetched.source}")
        print(f"sha256: {fetched.sha256}")
    else:
        info = dataset_info(args.name, data_dir=args.data_dir)
        for key, value in info.items():
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                print(f"{key}:")
                for entry in value:
                    print("  - " + ", ".join(f"{k}: {v}" for k, v in entry.items()))
            else:
                print(f"{key}: {value}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from nmrn.data.synth import SynthConfig, write_synth

    config = SynthConfig(users=args.users, items=args.items, events=args.events, seed=args.seed,
                         topics=args.topics, zipf=args.zipf, initial_users=args.initial_users,
                         initial_items=args.initial_items)
    with tqdm(total=config.events, unit="ev", unit_scale=True, desc="synth", file=sys.stderr,
              disable=not _progress_on(args)) as bar:
        stats = write_synth(config, args.out, progress=bar.update)
    print(f"{args.out}: {stats.events} events, {stats.users} users, {stats.items} items "
          f"(synthetic, seed {config.seed})")
    return 0


def _download_bar() -> Any:
    from tqdm import tqdm

    bar: dict[str, Any] = {}

    def update(done: int, total: int | None) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc="download",
                file=sys.stderr,
                leave=False,
            )
        b = bar["bar"]
        b.update(done - b.n)
        if total is not None and done >= total:
            b.close()

    return update


def _progress_on(args: argparse.Namespace) -> bool:
    """Progress bars go to stderr, and only to a terminal, unless --quiet."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def _evaluation_progress(label: str, n_base: int, on: bool) -> Any:
    """A protocol progress callback: says that the model is fitting, then a bar over the test
    stream (its right total, elapsed and ETA), left on screen."""
    if not on:
        return None
    from tqdm import tqdm

    print(f"{label}: fitting on {n_base:,} events ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    state: dict[str, Any] = {}

    def progress(done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = tqdm(total=total, desc=f"{label}: test stream", unit="ev",
                                      file=sys.stderr, leave=True, dynamic_ncols=True)
            bar.set_postfix_str(f"fit {time.perf_counter() - started:.1f} s")
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return progress


def _output_dir(path: Path) -> Path:
    """``--out`` as a directory that exists and is writable, checked before any work."""
    if path.exists() and not path.is_dir():
        raise _UsageError(f"--out {path} exists and is not a directory; give a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _UsageError(f"--out {path}: cannot create it ({err.strerror})") from None
    if not os.access(path, os.W_OK):
        raise _UsageError(f"--out {path}: not writable")
    return path


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from nmrn.evaluation.protocol import evaluate
    from nmrn.evaluation.report import format_table, plot_segments, write_json
    from nmrn.models import make_model

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        raise _UsageError("--models is empty")
    overrides = _overrides(args, models)
    # build every model once up front so a typo fails before minutes of work
    for name in models:
        make_model(name, seed=args.seed, **overrides[name])
    out = _output_dir(args.out)  # likewise a bad --out
    source, events = _load_events(args)
    log.info("%s: %d events", source, len(events))
    n_base = int(args.base_fraction * len(events))
    protocols = ["blocks", "chunks"] if args.protocol == "both" else [args.protocol]
    settings = [
        (protocol, size)
        for protocol in protocols
        for size in (args.chunk_size if protocol == "chunks" else [args.chunk_size[0]])
    ]
    results = []
    for protocol, chunk_size in settings:
        label = protocol if protocol == "blocks" else f"chunks {chunk_size}"
        for name in models:
            model = make_model(name, seed=args.seed, **overrides[name])
            result = evaluate(
                model,
                events,
                name=name,
                protocol=protocol,
                base_fraction=args.base_fraction,
                n_blocks=args.blocks,
                chunk_size=chunk_size,
                seed=args.seed,
                progress=_evaluation_progress(f"{name} [{label}]", n_base, _progress_on(args)),
            )
            results.append(result)
    print(f"{source}: {len(events)} events, base fraction {args.base_fraction}, seed {args.seed}")
    print(format_table(results))
    write_json(results, out / "results.json")
    written = [out / "results.json"]
    for setting in dict.fromkeys(r.setting for r in results):
        subset = [r for r in results if r.setting == setting]
        png = out / f"hits10_{setting.replace(' ', '')}.png"
        plot_segments(subset, png, title=f"{source}, {setting}")
        written.append(png)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from nmrn.io import is_checkpoint
    from nmrn.models import make_model
    from nmrn.training import distributed

    overrides = _overrides(args, [args.model])
    model = make_model(args.model, seed=args.seed, **overrides[args.model])
    as_rank = "WORLD_SIZE" in os.environ  # started by torchrun or by --nproc below
    ranks = int(os.environ["WORLD_SIZE"]) if as_rank else args.nproc
    if ranks > 1 and not getattr(model, "data_parallel", False):
        raise _UsageError(f"{args.model} does not train data-parallel yet (built: bpr, and "
                          "NMRN on CPU with the uniform or popularity sampler; "
                          "docs/scaling.md): run it with --nproc 1")
    if args.out.exists() and not is_checkpoint(args.out):  # before minutes of training
        raise _UsageError(f"--out {args.out} exists and is not an nmrn checkpoint; it would "
                          "not be replaced: choose another path or remove it")
    if not as_rank and args.nproc > 1:
        return distributed.run_ranks(main, args.argv, args.nproc)
    distributed.init_from_env()  # a no-op in one process
    source, events = _load_events(args)
    if _progress_on(args) and distributed.is_writer():
        print(f"training {args.model} on {len(events):,} events of {source} ...",
              file=sys.stderr, flush=True)
    model.fit(events)
    if not distributed.is_writer():  # the replicas are identical: rank 0 writes
        distributed.shutdown()
        return 0
    path = model.save(args.out)
    distributed.shutdown()
    print(
        f"trained {args.model} on {len(events)} events of {source} in {model.fit_seconds:.1f} s; "
        f"saved {path}"
    )
    return 0


def _typed(text: str, looked_up: int | str) -> int | str:
    """The id a user typed, in the type it names: an int for a canonical integer literal
    (``"196"``), text otherwise, whether or not the model knows it."""
    if isinstance(looked_up, int):
        return looked_up
    return int(text) if _CANONICAL_INT.fullmatch(text) else text


def _cmd_recommend(args: argparse.Namespace) -> int:
    from nmrn.models import load_model

    model = load_model(args.checkpoint)
    # ids typed on a command line are text: use the int form where the model knows that one
    users = [model.users.resolve_text(text) for text in args.user]
    recs = model.recommend(users, k=args.k, exclude_seen=not args.include_seen)
    rows = []
    for j, (text, user) in enumerate(zip(args.user, users, strict=True)):
        keep = [c for c, s in enumerate(recs.scores[j].tolist()) if s != float("-inf")]
        rows.append({
            "user": _typed(text, user),
            "cold": bool(recs.cold[j]),
            "items": [recs.items[j].tolist()[c] for c in keep],
            "scores": [round(float(recs.scores[j][c]), 6) for c in keep],
        })
    if args.output == "json":
        print(json.dumps(rows, indent=1))
    elif args.output == "jsonl":
        for row in rows:
            print(json.dumps(row))
    else:
        for row in rows:
            flag = " (unknown user: popular items)" if row["cold"] else ""
            items = " ".join(map(str, row["items"])) or "-"
            print(f"{row['user']}{flag}: {items}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from nmrn.evaluation.report import format_table, plot_segments, read_json, write_html

    results = read_json(args.results)
    if not results:
        raise _UsageError(f"{args.results} holds no results")
    html_path = args.html or args.results.with_name("report.html")
    if html_path.exists() and html_path.is_dir():
        raise _UsageError(f"--html {html_path} is a directory; give a file name")
    print(format_table(results))
    written = [write_html(results, html_path, title=f"nmrn evaluation: {args.results}")]
    if args.plots:
        for setting in dict.fromkeys(r.setting for r in results):
            png = args.results.with_name(f"hits10_{setting.replace(' ', '')}.png")
            plot_segments([r for r in results if r.setting == setting], png, title=setting)
            written.append(png)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from nmrn.serving.commands import run_serve

    return run_serve(args)


def _cmd_consume(args: argparse.Namespace) -> int:
    return int(args.handler(args))  # run_consume or run_produce (nmrn.streams.commands)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nmrn`` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # a launcher reruns it
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING,
            format="%(levelname)s %(name)s: %(message)s",
        )
        if getattr(args, "threads", None) is not None:
            import torch  # the thread policy: one thread unless asked (see --threads)

            torch.set_num_threads(args.threads)
        command = {
            "data": _cmd_data,
            "evaluate": _cmd_evaluate,
            "train": _cmd_train,
            "recommend": _cmd_recommend,
            "report": _cmd_report,
            "serve": _cmd_serve,
            "consume": _cmd_consume,
            "produce": _cmd_consume,  # both dispatch on args.handler
        }[args.command]
        return command(args)
    except (_UsageError, ConfigError) as err:
        print(f"nmrn: error: {err}", file=sys.stderr)
        return 2
    except (NMRNError, FileNotFoundError, PermissionError, IsADirectoryError) as err:
        print(f"nmrn: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("nmrn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
