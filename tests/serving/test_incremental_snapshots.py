"""Incremental snapshots (``nmrn serve --workers N --snapshot-mode incremental``, the default).

A real :class:`LiveService` learns, a real :class:`SnapshotPublisher` writes versions holding
the changed blocks, real :class:`SnapshotFollower` s patch what they hold; every comparison is
against a full checkpoint of the writer (``Recommender.save`` / :func:`read_checkpoint`) at
the version the follower holds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmrn.baselines.popularity import Popularity
from nmrn.data.idmap import IdMap
from nmrn.io import META_FILE, read_checkpoint, write_checkpoint
from nmrn.models import load_model, make_model
from nmrn.serving.service import LiveService
from nmrn.serving.snapshots import (
    BLOCKS_FILE,
    ID_ARRAYS,
    MANIFEST_FILE,
    TABLE,
    Manifest,
    SnapshotError,
    SnapshotFollower,
    SnapshotPublisher,
    _n_blocks,
    _rows_per_block,
    _write_current,
    decode_ids,
    encode_ids,
    file_digest,
    read_manifest,
)

HISTORY = [(196, "a", 0), (196, "b", 1), ("u1", "a", 2), (5, "a", 3), (5, "b", 4), (5, "c", 5)]
#: 200 users, 50 items: arrays of many 64-byte blocks, of which an event changes a few
WIDE = [(u, f"i{u % 50}", u) for u in range(200)]
WIDE_USERS = [0, 3, 198, 199, "stranger"]


def _service(model: Any) -> LiveService:
    return LiveService(model, checkpoint_every=None, checkpoint_seconds=None, apply_wait=0)


def _learn(service: LiveService, events: list[tuple[Any, Any, float]]) -> None:
    service.submit(events)
    assert service.wait_applied()


def _full(service: LiveService, path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A full checkpoint of the writer's state now (written, then read back)."""
    _, arrays, meta = service.take_snapshot()
    write_checkpoint(path, arrays, meta)
    return read_checkpoint(path)


def _typed(ids: list[Any]) -> list[tuple[type, Any]]:
    return [(type(x), x) for x in ids]  # 1 and "1" differ, and so must they here


def _assert_holds(follower: SnapshotFollower,
                  full: tuple[dict[str, Any], dict[str, np.ndarray]]) -> None:
    """The follower's arrays are the full checkpoint's, bit for bit (dtype, shape, bytes), and
    its id texts and id maps hold the checkpoint's ids (type and value, in order)."""
    meta, arrays = full
    held = {name: array for name, (array, _) in follower._held.items()}
    texts = {field: held.pop(name) for field, name in ID_ARRAYS.items()}
    assert set(held) == set(arrays)
    for name, array in arrays.items():
        got = held[name]
        assert got.dtype == array.dtype and got.shape == array.shape, name
        assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(array).tobytes(), name
    for at, (field, text) in enumerate(texts.items()):
        assert text.tobytes() == encode_ids(meta[field]), field
        assert _typed(decode_ids(text.tobytes(), field)) == _typed(meta[field])
        assert _typed(follower._ids[at].to_list()) == _typed(meta[field])


def _answers(model: Any, users: list[Any]) -> list[list[Any]]:
    return [list(row) for row in model.recommend(users, k=5).items]


def _needed(directory: Path) -> set[str]:
    """The versions CURRENT's manifest names (its own and those holding its blocks)."""
    manifest = read_manifest(directory)
    assert manifest is not None
    data = json.loads((directory / manifest.version / MANIFEST_FILE).read_bytes())
    return set(data["versions"])


