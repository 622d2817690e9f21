"""Registry of public datasets, with checksummed download and a local cache.

``fetch("ml-100k")`` returns the path of the dataset's event file, downloading and verifying it
on the first call and reusing the verified copy afterwards; ``load_dataset("ml-100k")`` reads it
into an :class:`~nmrn.data.events.EventBatch`.

Sources
-------
``grouplens``
    The official archive on files.grouplens.org, fetched with :mod:`urllib` (streamed to a
    temporary file, with a timeout). Its SHA-256 is pinned in :data:`DATASETS`; a mismatch deletes
    the download and raises :class:`~nmrn.errors.DatasetError` naming both hashes. Only the
    event file (``u.data``, ``ratings.dat``) is extracted from the archive; the archive itself is
    not kept. An archive saved by hand as ``<data_dir>/<name>/<name>.zip`` is verified and used
    instead of downloading, for machines that cannot reach the host.
``pypi:recbole==1.2.1``
    MovieLens-100K only. The ``recbole`` 1.2.1 wheel on PyPI redistributes the same 100,000
    ratings in RecBole's atomic-file format (``ml-100k.inter``). When the official host cannot be
    reached (``source="auto"``), or when asked for (``source="pypi"``), the wheel is fetched with
    ``python -m pip download --no-deps --only-binary=:all: recbole==1.2.1`` and the one member is
    extracted and checked against its pinned SHA-256. MovieLens-1M has no such copy: when the
    host is unreachable, the error says how to get the file by hand.

``Fetched.source`` says which source served a call (``"cache"`` when nothing was downloaded).

Cache layout
------------
The cache root is the ``data_dir`` argument, else ``$NMRN_DATA_DIR``, else
``$XDG_CACHE_HOME/nmrn``, else ``~/.cache/nmrn`` (see :func:`default_data_dir`)::

    <data_dir>/
      ml-100k/
        u.data            # from the GroupLens archive (ml-100k.zip, member ml-100k/u.data)
        ml-100k.inter     # or/and: from the recbole wheel (source pypi)
        manifest.json     # per file: source, origin URL or requirement, sha256, size
      ml-1m/
        ratings.dat       # from ml-1m.zip, member ml-1m/ratings.dat
        manifest.json

Every file is written to a temporary name in the same directory and renamed into place, so an
interrupted fetch never leaves a partial file under the final name. A cached file counts as a
hit only if its SHA-256 matches the pinned value (or, where the event file's hash is not pinned,
the value recorded in ``manifest.json`` when the verified archive was extracted); a file that
fails the check is deleted and fetched again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import Any

from nmrn._version import __version__
from nmrn.data.events import EventBatch
from nmrn.errors import DatasetError

logger = logging.getLogger(__name__)

ENV_VAR = "NMRN_DATA_DIR"
SOURCES = ("auto", "grouplens", "pypi")
TIMEOUT_S = 60.0  # per socket operation (connect, each read), not for the whole download
_CHUNK = 1 << 16
_MANIFEST = "manifest.json"

PathLike = str | os.PathLike[str]
Progress = Callable[[int, int | None], None]

_PIP_DOWNLOAD = (
    sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
    "{requirement}", "-d", "{dest}",
)  # fmt: skip


@dataclass(frozen=True)
class PypiSource:
    """A copy of a dataset's event file inside a wheel on PyPI.

    Attributes
    ----------
    requirement
        The pinned requirement that names the wheel, e.g. ``"recbole==1.2.1"``.
    member
        Path of the event file inside the wheel.
    sha256
        SHA-256 of that member.
    reader
        Name of the :mod:`nmrn.data.readers` function that reads it.
    command
        The download command; ``{requirement}`` and ``{dest}`` (an empty directory that must
        receive the wheel) are substituted in each argument. The default runs ``pip download``
        with the interpreter running nmrn.
    timeout_s
        Time limit for the command.
    """

    requirement: str
    member: str
    sha256: str
    reader: str
    command: tuple[str, ...] = _PIP_DOWNLOAD
    timeout_s: float = 600.0

    @property
    def filename(self) -> str:
        """Name of the cached file."""
        return PurePosixPath(self.member).name

    @property
    def label(self) -> str:
        """The value of ``Fetched.source`` for this source."""
        return f"pypi:{self.requirement}"


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset comes from and how to check it.

    Attributes
    ----------
    name
        Registry key, e.g. ``"ml-100k"``; also the cache sub-directory.
    description
        One line for listings.
    url
        The official archive (a zip file).
    archive_sha256
        SHA-256 of the archive, pinned.
    member
        Path of the event file inside the archive.
    reader
        Name of the :mod:`nmrn.data.readers` function that reads the event file.
    member_sha256
        SHA-256 of the event file, where known; ``None`` trusts the verified archive.
    pypi
        A fallback copy on PyPI, if any.

    Examples
    --------
    >>> spec = DATASETS["ml-100k"]
    >>> spec.archive_name, spec.filename, spec.pypi.label
    ('ml-100k.zip', 'u.data', 'pypi:recbole==1.2.1')
    """

    name: str
    description: str
    url: str
    archive_sha256: str
    member: str
    reader: str
    member_sha256: str | None = None
    pypi: PypiSource | None = None

    @property
    def filename(self) -> str:
        """Name of the cached event file."""
        return PurePosixPath(self.member).name

    @property
    def archive_name(self) -> str:
        """File name of the archive (where a hand-downloaded copy is looked for)."""
        return PurePosixPath(urllib.request.urlparse(self.url).path).name


