"""Readers that turn interaction logs into a time-sorted :class:`~nmrn.data.events.EventBatch`.

Formats (:data:`LOG_FORMATS`, by name; :func:`infer_format` picks one from the file name; a
new format is one :func:`register_format` call, see CONTRIBUTING.md)
    ``csv``, ``tsv``
        Delimited text with a header row (``sep=`` overrides the separator). CSV fields may be
        quoted; TSV fields may not (tabs never occur inside a field).
    ``parquet``
        Needs pyarrow (``pip install nmrn[parquet]``), imported only when a Parquet file is read.
        Timestamp (datetime) columns become seconds since the Unix epoch.
    ``jsonl``
        One JSON object per line; blank lines are skipped.
    ``ml-100k``
        MovieLens ``u.data``: tab-separated ``user item rating timestamp``, no header.
    ``ml-1m``
        MovieLens ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``, no header.
    ``recbole``
        RecBole atomic ``.inter`` file: tab-separated, header fields ``name:type``
        (``user_id:token  item_id:token  rating:float  timestamp:float``).

    Text files may be compressed (``.gz``, ``.bz2``, ``.xz``) and are read as UTF-8.

Columns
    Every event has the roles ``user``, ``item``, ``timestamp`` and, optionally, ``weight``.
    ``columns=`` maps roles to the file's own column names (``{"user": "visitor"}``); a role it
    does not name is looked up among these aliases, in this order, comparing names without case,
    ``_``, ``-``, ``.``, spaces and a RecBole ``:type`` suffix:

    ========== ====================================================
    user       user, user_id, uid, customer_id, visitor_id
    item       item, item_id, iid, movie_id, product_id
    timestamp  timestamp, ts, time, unix_time
    weight     weight, rating, score
    ========== ====================================================

    ``weight`` is optional: without a matching column the batch has ``weights=None``. The
    MovieLens and RecBole formats map ``rating`` to ``weight``. For JSON lines the roles are
    resolved from the keys of the first record. Timestamps must be numbers (any unit: only their
    order matters, except to windows expressed in time). A text timestamp column whose values are
    ISO 8601 dates or date-times (``2024-03-05``, ``2024-03-05T14:30:00+01:00``) is read as
    seconds since 1970-01-01 UTC (a value without a zone counts as UTC); datetime columns of
    Parquet files likewise.

Ids
    Surrounding whitespace is stripped from text ids. An id column in which *every* value is an
    integer literal (``[+-]?[0-9]+``, within int64) becomes int64; otherwise every value of the
    column is a ``str`` (an int in a JSON or Parquet column becomes its decimal text). RecBole
    ``:token`` columns are read as text and follow the same rule, so MovieLens-100K gives the
    same int ids whether it is read from ``u.data`` or from ``ml-100k.inter``. A consequence of
    the rule: in an all-integer column ``"007"`` and ``"7"`` are the same id (7); in a column
    that also holds ``"a1"`` they are the distinct strings ``"007"`` and ``"7"``. :func:`read_log`
    applies the rule to the whole file; each batch of :func:`iter_log_chunks` applies it to that
    batch alone.

Time order
    :func:`read_log` sorts the events by timestamp with a *stable* sort: events with equal
    timestamps keep their order in the file, and rows that are out of order in the file are
    moved to their place in time.

Duplicates (``read_log(duplicates=...)``)
    ``"keep"`` (default): a repeated (user, item) pair is a real re-consumption and stays, even
    with the same timestamp. ``"drop"``: of rows identical in user, item and timestamp, keep the
    first in file order. ``"error"``: raise a :class:`~nmrn.errors.DataError` naming the line of
    the first repeated row and of the row it repeats.

Errors
    Problems in a file raise :class:`~nmrn.errors.DataError` with a message
    ``"<file>: line <n>: <problem>"``, where ``n`` is the 1-based line in the file, counting the
    header line (Parquet has no lines: ``row <n>``, 1-based). The problems: file missing, empty
    input, missing column (with the columns found and how to map them), wrong separator, a row
    with the wrong number of fields, missing or non-numeric timestamp or weight, missing id,
    invalid JSON. Line numbers assume one record per line (a quoted CSV field that spans lines
    shifts the numbers after it).

Large files
    Files are read in chunks of ``chunk_rows`` rows (pandas ``read_csv(chunksize=...)``, pyarrow
    ``iter_batches``, JSON lines a block of lines at a time), and each chunk is validated as it
    arrives; line numbers in errors are positions in the whole file. :func:`iter_log_chunks`
    yields the chunks in file order (unsorted) and never holds more than one.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from nmrn.data.events import EventBatch
from nmrn.errors import DataError

__all__ = [
    "DUPLICATES",
    "FORMATS",
    "LOG_FORMATS",
    "LogFormat",
    "delimited",
    "fixed_layout",
    "register_format",
    "ROLES",
    "infer_format",
    "iter_log_chunks",
    "read_log",
    "read_movielens_100k",
    "read_movielens_1m",
    "read_recbole_inter",
]

DUPLICATES = ("keep", "drop", "error")
ROLES = ("user", "item", "timestamp", "weight")
_REQUIRED = ("user", "item", "timestamp")

# Normalised alias names (see _normalize), in order of preference.
_ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("user", "userid", "uid", "customerid", "visitorid"),
    "item": ("item", "itemid", "iid", "movieid", "productid"),
    "timestamp": ("timestamp", "ts", "time", "unixtime"),
    "weight": ("weight", "rating", "score"),
}
_RECBOLE_TYPE = re.compile(r":(token|token_seq|float|float_seq)$", re.IGNORECASE)
_OPENERS: dict[str, Callable[..., IO[str]]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_SEPARATOR_CHARS = (",", "\t", ";", "|")
# Integer literals that are exactly str(int(x)) and fit int64 (at most 18 digits): such a text
# id can become an int and back without loss.
_CANONICAL_INT = r"0|-?[1-9][0-9]{0,17}"
_INT_LITERAL = r"[+-]?[0-9]+"
_ENCODING = "utf-8-sig"  # UTF-8, ignoring a byte-order mark


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def infer_format(path: str | os.PathLike[str]) -> str:
    """The log format a file name stands for.

    ``u.data`` is ``ml-100k``, ``ratings.dat`` is ``ml-1m``; otherwise the suffix decides:
    ``.csv``; ``.tsv``/``.tab``; ``.parquet``/``.pq``; ``.jsonl``/``.ndjson``/``.json``;
    ``.inter`` (RecBole). A compression suffix (``.gz``, ``.bz2``, ``.xz``) is ignored.

    Raises
    ------
    DataError
        The name matches no format; the message names the file and lists the formats.

    Examples
    --------
    >>> infer_format("ml-100k/u.data"), infer_format("logs/2024.csv.gz")
    ('ml-100k', 'csv')
    >>> infer_format("ml-100k.inter")
    'recbole'
    """
    name = Path(path).name.lower()
    stem, ext = os.path.splitext(name)
    if ext in _OPENERS:
        name = stem
    suffix = os.path.splitext(name)[1]
    for spec in LOG_FORMATS.values():
        if name in spec.file_names:
            return spec.name
    for spec in LOG_FORMATS.values():
        if suffix in spec.suffixes:
            return spec.name
    raise DataError(
        f"{path}: cannot tell the log format from the file name; pass format= one of "
        f"{', '.join(LOG_FORMATS)}"
    )


def iter_log_chunks(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    columns: Mapping[str, str] | None = None,
    sep: str | None = None,
    chunk_rows: int = 500_000,
) -> Iterator[EventBatch]:
    """Read a log chunk by chunk, in file order (not sorted by time).

    Parameters
    ----------
    path
        The log file.
    format
        A name of :data:`LOG_FORMATS`; ``None`` infers it from the file name
        (:func:`infer_format`).
    columns
        Maps the roles ``user``, ``item``, ``timestamp``, ``weight`` to the file's column names
        (csv, tsv, parquet, jsonl, recbole); unmapped roles are found by alias (module docs).
    sep
        The field separator of a csv, tsv or recbole file (default ``,`` for csv, tab else).
    chunk_rows
        The most rows per chunk.

    Returns
    -------
    Iterator[EventBatch]
        Batches of at most ``chunk_rows`` events, validated as each is read. Each applies the
        id rule (module docs) on its own.

    Raises
    ------
    DataError
        The file is missing or not a file (at the call), or its content is malformed (when the
        chunk holding the problem is reached; the message names the file, line and problem).
    ValueError
        An unknown format or column role, or an option that the format does not take.
    """
    source = _Source.open(path, format=format, columns=columns, sep=sep, chunk_rows=chunk_rows)
    return (chunk.to_batch() for chunk in source.chunks())


def read_log(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    columns: Mapping[str, str] | None = None,
    sep: str | None = None,
    duplicates: str = "keep",
    chunk_rows: int = 500_000,
) -> EventBatch:
    """Read a whole log, sorted by timestamp (stable: ties keep their order in the file).

    Parameters
    ----------
    path, format, columns, sep, chunk_rows
        As in :func:`iter_log_chunks`.
    duplicates
        ``"keep"`` (re-consumptions are real events), ``"drop"`` (of rows equal in user, item
        and timestamp keep the first) or ``"error"`` (raise on the first such repeat).

    Returns
    -------
    EventBatch
        ``n`` events sorted by timestamp; ids follow the module's id rule over the whole file;
        ``weights`` is ``None`` when the log has no weight column.

    Raises
    ------
    DataError
        A missing file or malformed content (the message names the file, line and problem), or
        a duplicate under ``duplicates="error"``.
    ValueError
        An unknown format, column role or duplicates policy.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = Path(tmp) / "log.csv"
    ...     _ = path.write_text("user_id,item_id,ts\\nu1,10,5\\nu2,11,3\\nu1,11,5\\n")
    ...     events = read_log(path)
    >>> events.users.tolist(), events.items.tolist(), events.timestamps.tolist()
    (['u2', 'u1', 'u1'], [11, 10, 11], [3.0, 5.0, 5.0])
    """
    if duplicates not in DUPLICATES:
        raise ValueError(
            f"duplicates={duplicates!r} is not a policy; use one of {', '.join(DUPLICATES)}"
        )
    source = _Source.open(path, format=format, columns=columns, sep=sep, chunk_rows=chunk_rows)
    chunks = list(source.chunks())
    users = _finalize_ids([c.users for c in chunks])
    items = _finalize_ids([c.items for c in chunks])
    timestamps = np.concatenate([c.timestamps for c in chunks])
    lines = np.concatenate([c.lines for c in chunks])
    weights = None
    if chunks[0].weights is not None:
        weights = np.concatenate([c.weights for c in chunks])  # type: ignore[misc]
    if duplicates != "keep":
        repeated = pd.DataFrame({"u": users, "i": items, "t": timestamps}).duplicated().to_numpy()
        if repeated.any():
            if duplicates == "error":
                j = int(np.flatnonzero(repeated)[0])
                same = (users == users[j]) & (items == items[j]) & (timestamps == timestamps[j])
                first = int(np.flatnonzero(same)[0])
                raise DataError(
                    f"{source.at(int(lines[j]))}: duplicate event (user {_show(users[j])}, item "
                    f"{_show(items[j])}, timestamp {_number_text(timestamps[j])}) repeats "
                    f"{source.unit} {lines[first]}; pass duplicates='keep' to keep repeats or "
                    f"'drop' to drop them"
                )
            keep = ~repeated
            users, items, timestamps = users[keep], items[keep], timestamps[keep]
            weights = None if weights is None else weights[keep]
    order = np.argsort(timestamps, kind="stable")
    return EventBatch(
        users[order], items[order], timestamps[order], None if weights is None else weights[order]
    )


def read_movielens_100k(path: str | os.PathLike[str]) -> EventBatch:
    """Read MovieLens-100K ``u.data`` (tab-separated user, item, rating, timestamp; no header).

    Returns
    -------
    EventBatch
        Sorted by timestamp (stable), int ids, ``weights`` = the ratings.
    """
    return read_log(path, format="ml-100k")


def read_movielens_1m(path: str | os.PathLike[str]) -> EventBatch:
    """Read MovieLens-1M ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``; no header).

    Returns
    -------
    EventBatch
        Sorted by timestamp (stable), int ids, ``weights`` = the ratings.
    """
    return read_log(path, format="ml-1m")


def read_recbole_inter(path: str | os.PathLike[str]) -> EventBatch:
    """Read a RecBole atomic ``.inter`` file (tab-separated, ``name:type`` header).

    ``user_id``, ``item_id``, ``timestamp`` and (optional) ``rating`` are the user, item,
    timestamp and weight; ``:token`` ids follow the module's id rule, so integer tokens become
    int64 ids.

    Returns
    -------
    EventBatch
        Sorted by timestamp (stable).
    """
    return read_log(path, format="recbole")


# --------------------------------------------------------------------------------------------
# Sources: a file in one format, read as validated raw chunks
# --------------------------------------------------------------------------------------------


@dataclass
class _Chunk:
    """Validated events of one chunk, before the id rule is applied across chunks.

    ``users``/``items`` are int64 (exact: every text was a canonical int) or object arrays of
    stripped ``str``; ``lines`` holds each event's 1-based line (or row) in the file.
    """

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    weights: np.ndarray | None
    lines: np.ndarray

    def to_batch(self) -> EventBatch:
        return EventBatch(
            _finalize_ids([self.users]), _finalize_ids([self.items]), self.timestamps, self.weights
        )


@dataclass(frozen=True)
class _TextLayout:
    """How a delimited text format is laid out."""

    sep: str  # the separator as written in the file
    header: bool
    quoting: int  # csv.QUOTE_MINIMAL or csv.QUOTE_NONE
    names: tuple[str, ...] = ()  # column names of a headerless format, as pandas splits it
    roles: tuple[tuple[str, str], ...] = ()  # fixed role -> column of a headerless format
    hint: str = ""  # the expected row, for messages about headerless formats

    @property
    def gaps(self) -> list[str]:
        """Columns that must stay empty (ml-1m's '::' read as ':' leaves one between fields)."""
        return [name for name in self.names if name.startswith("_gap")]


_ML_100K = _TextLayout(
    sep="\t",
    header=False,
    quoting=csv.QUOTE_NONE,
    names=("user", "item", "rating", "timestamp"),
    roles=(("user", "user"), ("item", "item"), ("timestamp", "timestamp"), ("weight", "rating")),
    hint="user<TAB>item<TAB>rating<TAB>timestamp",
)
_ML_1M = _TextLayout(
    sep="::",
    header=False,
    quoting=csv.QUOTE_NONE,
    names=("user", "_gap1", "item", "_gap2", "rating", "_gap3", "timestamp"),
    roles=(("user", "user"), ("item", "item"), ("timestamp", "timestamp"), ("weight", "rating")),
    hint="UserID::MovieID::Rating::Timestamp",
)


@dataclass
class _Source:
    """One log file in one format, with its (checked) reading options."""

    path: Path
    label: str
    fmt: str
    columns: dict[str, str]
    sep: str | None
    chunk_rows: int

    @property
    def spec(self) -> LogFormat:
        return LOG_FORMATS[self.fmt]

    @property
    def unit(self) -> str:
        return self.spec.unit

    def at(self, n: int) -> str:
        return f"{self.label}: {self.unit} {n}"

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        format: str | None,
        columns: Mapping[str, str] | None,
        sep: str | None,
        chunk_rows: int,
    ) -> _Source:
        """Check the arguments and that the file exists."""
        fmt = infer_format(path) if format is None else format
        if fmt not in LOG_FORMATS:
            raise ValueError(f"unknown log format {fmt!r}; use one of {', '.join(LOG_FORMATS)}")
        spec = LOG_FORMATS[fmt]
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)):
            raise TypeError(f"chunk_rows must be an int, got {type(chunk_rows).__name__}")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
        if sep is not None and not spec.takes_sep:
            *firsts, last = [n for n, f in LOG_FORMATS.items() if f.takes_sep]
            takers = f"{', '.join(firsts)} and {last}" if firsts else last
            raise ValueError(f"sep= applies to {takers} logs, not to {fmt}")
        if sep is not None and (not isinstance(sep, str) or len(sep) != 1):
            raise ValueError(f"sep must be a single character, got {sep!r}")
        if columns and not spec.takes_columns:
            raise ValueError(f"columns= does not apply to {fmt}, whose layout is fixed")
        columns = dict(columns or {})
        unknown = sorted(set(columns) - set(ROLES))
        if unknown:
            raise ValueError(f"unknown column role(s) {unknown}; the roles are {', '.join(ROLES)}")
        p = Path(path)
        if not p.exists():
            raise DataError(f"{path}: file not found")
        if not p.is_file():
            raise DataError(f"{path}: not a file")
        return cls(p, str(path), fmt, columns, sep, int(chunk_rows))

    def chunks(self) -> Iterator[_Chunk]:
        """Validated chunks in file order; raises DataError for a log with no events."""
        raw = self.spec.read(self)
        n_events = 0
        for chunk in raw:
            if len(chunk.lines):
                n_events += len(chunk.lines)
                yield chunk
        if n_events == 0:
            raise DataError(f"{self.label}: no events (empty input)")

    # -- column roles -----------------------------------------------------------------------

    def _resolve(self, found: list[str], where: str) -> dict[str, str]:
        """Map each role to one of the ``found`` column names (explicit mapping, then alias)."""
        roles: dict[str, str] = {}
        for role, name in self.columns.items():
            matches = [f for f in found if f == name] or [
                f for f in found if _RECBOLE_TYPE.sub("", f) == name
            ]
            if not matches:
                raise DataError(
                    f"{where}: column {name!r} (given for {role}) not found; found columns {found}"
                )
            roles[role] = matches[0]
        taken = set(roles.values())
        for role in ROLES:
            if role in roles:
                continue
            for alias in _ALIASES[role]:
                matches = [f for f in found if _normalize(f) == alias and f not in taken]
                if len(matches) > 1:
                    raise DataError(
                        f"{where}: columns {matches} could each be the {role}; pick one with "
                        f"columns={{'{role}': {matches[0]!r}}} (on the command line: "
                        f"--columns {role}={matches[0]})"
                    )
                if matches:
                    roles[role] = matches[0]
                    taken.add(matches[0])
                    break
        missing = [role for role in _REQUIRED if role not in roles]
        if missing:
            looked = "; ".join(f"{role}: {', '.join(_ALIASES[role])}" for role in missing)
            example = ", ".join(f"'{role}': '<name>'" for role in missing)
            flag = ",".join(f"{role}=<name>" for role in missing)
            raise DataError(
                f"{where}: missing column(s) for {', '.join(missing)}; found columns {found} "
                f"(looked for {looked}; case, '_' and '-' ignored); map your names with "
                f"columns={{{example}}} (on the command line: --columns {flag})"
            )
        return roles

    # -- delimited text ---------------------------------------------------------------------

    def _read_csv(self, layout: _TextLayout, dtype: Any, **kwargs: Any) -> Any:
        # ml-1m's two-character separator would need pandas' slow python engine; splitting on
        # ':' with the C engine gives empty fields between the real ones instead.
        sep = ":" if layout.sep == "::" else layout.sep
        try:
            return pd.read_csv(
                self.path,
                sep=sep,
                dtype=dtype,
                keep_default_na=False,  # an item called "NA" is an id, not a missing value
                quoting=layout.quoting,
                encoding=_ENCODING,
                engine="c",
                index_col=False,  # a long first row is an error, not an index column
                **kwargs,
            )
        except pd.errors.EmptyDataError:
            raise DataError(f"{self.label}: no events (empty input: the file is empty)") from None
        except UnicodeDecodeError as err:
            raise DataError(f"{self.label}: not UTF-8 text ({err})") from None

    def _text_chunks(self, layout: _TextLayout) -> Iterator[_Chunk]:
        if layout.header:
            found = [str(c) for c in self._read_csv(layout, str, nrows=0).columns]
            self._check_separator(found, layout)
            roles = self._resolve(found, f"{self.label}: line 1")
            names = None
            n_fields = len(found)
        else:
            roles = dict(layout.roles)
            names = list(layout.names)
            n_fields = len(names) - len(layout.gaps)
        first_line = 2 if layout.header else 1
        # Ids are read as text (python str objects: cheaper than pandas' arrow strings here) and
        # follow the id rule; other columns are parsed by the C parser, which falls back to text
        # for a column with a non-number in the chunk (validated below).
        text_columns = [roles["user"], roles["item"], *layout.gaps]
        reader = self._read_csv(
            layout,
            {name: object for name in text_columns},
            header=0 if layout.header else None,
            names=names,
            skip_blank_lines=False,  # keep blank lines as rows so row index = line - first_line
            chunksize=self.chunk_rows,
        )
        with reader:
            for frame in self._frames(reader, layout, n_fields, first_line):
                blank = (frame == "").all(axis=1).to_numpy()
                frame = frame[~blank]
                lines = frame.index.to_numpy(np.int64) + first_line
                issues: list[tuple[int, str]] = []
                if layout.gaps:
                    # "1:x:2::3::4" splits into 7 fields too: a gap with text is malformed
                    filled = (frame[layout.gaps] != "").any(axis=1).to_numpy()
                    if filled.any():
                        issues.append((_first(filled), f"malformed row (expected {layout.hint})"))
                yield self._build(
                    {role: frame[name] for role, name in roles.items()},
                    lines,
                    issues,
                    lambda n: self._diagnose(n, layout, n_fields),
                )

    def _frames(
        self, reader: Any, layout: _TextLayout, n_fields: int, first_line: int
    ) -> Iterator[pd.DataFrame]:
        """The reader's chunks, with its parser errors turned into DataErrors naming the line."""
        it = iter(reader)
        while True:
            try:
                with warnings.catch_warnings():
                    # pandas only warns (and drops fields) when the first row is too long
                    warnings.simplefilter("error", pd.errors.ParserWarning)
                    frame = next(it)
            except StopIteration:
                return
            except pd.errors.ParserWarning:
                problem = self._diagnose(first_line, layout, n_fields) or "malformed row"
                raise DataError(f"{self.at(first_line)}: {problem}") from None
            except pd.errors.ParserError as err:
                found = re.search(r"in line (\d+)", str(err))
                if found is None:
                    raise DataError(f"{self.label}: malformed text ({str(err).strip()})") from None
                n = int(found.group(1))
                problem = self._diagnose(n, layout, n_fields) or "malformed row"
                raise DataError(f"{self.at(n)}: {problem}") from None
            except UnicodeDecodeError as err:
                raise DataError(f"{self.label}: not UTF-8 text ({err})") from None
            yield frame

    def _check_separator(self, found: list[str], layout: _TextLayout) -> None:
        if len(found) != 1:
            return
        others = [c for c in _SEPARATOR_CHARS if c != layout.sep and c in found[0]]
        if others:
            fmt_hint = " (or format='tsv')" if others[0] == "\t" else ""
            raise DataError(
                f"{self.label}: line 1: wrong separator? read with sep={layout.sep!r}, the header "
                f"is one column {found[0]!r}, which contains {others[0]!r}; pass "
                f"sep={others[0]!r}{fmt_hint}"
            )

    def _diagnose(self, n: int, layout: _TextLayout, n_fields: int) -> str | None:
        """Describe line ``n`` if its number of fields is wrong (read again: errors only)."""
        text = _line_at(self.path, n)
        if text is None:
            return None
        text = text.rstrip("\r\n")
        if layout.quoting == csv.QUOTE_NONE:
            fields = text.split(layout.sep)
        else:
            fields = next(csv.reader([text], delimiter=layout.sep), [""])
        if len(fields) == n_fields:
            return None
        expected = f" ({layout.hint})" if layout.hint else ""
        problem = (
            f"malformed row: {len(fields)} field(s) where {n_fields} are expected{expected}, "
            f"separated by {layout.sep!r}"
        )
        others = [c for c in _SEPARATOR_CHARS if c not in layout.sep and c in text]
        if len(fields) == 1 and others:
            problem += f"; wrong separator? the row contains {others[0]!r}"
        return problem

    # -- JSON lines -------------------------------------------------------------------------

    def _jsonl_chunks(self) -> Iterator[_Chunk]:
        roles: dict[str, str] | None = None
        records: list[dict[str, Any]] = []
        numbers: list[int] = []
        try:
            with _open_text(self.path) as handle:
                for n, text in enumerate(handle, start=1):
                    if not text.strip():
                        continue
                    try:
                        record = json.loads(text)
                    except json.JSONDecodeError as err:
                        raise DataError(
                            f"{self.at(n)}: not valid JSON ({err.msg} at column {err.colno}); "
                            f"expected one JSON object per line"
                        ) from None
                    if not isinstance(record, dict):
                        raise DataError(
                            f"{self.at(n)}: expected a JSON object per line, got a JSON "
                            f"{type(record).__name__}"
                        )
                    if roles is None:
                        roles = self._resolve([str(k) for k in record], self.at(n))
                    records.append(record)
                    numbers.append(n)
                    if len(records) == self.chunk_rows:
                        yield self._json_chunk(records, numbers, roles)
                        records, numbers = [], []
        except UnicodeDecodeError as err:
            raise DataError(f"{self.label}: not UTF-8 text ({err})") from None
        if records and roles is not None:
            yield self._json_chunk(records, numbers, roles)

    def _json_chunk(
        self, records: list[dict[str, Any]], numbers: list[int], roles: dict[str, str]
    ) -> _Chunk:
        cols = {
            role: pd.Series([r.get(key) for r in records], dtype=object).infer_objects()
            for role, key in roles.items()
        }
        return self._build(cols, np.asarray(numbers, np.int64), [], None)

    # -- Parquet ----------------------------------------------------------------------------

    def _parquet_chunks(self) -> Iterator[_Chunk]:
        pq = _import_parquet()
        try:
            parquet = pq.ParquetFile(self.path)
        except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... for a bad file
            raise DataError(f"{self.label}: not a readable Parquet file ({err})") from None
        roles = self._resolve(list(parquet.schema_arrow.names), self.label)
        offset = 0
        wanted = list(dict.fromkeys(roles.values()))
        for batch in parquet.iter_batches(batch_size=self.chunk_rows, columns=wanted):
            frame = batch.to_pandas()
            lines = np.arange(offset + 1, offset + batch.num_rows + 1, dtype=np.int64)
            offset += batch.num_rows
            yield self._build({role: frame[name] for role, name in roles.items()}, lines, [], None)

    # -- validation -------------------------------------------------------------------------

    def _build(
        self,
        cols: dict[str, pd.Series],
        lines: np.ndarray,
        issues: list[tuple[int, str]],
        diagnose: Callable[[int], str | None] | None,
    ) -> _Chunk:
        """Validate one chunk's columns; raise the problem on the earliest line, if any."""
        users = _ids(cols["user"], "user", issues)
        items = _ids(cols["item"], "item", issues)
        timestamps = _numbers(cols["timestamp"], "timestamp", issues)
        weights = _numbers(cols["weight"], "weight", issues) if "weight" in cols else None
        if issues:
            j, problem = min(issues)
            n = int(lines[j])
            # A short row shows up as a missing value: say that the row itself is malformed.
            problem = (diagnose(n) if diagnose is not None else None) or problem
            raise DataError(f"{self.at(n)}: {problem}")
        return _Chunk(users, items, timestamps, weights, lines)


