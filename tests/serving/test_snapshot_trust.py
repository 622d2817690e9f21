"""What a snapshot directory may hold, and who may write it (``nmrn serve --workers N``).

A reader trusts the directory only as far as the hashes in ``CURRENT`` go; these tests give it
what hashes cannot rule out: a version whose model cannot be built for a reason no check
anticipated, files that are not files (a FIFO blocks ``open``, a link to ``/dev/zero`` never
ends), and a directory that someone else made or can write. The publisher, for its part, only
ever deletes what it wrote. Real files, a real :class:`LiveService`, publisher and follower in
this process.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nmrn.baselines.popularity import Popularity, RecentPopularity
from nmrn.errors import ConfigError
from nmrn.io import ARRAYS_FILE, META_FILE
from nmrn.serving.service import LiveService
from nmrn.serving.snapshots import (
    BLOCKS_FILE,
    CURRENT,
    MANIFEST_FILE,
    Manifest,
    SnapshotFollower,
    SnapshotPublisher,
    _write_current,
    file_digest,
    read_manifest,
)

HISTORY = [(196, "a", 0), (196, "b", 1), ("u1", "a", 2), (5, "a", 3), (5, "b", 4), (5, "c", 5)]


def _service(model: Any) -> LiveService:
    return LiveService(model, checkpoint_every=None, checkpoint_seconds=None, apply_wait=0)


def _answers(model: Any) -> list[list[Any]]:
    return [list(row) for row in model.recommend([196, "u1", 5, "stranger"], k=3).items]


@pytest.fixture(params=["full", "incremental"])
def publishing(request: Any, tmp_path: Path) -> Any:
    service = _service(RecentPopularity(window=10).fit(HISTORY))
    publisher = SnapshotPublisher(service, tmp_path / "snap", publish_every=3600,
                                  mode=request.param, block_bytes=64)
    publisher.publish()
    follower = SnapshotFollower(tmp_path / "snap")
    model, first = follower.poll()
    yield service, publisher, follower, model, first
    publisher.close()
    service.close(checkpoint=False)


def _next_version(service: LiveService, publisher: SnapshotPublisher) -> Path:
    service.submit([(7, "c", 10)])
    assert service.wait_applied()
    return publisher.directory / publisher.publish().version


def _vouch(directory: Path, version: Path) -> None:
    """Make CURRENT vouch for ``version``'s files as they are now (a crafted version: the
    hashes agree, what they hash is not the writer's)."""
    current = read_manifest(directory)
    assert current is not None
    names = [MANIFEST_FILE] if MANIFEST_FILE in current.files else [META_FILE, ARRAYS_FILE]
    _write_current(directory, Manifest(current.version, current.seq, current.taken_at,
                                       current.as_of,
                                       {name: file_digest(version / name) for name in names}))


