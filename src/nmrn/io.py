"""Checkpoint and durability I/O: atomic checkpoint directories, fsync helpers, repair.

Every layer that writes to disk durably goes through this module: models save checkpoints with
:func:`write_checkpoint` (via :meth:`nmrn.training.contract.Recommender.save`), the serving
journal fsyncs with :func:`fsync_dir`, and stream consumers repair and clean up with
:func:`recover_interrupted_save` and :func:`remove_stale_temporaries`. It knows nothing of
models: a checkpoint here is a directory holding ``meta.json`` (a JSON object whose ``format`` is
``"nmrn-checkpoint"``) and ``arrays.npz`` (numbers only; never unpickled).

Examples
--------
>>> import tempfile, numpy as np
>>> path = Path(tempfile.mkdtemp()) / "ckpt"
>>> meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "class": "Popularity",
...         "params": {}, "users": [], "items": [], "n_events": 0, "model_meta": {}}
>>> _ = write_checkpoint(path, {"x": np.arange(3)}, meta)
>>> got_meta, arrays = read_checkpoint(path)
>>> got_meta["class"], arrays["x"].tolist()
('Popularity', [0, 1, 2])
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from nmrn.data.validation import json_depth
from nmrn.errors import CheckpointError

__all__ = [
    "ARRAYS_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "META_FILE",
    "check_meta",
    "checkpoint_exists",
    "parse_meta",
    "fsync_dir",
    "is_checkpoint",
    "read_checkpoint",
    "recover_interrupted_save",
    "remove_stale_temporaries",
    "write_checkpoint",
]

FORMAT = "nmrn-checkpoint"
#: Version 2 records the model class (``"class"``) and the preset it was built from
#: (``"preset"``); version 1 recorded a registry name (``"model"``). Both are read.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
META_FILE = "meta.json"
ARRAYS_FILE = "arrays.npz"
#: A meta.json larger than this is refused before it is read (ids of ~50 million users fit).
MAX_META_BYTES = 1 << 30
MAX_META_DEPTH = 64


def write_checkpoint(
    path: str | os.PathLike[str], arrays: dict[str, np.ndarray], meta: dict[str, Any]
) -> Path:
    """Write a model's snapshot (:meth:`~nmrn.training.contract.Recommender.snapshot`) as a
    checkpoint directory at ``path``, atomically: a temporary directory next to it, fsynced,
    then renamed over it (the old one, if any, is replaced only once the new one is complete).
    Returns ``path``.

    A symbolic link at ``path`` is followed on purpose: the checkpoint is written where it
    points, and the link stays a link.

    Raises
    ------
    CheckpointError
        ``path`` exists and is not an nmrn checkpoint (it is never replaced).
    """
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if path.exists() and not is_checkpoint(path):
        raise CheckpointError(
            f"{path}: exists and is not an nmrn checkpoint; refusing to replace it "
            f"(choose another path or remove it)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_dir(path.parent, prefix=f".{path.name}.")
    try:
        with open(tmp / ARRAYS_FILE, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        with open(tmp / META_FILE, "w", encoding="utf-8") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _fresh_dir(parent: Path, prefix: str) -> Path:
    """A new, empty directory ``parent/<prefix><random>`` with the permissions a plain mkdir
    gives (the process umask applies; ``tempfile.mkdtemp`` would make it 0700, and reading the
    umask means setting it, which is not thread-safe)."""
    for _ in range(100):
        candidate = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            candidate.mkdir(mode=0o777)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{parent}: no free name for a temporary directory {prefix}*")


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a directory whose meta.json says it is an nmrn checkpoint."""
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that a rename inside it is durable (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_interrupted_save(path: Path) -> None:
    """Put back the previous checkpoint if a save was killed between its two renames.

    :func:`write_checkpoint` moves the old checkpoint to ``.<name>.old-<pid>`` and then renames
    the new one into place; a kill between the two renames leaves nothing at ``path``.
    """
    if path.exists() or not path.parent.is_dir():
        return
    for old in sorted(path.parent.glob(f".{path.name}.old-*")):
        if not (old / META_FILE).is_file():
            continue
        try:
            read_checkpoint(old)
        except CheckpointError:
            continue
        os.rename(old, path)
        return


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and check a checkpoint directory; returns ``(meta, arrays)``. Never unpickles."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory (missing or not a directory)")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: not an nmrn checkpoint ({META_FILE} is missing)")
    if meta_path.stat().st_size > MAX_META_BYTES:
        raise CheckpointError(f"{meta_path}: {meta_path.stat().st_size} bytes, more than the "
                              f"limit of {MAX_META_BYTES}")
    meta = parse_meta(meta_path.read_bytes(), meta_path)
    check_meta(meta, path)
    arrays = read_arrays(path / ARRAYS_FILE)
    return meta, arrays