@dataclass(frozen=True)
class LogFormat:
    """How one log format is recognised from a file name and read.

    Parameters
    ----------
    name
        The format's name (``format=`` of the readers, ``--format`` of the CLI).
    read
        ``read(source)`` yields the file's chunks; a delimited text format uses
        :func:`delimited`, a headerless one with a fixed layout :func:`fixed_layout`.
    suffixes
        File suffixes (lower case, with the dot) that mean this format.
    file_names
        Whole file names (lower case) that mean this format (they win over suffixes).
    takes_sep
        Whether ``sep=`` applies.
    takes_columns
        Whether ``columns=`` applies (not to a fixed layout).
    unit
        What error messages count: ``"line"`` or ``"row"``.
    """

    name: str
    read: Callable[[_Source], Iterator[_Chunk]]
    suffixes: tuple[str, ...] = ()
    file_names: tuple[str, ...] = ()
    takes_sep: bool = False
    takes_columns: bool = True
    unit: str = "line"


#: Every log format the readers know, by name (built-in ones first).
LOG_FORMATS: dict[str, LogFormat] = {}


def register_format(spec: LogFormat) -> LogFormat:
    """Make a log format known to :func:`read_log`, :func:`infer_format` and the CLI.

    Raises
    ------
    ValueError
        The name, a suffix or a file name is already taken by another format.
    """
    for other in LOG_FORMATS.values():
        if other.name == spec.name:
            raise ValueError(f"log format {spec.name!r} is already registered")
        taken = set(other.suffixes) & set(spec.suffixes) or set(other.file_names) & set(
            spec.file_names
        )
        if taken:
            raise ValueError(f"{sorted(taken)} already mean the log format {other.name!r}")
    LOG_FORMATS[spec.name] = spec
    return spec


