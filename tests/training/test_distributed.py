"""Data-parallel BPR on torch.distributed: real ranks (spawned processes, gloo on loopback).

Every launch is bounded (``deadline_s``) and its processes are cleaned up by PID by
:func:`nmrn.training.distributed.launch`.
"""

from __future__ import annotations

import time
from pathlib import Path

import dist_workers
import numpy as np
import pytest

from nmrn.baselines.bpr import BPR
from nmrn.models import load_model, make_model
from nmrn.training import distributed

# small and fast: 3,000 events, batches of 256, 2 fit epochs, 1 learn pass
BPR_OPTIONS = {"dim": 16, "batch_size": 256, "epochs": 2, "learn_passes": 1, "seed": 3}
N_FIT = 2000
DEADLINE = 120.0


def _single(options: dict, model_name: str = "bpr") -> dict[str, np.ndarray]:
    events = dist_workers.stream()
    model = make_model(model_name, **options)
    model.fit(events[:N_FIT]).learn(events[N_FIT:])
    return dist_workers.model_arrays(model)


def _ranks(out: Path, nproc: int) -> list[dict[str, np.ndarray]]:
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(nproc)]


def _launch(target, nproc: int, *args) -> list[int]:
    return distributed.launch(target, nproc, args, timeout_s=30.0, deadline_s=DEADLINE)


def test_no_group_is_the_single_process_path() -> None:
    assert distributed.context() is None
    assert distributed.init_from_env() is None  # no WORLD_SIZE: no group, nothing joined
    assert distributed.is_writer()


def test_shard_is_contiguous_and_covers_the_batch() -> None:
    for n in (0, 1, 2, 5, 256, 1023):
        for world in (1, 2, 3, 4):
            parts = [distributed.shard(n, distributed.Context(r, world)) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
            assert max(hi - lo for lo, hi in parts) - min(hi - lo for lo, hi in parts) <= 1


@pytest.mark.parametrize("how", ["launch-1", "group-of-1"])
def test_world_size_one_is_bit_identical(tmp_path: Path, how: str) -> None:
    ref = _single(BPR_OPTIONS)
    target = dist_workers.train if how == "launch-1" else dist_workers.train_world_of_one
    assert _launch(target, 1, str(tmp_path), "bpr", BPR_OPTIONS, N_FIT) == [0]
    (got,) = _ranks(tmp_path, 1)
    assert got.keys() == ref.keys()
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)


# Tolerance. With R ranks a step sums the same per-example gradients in another grouping (each
# rank's partial sum per row, then the ranks' partials in rank order), and the global loss too:
# float32 rounding differs by a few ulps per sum (eps = 1.2e-7) and Adagrad's step
# lr * g / sqrt(acc) passes relative changes through at order one. Over the 20 steps here the
# measured largest difference was 1.2e-7 on the tables (entries ~0.1-1) and 4.8e-7 on the
# Adagrad sums (entries up to ~10), for 2 and 3 ranks; 1e-5 leaves a margin of 20x, while
# dropping the per-row summation of rows touched on several ranks moves entries by ~0.5.
ATOL = 1e-5


@pytest.mark.parametrize("nproc", [2, 3])
def test_several_ranks_agree_with_one_process(tmp_path: Path, nproc: int) -> None:
    ref = _single(BPR_OPTIONS)
    codes = _launch(dist_workers.train, nproc, str(tmp_path), "bpr", BPR_OPTIONS, N_FIT)
    assert codes == [0] * nproc
    ranks = _ranks(tmp_path, nproc)
    for got in ranks[1:]:  # replicas: bit-identical across ranks
        for key in ref:
            np.testing.assert_array_equal(got[key], ranks[0][key], err_msg=key)
    got = ranks[0]
    # the generator drew the same candidates and shuffles: its state and the step count agree
    np.testing.assert_array_equal(got["rng"], ref["rng"])
    assert int(got["step"]) == int(ref["step"]) == 2 * 8 + 4
    np.testing.assert_array_equal(got["seen"], ref["seen"])
    for key in ("user_emb", "item_emb", "item_bias", "v_user", "v_item", "v_bias"):
        np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=ATOL, err_msg=key)
        assert not np.array_equal(got[key], np.zeros_like(got[key]))
    np.testing.assert_allclose(got["last_loss"], ref["last_loss"], rtol=1e-5)


def test_adam_agrees_with_one_process(tmp_path: Path) -> None:
    options = {**BPR_OPTIONS, "optimizer": "adam", "lr": 0.01}
    ref = _single(options)
    assert _launch(dist_workers.train, 2, str(tmp_path), "bpr", options, N_FIT) == [0, 0]
    got = _ranks(tmp_path, 2)[0]
    for key in ("user_emb", "item_emb", "item_bias", "m_item", "v_item"):
        np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=ATOL, err_msg=key)


def test_non_finite_loss_on_one_rank_stops_every_rank(tmp_path: Path) -> None:
    codes = _launch(dist_workers.nan_on_rank, 2, str(tmp_path), BPR_OPTIONS, 1)
    assert codes == [3, 3]
    for r in range(2):
        unchanged, message = Path(tmp_path, f"rank{r}.txt").read_text().split("\n", 1)
        assert unchanged == "True"  # stopped before the update, on every rank
        assert "on rank(s) [1] of 2" in message and "loss is [nan]" in message


def test_killed_rank_fails_the_others_without_hanging(tmp_path: Path) -> None:
    start = time.monotonic()
    codes = distributed.launch(
        dist_workers.killed_rank, 2, (str(tmp_path), BPR_OPTIONS, 1),
        timeout_s=20.0, grace_s=40.0, deadline_s=DEADLINE,
    )
    elapsed = time.monotonic() - start
    assert codes[1] == -9  # SIGKILL
    assert codes[0] == 4, codes  # rank 0 caught the error itself (not terminated by launch)
    message = Path(tmp_path, "rank0.txt").read_text()
    assert message.startswith("DistributedError: rank 0 of 2: all-gather of BPR row gradients")
    assert elapsed < DEADLINE


def test_sampler_refused_under_several_ranks(tmp_path: Path) -> None:
    options = {**BPR_OPTIONS, "sampler": "popularity"}
    assert _launch(dist_workers.train, 2, str(tmp_path), "bpr", options, N_FIT) == [1, 1]


def test_launch_rejects_bad_nproc() -> None:
    with pytest.raises(ValueError, match="nproc must be at least 1"):
        distributed.launch(dist_workers.train, 0)
    assert BPR.data_parallel


def _csv(path: Path) -> Path:
    rows = ["user,item,timestamp"] + [f"{u},{i},{t}" for u, i, t in dist_workers.stream()]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_cli_nproc_two_matches_one_process(tmp_path: Path, capsys) -> None:
    from nmrn.cli import main

    log = _csv(tmp_path / "log.csv")
    params = ["--param", "bpr.epochs=2", "--param", "bpr.batch_size=256"]
    common = ["train", "--data", str(log), "--model", "bpr", "--quiet", *params]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    assert main([*common, "--nproc", "2", "--out", str(tmp_path / "two")]) == 0
    one, two = (load_model(tmp_path / name) for name in ("one", "two"))
    np.testing.assert_allclose(two.item_emb.numpy(), one.item_emb.numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(two.user_emb.numpy(), one.user_emb.numpy(), rtol=0, atol=ATOL)
    assert not np.array_equal(two.item_emb.numpy(), one.item_emb.numpy())  # really 2 ranks


def test_cli_nproc_refuses_a_model_without_data_parallel(tmp_path: Path, capsys) -> None:
    from nmrn.cli import main

    log = _csv(tmp_path / "log.csv")
    code = main(["train", "--data", str(log), "--model", "item-knn", "--nproc", "2",
                 "--out", str(tmp_path / "m")])
    assert code == 2
    assert "item-knn does not train data-parallel yet" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