DATASETS: dict[str, DatasetSpec] = {
    "ml-100k": DatasetSpec(
        name="ml-100k",
        description="MovieLens 100K: 100,000 ratings of 1,682 movies by 943 users (1997-98)",
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        # sha256 (4,924,029 bytes) as pinned for this URL in tensorflow/datasets,
        # tensorflow_datasets/url_checksums/movielens.txt; several other public projects pin the
        # same value alongside the MD5 GroupLens publishes (ml-100k.zip.md5:
        # 0e33842e24a9c977be4e0107933c0723).
        archive_sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        member="ml-100k/u.data",
        reader="read_movielens_100k",
        # u.data (1,979,173 bytes), as pinned by public projects that fetch the file itself
        # (e.g. ankane/disco's Disco::Data.load_movielens).
        member_sha256="06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
        pypi=PypiSource(
            requirement="recbole==1.2.1",
            member="recbole/dataset_example/ml-100k/ml-100k.inter",
            # computed from the wheel recbole-1.2.1-py3-none-any.whl downloaded from PyPI
            # (1,979,230 bytes; the same 100,000 rows as u.data under a RecBole header).
            sha256="4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
            reader="read_recbole_inter",
        ),
    ),
    "ml-1m": DatasetSpec(
        name="ml-1m",
        description="MovieLens 1M: 1,000,209 ratings of 3,706 movies by 6,040 users (2000-03)",
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        # sha256 (5,917,549 bytes) as pinned for this URL in tensorflow/datasets,
        # tensorflow_datasets/url_checksums/movielens.txt, and in TensorFlow's on-device
        # recommendation example (example_generation_movielens.py, MOVIELENS_ZIP_HASH); GroupLens
        # publishes MD5 c4d9eecfca2ab87c1945afe126590906.
        archive_sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        member="ml-1m/ratings.dat",
        reader="read_movielens_1m",
    ),
}


@dataclass(frozen=True)
class Fetched:
    """The result of :func:`fetch`.

    Attributes
    ----------
    name
        The dataset's registry name.
    path
        The cached event file.
    source
        ``"cache"``, ``"grouplens"`` or ``"pypi:<requirement>"``: where this call got the file.
    sha256
        SHA-256 of the event file at ``path``.
    """

    name: str
    path: Path
    source: str
    sha256: str


def default_data_dir() -> Path:
    """The cache root: ``$NMRN_DATA_DIR``, else ``$XDG_CACHE_HOME/nmrn``, else ``~/.cache/nmrn``.

    Empty variables count as unset.
    """
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "nmrn"
    return Path.home() / ".cache" / "nmrn"


