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
