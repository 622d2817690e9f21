"""Published snapshots: what reader processes serve from (``nmrn serve --workers N``).

The writer (:class:`SnapshotPublisher`, a thread next to the
:class:`~nmrn.serving.service.LiveService`) copies the model under its lock, writes the copy as
an ordinary nmrn checkpoint (the model's own no-pickle format, written by
:func:`nmrn.io.write_checkpoint`: temporary directory, fsync, rename) to ``<dir>/v<seq>-<n>``,
then replaces the small pointer file ``<dir>/CURRENT`` by a rename. ``CURRENT`` is the manifest
of the version it names: its sequence number, when its state was taken, and the size and
SHA-256 of each of its files. A version directory is never changed once named; the writer keeps
the newest :data:`KEEP` and deletes older ones (a reader that still has one open keeps reading
it: Linux frees unlinked files when the last descriptor closes).

A reader (:class:`SnapshotFollower`) only ever follows ``CURRENT``, and loads a version only
after checking each file's size and hash against the manifest, then the checkpoint's own
validation (:func:`nmrn.io.read_checkpoint`). A version that fails either is refused, logged and
counted, and the reader keeps answering from the one it has; it does not try the same version
again.

**Incremental versions** (``mode="incremental"``, the default; docs/serving.md §9): a
version directory holds ``manifest.json``, ``meta.json`` and ``blocks.bin``. Each array of the
snapshot is cut into row blocks of about :data:`BLOCK_BYTES`; the writer compares its new copy
with the one it published last, block by block, and writes (and hashes) only the blocks that
changed into the new version's ``blocks.bin``. The manifest lists every array's dtype, shape and
rows per block, and for each block the version whose ``blocks.bin`` holds it, the offset there
and its SHA-256; ``CURRENT`` then names ``manifest.json`` with its size and SHA-256. Every
:data:`BASE_EVERY` publications, or once the blocks written since the last base add up to the
snapshot's size, a *base* version holds every block again, so that old versions stop being
needed; a version is deleted only when none of the last :data:`KEEP` manifests names it. A
reader that holds blocks with a manifest's hashes keeps them, reads the others from the
versions the manifest names, and checks each one's SHA-256 before using it; a reader that is
new or far behind reads every block the same way. A block that is missing, short or has another
hash refuses the whole version, as a bad file does in full mode. The id lists are not in an
incremental ``meta.json`` but in the arrays :data:`ID_ARRAYS`, as append-only text
(:func:`encode_ids`): a version that adds no id writes no id block, and a reader decodes only
the ids appended since the text it holds.

While the model does not change, the writer rewrites ``CURRENT`` with a new ``as_of`` (the
latest time at which the writer's state was known to equal the snapshot) every
``publish_every`` seconds, so a reader's snapshot age is ``now - as_of``: how far behind the
writer's applied state its answers can be, whether or not events are arriving.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import re
import shutil
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from nmrn.errors import CheckpointError, ConfigError, NMRNError
from nmrn.io import (
    ARRAYS_FILE,
    MAX_META_BYTES,
    META_FILE,
    _fresh_dir,
    check_meta,
    fsync_dir,
    parse_meta,
    read_arrays,
    write_checkpoint,
)
from nmrn.training.contract import Recommender

log = logging.getLogger("nmrn.serving")

__all__ = [
    "CURRENT",
    "BASE_EVERY",
    "BLOCK_BYTES",
    "KEEP",
    "MODES",
    "Manifest",
    "SnapshotError",
    "SnapshotFollower",
    "SnapshotPublisher",
    "default_snapshot_dir",
    "read_manifest",
    "open_version",
    "verify_version",
]

CURRENT = "CURRENT"
MANIFEST_FORMAT = "nmrn-snapshot"
#: Versions kept in the snapshot directory (the newest; older ones are deleted).
KEEP = 3
#: Bytes of one block of an incremental version (rows of an array: as many as fit, at least 1).
BLOCK_BYTES = 1 << 12
MAX_BLOCK_BYTES = 1 << 24
#: An incremental writer writes a base version (every block) at least this often.
BASE_EVERY = 100
MODES = ("incremental", "full")
MANIFEST_FILE = "manifest.json"
BLOCKS_FILE = "blocks.bin"
BLOCKS_FORMAT = "nmrn-snapshot-blocks"
MAX_MANIFEST_BYTES = 64 << 20
MAX_ARRAY_BYTES = 1 << 48  # of one array of an incremental version (its sizes, 0s as 1s)
_VERSION = re.compile(r"v\d{1,20}-\d{1,20}")
#: The temporaries a publisher leaves when it dies mid-write: a version's directory
#: (:func:`nmrn.io._fresh_dir`, or one :func:`nmrn.io.write_checkpoint` moves aside) and
#: CURRENT's file (:func:`_write_current`). Nothing else in the directory is ever deleted.
_TEMPORARY = re.compile(r"\.v\d{1,20}-\d{1,20}\.(?:[0-9a-f]{8}|old-\d+)|\.CURRENT\.\d+\.tmp")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DTYPE = re.compile(r"[<>|][biufc][1-9][0-9]?|[<>|][US][1-9][0-9]{0,5}")
_HASH_CHUNK = 1 << 20
MAX_CURRENT_BYTES = 4096


class SnapshotError(NMRNError, ValueError):
    """A snapshot that cannot be trusted: a bad ``CURRENT``, a file whose size or hash differs
    from the manifest, or a checkpoint that does not validate."""


@dataclass(frozen=True)
class Manifest:
    """What ``CURRENT`` says: the version directory's name, the last event sequence number it
    holds, when its state was taken and last confirmed current (``time.time()``), and each
    file's ``(size, sha256)``."""

    version: str
    seq: int
    taken_at: float
    as_of: float
    files: dict[str, tuple[int, str]]

    def to_json(self) -> str:
        return json.dumps({
            "format": MANIFEST_FORMAT, "version": self.version, "seq": self.seq,
            "taken_at": self.taken_at, "as_of": self.as_of,
            "files": {name: {"size": size, "sha256": digest}
                      for name, (size, digest) in self.files.items()},
        }, sort_keys=True)