def fetch(
    name: str,
    *,
    data_dir: PathLike | None = None,
    source: str = "auto",
    progress: Progress | None = None,
    timeout: float = TIMEOUT_S,
) -> Fetched:
    """Return the dataset's event file, downloading and verifying it if it is not cached.

    Parameters
    ----------
    name
        A key of :data:`DATASETS` (``"ml-100k"``, ``"ml-1m"``).
    data_dir
        The cache root; defaults to :func:`default_data_dir`.
    source
        ``"auto"``: the cache, else the official archive, else (where the dataset has one) the
        copy on PyPI when the official host cannot be reached. ``"grouplens"``: the official
        archive only. ``"pypi"``: the PyPI copy only. Either restricted source still reuses its
        own cached file.
    progress
        Called as ``progress(bytes_done, bytes_total)`` while the archive downloads;
        ``bytes_total`` is ``None`` when the server does not say.
    timeout
        Seconds allowed for each network operation (connect, each read).

    Returns
    -------
    Fetched
        The event file's path, the source that served it, and its SHA-256.

    Raises
    ------
    DatasetError
        Unknown dataset; a checksum mismatch; no source could be reached.
    ValueError
        ``source`` is not one of ``"auto"``, ``"grouplens"``, ``"pypi"``.
    """
    spec = _spec(name)
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(map(repr, SOURCES))}; got {source!r}")
    if source == "pypi" and spec.pypi is None:
        raise DatasetError(f"{name} has no copy on PyPI; use source='grouplens' or 'auto'")
    directory = _root(data_dir) / spec.name
    for filename in _candidates(spec, source):
        hit = _cached_file(spec, directory, filename)
        if hit is not None:
            return Fetched(spec.name, directory / filename, "cache", hit)
    directory.mkdir(parents=True, exist_ok=True)

    if source == "pypi":
        assert spec.pypi is not None
        return _fetch_pypi(spec, spec.pypi, directory)
    local = directory / spec.archive_name
    if local.is_file():
        return _from_local_archive(spec, local, directory)
    try:
        return _fetch_grouplens(spec, directory, progress, timeout)
    except _Unreachable as err:
        unreachable = err
    if source == "grouplens" or spec.pypi is None:
        raise DatasetError(
            f"{spec.name}: could not reach {spec.url} ({unreachable}). Download it by other "
            f"means and either save it as {local} and fetch again (it will be verified), or "
            f"give the extracted {spec.member} to the command line's --data PATH"
            + ("" if spec.pypi is None else "; or use source='pypi'")
        ) from None
    logger.warning(
        "%s: could not reach %s (%s); falling back to %s",
        spec.name,
        spec.url,
        unreachable,
        spec.pypi.label,
    )
    try:
        return _fetch_pypi(spec, spec.pypi, directory)
    except DatasetError as err:
        raise DatasetError(
            f"{spec.name}: could not reach {spec.url} ({unreachable}), and the fallback failed "
            f"too: {err}"
        ) from None


def load_dataset(
    name: str, *, data_dir: PathLike | None = None, source: str = "auto"
) -> EventBatch:
    """Fetch a dataset (see :func:`fetch`) and read it, sorted by time.

    Parameters
    ----------
    name, data_dir, source
        As for :func:`fetch`.

    Returns
    -------
    EventBatch
        All events with int user and item ids, sorted by timestamp (stable), ratings as weights.
    """
    fetched = fetch(name, data_dir=data_dir, source=source)
    return _read(DATASETS[name], fetched.path)


