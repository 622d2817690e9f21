"""Dataset registry and fetch: real HTTP on 127.0.0.1, real zip files, real pip.

Every download here comes from an ``http.server`` in a thread serving archives built in
``tmp_path``; the registry entry under test is pointed at it with ``monkeypatch``. The PyPI
fallback runs the real ``pip download`` against a wheel built locally (``--no-index
--find-links``); only the ``slow`` test talks to PyPI itself.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import socket
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmrn.data import datasets
from nmrn.data.datasets import (
    DATASETS,
    ENV_VAR,
    DatasetSpec,
    Fetched,
    PypiSource,
    dataset_info,
    default_data_dir,
    fetch,
    load_dataset,
)
from nmrn.errors import DatasetError

# Four ratings in file order; sorted by time (stable) they become rows 1, 3, 2, 0.
U_DATA = b"3\t30\t4\t300\n1\t10\t5\t100\n2\t20\t3\t200\n1\t20\t1\t100\n"
INTER = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + U_DATA
SORTED_USERS = [1, 1, 2, 3]
SORTED_ITEMS = [10, 20, 20, 30]
SORTED_TIMES = [100.0, 100.0, 200.0, 300.0]
SORTED_RATINGS = [5.0, 1.0, 3.0, 4.0]
INTER_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_zip(path: Path, members: dict[str, bytes]) -> bytes:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path.read_bytes()


def make_wheel(directory: Path, inter: bytes = INTER) -> Path:
    """A minimal but valid recbole 1.2.1 wheel holding only the dataset member."""
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / "recbole-1.2.1-py3-none-any.whl"
    info = "recbole-1.2.1.dist-info"
    make_zip(wheel, {
        "recbole/__init__.py": b"",
        INTER_MEMBER: inter,
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: recbole\nVersion: 1.2.1\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
        f"{info}/RECORD": b"",
    })  # fmt: skip
    return wheel


def local_pip(find_links: Path) -> tuple[str, ...]:
    """The real ``pip download`` command, restricted to a local directory of wheels."""
    return (
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--no-index", "--find-links", str(find_links), "{requirement}", "-d", "{dest}",
    )  # fmt: skip


def closed_port_url(name: str = "ml-100k.zip") -> str:
    """A URL on 127.0.0.1 where nothing listens: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


