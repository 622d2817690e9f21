"""The shared Recommender base: checkpoint safety."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from nmrn.baselines.popularity import Popularity, RecentPopularity
from nmrn.errors import CheckpointError
from nmrn.training.contract import Recommender


def test_save_refuses_to_replace_a_directory_that_is_not_a_checkpoint(tmp_path):
    target = tmp_path / "important"
    target.mkdir()
    (target / "notes.txt").write_text("precious")
    model = Popularity().fit([("u", "i", 1.0)])
    with pytest.raises(CheckpointError, match="not an nmrn checkpoint; refusing to replace"):
        model.save(target)
    assert (target / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["important"]  # no temporaries left


def test_save_replaces_an_older_checkpoint_and_is_readable_by_others(tmp_path):
    target = tmp_path / "ckpt"
    Popularity().fit([("u", "i", 1.0)]).save(target)
    Popularity().fit([("u", "i", 1.0), ("v", "j", 2.0)]).save(target)
    assert Recommender.load(target).n_events == 2
    mode = stat.S_IMODE(os.stat(target).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o777 & ~umask  # not mkdtemp's 0700


@pytest.mark.parametrize("make", [Popularity, lambda: RecentPopularity(window=3)])
def test_a_snapshot_does_not_follow_the_model_in_place(tmp_path, make):
    from nmrn.io import write_checkpoint

    model = make().fit([(1, "a", 0.0), (2, "b", 1.0), (2, "a", 2.0)])
    arrays, meta = model.snapshot()
    frozen = {key: value.copy() for key, value in arrays.items()}
    model.learn([(1, "b", 3.0), (2, "b", 4.0), (3, "b", 5.0)])  # known items: updated in place
    for key, value in arrays.items():
        np.testing.assert_array_equal(value, frozen[key], err_msg=key)
    write_checkpoint(tmp_path / "then", arrays, meta)
    then = Recommender.load(tmp_path / "then")
    assert then.n_events == 3 and then.recommend(9, k=1).items.tolist() == ["a"]
    assert model.recommend(9, k=1).items.tolist() == ["b"]


def test_a_snapshot_is_a_copy_written_later_as_it_was(tmp_path):
    from nmrn.io import write_checkpoint

    model = Popularity().fit([(1, "a", 0.0), (2, "b", 1.0), (2, "a", 2.0)])
    model.extra["note"] = {"seq": 3}
    arrays, meta = model.snapshot()
    model.learn([(3, "c", 3.0), (3, "c", 4.0), (4, "c", 5.0)])  # the model moves on
    model.extra["note"]["seq"] = 6
    write_checkpoint(tmp_path / "then", arrays, meta)
    then = Recommender.load(tmp_path / "then")
    assert then.known_items.tolist() == ["a", "b"] and then.extra == {"note": {"seq": 3}}
    assert then.item_counts.tolist() == [2.0, 1.0] and then.n_events == 3
    assert then.recommend(9, k=3).items.tolist() == ["a", "b"]
    assert model.recommend(9, k=3).items.tolist() == ["c", "a", "b"]


# -- a model rebuilt from a state draws no random rows, and is the model it always was ----------
def _torch_models() -> dict[str, object]:
    from test_conformance import FACTORIES

    return {name: make for name, make in FACTORIES.items()
            if name.split("-")[0] in {"NMRN", "BPR", "NMRNHybrid", "SASRec"}}


def _stream(seed: int = 0):  # type: ignore[no-untyped-def]
    from conformance import synthetic_stream

    return synthetic_stream(n_users=30, n_items=400, n_events=900, seed=seed)


@pytest.mark.parametrize("name", sorted(_torch_models()))
def test_a_loaded_model_is_the_one_loaded_with_random_rows_drawn(tmp_path, monkeypatch, name):
    """``load`` grows the tables without drawing rows (``state_follows``): every array of the
    model, and what it learns next, is bit for bit what loading with the draws gives."""
    import nmrn.model.tables as tables

    make = _torch_models()[name]
    stream = _stream()
    make().fit(stream.iloc[:600]).save(tmp_path / "m")
    fast = Recommender.load(tmp_path / "m")
    with monkeypatch.context() as patch:  # the load as it was: rows drawn, then overwritten
        patch.setattr(tables, "restoring", lambda: False)
        drawn = Recommender.load(tmp_path / "m")
    for step in range(2):
        a, b = fast.snapshot()[0], drawn.snapshot()[0]
        assert set(a) == set(b)
        for key in a:
            assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), key
        tail = stream.iloc[600 + 150 * step : 750 + 150 * step].copy()
        tail.loc[tail.index[:3], "user"] = [f"new{step}-{j}" for j in range(3)]  # growth too
        fast.learn(tail)
        drawn.learn(tail)
    users = list(stream["user"].unique()[:5]) + ["new1-0", "stranger"]
    assert np.array_equal(fast.recommend(users, k=10).items, drawn.recommend(users, k=10).items)


def test_load_draws_fewer_random_numbers_than_one_table(tmp_path, monkeypatch):
    """What makes the load cheap: at 400 items of 32 dimensions (12,800 numbers a table),
    loading NMRN draws only its small dense parameters' initial values."""
    import torch

    from nmrn.training.nmrn import NMRN

    NMRN(dim=32, epochs=1).fit(_stream()).save(tmp_path / "m")
    counted = []
    randn = torch.randn

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = randn(*args, **kwargs)
        counted.append(out.numel())
        return out

    monkeypatch.setattr(torch, "randn", counting)
    model = Recommender.load(tmp_path / "m")
    assert len(model.items) == 400
    assert 0 < sum(counted) < 400 * 32