def dataset_info(name: str, *, data_dir: PathLike | None = None) -> dict[str, Any]:
    """Describe a dataset and what of it is cached where. Downloads nothing.

    Parameters
    ----------
    name
        A key of :data:`DATASETS`.
    data_dir
        The cache root; defaults to :func:`default_data_dir`.

    Returns
    -------
    dict
        ``name``, ``description``, ``url``, ``archive_sha256``, ``sources``, ``directory``,
        ``cached`` (whether a verified event file is present) and ``files``: one entry per
        cached event file with ``file``, ``path``, ``source``, ``bytes``, ``sha256`` and
        ``verified``. When ``cached``, also ``events``, ``users`` and ``items`` counted from the
        file :func:`fetch` would return.
    """
    spec = _spec(name)
    directory = _root(data_dir) / spec.name
    manifest = _read_manifest(directory)
    files = []
    served: str | None = None
    for filename in _candidates(spec, "auto"):
        path = directory / filename
        if not path.is_file():
            continue
        digest = _sha256_file(path)
        expected = _expected_sha256(spec, filename, manifest)
        verified = expected is not None and digest == expected
        files.append({
            "file": filename,
            "path": str(path),
            "source": manifest.get(filename, {}).get("source", "unknown"),
            "bytes": path.stat().st_size,
            "sha256": digest,
            "verified": verified,
        })  # fmt: skip
        if verified and served is None:
            served = filename
    info: dict[str, Any] = {
        "name": spec.name,
        "description": spec.description,
        "url": spec.url,
        "archive_sha256": spec.archive_sha256,
        "sources": ["grouplens"] + ([spec.pypi.label] if spec.pypi else []),
        "directory": str(directory),
        "cached": served is not None,
        "files": files,
    }
    if served is not None:
        events = _read(spec, directory / served)
        info["events"] = len(events)
        info["users"] = len(set(events.users.tolist()))
        info["items"] = len(set(events.items.tolist()))
    return info


# -- internals -----------------------------------------------------------------------------------


class _Unreachable(Exception):
    """The official host could not be reached or did not serve the file."""


def _spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(
            f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}"
        ) from None


def _root(data_dir: PathLike | None) -> Path:
    return default_data_dir() if data_dir is None else Path(data_dir).expanduser()


def _candidates(spec: DatasetSpec, source: str) -> list[str]:
    """Cached file names that satisfy ``source``, in order of preference."""
    names = [] if source == "pypi" else [spec.filename]
    if spec.pypi is not None and source != "grouplens":
        names.append(spec.pypi.filename)
    return names


def _read(spec: DatasetSpec, path: Path) -> EventBatch:
    from nmrn.data import readers  # deferred: the registry itself needs no parser

    reader = spec.reader
    if spec.pypi is not None and path.name == spec.pypi.filename:
        reader = spec.pypi.reader
    events: EventBatch = getattr(readers, reader)(path)
    return events


def _expected_sha256(spec: DatasetSpec, filename: str, manifest: dict[str, Any]) -> str | None:
    if filename == spec.filename and spec.member_sha256 is not None:
        return spec.member_sha256
    if spec.pypi is not None and filename == spec.pypi.filename:
        return spec.pypi.sha256
    recorded = manifest.get(filename, {}).get("sha256")
    return recorded if isinstance(recorded, str) else None


def _cached_file(spec: DatasetSpec, directory: Path, filename: str) -> str | None:
    """The file's SHA-256 if it is cached and verified; a file that fails the check is deleted."""
    path = directory / filename
    if not path.is_file():
        return None
    digest = _sha256_file(path)
    expected = _expected_sha256(spec, filename, _read_manifest(directory))
    if digest == expected:
        return digest
    logger.warning(
        "%s: cached %s has sha256 %s, expected %s; fetching it again",
        spec.name,
        path,
        digest,
        expected,
    )
    path.unlink()
    return None


def _fetch_grouplens(
    spec: DatasetSpec, directory: Path, progress: Progress | None, timeout: float
) -> Fetched:
    logger.info("%s: downloading %s", spec.name, spec.url)
    archive, digest = _download(spec.url, directory, progress, timeout)
    try:
        if digest != spec.archive_sha256:
            raise DatasetError(
                f"{spec.name}: {spec.url} has sha256 {digest}, expected {spec.archive_sha256}; "
                "the download was deleted. The file on the server differs from the one this "
                "version of nmrn pins: check the URL, or report it if GroupLens changed it"
            )
        return _install(spec, archive, directory, "grouplens", {"url": spec.url})
    finally:
        archive.unlink(missing_ok=True)


def _from_local_archive(spec: DatasetSpec, archive: Path, directory: Path) -> Fetched:
    digest = _sha256_file(archive)
    if digest != spec.archive_sha256:
        raise DatasetError(
            f"{spec.name}: {archive} has sha256 {digest}, expected {spec.archive_sha256} "
            f"(the official {spec.url}); delete or replace it"
        )
    logger.info("%s: using the verified archive %s", spec.name, archive)
    return _install(
        spec, archive, directory, "grouplens", {"url": spec.url, "archive": str(archive)}
    )