# -- a follower patching versions holds what a full checkpoint holds ---------------------------
ops = st.lists(
    st.tuples(
        st.sampled_from(["learn", "learn", "grow", "publish", "publish"]),
        st.integers(0, 10**6),
        st.booleans(),  # does the late follower poll after this step
    ),
    min_size=1, max_size=14,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(steps=ops, block_bytes=st.sampled_from([16, 64, 256]), base_every=st.integers(1, 5))
def test_a_follower_holds_the_full_checkpoint_of_each_version(
        tmp_path_factory: Any, steps: list[tuple[str, int, bool]], block_bytes: int,
        base_every: int) -> None:
    tmp = tmp_path_factory.mktemp("inc")
    service = _service(Popularity().fit(HISTORY))
    publisher = SnapshotPublisher(service, tmp / "snap", publish_every=3600,
                                  base_every=base_every, block_bytes=block_bytes)
    try:
        publisher.publish()
        fulls = {publisher.published.version: _full(service, tmp / "c0")}
        id_counts = {field: len(fulls[publisher.published.version][0][field])
                     for field in ID_ARRAYS}
        every, late = SnapshotFollower(tmp / "snap"), SnapshotFollower(tmp / "snap")
        every.poll()
        t, users, items = 10.0, [196, "u1", 5], ["a", "b", "c"]
        for n, (op, seed, late_polls) in enumerate(steps):
            rng = np.random.default_rng(seed)
            if op == "learn":  # known users and items: rows change, shapes do not
                _learn(service, [(users[i], items[j], t + k) for k, (i, j) in enumerate(
                    zip(rng.integers(0, len(users), 3), rng.integers(0, len(items), 3),
                        strict=True))])
            elif op == "grow":  # new users and items: every array grows (and the history shifts)
                # int or str ids (text that JSON must escape too), never one known already
                users.append(f'u{n},"ü' if rng.random() < 0.5 else 1000 + n)
                items.extend(f"i{n}-{j}" if (seed + j) % 3 else 10**6 * n + j
                             for j in range(int(rng.integers(1, 40))))
                _learn(service, [(users[-1], item, t + k) for k, item in
                                 enumerate(items[-int(rng.integers(1, 5)):])])
            else:
                publisher.publish()
                version = publisher.published.version
                fulls[version] = _full(service, tmp / f"c{n}")
                data = json.loads((tmp / "snap" / version / MANIFEST_FILE).read_bytes())
                for field, name in ID_ARRAYS.items():
                    named = np.frombuffer(base64.b64decode(data["arrays"][name]["table"]),
                                          TABLE)["v"]
                    mine = int(version.split("-")[1])
                    # a version that adds no id writes no id block (a base writes them all)
                    if len(fulls[version][0][field]) == id_counts[field] and not data["base"]:
                        assert (named != mine).all(), field
                    id_counts[field] = len(fulls[version][0][field])
                # pruning never deletes a version CURRENT's manifest names
                assert all((tmp / "snap" / v / BLOCKS_FILE).is_file()
                           for v in _needed(tmp / "snap"))
                got = every.poll()
                assert got is not None, every.last_error
                _assert_holds(every, fulls[version])
                assert _answers(got[0], users + ["stranger"]) == _answers(
                    load_model(tmp / f"c{n}"), users + ["stranger"])
            t += 10
            if late_polls:  # skips versions, then catches up on the newest
                late.poll()
                if late.manifest is not None:
                    _assert_holds(late, fulls[late.manifest.version])
        assert every.refused == 0 and late.refused == 0
        newcomer = SnapshotFollower(tmp / "snap")  # starts late: everything from the manifest
        model, manifest = newcomer.poll()
        _assert_holds(newcomer, fulls[manifest.version])
        assert manifest.version == publisher.published.version
    finally:
        publisher.close()
        service.close(checkpoint=False)


def test_an_nmrn_follower_patches_to_the_full_checkpoint(tmp_path: Path) -> None:
    """The torch model, its optimizer state and memory bank, over growth and a base."""
    service = _service(make_model("nmrn-faithful", epochs=1).fit(HISTORY))
    publisher = SnapshotPublisher(service, tmp_path / "snap", publish_every=3600, base_every=3)
    try:
        publisher.publish()
        follower = SnapshotFollower(tmp_path / "snap")
        follower.poll()
        for step in range(5):
            _learn(service, [(f"x{step}", "c", 10 + 2 * step), (196, f"i{step}", 11 + 2 * step)])
            publisher.publish()
            model, _ = follower.poll()
            meta, full = _full(service, tmp_path / f"c{step}")
            _assert_holds(follower, (meta, full))
            reference = load_model(tmp_path / f"c{step}")
            users = [196, 5, f"x{step}", "stranger"]
            assert _answers(model, users) == _answers(reference, users)
            assert np.array_equal(model.score(users, ["a", "b", "c"]),
                                  reference.score(users, ["a", "b", "c"]))
        assert follower.refused == 0
        assert follower.last_read_bytes < sum(a.nbytes for a in full.values())
    finally:
        publisher.close()
        service.close(checkpoint=False)


# -- damaged and crafted versions are refused; the follower keeps serving ----------------------
@pytest.fixture
def publishing(tmp_path: Path) -> Any:
    service = _service(Popularity().fit(WIDE))
    # a base every second publication: the one after a damaged version names none of its
    # blocks (an incremental one could: the writer does not know the damage)
    publisher = SnapshotPublisher(service, tmp_path / "snap", publish_every=3600,
                                  base_every=2, block_bytes=64)
    publisher.publish()
    follower = SnapshotFollower(tmp_path / "snap")
    model, first = follower.poll()
    yield service, publisher, follower, model, first
    publisher.close()
    service.close(checkpoint=False)


def _flip_a_block(version: Path, directory: Path) -> None:
    data = bytearray((version / BLOCKS_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (version / BLOCKS_FILE).write_bytes(bytes(data))


def _truncate_blocks(version: Path, directory: Path) -> None:
    data = (version / BLOCKS_FILE).read_bytes()
    (version / BLOCKS_FILE).write_bytes(data[: len(data) // 2])


def _change_meta(version: Path, directory: Path) -> None:
    meta = json.loads((version / META_FILE).read_text())
    meta["n_events"] += 1
    (version / META_FILE).write_text(json.dumps(meta))


def _point_blocks_at_the_wrong_version(version: Path, directory: Path) -> None:
    """A manifest (rehashed in CURRENT) whose changed blocks are looked up in an older version
    at the same offsets: the bytes there are real blocks, of another state."""
    data = json.loads((version / MANIFEST_FILE).read_bytes())
    older = int(sorted(data["versions"], key=lambda v: int(v.split("-")[1]))[0].split("-")[1])
    for entry in data["arrays"].values():
        table = np.frombuffer(base64.b64decode(entry["table"]), dtype=TABLE).copy()
        table["v"] = older
        entry["table"] = base64.b64encode(table.tobytes()).decode()
    _rewrite_manifest(version, directory, data)


def _rewrite_manifest(version: Path, directory: Path, data: dict[str, Any]) -> None:
    """Replace ``version``'s manifest with ``data`` and make CURRENT vouch for it (the check a
    crafted manifest must pass before its fields are read)."""
    (version / MANIFEST_FILE).write_bytes(json.dumps(data).encode())
    current = read_manifest(directory)
    assert current is not None
    _write_current(directory, Manifest(current.version, current.seq, current.taken_at,
                                       current.as_of,
                                       {MANIFEST_FILE: file_digest(version / MANIFEST_FILE)}))


@pytest.mark.parametrize("damage", [_flip_a_block, _truncate_blocks, _change_meta,
                                    _point_blocks_at_the_wrong_version])
def test_a_damaged_version_is_refused_and_the_old_one_served(publishing: Any, damage: Any
                                                             ) -> None:
    service, publisher, follower, model, first = publishing
    expected = _answers(model, WIDE_USERS)
    _learn(service, [(199, "i49", 300), (198, "i48", 301), (199, "i48", 302)])
    manifest = publisher.publish()
    damage(publisher.directory / manifest.version, publisher.directory)
    assert follower.poll() is None
    assert follower.refused == 1 and follower.manifest == first, follower.last_error
    assert _answers(model, WIDE_USERS) == expected
    # the next good version is taken, and its arrays are the writer's
    _learn(service, [(0, "i0", 303)])
    publisher.publish()
    assert publisher._blocks.last_base
    got = follower.poll()
    assert got is not None, follower.last_error
    _assert_holds(follower, _full(service, publisher.directory.parent / "c"))
    assert got[1].seq == service.applied_seq == 4


def test_a_manifest_naming_a_missing_version_is_refused(tmp_path: Path) -> None:
    """A follower behind by two versions needs blocks of both; one is gone."""
    service = _service(Popularity().fit(WIDE))
    publisher = SnapshotPublisher(service, tmp_path / "snap", publish_every=3600,
                                  base_every=3, block_bytes=64)
    try:
        publisher.publish()
        follower = SnapshotFollower(tmp_path / "snap")
        model, first = follower.poll()
        expected = _answers(model, WIDE_USERS)
        _learn(service, [(199, "i49", 300)])
        skipped = publisher.publish().version
        _learn(service, [(0, "i0", 301)])
        publisher.publish()
        assert not publisher._blocks.last_base and skipped in _needed(tmp_path / "snap")
        shutil.rmtree(tmp_path / "snap" / skipped)
        assert follower.poll() is None
        assert follower.refused == 1 and follower.manifest == first
        assert skipped in follower.last_error and "missing" in follower.last_error
        assert _answers(model, WIDE_USERS) == expected
        _learn(service, [(3, "i3", 302)])
        publisher.publish()  # a base: names none of the missing one's blocks
        got = follower.poll()
        assert got is not None, follower.last_error
        _assert_holds(follower, _full(service, tmp_path / "c"))
    finally:
        publisher.close()
        service.close(checkpoint=False)


def _one_block_named_many_times(data: dict[str, Any]) -> None:
    """An array 1,000 blocks long whose every block is the same (valid) block of the file."""
    arrays = data["arrays"].values()
    layout = next(a for a in arrays
                  if a["shape"] and len(base64.b64decode(a["table"])) > TABLE.itemsize)
    table = np.frombuffer(base64.b64decode(layout["table"]), TABLE)
    layout["shape"] = [layout["rows"] * 1000, *layout["shape"][1:]]
    layout["table"] = base64.b64encode(np.repeat(table[:1], 1000).tobytes()).decode()


CRAFTED = [
    (_one_block_named_many_times, "blocks overlap"),
    (lambda d: d.update(format="nmrn-checkpoint"), "not an nmrn incremental"),
    (lambda d: d.update(block_bytes=1 << 40), "block_bytes"),
    (lambda d: d.update(versions=["../../etc"]), "versions"),
    (lambda d: d["meta"].update(size=-1), "meta.size"),
    (lambda d: next(iter(d["arrays"].values())).update(dtype="|O8"), "dtype"),
    (lambda d: next(iter(d["arrays"].values())).update(shape=[10**12]), "table holds"),
    (lambda d: next(iter(d["arrays"].values())).update(shape=[-1]), "shape[0]"),
    (lambda d: next(iter(d["arrays"].values())).update(rows=0), "rows"),
    (lambda d: next(iter(d["arrays"].values())).update(table="%%%"), "base64"),
    (lambda d: d.update(versions=["v999-999"]), "does not list"),
    # dtypes the pattern lets through but numpy does not know: a TypeError escaped the follower
    (lambda d: next(iter(d["arrays"].values())).update(dtype="<i3"), "dtype '<i3'"),
    (lambda d: next(iter(d["arrays"].values())).update(dtype="<f1"), "dtype '<f1'"),
    # shapes whose bytes no array can have, with rows and table that agree with them: numpy's
    # ValueError ("array is too big") and an OverflowError of the block arithmetic escaped it
    (lambda d: _layout_of(d, "<i8", [2**62, 0]), "bytes"),
    (lambda d: _layout_of(d, "|u1", [1, 2**40, 2**30]), "bytes"),
]


def _layout_of(data: dict[str, Any], dtype: str, shape: list[int]) -> None:
    """Give the first array ``dtype`` and ``shape``, with the rows and the number of table
    entries (copies of its first one) that this block size gives them."""
    entry = next(iter(data["arrays"].values()))
    itemsize = np.dtype(dtype).itemsize
    rows = _rows_per_block(tuple(shape), itemsize, data["block_bytes"])
    table = np.frombuffer(base64.b64decode(entry["table"]), TABLE)[:1]
    n = _n_blocks(tuple(shape), itemsize, rows)
    entry.update(dtype=dtype, shape=shape, rows=rows,
                 table=base64.b64encode(np.repeat(table, n).tobytes()).decode())


@pytest.mark.parametrize(("craft", "says"), CRAFTED)
def test_a_crafted_manifest_gets_a_clear_snapshot_error(publishing: Any, craft: Any, says: str
                                                       ) -> None:
    service, publisher, follower, model, first = publishing
    _learn(service, [(199, "i49", 300)])
    manifest = publisher.publish()
    version = publisher.directory / manifest.version
    data = json.loads((version / MANIFEST_FILE).read_bytes())
    craft(data)
    _rewrite_manifest(version, publisher.directory, data)
    assert follower.poll() is None
    assert follower.refused == 1 and follower.manifest == first
    assert says in follower.last_error
    with pytest.raises(SnapshotError, match=re.escape(says)):  # what the follower caught
        SnapshotFollower(publisher.directory)._load_incremental(version)


def _store_ids(text: bytes, field: str = "items") -> Any:
    """A craft that stores ``text`` as the id list ``field`` of the version: its blocks
    appended to the version's blocks.bin, with their right SHA-256 in the manifest (the check
    a crafted id list must pass before it is decoded)."""
    def craft(version: Path, data: dict[str, Any]) -> None:
        offset = (version / BLOCKS_FILE).stat().st_size
        with open(version / BLOCKS_FILE, "ab") as f:
            f.write(text)
        rows = _rows_per_block((len(text),), 1, data["block_bytes"])
        table = np.zeros(_n_blocks((len(text),), 1, rows), TABLE)
        for i, entry in enumerate(table):
            part = text[i * rows : (i + 1) * rows]
            entry["v"], entry["off"] = int(version.name.split("-")[1]), offset + i * rows
            entry["sha"] = np.frombuffer(hashlib.sha256(part).digest(), np.uint8)
        data["arrays"][ID_ARRAYS[field]] = {"dtype": "|u1", "shape": [len(text)], "rows": rows,
                                            "table": base64.b64encode(table.tobytes()).decode()}
    return craft


def _items_text(*extra: bytes) -> bytes:
    """WIDE's item ids as stored, then ``extra``."""
    return encode_ids([f"i{u % 50}" for u in range(50)]) + b"".join(extra)


CRAFTED_IDS = [
    (_store_ids(_items_text(b"1.5,")), "holds float"),
    (_store_ids(_items_text(b"[1],")), "holds list"),
    (_store_ids(_items_text(b'{"a":1},')), "holds dict"),
    (_store_ids(_items_text(b"null,")), "holds NoneType"),
    (_store_ids(_items_text(b"true,")), "holds bool"),
    (_store_ids(_items_text(b'"x"')), "does not end with an id"),
    (_store_ids(_items_text(b"nope,")), "not valid"),
    (_store_ids(_items_text(b"[" * 100_000 + b"]" * 100_000 + b",")), "id list"),
    (_store_ids(_items_text(b'"i3",')), "duplicate item ids"),
    (_store_ids(_items_text(b'"i50",')), "item counts do not match the item ids"),
    (_store_ids(b'"nobody",', "users"), "history has rows for"),
    (lambda v, d: d["arrays"].pop(ID_ARRAYS["users"]), "'ids.users'] must be the 1-D uint8"),
    (lambda v, d: d["arrays"][ID_ARRAYS["items"]].update(dtype="|i1"), "1-D uint8"),
]


@pytest.mark.parametrize(("craft", "says"), CRAFTED_IDS)
def test_a_crafted_id_list_gets_a_clear_snapshot_error(publishing: Any, craft: Any, says: str
                                                      ) -> None:
    """Id lists whose blocks have their hashes (a crafted or buggy writer, not a damaged
    file) are decoded as JSON of ints and strings only, and must add up with the arrays."""
    service, publisher, follower, model, first = publishing
    expected = _answers(model, WIDE_USERS)
    _learn(service, [(199, "i49", 300)])
    manifest = publisher.publish()
    version = publisher.directory / manifest.version
    data = json.loads((version / MANIFEST_FILE).read_bytes())
    craft(version, data)
    _rewrite_manifest(version, publisher.directory, data)
    assert follower.poll() is None
    assert follower.refused == 1 and follower.manifest == first
    assert says in follower.last_error
    assert _answers(model, WIDE_USERS) == expected
    with pytest.raises(SnapshotError, match=re.escape(says)):  # also with nothing held
        SnapshotFollower(publisher.directory)._load_incremental(version)


def test_the_stored_ids_of_a_craft_are_the_writer_s(publishing: Any) -> None:
    """The crafts above start from the ids the writer stores: unchanged, they load."""
    service, publisher, follower, model, first = publishing
    manifest = publisher.publish()
    version = publisher.directory / manifest.version
    data = json.loads((version / MANIFEST_FILE).read_bytes())
    _store_ids(_items_text())(version, data)
    _rewrite_manifest(version, publisher.directory, data)
    got = follower.poll()
    assert got is not None, follower.last_error
    assert _typed(got[0].items.to_list()) == _typed(service.model.items.to_list())


def test_ids_that_do_not_extend_the_held_ones_are_decoded_whole(tmp_path: Path) -> None:
    """A writer restarted over another model (its ids in another order, some shared): the
    follower's held id text is no prefix of the new one, and its maps are rebuilt."""
    first = _service(Popularity().fit(HISTORY))
    publisher = SnapshotPublisher(first, tmp_path / "snap", publish_every=3600, block_bytes=16)
    publisher.publish()
    follower = SnapshotFollower(tmp_path / "snap")
    follower.poll()
    publisher.close(remove=False)
    first.close(checkpoint=False)
    # the same ids and one more, in another order: no held text is a prefix of the new one
    other = [(5, "c", 0), (196, "a", 1), ("u1", "b", 2), (7, "d", 3)]
    service = _service(Popularity().fit(other))
    publisher = SnapshotPublisher(service, tmp_path / "snap", publish_every=3600, block_bytes=16)
    try:
        _learn(service, [(7, "a", 4)])  # another sequence number: another version's name
        publisher.publish()
        model, _ = follower.poll()
        assert follower.refused == 0
        _assert_holds(follower, _full(service, tmp_path / "c"))
        assert _answers(model, [5, 196, 7, "stranger"]) == _answers(
            service.model, [5, 196, 7, "stranger"])
    finally:
        publisher.close()
        service.close(checkpoint=False)


# -- pruning ------------------------------------------------------------------------------------
def test_pruning_keeps_every_version_the_current_manifest_needs(tmp_path: Path) -> None:
    """A rarely changed array's blocks stay in the base; the versions after it are pruned, the
    base is not (a pruning that kept only the newest versions would delete it)."""
    service = _service(Popularity().fit(WIDE))
    publisher = SnapshotPublisher(service, tmp_path / "snap", publish_every=3600,
                                  base_every=1000, block_bytes=64)
    try:
        publisher.publish()
        base = publisher.published.version
        for i in range(12):
            _learn(service, [(199, "i49", 300 + i)])  # the last user and item: tail blocks
            publisher.publish()
            assert all((tmp_path / "snap" / v / BLOCKS_FILE).is_file()
                       for v in _needed(tmp_path / "snap"))
        assert base in _needed(tmp_path / "snap")
        present = {p.name for p in (tmp_path / "snap").iterdir() if p.name.startswith("v")}
        assert len(present) < 13  # older versions nobody names are gone
        model, manifest = SnapshotFollower(tmp_path / "snap").poll()
        assert _answers(model, [199, 3, "stranger"]) == _answers(service.model,
                                                                  [199, 3, "stranger"])
    finally:
        publisher.close()
        service.close(checkpoint=False)


def test_a_full_version_pruned_while_a_follower_loads_it_is_still_read_whole(
        tmp_path: Path, monkeypatch: Any) -> None:
    """A full version is verified and loaded from the same open files: the writer pruning it
    between the hash and the read (three publications meanwhile) changes nothing. It was
    hashed by path and then opened again by path, and refused as "not a checkpoint
    directory"."""
    import nmrn.serving.snapshots as snapshots

    service = _service(Popularity().fit(WIDE))
    directory = tmp_path / "snap"
    publisher = SnapshotPublisher(service, directory, publish_every=3600, mode="full")
    try:
        _learn(service, [(199, "i49", 300)])
        publisher.publish()  # the version the follower loads
        version = read_manifest(directory).version
        full = _full(service, tmp_path / "c")
        read_arrays, published = snapshots.read_arrays, []

        def publish_meanwhile(path: Path, file: Any = None) -> dict[str, np.ndarray]:
            for i in range(3):  # the writer publishes on, and prunes the version being read
                _learn(service, [(0, "i0", 301 + i)])
                published.append(publisher.publish())
            return read_arrays(path, file)

        monkeypatch.setattr(snapshots, "read_arrays", publish_meanwhile)
        follower = SnapshotFollower(directory)
        got = follower.poll()
        assert published and not (directory / version).exists()
        assert got is not None, follower.last_error
        assert follower.refused == 0 and got[0] is not None and got[1].version == version
        arrays, meta = got[0].snapshot()
        want_meta, want_arrays = full
        assert sorted(arrays) == sorted(want_arrays)
        for name, want in want_arrays.items():
            assert arrays[name].dtype == want.dtype and np.array_equal(arrays[name], want), name
        assert meta["n_events"] == want_meta["n_events"] == len(WIDE) + 1
    finally:
        publisher.close()
        service.close(checkpoint=False)


def test_a_version_pruned_while_a_follower_reads_it_is_still_read_whole(
        tmp_path: Path, monkeypatch: Any) -> None:
    """A follower new or far behind reads every block, which takes a while for a large model;
    meanwhile the writer publishes on and prunes the versions no newer manifest names. The
    follower opens every blocks.bin it needs before reading any (an open file outlives its
    unlinking): it opened each as it reached its first block, found the file pruned and
    refused the version, and one that always read longer than three publications never
    caught up."""
    import nmrn.serving.snapshots as snapshots

    service = _service(Popularity().fit(WIDE))
    directory = tmp_path / "snap"
    publisher = SnapshotPublisher(service, directory, publish_every=3600, base_every=1000,
                                  block_bytes=64)
    try:
        publisher.publish()  # the base
        _learn(service, [(199, "i49", 300)])
        publisher.publish()  # an intermediate version: the tail blocks
        _learn(service, [(0, "i0", 301)])
        publisher.publish()  # the version the follower reads
        needed = _needed(directory)
        assert len(needed) == 3
        full = _full(service, tmp_path / "c")
        read_exact, published = snapshots._read_exact, []

        def publish_meanwhile(fd: int, into: np.ndarray, offset: int) -> int:
            if not published:  # at the first block read: the writer publishes on, and prunes
                for i in range(3):
                    _learn(service, [(199, "i49", 302 + 2 * i), (0, "i0", 303 + 2 * i)])
                    published.append(publisher.publish())
            return read_exact(fd, into, offset)

        monkeypatch.setattr(snapshots, "_read_exact", publish_meanwhile)
        follower = SnapshotFollower(directory)
        got = follower.poll()
        assert published and not all((directory / v).exists() for v in needed)
        assert got is not None, follower.last_error
        assert follower.refused == 0 and got[1].seq == 2
        _assert_holds(follower, full)
    finally:
        publisher.close()
        service.close(checkpoint=False)


def test_a_base_is_written_when_the_chain_wrote_a_snapshot_s_worth(tmp_path: Path) -> None:
    service = _service(Popularity().fit(HISTORY))
    publisher = SnapshotPublisher(service, tmp_path / "snap", publish_every=3600,
                                  base_every=1000, block_bytes=16)
    try:
        publisher.publish()
        bases = []
        for i in range(30):  # new users and items each time: most blocks change
            _learn(service, [(f"n{i}", f"m{i}", 10 + i)])
            publisher.publish()
            bases.append(publisher._blocks.last_base)
        assert any(bases) and not all(bases)
    finally:
        publisher.close()
        service.close(checkpoint=False)


# -- id maps are extended only when the new ids start with the held ones -----------------------
def test_idmap_extended_is_from_list_or_none() -> None:
    held = IdMap.from_list([1, "a", 3], what="user")
    got = held.extended([1, "a", 3, "b", 7])
    assert got == IdMap.from_list([1, "a", 3, "b", 7], what="user")
    assert got.get("b") == 3 and held.get("b") == -1  # the held map is unchanged
    assert held.extended([1, "a"]) is None  # shorter
    assert held.extended([1, "b", 3, 4]) is None  # another prefix
    assert held.extended([True, "a", 3]) is None  # True == 1, but it is not the id 1
    assert held.extended([1.0, "a", 3]) is None
    with pytest.raises(ValueError, match="duplicate"):
        held.extended([1, "a", 3, "a"])


def test_a_full_version_after_incremental_ones_is_loaded(tmp_path: Path) -> None:
    """A follower moves between modes (a writer restarted with --snapshot-mode full)."""
    service = _service(Popularity().fit(HISTORY))
    incremental = SnapshotPublisher(service, tmp_path / "snap", publish_every=3600)
    incremental.publish()
    follower = SnapshotFollower(tmp_path / "snap")
    follower.poll()
    incremental.close(remove=False)
    service.close(checkpoint=False)
    service = _service(Popularity().fit(HISTORY))  # the writer, restarted
    full = SnapshotPublisher(service, tmp_path / "snap", publish_every=3600, mode="full")
    try:
        _learn(service, [(7, "c", 10), (8, "c", 11)])
        full.publish()
        model, manifest = follower.poll()
        assert set(manifest.files) != {MANIFEST_FILE}
        assert _answers(model, [7, "stranger"]) == _answers(service.model, [7, "stranger"])
    finally:
        full.close()
        service.close(checkpoint=False)