def default_snapshot_dir(checkpoint: str | os.PathLike[str]) -> Path:
    """``/dev/shm/nmrn-snapshots-<hash of the checkpoint's real path>`` when ``/dev/shm``
    exists (memory: no disk write per publication), else ``<checkpoint>.snapshots`` next to
    the checkpoint."""
    path = Path(checkpoint)
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        key = hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:16]
        return shm / f"nmrn-snapshots-{key}"
    return path.with_name(path.name + ".snapshots")


def _sha256_of(f: BinaryIO) -> str:
    """SHA-256 hex of what is left to read of ``f``, read in chunks of ``_HASH_CHUNK`` bytes
    (``hashlib.file_digest`` does this from Python 3.11 on; the package supports 3.10)."""
    digest = hashlib.sha256()
    while chunk := f.read(_HASH_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: Path) -> tuple[int, str]:
    """``(size, sha256 hex)`` of a file."""
    with open(path, "rb") as f:
        digest = _sha256_of(f)
        size = f.tell()
    return size, digest


def _open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading if it is a regular file, else a :class:`SnapshotError`:
    a FIFO would block the open (it is opened without blocking), a device such as
    ``/dev/zero`` (through a link) would never end."""
    fd = _open_regular_fd(path)
    try:
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open_regular_fd(path: Path) -> int:
    """:func:`_open_regular`'s descriptor (for ``os.preadv``); the caller closes it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SnapshotError(f"{path}: not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_regular(path: Path, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of the regular file ``path`` (:func:`_open_regular`)."""
    with _open_regular(path) as f:
        return f.read(limit + 1)


def _number(value: Any, what: str, *, integer: bool = False) -> Any:
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    if not ok or value < 0:
        raise SnapshotError(f"{CURRENT}: {what} must be a number >= 0, got {value!r}")
    return value