def delimited(default_sep: str, quoting: int) -> Callable[[_Source], Iterator[_Chunk]]:
    """The reader of a delimited text format with a header row (``sep=`` may override)."""

    def read(source: _Source) -> Iterator[_Chunk]:
        layout = _TextLayout(sep=source.sep or default_sep, header=True, quoting=quoting)
        return source._text_chunks(layout)

    return read


def fixed_layout(layout: _TextLayout) -> Callable[[_Source], Iterator[_Chunk]]:
    """The reader of a headerless delimited text format laid out as ``layout``."""
    return lambda source: source._text_chunks(layout)


for _spec in (
    LogFormat("csv", delimited(",", csv.QUOTE_MINIMAL), (".csv",), takes_sep=True),
    LogFormat("tsv", delimited("\t", csv.QUOTE_NONE), (".tsv", ".tab"), takes_sep=True),
    LogFormat("parquet", lambda src: src._parquet_chunks(), (".parquet", ".pq"), unit="row"),
    LogFormat("jsonl", lambda src: src._jsonl_chunks(), (".jsonl", ".ndjson", ".json")),
    LogFormat("ml-100k", fixed_layout(_ML_100K), file_names=("u.data",), takes_columns=False),
    LogFormat("ml-1m", fixed_layout(_ML_1M), file_names=("ratings.dat",), takes_columns=False),
    LogFormat("recbole", delimited("\t", csv.QUOTE_NONE), (".inter",), takes_sep=True),
):
    register_format(_spec)