def parse_meta(raw: bytes, meta_path: Any) -> Any:
    """The JSON value of a ``meta.json``'s bytes, refused (:class:`CheckpointError` naming
    ``meta_path``) when nested deeper than :data:`MAX_META_DEPTH` or not valid JSON."""
    depth = json_depth(raw)
    if depth > MAX_META_DEPTH:
        raise CheckpointError(f"{meta_path}: JSON nested {depth} deep (the limit is "
                              f"{MAX_META_DEPTH})")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{meta_path}: not valid JSON ({err})") from None
    except ValueError as err:  # e.g. an integer past 4,300 digits
        raise CheckpointError(f"{meta_path}: not acceptable JSON ({str(err).split(';')[0]})"
                              ) from None


def check_meta(meta: Any, path: Any) -> None:
    """Check a checkpoint's ``meta`` (its format, version and fields) before a model is built
    from it; raises :class:`~nmrn.errors.CheckpointError` naming ``path``."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an nmrn checkpoint (format field is not {FORMAT!r})")
    version = meta.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is not supported (this nmrn reads "
            f"{', '.join(map(str, READABLE_VERSIONS))})"
        )
    names_class = "class" if version >= 2 else "model"
    for key in (names_class, "params", "users", "items", "n_events", "model_meta"):
        if key not in meta:
            raise CheckpointError(f"{path}: {META_FILE} lacks the field {key!r}")
    if not isinstance(meta["params"], dict) or not isinstance(meta["model_meta"], dict):
        raise CheckpointError(f"{path}: params and model_meta must be JSON objects")


def read_arrays(path: Path, file: BinaryIO | None = None) -> dict[str, np.ndarray]:
    """The arrays of an ``arrays.npz``, each checked before it is read: stored, not compressed
    (a compressed member could expand far beyond the file: a zip bomb), its ``.npy`` header
    naming a plain dtype and a shape whose bytes fit in the member. Reading therefore never
    allocates more than the file's size, and never unpickles. ``file``: the file, already open
    (read from it instead of ``path``, which then only names it in errors)."""
    try:
        with zipfile.ZipFile(path if file is None else file) as archive:
            arrays: dict[str, np.ndarray] = {}
            for info in archive.infolist():
                if not info.filename.endswith(".npy") or "/" in info.filename:
                    raise CheckpointError(f"{path}: unexpected member {info.filename!r}")
                if info.compress_type != zipfile.ZIP_STORED:
                    raise CheckpointError(f"{path}: member {info.filename!r} is compressed; "
                                          "checkpoints store arrays uncompressed")
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    readers = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}
                    if version not in readers:
                        raise CheckpointError(f"{path}: array {info.filename!r} has .npy format "
                                              f"version {version}")
                    shape, fortran, dtype = readers[version](member, max_header_size=10_000)
                    if dtype.hasobject or dtype.kind not in "biufcUS":
                        raise CheckpointError(f"{path}: array {info.filename!r} has dtype "
                                              f"{dtype}; only numbers and text are read")
                    header = member.tell()
                    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                    if need != info.file_size - header:
                        raise CheckpointError(
                            f"{path}: array {info.filename!r} claims shape {shape} ({need} "
                            f"bytes) but holds {info.file_size - header}"
                        )
                    data = member.read()
                array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran
                                                                 else "C")
                arrays[info.filename[: -len(".npy")]] = array.copy()
            return arrays
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent}: {ARRAYS_FILE} is missing") from None
    except CheckpointError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: unreadable or unsafe ({err})") from None


def checkpoint_exists(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a checkpoint (after repairing an interrupted save, if any).

    Something at ``path`` that is not a checkpoint counts as existing, so that the caller loads
    it and gets a clear :class:`~nmrn.errors.CheckpointError` rather than overwriting it.
    """
    path = Path(path)
    recover_interrupted_save(path)
    return path.exists()


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Delete what killed saves left beside ``path`` (``.<name>.*`` directories); returns them.

    Only call this from the single process that writes the checkpoint, after loading it (a
    load puts back a checkpoint a killed save had moved aside; with nothing at ``path`` this
    removes nothing).
    """
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if not path.exists():
        return []
    removed = []
    if path.parent.is_dir():
        for p in path.parent.glob(f".{path.name}.*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed
