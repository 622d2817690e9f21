"""The shared Recommender base: checkpoint safety."""

from __future__ import annotations

import os
import stat

import pytest

from nmrn.baselines.popularity import Popularity
from nmrn.errors import CheckpointError
from nmrn.training.base import Recommender


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