def _install(
    spec: DatasetSpec, archive: Path, directory: Path, source: str, extra: dict[str, str]
) -> Fetched:
    """Extract the event file from a verified archive into the cache and record it."""
    target = directory / spec.filename
    where = f"{spec.name}: {spec.archive_name}"
    digest = _extract(archive, spec.member, target, spec.member_sha256, where)
    _record(directory, spec.filename, {
        "source": source, **extra, "archive_sha256": spec.archive_sha256, "member": spec.member,
        "sha256": digest, "bytes": target.stat().st_size,
    })  # fmt: skip
    return Fetched(spec.name, target, source, digest)


def _fetch_pypi(spec: DatasetSpec, pypi: PypiSource, directory: Path) -> Fetched:
    logger.info("%s: fetching %s from PyPI", spec.name, pypi.requirement)
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=directory) as tmp:
        command = [
            arg.replace("{requirement}", pypi.requirement).replace("{dest}", tmp)
            for arg in pypi.command
        ]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=pypi.timeout_s, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise DatasetError(f"`pip download {pypi.requirement}` could not run: {err}") from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise DatasetError(
                f"`pip download {pypi.requirement}` exited with status {done.returncode}: "
                + " | ".join(tail)
            )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise DatasetError(f"`pip download {pypi.requirement}` produced no wheel in {tmp}")
        target = directory / pypi.filename
        where = f"{spec.name}: {wheels[0].name}"
        digest = _extract(wheels[0], pypi.member, target, pypi.sha256, where)
    _record(directory, pypi.filename, {
        "source": pypi.label, "requirement": pypi.requirement, "wheel": wheels[0].name,
        "member": pypi.member, "sha256": digest, "bytes": target.stat().st_size,
    })  # fmt: skip
    return Fetched(spec.name, target, pypi.label, digest)


def _download(
    url: str, directory: Path, progress: Progress | None, timeout: float
) -> tuple[Path, str]:
    """Stream ``url`` into a temporary file in ``directory``; return its path and SHA-256."""
    request = urllib.request.Request(url, headers={"User-Agent": f"nmrn/{__version__}"})
    fd, name = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=directory)
    path = Path(name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    done = 0
                    if progress is not None:
                        progress(0, total)
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
            except urllib.error.HTTPError as err:  # the host answered, but not with the file
                raise _Unreachable(f"HTTP {err.code} {err.reason}") from err
            except urllib.error.URLError as err:
                raise _Unreachable(str(err.reason) if err.reason else str(err)) from err
            except (HTTPException, ConnectionError, TimeoutError) as err:
                raise _Unreachable(f"{type(err).__name__}: {err}") from err
        if total is not None and done != total:
            raise _Unreachable(f"the transfer stopped after {done} of {total} bytes")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, digest.hexdigest()


def _extract(archive: Path, member: str, target: Path, expected: str | None, where: str) -> str:
    """Copy one member of a zip file to ``target`` atomically, checking its SHA-256.

    ``where`` names the archive in messages (``"ml-100k: ml-100k.zip"``): a download's own
    file name is a temporary one.
    """
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}-", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with zipfile.ZipFile(archive) as zf, zf.open(member) as src:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
            except KeyError:
                raise DatasetError(f"{where} has no member {member!r}") from None
            except zipfile.BadZipFile as err:
                raise DatasetError(f"{where} is not a valid zip file: {err}") from None
        got = digest.hexdigest()
        if expected is not None and got != expected:
            raise DatasetError(
                f"{where}: {member} has sha256 {got}, expected {expected}; "
                "the extracted file was deleted"
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return got


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def _record(directory: Path, filename: str, entry: dict[str, Any]) -> None:
    """Add or replace one file's entry in the directory's manifest (atomically)."""
    files = _read_manifest(directory)
    files[filename] = entry
    text = json.dumps({"format_version": 1, "files": files}, indent=2, sort_keys=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".manifest-", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        os.replace(tmp_name, directory / _MANIFEST)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