class Server:
    """Serves the files of ``root`` over HTTP and records every request path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        handler = functools.partial(_Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.requests = []  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests  # type: ignore[attr-defined, no-any-return]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads or writes the user's real cache."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "www"
    root.mkdir()
    srv = Server(root)
    yield srv
    srv.close()


@pytest.fixture
def archive(server: Server) -> bytes:
    """``ml-100k.zip`` as GroupLens lays it out, served by ``server``."""
    return make_zip(
        server.root / "ml-100k.zip", {"ml-100k/README": b"readme\n", "ml-100k/u.data": U_DATA}
    )


def use_spec(monkeypatch: pytest.MonkeyPatch, name: str = "ml-100k", **changes: object) -> None:
    monkeypatch.setitem(DATASETS, name, replace(DATASETS[name], **changes))  # type: ignore[arg-type]


@pytest.fixture
def served_100k(monkeypatch: pytest.MonkeyPatch, server: Server, archive: bytes) -> Server:
    """ml-100k pointed at the local server; its PyPI fallback would fail if it ever ran."""
    failing = (sys.executable, "-c", "import sys; sys.exit('the fallback must not run')")
    pypi = replace(DATASETS["ml-100k"].pypi, command=failing)
    use_spec(
        monkeypatch,
        url=server.url("ml-100k.zip"),
        archive_sha256=sha256(archive),
        member_sha256=sha256(U_DATA),
        pypi=pypi,
    )
    return server


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- the registry ------------------------------------------------------------------------------


def test_registry_pins_official_archives() -> None:
    assert sorted(DATASETS) == ["ml-100k", "ml-1m"]
    ml100k, ml1m = DATASETS["ml-100k"], DATASETS["ml-1m"]
    assert ml100k.url == "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
    assert (ml100k.member, ml100k.filename, ml100k.archive_name) == (
        "ml-100k/u.data", "u.data", "ml-100k.zip",
    )  # fmt: skip
    assert ml1m.url == "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
    assert (ml1m.member, ml1m.filename) == ("ml-1m/ratings.dat", "ratings.dat")
    assert ml1m.pypi is None
    assert ml100k.pypi is not None and ml100k.pypi.label == "pypi:recbole==1.2.1"
    assert ml100k.pypi.sha256 == "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"
    for spec in (ml100k, ml1m):
        assert len(spec.archive_sha256) == 64 and int(spec.archive_sha256, 16) >= 0


def test_unknown_dataset_lists_the_known_ones(tmp_path: Path) -> None:
    for call in (fetch, load_dataset, dataset_info):
        with pytest.raises(DatasetError, match=r"unknown dataset 'ml-10m'.*ml-100k, ml-1m"):
            call("ml-10m", data_dir=tmp_path)


def test_bad_source_is_a_value_error_naming_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'auto', 'grouplens', 'pypi'; got 'http'"):
        fetch("ml-100k", data_dir=tmp_path, source="http")
    assert not (tmp_path / "ml-100k").exists()


def test_pypi_source_for_a_dataset_without_one(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="ml-1m has no copy on PyPI"):
        fetch("ml-1m", data_dir=tmp_path, source="pypi")


# -- where the cache lives ---------------------------------------------------------------------


def test_default_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_data_dir() == tmp_path / "home" / ".cache" / "nmrn"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "nmrn"
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "explicit"))
    assert default_data_dir() == tmp_path / "explicit"
    monkeypatch.setenv(ENV_VAR, "")  # empty counts as unset
    assert default_data_dir() == tmp_path / "xdg" / "nmrn"
    monkeypatch.setenv(ENV_VAR, "~/data")
    assert default_data_dir() == tmp_path / "home" / "data"


def test_env_var_and_data_dir_decide_where_fetch_writes(
    served_100k: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "from-env"))
    got = fetch("ml-100k")
    assert got.path == tmp_path / "from-env" / "ml-100k" / "u.data"
    explicit = fetch("ml-100k", data_dir=tmp_path / "explicit")
    assert explicit.path == tmp_path / "explicit" / "ml-100k" / "u.data"
    assert explicit.source == "grouplens"  # a different root is a different cache
    assert not (tmp_path / "home").exists()


# -- the official archive ----------------------------------------------------------------------


def test_fetch_downloads_verifies_extracts_and_caches(
    served_100k: Server, archive: bytes, tmp_path: Path
) -> None:
    calls: list[tuple[int, int | None]] = []
    got = fetch("ml-100k", data_dir=tmp_path / "cache", progress=lambda d, t: calls.append((d, t)))

    directory = tmp_path / "cache" / "ml-100k"
    assert got == Fetched("ml-100k", directory / "u.data", "grouplens", sha256(U_DATA))
    assert got.path.read_bytes() == U_DATA
    assert served_100k.requests == ["/ml-100k.zip"]
    # Only the event file and the manifest remain: no archive, no temporary files.
    assert listing(directory) == ["manifest.json", "u.data"]
    entry = json.loads((directory / "manifest.json").read_text())["files"]["u.data"]
    assert entry["source"] == "grouplens"
    assert entry["sha256"] == sha256(U_DATA)
    assert entry["archive_sha256"] == sha256(archive)
    assert entry["bytes"] == len(U_DATA)
    # Progress starts at 0, never goes back, and ends at the archive's size, which it knew.
    assert calls[0] == (0, len(archive))
    assert calls[-1] == (len(archive), len(archive))
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_second_fetch_is_served_from_the_cache(served_100k: Server, tmp_path: Path) -> None:
    first = fetch("ml-100k", data_dir=tmp_path)
    second = fetch("ml-100k", data_dir=tmp_path, progress=lambda d, t: pytest.fail("download"))
    assert second == replace(first, source="cache")
    assert served_100k.requests == ["/ml-100k.zip"]
    # A restricted source reuses its own file too.
    assert fetch("ml-100k", data_dir=tmp_path, source="grouplens").source == "cache"
    assert served_100k.requests == ["/ml-100k.zip"]


def test_a_corrupted_cache_file_is_fetched_again(served_100k: Server, tmp_path: Path) -> None:
    first = fetch("ml-100k", data_dir=tmp_path)
    first.path.write_bytes(U_DATA.replace(b"\t5\t", b"\t4\t"))  # one rating edited
    again = fetch("ml-100k", data_dir=tmp_path)
    assert again.source == "grouplens"
    assert again.path.read_bytes() == U_DATA
    assert served_100k.requests == ["/ml-100k.zip", "/ml-100k.zip"]


def test_unpinned_member_is_checked_against_the_manifest(
    monkeypatch: pytest.MonkeyPatch, server: Server, tmp_path: Path
) -> None:
    ratings = b"1::10::5::978300760\n2::20::3::978302109\n"
    data = make_zip(server.root / "ml-1m.zip", {"ml-1m/ratings.dat": ratings})
    use_spec(monkeypatch, "ml-1m", url=server.url("ml-1m.zip"), archive_sha256=sha256(data))
    assert DATASETS["ml-1m"].member_sha256 is None
    assert fetch("ml-1m", data_dir=tmp_path).sha256 == sha256(ratings)
    assert fetch("ml-1m", data_dir=tmp_path).source == "cache"
    (tmp_path / "ml-1m" / "ratings.dat").write_bytes(ratings[:-1])
    assert fetch("ml-1m", data_dir=tmp_path).source == "grouplens"
    assert len(server.requests) == 2


def test_archive_checksum_mismatch_raises_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, served_100k: Server, archive: bytes, tmp_path: Path
) -> None:
    pinned = "0" * 64
    use_spec(monkeypatch, archive_sha256=pinned)
    with pytest.raises(DatasetError) as err:
        fetch("ml-100k", data_dir=tmp_path)
    message = str(err.value)
    assert pinned in message and sha256(archive) in message and "deleted" in message
    assert listing(tmp_path / "ml-100k") == []
    assert served_100k.requests == ["/ml-100k.zip"]  # a mismatch is not a reason to fall back


def test_member_checksum_mismatch_raises_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, served_100k: Server, tmp_path: Path
) -> None:
    use_spec(monkeypatch, member_sha256="f" * 64)
    with pytest.raises(DatasetError, match=rf"sha256 {sha256(U_DATA)}, expected f{{64}}"):
        fetch("ml-100k", data_dir=tmp_path)
    assert listing(tmp_path / "ml-100k") == []


def test_archive_without_the_member(
    monkeypatch: pytest.MonkeyPatch, server: Server, tmp_path: Path
) -> None:
    data = make_zip(server.root / "ml-1m.zip", {"ml-1m/movies.dat": b"1::Toy Story::Comedy\n"})
    use_spec(monkeypatch, "ml-1m", url=server.url("ml-1m.zip"), archive_sha256=sha256(data))
    with pytest.raises(DatasetError, match="ml-1m.zip has no member 'ml-1m/ratings.dat'"):
        fetch("ml-1m", data_dir=tmp_path)
    assert listing(tmp_path / "ml-1m") == []


def test_http_error_with_source_grouplens_does_not_fall_back(
    monkeypatch: pytest.MonkeyPatch, served_100k: Server, tmp_path: Path
) -> None:
    use_spec(monkeypatch, url=served_100k.url("missing.zip"))
    with pytest.raises(DatasetError, match=r"could not reach .*missing\.zip \(HTTP 404 "):
        fetch("ml-100k", data_dir=tmp_path, source="grouplens")
    assert served_100k.requests == ["/missing.zip"]
    assert listing(tmp_path / "ml-100k") == []


def test_ml_1m_unreachable_says_how_to_place_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_spec(monkeypatch, "ml-1m", url=closed_port_url("ml-1m.zip"))
    with pytest.raises(DatasetError) as err:
        fetch("ml-1m", data_dir=tmp_path)
    message = str(err.value)
    assert "could not reach" in message and "refused" in message.lower()
    assert "--data PATH" in message and "ml-1m/ratings.dat" in message
    assert str(tmp_path / "ml-1m" / "ml-1m.zip") in message


def test_a_hand_placed_archive_is_verified_and_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ratings = b"1::10::5::978300760\n"
    directory = tmp_path / "ml-1m"
    directory.mkdir()
    data = make_zip(directory / "ml-1m.zip", {"ml-1m/ratings.dat": ratings})
    use_spec(monkeypatch, "ml-1m", url=closed_port_url("ml-1m.zip"), archive_sha256=sha256(data))
    got = fetch("ml-1m", data_dir=tmp_path)
    assert (got.source, got.path.read_bytes()) == ("grouplens", ratings)
    assert (directory / "ml-1m.zip").read_bytes() == data  # the user's file is left alone

    use_spec(monkeypatch, "ml-1m", archive_sha256="1" * 64)
    got.path.unlink()
    with pytest.raises(DatasetError, match=rf"has sha256 {sha256(data)}, expected 1{{64}}"):
        fetch("ml-1m", data_dir=tmp_path)


@settings(
    deadline=None, max_examples=20, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=st.binary(max_size=4096))
def test_fetched_file_is_byte_identical_to_the_member(
    monkeypatch: pytest.MonkeyPatch, server: Server, content: bytes
) -> None:
    name = f"{sha256(content)}.zip"
    data = make_zip(server.root / name, {"ml-1m/ratings.dat": content, "ml-1m/README": b"x"})
    use_spec(monkeypatch, "ml-1m", url=server.url(name), archive_sha256=sha256(data))
    with tempfile.TemporaryDirectory() as root:
        got = fetch("ml-1m", data_dir=root)
        assert got.path.read_bytes() == content
        assert got.sha256 == sha256(content)


# -- the PyPI fallback -------------------------------------------------------------------------


@pytest.fixture
def wheel_100k(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """ml-100k with an unreachable official host and real pip over a locally built wheel."""
    wheel = make_wheel(tmp_path / "wheels")
    pypi = replace(DATASETS["ml-100k"].pypi, command=local_pip(wheel.parent), sha256=sha256(INTER))
    use_spec(monkeypatch, url=closed_port_url(), pypi=pypi)
    return wheel


def test_unreachable_host_falls_back_to_the_wheel(wheel_100k: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    got = fetch("ml-100k", data_dir=cache)
    directory = cache / "ml-100k"
    assert got == Fetched("ml-100k", directory / "ml-100k.inter", "pypi:recbole==1.2.1",
                          sha256(INTER))  # fmt: skip
    assert got.path.read_bytes() == INTER
    assert listing(directory) == ["manifest.json", "ml-100k.inter"]  # pip's temp dir is gone
    entry = json.loads((directory / "manifest.json").read_text())["files"]["ml-100k.inter"]
    assert (entry["source"], entry["wheel"]) == ("pypi:recbole==1.2.1", wheel_100k.name)

    wheel_100k.unlink()  # the cache answers without pip
    assert fetch("ml-100k", data_dir=cache) == replace(got, source="cache")
    assert fetch("ml-100k", data_dir=cache, source="pypi").source == "cache"


def test_source_pypi_never_contacts_the_official_host(
    monkeypatch: pytest.MonkeyPatch, served_100k: Server, tmp_path: Path
) -> None:
    wheel = make_wheel(tmp_path / "wheels")
    pypi = replace(DATASETS["ml-100k"].pypi, command=local_pip(wheel.parent), sha256=sha256(INTER))
    use_spec(monkeypatch, pypi=pypi)
    assert fetch("ml-100k", data_dir=tmp_path, source="pypi").source == "pypi:recbole==1.2.1"
    assert served_100k.requests == []
    # auto takes the cached copy rather than download; grouplens insists on the official file
    auto = fetch("ml-100k", data_dir=tmp_path)
    assert (auto.source, auto.path.name) == ("cache", "ml-100k.inter")
    official = fetch("ml-100k", data_dir=tmp_path, source="grouplens")
    assert (official.source, official.path.name) == ("grouplens", "u.data")
    assert served_100k.requests == ["/ml-100k.zip"]
    # with both cached, auto prefers the official file
    assert fetch("ml-100k", data_dir=tmp_path).path.name == "u.data"


def test_source_grouplens_does_not_fall_back(wheel_100k: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"could not reach .*; or use source='pypi'"):
        fetch("ml-100k", data_dir=tmp_path, source="grouplens")
    assert listing(tmp_path / "ml-100k") == []


def test_wheel_member_checksum_mismatch(
    monkeypatch: pytest.MonkeyPatch, wheel_100k: Path, tmp_path: Path
) -> None:
    pinned = DATASETS["ml-100k"].pypi.sha256
    make_wheel(wheel_100k.parent, inter=INTER + b"9\t90\t1\t900\n")  # a tampered copy
    with pytest.raises(DatasetError) as err:
        fetch("ml-100k", data_dir=tmp_path)
    message = str(err.value)
    assert "could not reach" in message and "fallback failed" in message
    assert pinned in message and sha256(INTER + b"9\t90\t1\t900\n") in message
    assert listing(tmp_path / "ml-100k") == []


def test_pip_failure_is_reported_with_its_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    command = (sys.executable, "-c", "import sys; sys.exit('ERROR: no route to pypi.org')")
    pypi = replace(DATASETS["ml-100k"].pypi, command=command)
    use_spec(monkeypatch, url=closed_port_url(), pypi=pypi)
    with pytest.raises(DatasetError, match=r"exited with status 1: ERROR: no route to pypi\.org"):
        fetch("ml-100k", data_dir=tmp_path)
    assert listing(tmp_path / "ml-100k") == []


# -- reading and describing --------------------------------------------------------------------


def test_load_dataset_end_to_end_from_the_archive(served_100k: Server, tmp_path: Path) -> None:
    events = load_dataset("ml-100k", data_dir=tmp_path)
    assert events.users.tolist() == SORTED_USERS
    assert events.items.tolist() == SORTED_ITEMS
    assert events.timestamps.tolist() == SORTED_TIMES
    assert events.weights is not None and events.weights.tolist() == SORTED_RATINGS
    assert events.users.dtype.kind == "i" and events.items.dtype.kind == "i"
    assert load_dataset("ml-100k", data_dir=tmp_path).users.tolist() == SORTED_USERS
    assert served_100k.requests == ["/ml-100k.zip"]


def test_both_sources_load_the_same_events(
    monkeypatch: pytest.MonkeyPatch, served_100k: Server, wheel_100k: Path, tmp_path: Path
) -> None:
    from_wheel = load_dataset("ml-100k", data_dir=tmp_path / "a")  # host unreachable: wheel
    assert (tmp_path / "a" / "ml-100k" / "ml-100k.inter").is_file()
    use_spec(monkeypatch, url=served_100k.url("ml-100k.zip"))
    from_archive = load_dataset("ml-100k", data_dir=tmp_path / "b", source="grouplens")
    for field in ("users", "items", "timestamps", "weights"):
        np.testing.assert_array_equal(getattr(from_wheel, field), getattr(from_archive, field))


def test_dataset_info_before_and_after_fetch(served_100k: Server, tmp_path: Path) -> None:
    before = dataset_info("ml-100k", data_dir=tmp_path)
    assert before["cached"] is False and before["files"] == []
    assert "events" not in before
    assert before["directory"] == str(tmp_path / "ml-100k")
    assert before["sources"] == ["grouplens", "pypi:recbole==1.2.1"]
    assert served_100k.requests == []

    fetch("ml-100k", data_dir=tmp_path)
    after = dataset_info("ml-100k", data_dir=tmp_path)
    assert after["cached"] is True
    assert (after["events"], after["users"], after["items"]) == (4, 3, 3)
    [entry] = after["files"]
    assert entry == {
        "file": "u.data",
        "path": str(tmp_path / "ml-100k" / "u.data"),
        "source": "grouplens",
        "bytes": len(U_DATA),
        "sha256": sha256(U_DATA),
        "verified": True,
    }
    (tmp_path / "ml-100k" / "u.data").write_bytes(b"1\t1\t1\t1\n")
    broken = dataset_info("ml-100k", data_dir=tmp_path)
    assert broken["cached"] is False and broken["files"][0]["verified"] is False
    assert served_100k.requests == ["/ml-100k.zip"]


def test_spec_is_frozen_and_replaceable() -> None:
    spec = DATASETS["ml-100k"]
    with pytest.raises(AttributeError):
        spec.url = "http://example.invalid/x.zip"  # type: ignore[misc]
    other = replace(spec, member="x/y/ratings.csv")
    assert isinstance(other, DatasetSpec) and other.filename == "ratings.csv"
    assert isinstance(spec.pypi, PypiSource) and spec.pypi.filename == "ml-100k.inter"
    assert datasets.SOURCES == ("auto", "grouplens", "pypi")


# -- the real thing ----------------------------------------------------------------------------


def test_real_pypi_copy_of_ml_100k(tmp_path: Path) -> None:
    got = fetch("ml-100k", data_dir=tmp_path, source="pypi")
    assert got.source == "pypi:recbole==1.2.1"
    assert got.sha256 == "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"
    assert hashlib.sha256(got.path.read_bytes()).hexdigest() == got.sha256
    events = load_dataset("ml-100k", data_dir=tmp_path, source="pypi")
    assert len(events) == 100_000
    assert len(np.unique(events.users)) == 943 and len(np.unique(events.items)) == 1682
    assert np.all(np.diff(events.timestamps) >= 0)
