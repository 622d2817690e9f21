"""SASRec: the hand-written network parts, causality, windows, online updates, checkpoints."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from nmrn.baselines import SASRec
from nmrn.baselines.sasrec import bce_loss, causal_attention, encode, init_params
from nmrn.errors import ConfigError
from nmrn.training.contract import Recommender


def _cycle_world(n_users: int = 100, n_items: int = 30, length: int = 8) -> pd.DataFrame:
    """Every user walks the same cycle of items (i -> i + 1 mod n_items) from their own start.

    The items a user has consumed are never their negatives, so the model does not learn to
    rank them low: the checks below exclude them (as the protocol does).
    """
    rng = np.random.default_rng(0)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(n_items))
        rows += [(u, (start + j) % n_items) for j in range(length)]
    order = np.argsort(np.tile(np.arange(length), n_users), kind="stable")  # interleave users
    frame = pd.DataFrame([rows[j] for j in order], columns=["user", "item"])
    frame["timestamp"] = np.arange(len(frame), dtype=np.float64)
    return frame


def _small(**kwargs: object) -> SASRec:
    params: dict = {"dim": 16, "max_len": 8, "epochs": 20, "batch_size": 32, "dropout": 0.1,
                    "lr": 0.02, "seed": 3}
    params.update(kwargs)
    return SASRec(**params)


# -- the network -----------------------------------------------------------------------------------
def _tiny_params(n_items: int = 5, dim: int = 4, max_len: int = 4, n_blocks: int = 1) -> dict:
    gen = torch.Generator().manual_seed(0)
    params = init_params(dim, max_len, n_blocks, gen)
    params["item_emb"] = torch.cat([params["item_emb"], torch.randn(n_items, dim, generator=gen)])
    # non-trivial layer norms and biases, so that their gradients are checked too
    for key, p in params.items():
        if key.endswith(("_b", "_w")) or key.split(".")[-1].startswith("b"):
            params[key] = p + 0.1 * torch.randn(p.shape, generator=gen)
    return {k: v.double() for k, v in params.items()}


def test_attention_matches_torch_reference() -> None:
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, 2, 5, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    real = torch.tensor([[True] * 5, [False, False, True, True, True], [False] * 4 + [True]])
    got = causal_attention(q, k, v, real)
    allowed = torch.ones(5, 5, dtype=torch.bool).tril()[None] & real[:, None, :]
    allowed = allowed | torch.eye(5, dtype=torch.bool)[None]
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # a real slot never attends to padding: the first real slot of row 1 sees only itself
    torch.testing.assert_close(got[1, :, 2], v[1, :, 2], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_gradcheck_encoder_and_loss(dropout: float) -> None:
    params = _tiny_params()
    seq = torch.tensor([[0, 2, 5, 1], [3, 4, 1, 2]])
    pos = torch.tensor([[0, 5, 1, 3], [4, 1, 2, 5]])
    neg = torch.tensor([[0, 1, 4, 2], [2, 3, 5, 1]])
    mask = torch.tensor([[False, True, True, True], [True, True, False, True]])
    names = ["item_emb", "pos_emb", "block0.wq", "block0.wk", "block0.wv", "block0.w1",
             "block0.b2", "block0.ln1_w", "ln_b"]

    def loss(*tensors: torch.Tensor) -> torch.Tensor:
        local = dict(params)
        local.update(zip(names, tensors, strict=True))
        gen = torch.Generator().manual_seed(5)  # the same dropout masks on every call
        out = encode(local, seq, n_blocks=1, n_heads=2, dropout=dropout, generator=gen)
        return bce_loss(out, local["item_emb"], pos, neg, mask)

    inputs = tuple(params[n].clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-6)


def test_bce_loss_known_answer() -> None:
    out = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)  # [1, 2, 2]
    emb = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5, -1.0]], dtype=torch.float64)
    pos, neg = torch.tensor([[1, 1]]), torch.tensor([[2, 2]])
    mask = torch.tensor([[True, True]])
    # slot 0: pos logit 1, neg logit 0.5; slot 1: pos 2, neg -2
    want = (np.log1p(np.exp(-1)) + np.log1p(np.exp(0.5)) + np.log1p(np.exp(-2))
            + np.log1p(np.exp(-2))) / 2
    assert float(bce_loss(out, emb, pos, neg, mask)) == pytest.approx(want, rel=1e-12)
    only_first = torch.tensor([[True, False]])
    want_first = np.log1p(np.exp(-1)) + np.log1p(np.exp(0.5))
    assert float(bce_loss(out, emb, pos, neg, only_first)) == pytest.approx(want_first, rel=1e-12)


def test_causality_later_items_do_not_change_earlier_slots() -> None:
    params = _tiny_params(n_items=8, dim=8, max_len=6, n_blocks=2)
    seq = torch.tensor([[0, 0, 3, 1, 4, 2]])
    for t in range(2, 5):
        other = seq.clone()
        other[0, t + 1 :] = torch.tensor([7, 8, 5])[: 5 - t]
        a = encode(params, seq, n_blocks=2, n_heads=2)
        b = encode(params, other, n_blocks=2, n_heads=2)
        torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-15)
        assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_padding_does_not_leak_into_real_slots() -> None:
    params = _tiny_params(n_items=8, dim=8, max_len=6, n_blocks=2)
    short = torch.tensor([[0, 0, 0, 3, 1, 4]])
    # the padding row of the item table is never read into a real slot
    params_changed = dict(params)
    params_changed["item_emb"] = params["item_emb"].clone()
    params_changed["item_emb"][0] = 5.0
    a = encode(params, short, n_blocks=2, n_heads=1)
    b = encode(params_changed, short, n_blocks=2, n_heads=1)
    torch.testing.assert_close(a[:, 3:], b[:, 3:], rtol=0, atol=1e-15)


# -- windows and online updates --------------------------------------------------------------------
def test_windows_cover_each_new_event_once() -> None:
    user = np.zeros(5, dtype=np.int64)
    a, b, c, d, e, f, g = range(1, 8)  # item rows: index + 1 (row 0 is padding)
    # fit on a b c d e (max_len 3): every position but the first is a target exactly once
    fresh = SASRec(dim=4, max_len=3)
    fresh._grow(1, 5)
    inputs, targets, mask, owner = fresh._windows(user, np.arange(5))
    assert inputs.tolist() == [[0, 0, a], [b, c, d]]
    assert targets.tolist() == [[0, 0, b], [c, d, e]]
    assert mask.tolist() == [[False, False, True], [True, True, True]]
    assert owner.tolist() == [0, 0]
    # learn f g after it: the context comes from the history; only f and g are trained
    rec = SASRec(dim=4, max_len=3, epochs=0).fit([("u", i, t) for t, i in enumerate("abcde")])
    rec._grow(1, 7)
    inputs, targets, mask, _ = rec._windows(user[:2], np.array([5, 6]))
    assert inputs.tolist() == [[d, e, f]]
    assert targets.tolist() == [[0, f, g]]
    assert mask.tolist() == [[False, True, True]]
    # a new user's first event has no input: nothing to train
    rec._grow(2, 7)
    inputs, _, _, _ = rec._windows(np.array([1]), np.array([0]))
    assert inputs.shape == (0, 3)


def test_learns_a_cycle() -> None:
    world = _cycle_world()
    rec = _small().fit(world)
    last = world.groupby("user")["item"].last()
    top1 = rec.recommend(list(last.index), k=1).items[:, 0]
    right = np.mean([top1[j] == (last[u] + 1) % 30 for j, u in enumerate(last.index)])
    assert right >= 0.9
    assert rec.last_loss < 0.3


@pytest.mark.parametrize("learn_steps", [0, 1])
def test_one_new_event_changes_the_recommendation(learn_steps: int) -> None:
    world = _cycle_world()
    rec = _small(learn_steps=learn_steps).fit(world)
    items = rec.known_items
    before, scores_before = rec.recommend(0, k=5), rec.score([0], items)[0]
    nxt = before.items[0]
    assert nxt == (world[world.user == 0].item.iloc[-1] + 1) % 30
    rec.learn([(0, nxt, 1e6)])  # the user takes the recommended next item
    after, scores_after = rec.recommend(0, k=5), rec.score([0], items)[0]
    assert after.items[0] == (nxt + 1) % 30  # and the model moves one step along the cycle
    assert np.all(scores_before != scores_after)


def test_learn_updates_only_with_learn_steps() -> None:
    world = _cycle_world()
    rec = _small(learn_steps=0).fit(world)
    params = {k: p.detach().clone() for k, p in rec.params.items()}
    step = rec._step
    rec.learn([(1, 3, 1e6), (2, 4, 1e6)])
    assert rec._step == step
    for key, p in rec.params.items():
        torch.testing.assert_close(p.detach(), params[key], rtol=0, atol=0)
    stepping = _small(learn_steps=3).fit(world)
    stepping.config = stepping.config.replace(batch_size=1)
    step = stepping._step
    stepping.learn([(1, 3, 1e6), (2, 4, 1e6)])  # two windows, batches of one, three passes
    assert stepping._step == step + 6


def test_tables_grow_with_old_rows_intact() -> None:
    world = _cycle_world()
    rec = _small(learn_steps=0).fit(world)
    emb = rec.params["item_emb"].detach().clone()
    rec.learn([(0, 100, 1e6), (99, 101, 1e6)])  # two new items, one new user
    grown = rec.params["item_emb"]
    assert grown.shape == (33, 16) and grown.requires_grad
    torch.testing.assert_close(grown[:31].detach(), emb, rtol=0, atol=0)
    assert torch.all(grown[31:] != 0)
    for state in (rec._m, rec._v):
        assert state["item_emb"].shape == (33, 16)
        assert torch.all(state["item_emb"][31:] == 0)
    assert rec.recommend(99, k=3).cold is False
    # and a step after the growth trains the new rows
    rec.config = rec.config.replace(learn_steps=1)
    new_rows = grown[31:].detach().clone()
    rec.learn([(99, 100, 1e6 + 1)])
    assert torch.all((rec.params["item_emb"][31:].detach() != new_rows).any(dim=1))


def test_checkpoint_round_trip_scores_and_continues_identically(tmp_path) -> None:
    world = _cycle_world()
    rec = _small(epochs=5, learn_steps=2).fit(world.iloc[:150])
    loaded = Recommender.load(rec.save(tmp_path / "ckpt"))
    assert isinstance(loaded, SASRec)
    users = rec.known_users
    np.testing.assert_array_equal(rec.score(users, rec.known_items),
                                  loaded.score(users, rec.known_items))
    for lo in range(150, len(world), 30):
        rec.learn(world.iloc[lo : lo + 30])
        loaded.learn(world.iloc[lo : lo + 30])
    for key, p in rec.params.items():
        torch.testing.assert_close(p.detach(), loaded.params[key].detach(), rtol=0, atol=0)
        torch.testing.assert_close(rec._m[key], loaded._m[key], rtol=0, atol=0)
    assert torch.equal(rec._gen.get_state(), loaded._gen.get_state())
    assert rec._step == loaded._step and rec.last_loss == loaded.last_loss
    np.testing.assert_array_equal(rec.score(users, rec.known_items),
                                  loaded.score(users, rec.known_items))


def test_global_random_state_is_untouched() -> None:
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    rec = _small(epochs=2).fit(_cycle_world())
    rec.learn([(0, 1, 1e6)])
    rec.recommend(0, k=3)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == np_state[1].tolist()


def test_negatives_avoid_the_users_items() -> None:
    rec = SASRec(dim=4, max_len=3, epochs=0, n_resample=20)
    rec.fit([("u", i, t) for t, i in enumerate(range(4))] + [("v", i, 9) for i in range(10)])
    neg = rec._negatives(torch.zeros(4, dtype=torch.int64), (4, 50)) - 1  # rows -> indices
    # a redraw hits u's items with probability 0.4: after 20 the chance is 0.4**21 per draw
    assert set(neg.view(-1).tolist()) == set(range(4, 10))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dim": 0},
        {"dim": 6, "n_heads": 4},
        {"max_len": 0},
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"lr": 0},
        {"learn_lr": float("inf")},
        {"epochs": 1.5},
        {"learn_steps": -1},
        {"batch_size": True},
    ],
)
def test_rejects_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="SASRec"):
        SASRec(**kwargs)
