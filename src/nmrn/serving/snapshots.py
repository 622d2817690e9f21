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

While the model does not change, the writer rewrites ``CURRENT`` with a new ``as_of`` (the
latest time at which the writer's state was known to equal the snapshot) every
``publish_every`` seconds, so a reader's snapshot age is ``now - as_of``: how far behind the
writer's applied state its answers can be, whether or not events are arriving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nmrn.errors import CheckpointError, NMRNError
from nmrn.io import ARRAYS_FILE, META_FILE, write_checkpoint
from nmrn.training.contract import Recommender

log = logging.getLogger("nmrn.serving")

__all__ = [
    "CURRENT",
    "KEEP",
    "Manifest",
    "SnapshotError",
    "SnapshotFollower",
    "SnapshotPublisher",
    "default_snapshot_dir",
    "read_manifest",
    "verify_version",
]

CURRENT = "CURRENT"
MANIFEST_FORMAT = "nmrn-snapshot"
#: Versions kept in the snapshot directory (the newest; older ones are deleted).
KEEP = 3
_VERSION = re.compile(r"v\d{1,20}-\d{1,20}")
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


def file_digest(path: Path) -> tuple[int, str]:
    """``(size, sha256 hex)`` of a file."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256")  # type: ignore[arg-type]
        size = f.tell()
    return size, digest.hexdigest()


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
        with open(directory / CURRENT, "rb") as f:
            raw = f.read(MAX_CURRENT_BYTES + 1)
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
    if not isinstance(files, dict) or set(files) != {META_FILE, ARRAYS_FILE}:
        raise SnapshotError(f"{CURRENT}: files must list {META_FILE} and {ARRAYS_FILE}")
    parsed: dict[str, tuple[int, str]] = {}
    for name, entry in files.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise SnapshotError(f"{CURRENT}: files[{name!r}] must hold a size and a sha256")
        parsed[name] = (_number(entry.get("size"), f"files[{name!r}].size", integer=True),
                        entry["sha256"])
    return Manifest(version, _number(data.get("seq"), "seq", integer=True),
                    float(_number(data.get("taken_at"), "taken_at")),
                    float(_number(data.get("as_of"), "as_of")), parsed)


def verify_version(directory: Path, manifest: Manifest) -> Path:
    """The version directory ``manifest`` names, once each of its files has the size and the
    SHA-256 the manifest gives; raises :class:`SnapshotError` otherwise."""
    path = directory / manifest.version
    for name, (size, digest) in manifest.files.items():
        try:
            got_size, got_digest = file_digest(path / name)
        except OSError as err:
            raise SnapshotError(f"{path / name}: cannot be read ({err.strerror})") from None
        if got_size != size:
            raise SnapshotError(f"{path / name}: {got_size} bytes, the manifest says {size} "
                                "(a half-written or replaced snapshot)")
        if got_digest != digest:
            raise SnapshotError(f"{path / name}: its SHA-256 differs from the manifest's (a "
                                "changed snapshot)")
    return path


def _write_current(directory: Path, manifest: Manifest) -> None:
    """Replace ``CURRENT`` atomically (a temporary file, then a rename)."""
    tmp = directory / f".{CURRENT}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
    os.replace(tmp, directory / CURRENT)


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
    """

    def __init__(self, service: Any, directory: str | os.PathLike[str], *,
                 publish_every: float = 0.1) -> None:
        if not (isinstance(publish_every, (int, float)) and 0 < publish_every <= 3600):
            raise ValueError(f"publish_every must be seconds in (0, 3600], got {publish_every!r}")
        self.service = service
        self.directory = Path(directory)
        self.publish_every = float(publish_every)
        self.directory.mkdir(parents=True, exist_ok=True)
        for old in self.directory.iterdir():  # an earlier run's versions and temporaries
            if _VERSION.fullmatch(old.name) or old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(
                    missing_ok=True)
        (self.directory / CURRENT).unlink(missing_ok=True)
        self.published: Manifest | None = None
        self.count = 0
        self.last_seconds = 0.0  # the last publication's duration
        self.last_locked_seconds = 0.0  # ... of which the model lock was held
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
        write_checkpoint(path, arrays, meta)
        files = {name: file_digest(path / name) for name in (META_FILE, ARRAYS_FILE)}
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
        versions = sorted(
            (d for d in self.directory.iterdir() if _VERSION.fullmatch(d.name)),
            key=lambda d: int(d.name.split("-")[1]),
        )
        for old in versions[:-KEEP]:
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
    then :func:`nmrn.models.load_model`); it returns the new model, or ``None`` when there is
    nothing new or the new version was refused (:attr:`refused` counts those, :attr:`last_error`
    says why). ``loader`` is for tests.
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
        self._stamp: tuple[int, int] | None = None  # CURRENT's (inode, mtime_ns) last read
        self._refused_version: str | None = None

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
            if self.verify:
                path = verify_version(self.directory, manifest)
            else:
                path = self.directory / manifest.version
            from nmrn.models import load_model

            model = load_model(path)
        except (SnapshotError, CheckpointError, OSError) as err:
            self._refused_version = manifest.version
            self._refuse(str(err))
            return None
        self.load_seconds = time.perf_counter() - start
        self.manifest = manifest
        self.loaded_at = time.time()
        self.loads += 1
        return model, manifest

    def _refuse(self, why: str) -> None:
        self.refused += 1
        self.last_error = why
        log.error("snapshot refused (still serving the previous one): %s", why)

    def age(self, now: float | None = None) -> float:
        """Seconds since the writer's state was last known to equal the loaded snapshot."""
        if self.manifest is None:
            return float("inf")
        return max(0.0, (time.time() if now is None else now) - self.manifest.as_of)