#: The names of the built-in formats.
FORMATS = tuple(LOG_FORMATS)




# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _normalize(name: str) -> str:
    """A column name compared without case, separators and a RecBole ``:type`` suffix."""
    return re.sub(r"[\s_\-.]", "", _RECBOLE_TYPE.sub("", name.strip())).lower()


def _open_text(path: Path) -> IO[str]:
    opener = _OPENERS.get(path.suffix.lower())
    if opener is None:
        return open(path, encoding=_ENCODING, newline="")
    return opener(path, "rt", encoding=_ENCODING, newline="")


def _line_at(path: Path, n: int) -> str | None:
    """Line ``n`` (1-based) of a text file, or None past its end."""
    with _open_text(path) as handle:
        for i, text in enumerate(handle, start=1):
            if i == n:
                return text
    return None


def _import_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ImportError("reading Parquet needs pyarrow: pip install nmrn[parquet]") from err
    return pq


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _ids(values: pd.Series, what: str, issues: list[tuple[int, str]]) -> np.ndarray:
    """An id column as int64 (exact canonical ints) or an object array of stripped str.

    Problems (missing ids, ids that are neither int nor text) are appended to ``issues`` as
    ``(row, message)``; the returned array is then meaningless.
    """
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(object)
    kind = values.dtype.kind
    if kind in "iu":
        return values.to_numpy(np.int64)
    if kind == "f":
        arr = values.to_numpy(np.float64)
        missing = np.isnan(arr)
        if missing.any():
            issues.append((_first(missing), f"{what} id is missing"))
        # not integral, infinite, or beyond int64 (where the cast would wrap around)
        fractional = ~missing & ~((arr == np.round(arr)) & (np.abs(arr) < 2.0**63))
        if fractional.any():
            j = _first(fractional)
            issues.append((j, f"{what} id {float(arr[j])!r} is not an integer; ids are int or str"))
        return np.where(missing | fractional, 0, arr).astype(np.int64)
    if isinstance(values.dtype, pd.StringDtype) or (
        values.dtype == object and pd.api.types.infer_dtype(values, skipna=False) == "string"
    ):
        text = values.str.strip()  # vectorised: every value is a str (or NA)
    else:
        text = pd.Series(_texts(values.to_numpy(dtype=object), what, issues), dtype=object)
    missing = (text.isna() | (text == "")).to_numpy(dtype=bool)
    if missing.any():
        issues.append((_first(missing), f"{what} id is missing"))
        return np.zeros(len(text), np.int64)
    if text.str.fullmatch(_CANONICAL_INT).all():
        return text.astype(np.int64).to_numpy()
    return text.to_numpy(dtype=object)


def _texts(values: np.ndarray, what: str, issues: list[tuple[int, str]]) -> list[str | None]:
    """Python values (from JSON or an object column) as id text; None where missing."""
    out: list[str | None] = []
    for j, x in enumerate(values):
        if isinstance(x, str):
            out.append(x.strip())
        elif isinstance(x, (bool, np.bool_)):
            issues.append((j, f"{what} id {_show(x)} is a boolean; ids are int or str"))
            out.append("?")
        elif isinstance(x, (int, np.integer)):
            out.append(str(int(x)))
        elif isinstance(x, (float, np.floating)) and np.isfinite(x) and float(x).is_integer():
            out.append(str(int(x)))
        elif x is None or (isinstance(x, float) and np.isnan(x)) or x is pd.NA:
            out.append(None)
        else:
            issues.append((j, f"{what} id {_show(x)} is not an int or a string"))
            out.append("?")
    return out


def _iso_seconds(values: pd.Series, numeric: np.ndarray) -> np.ndarray:
    """A text timestamp column as seconds since 1970-01-01 UTC when its values are ISO 8601
    dates or date-times (a value without a zone is taken as UTC); ``numeric`` (what the number
    parser made of it) otherwise, so a column mixing the two reports its first bad value."""
    text = values.astype("string")
    dates = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    parsed = dates.notna().to_numpy()
    if not parsed.any() or np.isfinite(numeric[parsed]).any():
        return numeric  # not a date column (or numbers and dates mixed)
    seconds = ((dates - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(
        np.float64, na_value=np.nan
    )
    return np.where(parsed, seconds, numeric)


def _numbers(values: pd.Series, what: str, issues: list[tuple[int, str]]) -> np.ndarray:
    """A timestamp or weight column as float64; missing or non-numeric values go to ``issues``."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        if getattr(values.dt, "tz", None) is not None:
            values = values.dt.tz_convert("UTC").dt.tz_localize(None)
        arr = ((values - pd.Timestamp(0)) / pd.Timedelta(seconds=1)).to_numpy(np.float64)
    elif pd.api.types.is_bool_dtype(values.dtype):
        issues.append((0, f"{what} {_show(values.iloc[0])} is not a number"))
        return np.zeros(len(values))
    elif values.dtype.kind in "iuf":
        arr = values.to_numpy(np.float64, na_value=np.nan)
    else:
        raw = values.to_numpy(dtype=object)
        numeric = (
            [np.nan if isinstance(x, (bool, list, dict)) else x for x in raw]
            if values.dtype == object
            else raw
        )
        arr = pd.to_numeric(pd.Series(numeric, dtype=object), errors="coerce").to_numpy(
            np.float64, na_value=np.nan
        )
        if what == "timestamp" and not np.isfinite(arr).all():
            arr = _iso_seconds(values, arr)
    bad = ~np.isfinite(arr)
    if bad.any():
        j = _first(bad)
        raw_value = values.iloc[j]
        if (
            raw_value is None
            or raw_value is pd.NA
            or (isinstance(raw_value, str) and not raw_value.strip())
            or (isinstance(raw_value, float) and np.isnan(raw_value))
            or raw_value is pd.NaT
        ):
            issues.append((j, f"{what} is missing"))
        else:
            issues.append((j, f"{what} {_show(raw_value)} is not a finite number"))
    return arr


def _finalize_ids(parts: list[np.ndarray]) -> np.ndarray:
    """Apply the id rule to the parts of one id column: all integer literals -> int64, else str.

    Each part is int64 (canonical ints) or an object array of stripped text.
    """
    if all(p.dtype.kind == "i" for p in parts):
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
    texts = [p for p in parts if p.dtype.kind != "i"]
    if all(pd.Series(p, dtype=object).str.fullmatch(_INT_LITERAL).all() for p in texts):
        try:
            return np.concatenate(
                [
                    p if p.dtype.kind == "i" else np.array([int(x) for x in p], np.int64)
                    for p in parts
                ]
            )
        except OverflowError:  # an integer literal beyond int64: the column stays text
            pass
    return np.concatenate(
        [p.astype(str).astype(object) if p.dtype.kind == "i" else p for p in parts]
    )


def _show(x: Any) -> str:
    """repr of an id as the plain Python value (``1``, not ``np.int64(1)``)."""
    return repr(x.item() if isinstance(x, np.generic) else x)


def _number_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))
