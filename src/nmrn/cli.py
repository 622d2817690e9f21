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
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nmrn._version import __version__
from nmrn.argtypes import fraction, positive_int
from nmrn.errors import ConfigError, NMRNError

log = logging.getLogger("nmrn")


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nmrn", description="Streaming recommendation with NMRN.")
    parser.add_argument("--version", action="version", version=f"nmrn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    data = sub.add_parser("data", help="fetch and inspect datasets")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", parser_class=_Parser)
    data_sub.required = True
    for action, text in (("fetch", "download, verify and cache"), ("info", "describe the cache")):
        p = data_sub.add_parser(action, help=f"{text} a dataset")
        p.add_argument("name", help="dataset name (ml-100k, ml-1m)")
        p.add_argument(
            "--data-dir",
            type=Path,
            help="cache directory (default: $NMRN_DATA_DIR or ~/.cache/nmrn)",
        )
        if action == "fetch":
            p.add_argument(
                "--source",
                choices=["auto", "grouplens", "pypi"],
                default="auto",
                help="where to download from (auto: official host, then fallback)",
            )

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
            help="threads torch may use for one operation (default %(default)s: the figures "
            "do not depend on the machine, and NMRN's and BPR's small operations run fastest "
            "on one thread; more threads change results in the last decimals)",
        )

    ev = sub.add_parser("evaluate", help="test-then-train evaluation of models on a log")
    add_input(ev)
    add_threads(ev)
    ev.add_argument(
        "--models",
        default="pop,recent-pop,item-knn,bpr,nmrn,nmrn-faithful",
        help="comma-separated model names (default: %(default)s)",
    )
    ev.add_argument("--protocol", choices=["blocks", "chunks", "both"], default="blocks")
    ev.add_argument(
        "--chunk-size",
        type=_sizes,
        default=[1000],
        help="events per chunk in the chunks protocol; several, comma-separated, run each "
        "(e.g. 100,1000; default 1000)",
    )
    ev.add_argument("--base-fraction", type=fraction, default=0.6)
    ev.add_argument("--blocks", type=positive_int, default=5)
    ev.add_argument("--seed", type=int, default=0)
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
        help="directory for results.json and the plots (default: %(default)s)",
    )
    ev.add_argument("--no-progress", action="store_true", help="hide progress bars")

    tr = sub.add_parser("train", help="fit a model on a whole log and save a checkpoint")
    add_input(tr)
    add_threads(tr)
    tr.add_argument("--model", default="item-knn")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--param", type=_param, action="append", default=[], metavar="MODEL.KEY=VALUE")
    tr.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")

    rc = sub.add_parser("recommend", help="top-k items for users from a checkpoint")
    add_threads(rc)
    rc.add_argument("--checkpoint", type=Path, required=True)
    rc.add_argument("--user", action="append", required=True, help="a user id (repeatable)")
    rc.add_argument("-k", type=positive_int, default=10)
    rc.add_argument("--include-seen", action="store_true")

    from nmrn.serving.commands import add_serve_command
    from nmrn.streams.commands import add_consume_command

    add_serve_command(sub)
    add_consume_command(sub)
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
            print(f"{key}: {value}")
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


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

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
    source, events = _load_events(args)
    log.info("%s: %d events", source, len(events))
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
            with tqdm(
                total=len(events),
                desc=f"{name} [{label}]",
                unit="ev",
                file=sys.stderr,
                disable=args.no_progress,
                leave=False,
            ) as bar:

                def progress(done: int, total: int, bar: Any = bar) -> None:
                    bar.update(done - bar.n)

                result = evaluate(
                    model,
                    events,
                    name=name,
                    protocol=protocol,
                    base_fraction=args.base_fraction,
                    n_blocks=args.blocks,
                    chunk_size=chunk_size,
                    seed=args.seed,
                    progress=progress,
                )
            results.append(result)
    print(f"{source}: {len(events)} events, base fraction {args.base_fraction}, seed {args.seed}")
    print(format_table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(results, args.out / "results.json")
    written = [args.out / "results.json"]
    for setting in dict.fromkeys(r.setting for r in results):
        subset = [r for r in results if r.setting == setting]
        png = args.out / f"hits10_{setting.replace(' ', '')}.png"
        plot_segments(subset, png)
        written.append(png)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from nmrn.models import make_model

    overrides = _overrides(args, [args.model])
    model = make_model(args.model, seed=args.seed, **overrides[args.model])
    source, events = _load_events(args)
    model.fit(events)
    path = model.save(args.out)
    print(
        f"trained {args.model} on {len(events)} events of {source} in {model.fit_seconds:.1f} s; "
        f"saved {path}"
    )
    return 0


def _cmd_recommend(args: argparse.Namespace) -> int:
    from nmrn.models import load_model

    model = load_model(args.checkpoint)
    # ids typed on a command line are text: use the int form where the model knows that one
    users = [model.users.resolve_text(text) for text in args.user]
    recs = model.recommend(users, k=args.k, exclude_seen=not args.include_seen)
    out = []
    for j, user in enumerate(users):
        out.append(
            {
                "user": user,
                "cold": bool(recs.cold[j]),
                "items": [x for x in recs.items[j].tolist() if x is not None],
                "scores": [float(s) for s in recs.scores[j].tolist() if s != float("-inf")],
            }
        )
    print(json.dumps(out, indent=1))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from nmrn.serving.commands import run_serve

    return run_serve(args)


def _cmd_consume(args: argparse.Namespace) -> int:
    from nmrn.streams.commands import run_consume

    return run_consume(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nmrn`` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
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
            "serve": _cmd_serve,
            "consume": _cmd_consume,
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