def read_manifest(directory: Path) -> Manifest | None:
    """The manifest ``CURRENT`` holds (``None`` if there is none yet).

    Raises
    ------
    SnapshotError
        ``CURRENT`` is not a manifest of the expected shape.
    """
    try:
        raw = _read_regular(directory / CURRENT, MAX_CURRENT_BYTES)
    except FileNotFoundError:
        return None
    if len(raw) > MAX_CURRENT_BYTES:
        raise SnapshotError(f"{CURRENT}: more than {MAX_CURRENT_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SnapshotError(f"{CURRENT}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise SnapshotError(f"{CURRENT}: not an nmrn snapshot manifest")
    version = data.get("version")
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise SnapshotError(f"{CURRENT}: version {version!r} is not a version name")
    files = data.get("files")
    if not isinstance(files, dict) or set(files) not in ({META_FILE, ARRAYS_FILE},
                                                         {MANIFEST_FILE}):
        raise SnapshotError(f"{CURRENT}: files must list {META_FILE} and {ARRAYS_FILE} (a full "
                            f"version) or {MANIFEST_FILE} (an incremental one)")
    parsed: dict[str, tuple[int, str]] = {}
    for name, entry in files.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise SnapshotError(f"{CURRENT}: files[{name!r}] must hold a size and a sha256")
        parsed[name] = (_number(entry.get("size"), f"files[{name!r}].size", integer=True),
                        entry["sha256"])
    return Manifest(version, _number(data.get("seq"), "seq", integer=True),
                    float(_number(data.get("taken_at"), "taken_at")),
                    float(_number(data.get("as_of"), "as_of")), parsed)


def open_version(directory: Path, manifest: Manifest, *, verify: bool = True
                 ) -> tuple[Path, dict[str, BinaryIO]]:
    """The version directory ``manifest`` names and each of its files, open (regular files
    only) and at their start; with ``verify``, once each has the size and the SHA-256 the
    manifest gives. A reader loads from these open files, so a version the writer prunes after
    this (an unlinked file lives while a descriptor holds it) is still read whole. Raises
    :class:`SnapshotError`; the caller closes the files."""
    path = directory / manifest.version
    files: dict[str, BinaryIO] = {}
    try:
        for name, (size, digest) in manifest.files.items():
            try:
                f = files[name] = _open_regular(path / name)
                got_size = os.fstat(f.fileno()).st_size
                if verify and got_size == size:  # else not read at all
                    got_digest = _sha256_of(f)
                    f.seek(0)
            except OSError as err:
                raise SnapshotError(f"{path / name}: cannot be read ({err.strerror})") from None
            if not verify:
                continue
            if got_size != size:
                raise SnapshotError(f"{path / name}: {got_size} bytes, the manifest says {size} "
                                    "(a half-written or replaced snapshot)")
            if got_digest != digest:
                raise SnapshotError(f"{path / name}: its SHA-256 differs from the manifest's (a "
                                    "changed snapshot)")
    except BaseException:
        for f in files.values():
            f.close()
        raise
    return path, files


def verify_version(directory: Path, manifest: Manifest) -> Path:
    """The version directory ``manifest`` names, once each of its files has the size and the
    SHA-256 the manifest gives; raises :class:`SnapshotError` otherwise."""
    path, files = open_version(directory, manifest)
    for f in files.values():
        f.close()
    return path


def _load_full(path: Path, files: dict[str, BinaryIO]) -> Recommender:
    """The model of the full version at ``path`` from its open files (:func:`open_version`),
    checked as :func:`nmrn.io.read_checkpoint` checks a checkpoint directory."""
    for name in (META_FILE, ARRAYS_FILE):
        if name not in files:
            raise SnapshotError(f"{path}: the manifest names no {name}")
    meta_raw = files[META_FILE].read(MAX_META_BYTES + 1)
    if len(meta_raw) > MAX_META_BYTES:
        raise SnapshotError(f"{path / META_FILE}: more than the limit of {MAX_META_BYTES} bytes")
    meta = parse_meta(meta_raw, path / META_FILE)
    check_meta(meta, path)
    arrays = read_arrays(path / ARRAYS_FILE, files[ARRAYS_FILE])
    import nmrn.models  # noqa: F401 - registers every model class

    return Recommender.from_state(meta, arrays, source=path)


def _write_current(directory: Path, manifest: Manifest) -> None:
    """Replace ``CURRENT`` atomically (a temporary file, then a rename)."""
    tmp = directory / f".{CURRENT}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
    os.replace(tmp, directory / CURRENT)


def _sha256(data: Any) -> str:
    return hashlib.sha256(data).hexdigest()


def _bytes_of(array: np.ndarray) -> np.ndarray:
    """The bytes of ``array`` in C order, as a flat ``uint8`` view (a copy only if it is not
    C-contiguous)."""
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return array.reshape(-1).view(np.uint8)


def _row_bytes(shape: tuple[int, ...], itemsize: int) -> int:
    return itemsize * math.prod(shape[1:]) if shape else itemsize


def _rows_per_block(shape: tuple[int, ...], itemsize: int, block_bytes: int = BLOCK_BYTES
                    ) -> int:
    """Rows of an array in one block: as many as fit in ``block_bytes``, at least 1."""
    row = _row_bytes(shape, itemsize)
    return max(1, block_bytes // row) if row else 1


def _n_blocks(shape: tuple[int, ...], itemsize: int, rows: int) -> int:
    total = (shape[0] if shape else 1) * _row_bytes(shape, itemsize)
    step = rows * _row_bytes(shape, itemsize)
    return 0 if total == 0 else -(-total // step)


#: One block's entry in an array's block table: the publication number of the version whose
#: blocks.bin holds it, its offset there, its SHA-256 (44 bytes, little-endian, packed).
TABLE = np.dtype([("v", "<u8"), ("off", "<u8"), ("sha", "u1", (32,))])

#: The arrays of an incremental version that hold its id lists (``meta.json`` holds none):
#: ``{meta field: array name}``. Checkpoint arrays are named ``model.*`` and ``base.*``.
ID_ARRAYS = {"users": "ids.users", "items": "ids.items"}


def encode_ids(ids: list[int | str]) -> bytes:
    """The text an id list is stored as: each id's JSON followed by ``,`` (``196,"u1",``;
    ``b""`` for none). Ids are only ever appended to an id map, so the text of a later
    version starts with the text of an earlier one, and the blocks holding it are kept."""
    if not ids:
        return b""
    return json.dumps(ids, separators=(",", ":"))[1:-1].encode("ascii") + b","


def decode_ids(raw: bytes, where: Any) -> list[int | str]:
    """The ids of :func:`encode_ids`'s text (or of a part of it that ends after an id): a
    :class:`SnapshotError` naming ``where`` unless it is a list of ints and strings."""
    if not raw:
        return []
    if not raw.endswith(b","):
        raise SnapshotError(f"{where}: the id list does not end with an id")
    try:
        ids = json.loads(b"[" + raw[:-1] + b"]")
    except (ValueError, RecursionError) as err:
        raise SnapshotError(f"{where}: the id list is not valid ({str(err)[:80]})") from None
    if not all(type(x) is int or type(x) is str for x in ids):
        bad = next(x for x in ids if type(x) is not int and type(x) is not str)
        raise SnapshotError(f"{where}: the id list holds {type(bad).__name__} {bad!r}; ids "
                            "are int or str")
    return ids  # type: ignore[no-any-return]


class _IdText:
    """The writer's text of one id list (:func:`encode_ids`), extended by the ids appended
    since the last publication instead of encoded whole each time."""

    def __init__(self) -> None:
        self.ids: list[int | str] = []
        self.text = b""

    def update(self, ids: list[int | str]) -> np.ndarray:
        """The text of ``ids`` as a read-only ``uint8`` array (never changed afterwards)."""
        n = len(self.ids)
        if len(ids) >= n and ids[:n] == self.ids:  # int and str ids: == is identity of ids
            self.text += encode_ids(ids[n:])
        else:  # another model: encoded again
            self.text = encode_ids(ids)
        self.ids = ids
        return np.frombuffer(self.text, dtype=np.uint8)


@dataclass(frozen=True)
class _Layout:
    """One array as an incremental manifest lists it: dtype (``dtype.str``), shape, rows per
    block and its block table (:data:`TABLE`, one entry per block)."""

    dtype: str
    shape: tuple[int, ...]
    rows: int
    table: np.ndarray

    def same_cut(self, dtype: str, shape: tuple[int, ...], rows: int) -> bool:
        """Whether an array of ``dtype`` and ``shape`` cut in blocks of ``rows`` rows has the
        same blocks as this one where both have rows (only the number of rows differs)."""
        return (self.dtype == dtype and len(self.shape) == len(shape)
                and self.shape[1:] == shape[1:] and self.rows == rows)

    def common(self, shape: tuple[int, ...]) -> int:
        """How many leading blocks this layout and one of the same cut with ``shape`` share
        the byte spans of (full blocks of both, and the last one if the sizes are equal)."""
        itemsize = np.dtype(self.dtype).itemsize
        step = self.rows * _row_bytes(shape, itemsize)
        old = (self.shape[0] if self.shape else 1) * _row_bytes(self.shape, itemsize)
        new = (shape[0] if shape else 1) * _row_bytes(shape, itemsize)
        if step == 0:
            return 0
        if old == new:
            return len(self.table)
        return min(old, new) // step


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _version_number(version: str) -> int:
    return int(version.split("-")[1])


def _changed_blocks(new: np.ndarray, old: np.ndarray, n: int, step: int) -> np.ndarray:
    """``[n]`` bool: whether each of the first ``n`` blocks of ``step`` bytes differs between
    the flat byte arrays ``new`` and ``old`` (compared bit for bit, vectorised)."""
    full = min(n, len(new) // step, len(old) // step)
    a, b = new[: full * step].reshape(full, step), old[: full * step].reshape(full, step)
    if step % 8 == 0:
        a, b = a.view("<u8"), b.view("<u8")
    out = np.ones(n, dtype=bool)
    out[:full] = (a != b).any(axis=1)
    for i in range(full, n):  # a last, shorter block of the same length in both
        out[i] = not np.array_equal(new[i * step : (i + 1) * step], old[i * step : (i + 1) * step])
    return out


class _BlockWriter:
    """The writer's side of incremental versions: the last published arrays and layouts, and
    the versions the last :data:`KEEP` manifests name."""

    def __init__(self, directory: Path, *, base_every: int = BASE_EVERY,
                 block_bytes: int = BLOCK_BYTES) -> None:
        self.directory = directory
        self.base_every = base_every
        self.block_bytes = block_bytes
        self.last: dict[str, np.ndarray] = {}
        self.layouts: dict[str, _Layout] = {}
        self.names: dict[int, str] = {}  # publication number -> version name, of those named
        self.since_base = 0  # publications since the last base
        self.written_since_base = 0  # block bytes written since the last base
        self.last_written = 0  # block bytes the last publication wrote
        self.last_base = False
        self.retained: deque[frozenset[str]] = deque(maxlen=KEEP)
        self.ids = {field: _IdText() for field in ID_ARRAYS}

    def needed(self) -> set[str]:
        """Every version a retained manifest names (its own and those holding its blocks)."""
        return set().union(*self.retained)

    def write(self, version: str, seq: int, arrays: dict[str, np.ndarray],
              meta: dict[str, Any]) -> tuple[int, str]:
        """Write version ``version`` (temporary directory, fsync, rename) holding the blocks of
        ``arrays`` that differ from the last publication's (every block in a base); returns
        its manifest's ``(size, sha256)``. ``arrays`` must not change afterwards: the next
        publication compares against them. The id lists of ``meta`` are written as the arrays
        :data:`ID_ARRAYS` (:func:`encode_ids`), not in ``meta.json``."""
        meta = dict(meta)
        arrays = dict(arrays)
        for field, name in ID_ARRAYS.items():
            arrays[name] = self.ids[field].update(meta.pop(field))
        total = sum(a.nbytes for a in arrays.values())
        base = (not self.layouts or self.since_base + 1 >= self.base_every
                or self.written_since_base >= total)
        number = _version_number(version)
        tmp = _fresh_dir(self.directory, prefix=f".{version}.")
        written = 0
        layouts: dict[str, _Layout] = {}
        try:
            with open(tmp / BLOCKS_FILE, "wb") as f:
                for name in sorted(arrays):
                    array = arrays[name]
                    if array.dtype.hasobject or not _DTYPE.fullmatch(array.dtype.str):
                        raise SnapshotError(f"array {name!r} has dtype {array.dtype}; a snapshot "
                                            "holds numbers and text only")
                    dtype, shape = array.dtype.str, tuple(array.shape)
                    rows = _rows_per_block(shape, array.itemsize, self.block_bytes)
                    flat = _bytes_of(array)
                    step = rows * _row_bytes(shape, array.itemsize)
                    n_blocks = _n_blocks(shape, array.itemsize, rows)
                    table = np.zeros(n_blocks, dtype=TABLE)
                    kept = np.zeros(n_blocks, dtype=bool)
                    old = self.layouts.get(name)
                    if old is not None and old.same_cut(dtype, shape, rows):
                        n = old.common(shape)
                        kept[:n] = ~_changed_blocks(flat, _bytes_of(self.last[name]), n, step)
                        table[:n] = old.table[:n]
                    for i in (range(n_blocks) if base else np.flatnonzero(~kept).tolist()):
                        lo, hi = i * step, min((i + 1) * step, array.nbytes)
                        entry = table[i]
                        if not kept[i]:
                            entry["sha"] = np.frombuffer(hashlib.sha256(flat[lo:hi]).digest(),
                                                         np.uint8)
                        entry["v"], entry["off"] = number, written
                        f.write(flat[lo:hi])
                        written += hi - lo
                    layouts[name] = _Layout(dtype, shape, rows, table)
                f.flush()
                os.fsync(f.fileno())
            meta_raw = json.dumps(meta).encode("utf-8")
            _write_synced(tmp / META_FILE, meta_raw)
            used = {number}
            for layout in layouts.values():
                used.update(np.unique(layout.table["v"]).tolist())
            names = {**self.names, number: version}
            versions = [names[n] for n in sorted(used)]
            raw = json.dumps({
                "format": BLOCKS_FORMAT, "version": version, "seq": seq, "base": base,
                "block_bytes": self.block_bytes, "versions": versions,
                "meta": {"size": len(meta_raw), "sha256": _sha256(meta_raw)},
                "arrays": {name: {"dtype": layout.dtype, "shape": list(layout.shape),
                                  "rows": layout.rows,
                                  "table": base64.b64encode(layout.table.tobytes()).decode()}
                           for name, layout in layouts.items()},
            }, separators=(",", ":")).encode("utf-8")
            _write_synced(tmp / MANIFEST_FILE, raw)
            fsync_dir(tmp)
            os.rename(tmp, self.directory / version)
            fsync_dir(self.directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.last, self.layouts = arrays, layouts
        self.last_written, self.last_base = written, base
        if base:
            self.since_base, self.written_since_base = 0, 0
        else:
            self.since_base += 1
            self.written_since_base += written
        self.retained.append(frozenset(versions))
        needed = {_version_number(v) for v in self.needed()}
        self.names = {n: v for n, v in names.items() if n in needed}
        return len(raw), _sha256(raw)


def _integer(value: Any, what: str, *, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SnapshotError(f"{what} must be a whole number >= {low}, got {value!r}")
    return value


def parse_blocks_manifest(raw: bytes, where: Path, version: str
                          ) -> tuple[tuple[int, str], dict[str, _Layout], dict[int, str]]:
    """The ``(meta size, meta sha256)``, array layouts and ``{publication number: version
    name}`` of an incremental version's ``manifest.json``, checked field by field; raises
    :class:`SnapshotError` naming ``where`` and the field."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise SnapshotError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != BLOCKS_FORMAT:
        raise SnapshotError(f"{where}: not an nmrn incremental snapshot manifest")
    if data.get("version") != version:
        raise SnapshotError(f"{where}: names version {data.get('version')!r}, not {version!r}")
    block_bytes = _integer(data.get("block_bytes"), f"{where}: block_bytes", low=1)
    if block_bytes > MAX_BLOCK_BYTES:
        raise SnapshotError(f"{where}: block_bytes {block_bytes} is over {MAX_BLOCK_BYTES}")
    versions = data.get("versions")
    if (not isinstance(versions, list) or not versions
            or not all(isinstance(v, str) and _VERSION.fullmatch(v) for v in versions)):
        raise SnapshotError(f"{where}: versions must be a list of version names")
    names = {_version_number(v): v for v in versions}
    if len(names) != len(versions):
        raise SnapshotError(f"{where}: versions names a publication number twice")
    meta = data.get("meta")
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str) \
            or not _SHA256.fullmatch(meta["sha256"]):
        raise SnapshotError(f"{where}: meta must hold a size and a sha256")
    meta_size = _integer(meta.get("size"), f"{where}: meta.size")
    if meta_size > MAX_META_BYTES:
        raise SnapshotError(f"{where}: meta.size {meta_size} is over {MAX_META_BYTES}")
    arrays = data.get("arrays")
    if not isinstance(arrays, dict):
        raise SnapshotError(f"{where}: arrays must be a JSON object")
    known = np.array(sorted(names), dtype=np.uint64)
    layouts: dict[str, _Layout] = {}
    for name, entry in arrays.items():
        what = f"{where}: arrays[{name!r}]"
        if not isinstance(entry, dict):
            raise SnapshotError(f"{what} must be a JSON object")
        dtype = entry.get("dtype")
        if not isinstance(dtype, str) or not _DTYPE.fullmatch(dtype):
            raise SnapshotError(f"{what}.dtype {dtype!r} is not a dtype of numbers or text")
        shape = entry.get("shape")
        if not isinstance(shape, list) or len(shape) > 32:
            raise SnapshotError(f"{what}.shape must be a list of at most 32 sizes")
        shape_t = tuple(_integer(n, f"{what}.shape[{i}]") for i, n in enumerate(shape))
        try:  # the pattern also lets through names numpy has no type for ("<i3", "<f1")
            itemsize = np.dtype(dtype).itemsize
        except TypeError:
            raise SnapshotError(f"{what}.dtype {dtype!r} is not a dtype numpy knows") from None
        # numpy refuses a shape whose sizes other than 0 multiply past its index range, even
        # when a 0 makes it empty; the block arithmetic runs in int64
        if itemsize * math.prod(n or 1 for n in shape_t) > MAX_ARRAY_BYTES:
            raise SnapshotError(f"{what}.shape {list(shape_t)}: more than {MAX_ARRAY_BYTES} "
                                "bytes")
        rows = _integer(entry.get("rows"), f"{what}.rows", low=1)
        if rows != _rows_per_block(shape_t, itemsize, block_bytes):
            raise SnapshotError(f"{what}.rows {rows} is not the rows of a {block_bytes}-byte "
                                "block")
        encoded = entry.get("table")
        try:
            table_raw = base64.b64decode(encoded, validate=True)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise SnapshotError(f"{what}.table is not base64") from None
        n_blocks = _n_blocks(shape_t, itemsize, rows)
        if len(table_raw) != n_blocks * TABLE.itemsize:
            raise SnapshotError(f"{what}.table holds {len(table_raw)} bytes, not the "
                                f"{n_blocks} entries of its shape")
        table = np.frombuffer(table_raw, dtype=TABLE)
        if not np.isin(table["v"], known).all():
            raise SnapshotError(f"{what}.table names a version the manifest does not list")
        layouts[name] = _Layout(dtype, shape_t, rows, table)
    return (meta_size, meta["sha256"]), layouts, names


def _read_exact(fd: int, into: np.ndarray, offset: int) -> int:
    """Read ``len(into)`` bytes at ``offset`` into ``into``; the number read (fewer at the
    end of the file)."""
    view, done = memoryview(into), 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            break
        done += n
    return done


def _own_directory(directory: Path) -> None:
    """Make ``directory`` (mode 0700) or check that it is this user's alone: readers serve
    whatever ``CURRENT`` in it names, and the default one is in ``/dev/shm``, which every
    local user can write, under a name anyone can work out. A directory of this user's that
    others may read is made private (it holds every user's history); one owned by another
    user, or that others may write, raises :class:`~nmrn.errors.ConfigError`."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.stat(directory)
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.geteuid() or mode & 0o022:
        owner = "another user's" if st.st_uid != os.geteuid() else f"writable by others ({mode:o})"
        raise ConfigError(f"{directory}: the snapshot directory is {owner}; readers serve what "
                          "it holds, so it must be this user's alone (remove it, or choose "
                          "another with --snapshot-dir)")
    if mode & 0o077:
        os.chmod(directory, mode & 0o700)


class SnapshotPublisher:
    """Publishes the service's model to ``directory`` every ``publish_every`` seconds when it
    changed (a thread; :meth:`start`, :meth:`close`).

    A publication costs a copy of the model's arrays under the model lock (what a checkpoint's
    snapshot costs), then the write and the hashes outside it. So that publishing never takes
    more than about half a core, the next one starts no sooner than the last one lasted
    (``interval = max(publish_every, last duration)``).

    Parameters
    ----------
    service
        The :class:`~nmrn.serving.service.LiveService` whose model is published.
    directory
        The snapshot directory (created; the writer is its only writer, and removes versions
        left there by an earlier run).
    publish_every
        Seconds between checks for a changed model.
    mode
        ``"incremental"`` (a version holds the blocks that changed; see the module's
        docstring) or ``"full"`` (every version is a whole checkpoint).
    base_every
        Incremental mode: a base version (every block) at least every this many publications.
    block_bytes
        Incremental mode: the size of a block (:data:`BLOCK_BYTES`; tests use small ones).
    """

    def __init__(self, service: Any, directory: str | os.PathLike[str], *,
                 publish_every: float = 0.1, mode: str = "incremental",
                 base_every: int = BASE_EVERY, block_bytes: int = BLOCK_BYTES) -> None:
        if not (isinstance(publish_every, (int, float)) and 0 < publish_every <= 3600):
            raise ValueError(f"publish_every must be seconds in (0, 3600], got {publish_every!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if isinstance(base_every, bool) or not isinstance(base_every, int) or base_every < 1:
            raise ValueError(f"base_every must be a whole number >= 1, got {base_every!r}")
        self.mode = mode
        self.service = service
        self.directory = Path(directory)
        self.publish_every = float(publish_every)
        _own_directory(self.directory)
        for old in self.directory.iterdir():  # an earlier run's versions and temporaries
            if _VERSION.fullmatch(old.name) or _TEMPORARY.fullmatch(old.name):
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(
                    missing_ok=True)
        (self.directory / CURRENT).unlink(missing_ok=True)
        self._blocks = _BlockWriter(self.directory, base_every=base_every,
                                    block_bytes=block_bytes)
        self.published: Manifest | None = None
        self.count = 0
        self.last_seconds = 0.0  # the last publication's duration
        self.last_locked_seconds = 0.0  # ... of which the model lock was held
        self.last_bytes = 0  # bytes of arrays the last publication wrote
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nmrn-publisher", daemon=True)
        self.error: BaseException | None = None
        self._histogram = None
        registry = getattr(getattr(service, "metrics", None), "registry", None)
        if registry is not None:  # the writer's /metrics
            from prometheus_client import Gauge, Histogram

            from nmrn.serving.metrics import LATENCY_BUCKETS

            self._histogram = Histogram(
                "nmrn_snapshot_publish_seconds", "Time of one snapshot publication (copy under "
                "the model lock, write, hashes, CURRENT).", buckets=LATENCY_BUCKETS,
                registry=registry,
            )
            Gauge("nmrn_snapshot_published_seq", "Last event held by the published snapshot.",
                  registry=registry).set_function(
                lambda: -1 if self.published is None else self.published.seq)
            Gauge("nmrn_snapshot_publish_bytes", "Bytes of arrays the last publication wrote "
                  "(incremental mode: its changed blocks).", registry=registry).set_function(
                lambda: self.last_bytes)

    def start(self) -> SnapshotPublisher:
        self.publish()  # readers can start at once
        self._thread.start()
        return self

    def publish(self) -> Manifest:
        """Publish the model now (changed or not); returns the new manifest."""
        start = time.perf_counter()
        taken_at = time.time()
        seq, arrays, meta = self.service.take_snapshot()
        locked = time.perf_counter() - start
        self.count += 1
        version = f"v{seq}-{self.count}"
        path = self.directory / version
        if self.mode == "full":
            write_checkpoint(path, arrays, meta)
            files = {name: file_digest(path / name) for name in (META_FILE, ARRAYS_FILE)}
            self.last_bytes = sum(a.nbytes for a in arrays.values())
        else:
            files = {MANIFEST_FILE: self._blocks.write(version, seq, arrays, meta)}
            self.last_bytes = self._blocks.last_written
        manifest = Manifest(version, seq, taken_at, taken_at, files)
        _write_current(self.directory, manifest)
        self.published = manifest
        self._prune()
        self.last_seconds = time.perf_counter() - start
        self.last_locked_seconds = locked
        if self._histogram is not None:
            self._histogram.observe(self.last_seconds)
        return manifest

    def _confirm(self, as_of: float) -> None:
        """Rewrite ``CURRENT`` with a later ``as_of``: the model has not changed since."""
        assert self.published is not None
        p = self.published
        self.published = Manifest(p.version, p.seq, p.taken_at, as_of, p.files)
        _write_current(self.directory, self.published)

    def _prune(self) -> None:
        """Delete the versions no retained manifest needs: full mode keeps the newest
        :data:`KEEP`; incremental mode keeps every version the last :data:`KEEP` manifests
        name (their own and the ones holding their blocks)."""
        versions = sorted(
            (d for d in self.directory.iterdir() if _VERSION.fullmatch(d.name)),
            key=lambda d: int(d.name.split("-")[1]),
        )
        if self.mode == "full":
            doomed = versions[:-KEEP]
        else:
            needed = self._blocks.needed()
            doomed = [d for d in versions if d.name not in needed]
        for old in doomed:
            shutil.rmtree(old, ignore_errors=True)

    def _run(self) -> None:
        while not self._stop.wait(max(self.publish_every, self.last_seconds)):
            try:
                now = time.time()
                assert self.published is not None
                if self.service.applied_seq != self.published.seq:
                    self.publish()
                else:
                    self._confirm(now)
            except Exception as err:  # noqa: BLE001 - counted; the next tick tries again
                self.error = err
                self.service.count_error("publish")
                log.error("snapshot publication failed: %s", err)

    def close(self, *, remove: bool = True) -> None:
        """Stop publishing; with ``remove``, delete the snapshot directory's contents (call
        only once readers have stopped)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        if remove:
            shutil.rmtree(self.directory, ignore_errors=True)


class SnapshotFollower:
    """The reader's side: the newest verified snapshot in ``directory``.

    :meth:`poll` checks ``CURRENT`` (a ``stat``, and a read of a few hundred bytes when it
    changed) and, when it names a new version, verifies and loads it (:func:`verify_version`,
    then :func:`nmrn.models.load_model` for a full version, or the blocks it does not hold for
    an incremental one, each checked against its hash); it returns the new model, or ``None``
    when there is nothing new or the new version was refused (:attr:`refused` counts those,
    :attr:`last_error` says why).
    """

    def __init__(self, directory: str | os.PathLike[str], *, verify: bool = True) -> None:
        self.directory = Path(directory)
        self.verify = verify
        self.manifest: Manifest | None = None  # of the version loaded
        self.loaded_at = 0.0  # time.time() when it was loaded
        self.load_seconds = 0.0  # verification plus load of the last version loaded
        self.loads = 0
        self.refused = 0
        self.last_error: str | None = None
        self.last_read_bytes = 0  # bytes of arrays the last load read from files
        self._stamp: tuple[int, int] | None = None  # CURRENT's (inode, mtime_ns) last read
        self._refused_version: str | None = None
        # incremental mode: the arrays (and their layouts) of the version loaded last, never
        # changed once built (the model may share them); the id maps of its model
        self._held: dict[str, tuple[np.ndarray, _Layout]] = {}
        self._ids: Any = None

    def _current_changed(self) -> bool:
        try:
            st = os.stat(self.directory / CURRENT)
        except FileNotFoundError:
            return False
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True

    def poll(self) -> tuple[Recommender, Manifest] | None:
        """A newly loaded ``(model, manifest)``, or ``None``."""
        if not self._current_changed():
            return None
        try:
            manifest = read_manifest(self.directory)
        except SnapshotError as err:
            self._refuse(str(err))
            return None
        if manifest is None:
            return None
        if self.manifest is not None and manifest.version == self.manifest.version:
            self.manifest = manifest  # a later as_of for the same state
            return None
        if manifest.version == self._refused_version:
            return None
        start = time.perf_counter()
        try:
            if MANIFEST_FILE in manifest.files:
                if self.verify:
                    path = verify_version(self.directory, manifest)
                else:
                    path = self.directory / manifest.version
                model = self._load_incremental(path)
            else:  # loaded from the files verified, open: a prune meanwhile changes nothing
                path, files = open_version(self.directory, manifest, verify=self.verify)
                try:
                    model = _load_full(path, files)
                    size = os.fstat(files[ARRAYS_FILE].fileno()).st_size
                finally:
                    for f in files.values():
                        f.close()
                self._held = {}
                self.last_read_bytes = size
        except (SnapshotError, CheckpointError, OSError) as err:
            self._refused_version = manifest.version
            self._refuse(str(err))
            return None
        except Exception as err:  # noqa: BLE001 - e.g. MemoryError: a model no check foresaw
            # the version is refused like any other bad one: the reader keeps serving, and a
            # reader starting on it does not crash (nor restart to crash again)
            self._refused_version = manifest.version
            self._refuse(f"{self.directory / manifest.version}: the model cannot be built "
                         f"({type(err).__name__}: {str(err)[:200]})", exc_info=err)
            return None
        self._ids = (model.users, model.items)
        self.load_seconds = time.perf_counter() - start
        self.manifest = manifest
        self.loaded_at = time.time()
        self.loads += 1
        return model, manifest

    def _load_incremental(self, path: Path) -> Recommender:
        """The model of the incremental version at ``path`` (its manifest already checked
        against ``CURRENT``): blocks whose hash the arrays held have are kept, the others
        read from the versions the manifest names, each checked against its SHA-256 before
        use. The held arrays change only once the model is built."""
        raw = _read_regular(path / MANIFEST_FILE, MAX_MANIFEST_BYTES)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise SnapshotError(f"{path / MANIFEST_FILE}: more than the limit of "
                                f"{MAX_MANIFEST_BYTES} bytes")
        (meta_size, meta_sha), layouts, names = parse_blocks_manifest(
            raw, path / MANIFEST_FILE, path.name)
        meta_raw = _read_regular(path / META_FILE, meta_size)  # one byte more: a longer file
        if len(meta_raw) != meta_size or _sha256(meta_raw) != meta_sha:
            raise SnapshotError(f"{path / META_FILE}: its size or SHA-256 differs from the "
                                "manifest's (a half-written or changed snapshot)")
        meta = parse_meta(meta_raw, path / META_FILE)
        if not isinstance(meta, dict):
            raise SnapshotError(f"{path / META_FILE}: not a JSON object")
        for name in ID_ARRAYS.values():
            layout = layouts.get(name)
            if layout is None or layout.dtype != "|u1" or len(layout.shape) != 1:
                raise SnapshotError(f"{path / MANIFEST_FILE}: arrays[{name!r}] must be the "
                                    "1-D uint8 text of an id list")
        # every blocks.bin needed is opened while planning, before any block is read: the
        # writer may prune a version meanwhile (a load of every block takes a while), and an
        # open file outlives its unlinking
        fds: dict[int, int] = {}
        try:
            # what to read, and from where: checked against the files' sizes before anything
            # is allocated, so a manifest cannot make a reader allocate more than held + files
            plan: dict[str, tuple[np.ndarray | None, np.ndarray]] = {}
            sizes: dict[int, int] = {}
            spans: dict[int, list[np.ndarray]] = {}  # (start, end) of blocks read, per version
            for name, layout in layouts.items():
                itemsize = np.dtype(layout.dtype).itemsize
                held = self._held.get(name)
                read = np.ones(len(layout.table), dtype=bool)
                kept = None
                if held is not None and held[1].same_cut(layout.dtype, layout.shape,
                                                         layout.rows):
                    n = held[1].common(layout.shape)
                    read[:n] = (held[1].table["sha"][:n]
                                != layout.table["sha"][:n]).any(axis=1)
                    kept = held[0]
                todo = np.flatnonzero(read)
                step = layout.rows * _row_bytes(layout.shape, itemsize)
                total = ((layout.shape[0] if layout.shape else 1)
                         * _row_bytes(layout.shape, itemsize))
                ends = (np.minimum((todo + 1) * step, total) - todo * step
                        + layout.table["off"][todo])
                for number in np.unique(layout.table["v"][todo]).tolist():
                    if number not in sizes:
                        where = self.directory / names[number] / BLOCKS_FILE
                        try:
                            fds[number] = _open_regular_fd(where)
                        except FileNotFoundError:
                            raise SnapshotError(
                                f"{path / MANIFEST_FILE}: names version {names[number]}, "
                                f"whose {BLOCKS_FILE} is missing (pruned or never written)"
                            ) from None
                        sizes[number] = os.fstat(fds[number]).st_size
                    mine = layout.table["v"][todo] == number
                    if mine.any() and int(ends[mine].max()) > sizes[number]:
                        raise SnapshotError(
                            f"{self.directory / names[number] / BLOCKS_FILE}: {sizes[number]} "
                            f"bytes; a block of {name!r} ends past it (a truncated or wrong "
                            "version)")
                    starts = layout.table["off"][todo][mine]
                    spans.setdefault(number, []).append(np.stack([starts, ends[mine]], axis=1))
                plan[name] = (kept, todo)
            # the writer gives every block a span of its own; blocks that share bytes would let
            # a crafted manifest make arrays far larger than the files (one block named a
            # million times), so they refuse the version before anything is allocated
            for number, parts in spans.items():
                both = np.concatenate(parts).astype(np.int64)
                both = both[np.argsort(both[:, 0], kind="stable")]
                if (both[1:, 0] < both[:-1, 1]).any():
                    raise SnapshotError(f"{path / MANIFEST_FILE}: blocks overlap in "
                                        f"{names[number]}/{BLOCKS_FILE} (not a version this "
                                        "writer wrote)")
            arrays: dict[str, np.ndarray] = {}
            files = {number: self.directory / names[number] / BLOCKS_FILE for number in sizes}
            read_bytes = 0
            for name, (kept, todo) in plan.items():
                layout = layouts[name]
                array = np.empty(layout.shape, dtype=np.dtype(layout.dtype))
                flat = _bytes_of(array)
                if kept is not None:  # the blocks kept: the common prefix, in one copy
                    n = min(kept.nbytes, array.nbytes)
                    flat[:n] = _bytes_of(kept)[:n]
                step = layout.rows * _row_bytes(layout.shape, array.itemsize)
                table = layout.table
                for i in todo.tolist():
                    lo, hi = i * step, min((i + 1) * step, array.nbytes)
                    number = int(table["v"][i])
                    if _read_exact(fds[number], flat[lo:hi], int(table["off"][i])) != hi - lo:
                        raise SnapshotError(f"{files[number]}: block {i} of {name!r} is cut "
                                            "short (a truncated file)")
                    if hashlib.sha256(flat[lo:hi]).digest() != table["sha"][i].tobytes():
                        raise SnapshotError(f"{files[number]}: block {i} of {name!r} has "
                                            "another SHA-256 than the manifest's (a changed "
                                            "or wrong version)")
                    read_bytes += hi - lo
                arrays[name] = array
        finally:
            for fd in fds.values():
                os.close(fd)
        texts = {name: arrays.pop(name) for name in ID_ARRAYS.values()}
        for at, (field, name) in enumerate(ID_ARRAYS.items()):
            meta[field] = self._id_list(at, texts[name], self._held.get(name),
                                        f"{path / MANIFEST_FILE}: arrays[{name!r}]")
        import nmrn.models  # noqa: F401 - registers every model class

        try:
            check_meta(meta, path)
            model = Recommender.from_state(meta, arrays, source=path, ids=self._ids)
        except CheckpointError as err:  # a state that does not add up (ids, tables, meta)
            raise SnapshotError(str(err)) from None
        self._held = {name: (array, layouts[name]) for name, array in {**arrays, **texts}.items()}
        self.last_read_bytes = read_bytes
        return model

    def _id_list(self, at: int, text: np.ndarray, held: tuple[np.ndarray, _Layout] | None,
                 where: str) -> list[int | str]:
        """The id list stored as ``text`` (:func:`encode_ids`). When it starts with the text
        held (``held``, whose ids are those of the id map ``self._ids[at]``), only the rest
        is decoded, and appended to the held map's ids."""
        if held is not None and self._ids is not None:
            n = held[0].nbytes
            if text.nbytes >= n and np.array_equal(text[:n], held[0]):
                return self._ids[at].to_list() + decode_ids(text[n:].tobytes(), where)
        return decode_ids(text.tobytes(), where)

    def _refuse(self, why: str, exc_info: BaseException | None = None) -> None:
        self.refused += 1
        self.last_error = why
        log.error("snapshot refused (still serving the previous one): %s", why,
                  exc_info=exc_info)

    def age(self, now: float | None = None) -> float:
        """Seconds since the writer's state was last known to equal the loaded snapshot."""
        if self.manifest is None:
            return float("inf")
        return max(0.0, (time.time() if now is None else now) - self.manifest.as_of)