def _craft_meta(version: Path, change: Any) -> None:
    """Change ``version``'s meta.json and rehash it where the version records its hash."""
    meta = json.loads((version / META_FILE).read_bytes())
    change(meta)
    raw = json.dumps(meta).encode()
    (version / META_FILE).write_bytes(raw)
    if (version / MANIFEST_FILE).exists():
        import hashlib

        data = json.loads((version / MANIFEST_FILE).read_bytes())
        data["meta"] = {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
        (version / MANIFEST_FILE).write_bytes(json.dumps(data).encode())
    _vouch(version.parent, version)


# -- a version whose model cannot be built is refused, whatever the reason ---------------------
def test_a_model_that_cannot_be_allocated_is_refused_not_raised(publishing: Any) -> None:
    """A window of 2**59 events: the model's ring buffer would be 4 EiB, which no machine can
    map (MemoryError, not one of the errors the checks raise). It escaped ``poll``: a reader
    starting on it crashed, a running one logged a traceback and counted no refusal."""
    service, publisher, follower, model, first = publishing
    expected = _answers(model)
    version = _next_version(service, publisher)
    _craft_meta(version, lambda meta: meta["params"].update(window=2**59))
    assert follower.poll() is None
    assert follower.refused == 1 and follower.manifest == first
    assert "MemoryError" in follower.last_error, follower.last_error
    assert _answers(model) == expected
    version = _next_version(service, publisher)  # the next good version is taken
    got = follower.poll()
    assert got is not None, follower.last_error
    assert got[1].version == version.name and _answers(got[0]) == _answers(service.model)


# -- files that are not files ------------------------------------------------------------------
def _poll_within(follower: SnapshotFollower, seconds: float, unblock: Path | None) -> Any:
    """``follower.poll()`` in a thread; fails if it is still running after ``seconds`` (then
    opens the FIFO ``unblock`` for writing, so that the thread ends)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["got"] = follower.poll()
        except BaseException as err:  # noqa: BLE001 - reported below
            out["err"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if unblock is not None:
            fd = os.open(unblock, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        thread.join(5)
        pytest.fail(f"poll() still running after {seconds} s")
    if "err" in out:
        raise out["err"]
    return out["got"]


def _fifo(path: Path) -> Path:
    path.unlink()
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("name", [META_FILE, "first file CURRENT names", "the arrays' file"])
def test_a_fifo_in_a_version_is_refused_without_blocking(publishing: Any, name: str) -> None:
    """A named pipe where a file should be: ``open`` blocks until someone writes to it, so the
    reader's poller (or a starting reader) hung for good. ``meta.json`` of an incremental
    version is checked against its manifest only after it is read; its ``blocks.bin`` is
    opened before its size is known (the arrays' file of a full version: ``arrays.npz``)."""
    service, publisher, follower, model, first = publishing
    version = _next_version(service, publisher)
    current = read_manifest(publisher.directory)
    if name == "the arrays' file":
        name = ARRAYS_FILE if publisher.mode == "full" else BLOCKS_FILE
    target = version / (name if name in (META_FILE, BLOCKS_FILE, ARRAYS_FILE)
                        else next(iter(current.files)))
    _fifo(target)
    assert _poll_within(follower, 5.0, target) is None
    assert follower.refused == 1 and follower.manifest == first
    assert "not a regular file" in follower.last_error, follower.last_error


def test_a_fifo_as_current_is_refused_without_blocking(publishing: Any) -> None:
    service, publisher, follower, model, first = publishing
    target = _fifo(publisher.directory / CURRENT)
    assert _poll_within(follower, 5.0, target) is None
    assert follower.refused == 1 and follower.manifest == first
    assert "not a regular file" in follower.last_error, follower.last_error


def test_a_link_to_an_endless_file_is_refused_without_reading_it(publishing: Any) -> None:
    """``meta.json`` as a link to ``/dev/zero``: read whole, it filled memory until the
    reader died; hashed whole (a full version's files), it never ended."""
    service, publisher, follower, model, first = publishing
    version = _next_version(service, publisher)
    (version / META_FILE).unlink()
    (version / META_FILE).symlink_to("/dev/zero")
    assert _poll_within(follower, 5.0, None) is None
    assert follower.refused == 1 and follower.manifest == first
    assert "not a regular file" in follower.last_error, follower.last_error


# -- the directory: only the writer may write it, only its user read it ------------------------
def test_a_new_snapshot_directory_is_private(tmp_path: Path) -> None:
    """The snapshots hold every user's history (what a read token protects); the default
    directory is under /dev/shm, which every local user can list."""
    service = _service(Popularity().fit(HISTORY))
    publisher = SnapshotPublisher(service, tmp_path / "snap", publish_every=3600)
    try:
        publisher.publish()
        assert stat.S_IMODE((tmp_path / "snap").stat().st_mode) == 0o700
    finally:
        publisher.close()
        service.close(checkpoint=False)


@pytest.mark.parametrize("how", ["writable by all", "another user's"])
def test_a_directory_others_can_write_is_refused(tmp_path: Path, how: str) -> None:
    """/dev/shm is writable by every local user, and the default directory's name is known
    (a hash of the checkpoint's path): another user could make it first and then replace
    CURRENT and the versions in it with their own, which the readers would serve."""
    directory = tmp_path / "snap"
    directory.mkdir()
    os.chmod(directory, 0o777)
    if how == "another user's":
        if os.geteuid() != 0:
            pytest.skip("making a directory another user's needs root")
        os.chmod(directory, 0o755)
        os.chown(directory, 65534, 65534)
    service = _service(Popularity().fit(HISTORY))
    try:
        with pytest.raises(ConfigError, match="snapshot directory"):
            SnapshotPublisher(service, directory, publish_every=3600)
        assert list(directory.iterdir()) == []
    finally:
        service.close(checkpoint=False)


def test_the_publisher_deletes_only_what_a_publisher_wrote(tmp_path: Path) -> None:
    """At start the publisher clears an earlier run's versions and temporaries. It deleted
    every name starting with a dot: ``--snapshot-dir ~`` took ``~/.ssh`` and ``~/.bashrc``."""
    directory = tmp_path / "snap"
    directory.mkdir(mode=0o700)
    (directory / ".bashrc").write_text("keep me")
    (directory / ".ssh").mkdir()
    (directory / ".ssh" / "id_ed25519").write_text("keep me too")
    (directory / "notes.txt").write_text("and me")
    # an earlier run's: a version, a version's temporary directory, CURRENT and its temporary
    for name in ("v3-2", ".v4-3.0a1b2c3d"):
        (directory / name).mkdir()
        (directory / name / META_FILE).write_text("{}")
    (directory / CURRENT).write_text("{}")
    (directory / f".{CURRENT}.12345.tmp").write_text("{}")
    service = _service(Popularity().fit(HISTORY))
    publisher = SnapshotPublisher(service, directory, publish_every=3600)
    try:
        assert sorted(p.name for p in directory.iterdir()) == [".bashrc", ".ssh", "notes.txt"]
        assert (directory / ".ssh" / "id_ed25519").read_text() == "keep me too"
        publisher.publish()
    finally:
        publisher.close(remove=False)
        service.close(checkpoint=False)
    assert (directory / ".bashrc").read_text() == "keep me"


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (5 << 19) + 7])
def test_file_digest_is_the_sha256_of_the_whole_file_in_any_number_of_chunks(
        tmp_path: Path, size: int) -> None:
    # the hash is read in 1 MiB chunks (no hashlib.file_digest: Python 3.10 has none); sizes
    # around and past a chunk's boundary, against hashlib over the bytes at once
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    (tmp_path / "f").write_bytes(data)
    assert file_digest(tmp_path / "f") == (size, hashlib.sha256(data).hexdigest())
