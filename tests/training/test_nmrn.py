"""NMRN behind the Recommender contract: training, growth, checkpoints, determinism, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmrn.config import NMRNConfig
from nmrn.errors import CheckpointError, ConfigError, ModelFitError
from nmrn.model.memory import evolve_sequential
from nmrn.training.contract import Recommender
from nmrn.training.nmrn import NMRN

SMALL = {"dim": 8, "memory_slots": 4, "batch_size": 16, "epochs": 2, "n_candidates": 5}


def _stream(
    n: int = 240, n_users: int = 12, n_items: int = 30, seed: int = 0, t0: int = 0
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user": rng.integers(0, n_users, n),
            "item": rng.integers(0, n_items, n),
            "timestamp": np.arange(t0, t0 + n),
        }
    )


def _model(**kw) -> NMRN:
    return NMRN(**{**SMALL, **kw})


# -- configuration ---------------------------------------------------------------------------------
def test_config_object_and_keywords_agree() -> None:
    cfg = NMRNConfig.from_dict(SMALL)
    a, b = NMRN(cfg), NMRN(**SMALL)
    assert a.config == b.config == cfg
    assert NMRN(cfg, dim=16).config.model.dim == 16  # a keyword overrides the config
    assert NMRN({"dim": 12}).config.model.dim == 12
    assert NMRN({"model": {"dim": 12}}, lr=0.2).config.train.lr == 0.2
    assert a.get_params()["dim"] == 8 and "config" not in a.get_params()
    assert NMRN(**a.get_params()).config == a.config  # the flat parameters rebuild it


def test_an_explicit_keyword_is_never_ignored() -> None:
    # a keyword equal to the default still overrides a config that says otherwise
    cfg = NMRNConfig.from_dict({"dim": 32, "epochs": 3})
    rec = NMRN(cfg, dim=64, epochs=10)
    assert rec.config.model.dim == 64 and rec.config.train.epochs == 10


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"dim": 0}, "dim must be >= 1"),
        ({"lr": float("inf")}, "lr must be finite"),
        ({"addressing": "dott"}, "did you mean 'dot'"),
        ({"sampler": "unifrom"}, "did you mean"),
        ({"memory_slots": 2.5}, "must be an int"),
    ],
)
def test_bad_config_rejected(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        NMRN(**kw)


def test_unknown_config_key_suggests() -> None:
    with pytest.raises(ConfigError, match="did you mean 'margin'"):
        NMRN({"margn": 0.1})


# -- learning --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw", [{"addressing": "neg_dist", "temperature": 0.1}, {"personal_offset": True}]
)
def test_fit_learns_a_two_group_world(kw: dict) -> None:
    # users 0..5 only ever see items 0..4; users 6..11 only items 5..9. (The paper-faithful
    # dot addressing with norms clipped to 1 separates the groups too slowly for a fast test.)
    rng = np.random.default_rng(1)
    users = rng.integers(0, 12, 600)
    items = np.where(users < 6, rng.integers(0, 5, 600), rng.integers(5, 10, 600))
    df = pd.DataFrame({"user": users, "item": items, "timestamp": np.arange(600)})
    rec = _model(epochs=15, lr=0.1, **kw).fit(df)
    scores = rec.score(np.arange(12), np.arange(10))  # [12, 10]
    own = np.where(np.arange(12)[:, None] < 6, np.arange(10) < 5, np.arange(10) >= 5)
    assert scores[own].mean() > scores[~own].mean()
    hits = [set(rec.recommend(u, k=5, exclude_seen=False).items) for u in range(12)]
    correct = sum(len(h & set(range(0, 5) if u < 6 else range(5, 10))) for u, h in enumerate(hits))
    assert correct >= 0.8 * 60


def test_fit_memory_state_is_end_of_history_state() -> None:
    df = _stream(50)
    rec = _model(epochs=0).fit(df)  # no training: the state is the init evolved by the history
    net = rec.network
    u = torch.from_numpy(rec.users.encode(df["user"].to_numpy()))
    i = torch.from_numpy(rec.items.encode(df["item"].to_numpy()))
    with torch.no_grad():
        erase, add = net.gates(net.item_emb[i])
        _, final = evolve_sequential(net.init_values, net.address(net.user_emb[u]), erase, add)
    torch.testing.assert_close(rec._memory, final)


@pytest.mark.parametrize("per_user_memory", [False, True])
def test_learn_passes_evolve_memory_once_per_event(per_user_memory: bool) -> None:
    base = _stream(120)
    new = _stream(40, seed=3, t0=200)
    kw = {"lr": 1e-9, "optimizer": "sgd", "per_user_memory": per_user_memory}
    one = _model(learn_passes=1, **kw).fit(base)
    three = _model(learn_passes=3, **kw).fit(base)
    one.learn(new)
    three.learn(new)
    # with a negligible learning rate, extra passes change nothing but the number of steps
    torch.testing.assert_close(one._memory, three._memory, rtol=1e-5, atol=1e-6)
    assert three._step - one._step == 2 * (-(-40 // SMALL["batch_size"]))


def test_growth_keeps_rows_and_optimizer_state_consistent() -> None:
    rec = _model().fit(_stream(100, n_users=5, n_items=10))
    users_before = rec.network.user_emb.detach().clone()
    items_before = rec.network.item_emb.detach().clone()
    acc_before = rec._accumulators["item_emb"].clone()
    assert (acc_before > 0).any()
    new = pd.DataFrame({"user": ["new-u"], "item": ["new-i"], "timestamp": [1000]})
    # a single event on new ids: the untouched old rows must stay exactly as they were
    rec.learn(new)
    n_u, n_i = len(rec.users), len(rec.items)
    assert rec.network.user_emb.shape == (n_u, 8) and rec.network.item_emb.shape == (n_i, 8)
    for name, param in rec.network.named_parameters():
        assert rec._accumulators[name].shape == param.shape, name
    touched = set(rec.items.encode(["new-i"]).tolist())
    step_items = rec._accumulators["item_emb"][: len(acc_before)]
    changed = torch.nonzero((step_items != acc_before).any(dim=1)).flatten().tolist()
    # only rows drawn as negatives (or the positive) in that one step moved
    assert len(changed) <= SMALL["n_candidates"] + 1
    unchanged = [j for j in range(len(acc_before)) if j not in changed]
    assert torch.equal(rec.network.item_emb[unchanged], items_before[unchanged])
    assert torch.equal(rec.network.user_emb[:5], users_before)  # no old user in the step
    assert touched.isdisjoint(range(len(acc_before)))


def test_cold_user_item_mean_init() -> None:
    rec = _model(cold_user_init="item_mean", lr=1e-9, optimizer="sgd").fit(_stream(60))
    items = rec.items.encode([1, 2])
    expected = rec.network.item_emb.detach()[torch.from_numpy(items)].mean(0)
    rec.learn(pd.DataFrame({"user": ["fresh", "fresh"], "item": [1, 2], "timestamp": [999, 1000]}))
    got = rec.network.user_emb.detach()[rec.users.get("fresh")]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "kw",
    [
        {"per_user_memory": True},
        {"addressing": "neg_dist", "learn_temperature": True},
        {"item_bias": True, "personal_offset": True, "squared_distance": True},
        {"grad_clip": 0.5},
        {"optimizer": "sgd"},
    ],
)
def test_variants_train_and_round_trip(kw: dict, tmp_path) -> None:
    rec = _model(**kw).fit(_stream(80))
    rec.learn(_stream(20, seed=5, t0=500, n_users=15))
    assert np.isfinite(rec.score(rec.known_users, rec.known_items)).all()
    back = NMRN.load(rec.save(tmp_path / "ckpt"))
    users = list(rec.known_users)
    np.testing.assert_array_equal(rec.recommend(users, k=5).items, back.recommend(users, k=5).items)


def test_per_user_memory_is_per_user() -> None:
    rec = _model(per_user_memory=True, epochs=1).fit(_stream(60, n_users=3))
    before = rec._memory.clone()
    rec.learn(pd.DataFrame({"user": [0], "item": [1], "timestamp": [1000]}))
    moved = (rec._memory != before).flatten(1).any(dim=1)
    assert moved.tolist() == [i == rec.users.get(0) for i in range(len(rec.users))]


# -- checkpoints and determinism -------------------------------------------------------------------
def test_save_load_identical_recommendations_and_continued_learning(tmp_path) -> None:
    rec = _model().fit(_stream(150))
    back = NMRN.load(rec.save(tmp_path / "a"))
    assert isinstance(back, NMRN) and back.to_config() == rec.to_config()
    users = list(rec.known_users) + ["unknown"]
    for a, b in [(rec, back)]:
        np.testing.assert_array_equal(a.recommend(users, k=7).items, b.recommend(users, k=7).items)
        np.testing.assert_array_equal(
            a.recommend(users, k=7).scores, b.recommend(users, k=7).scores
        )
    more = _stream(60, n_users=20, n_items=40, seed=9, t0=1000)  # new users and items too
    rec.learn(more)
    back.learn(more)
    for name, p in rec.network.state_dict().items():
        assert torch.equal(p, back.network.state_dict()[name]), name
    np.testing.assert_array_equal(
        rec.score(users, rec.known_items), back.score(users, back.known_items)
    )


def test_checkpoint_architecture_mismatch_rejected(tmp_path) -> None:
    rec = _model().fit(_stream(40))
    arrays, meta = rec._state()
    other = _model(dim=4)
    with pytest.raises(CheckpointError, match="architecture"):
        other._load_state(arrays, meta)
    # loading reads the architecture from the checkpoint, not from the caller
    assert Recommender.load(rec.save(tmp_path / "c")).config.model.dim == 8


def test_same_seed_same_model_different_seed_differs() -> None:
    df = _stream(100)
    a, b, c = _model(seed=3).fit(df), _model(seed=3).fit(df), _model(seed=4).fit(df)
    for name, p in a.network.state_dict().items():
        assert torch.equal(p, b.network.state_dict()[name]), name
    assert not torch.equal(a.network.user_emb, c.network.user_emb)


def test_private_generator_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _model().fit(_stream(40))
    assert torch.equal(torch.rand(3), expected)


# -- recommend contract ----------------------------------------------------------------------------
_TRAINED = _model(epochs=1).fit(_stream(200, n_users=10, n_items=25))


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 9), st.integers(1, 40), st.booleans())
def test_recommend_returns_distinct_known_unexcluded_sorted(user: int, k: int, excl: bool) -> None:
    rec = _TRAINED
    items, scores = rec.recommend(user, k=k, exclude_seen=excl)
    seen = set(rec.items.decode(rec.history.items_of(rec.users.get(user))).tolist())
    n_cand = len(rec.items) - (len(seen) if excl else 0)
    valid = [x for x in items.tolist() if x is not None]
    assert len(items) == min(k, len(rec.items)) and len(valid) == min(k, n_cand)
    assert len(set(valid)) == len(valid) and set(valid) <= set(rec.known_items.tolist())
    if excl:
        assert not set(valid) & seen
    finite = scores[np.isfinite(scores)]
    assert np.all(np.diff(finite) <= 0)
    np.testing.assert_allclose(finite, rec.score([user], valid)[0])


# -- divergence ------------------------------------------------------------------------------------
def test_poisoned_weight_raises_model_fit_error() -> None:
    rec = _model().fit(_stream(40))
    with torch.no_grad():
        rec.network.keys[0, 0] = float("nan")
    with pytest.raises(ModelFitError, match=r"non-finite loss .* at step \d+ .*lower lr"):
        rec.learn(_stream(20, t0=100))


def test_huge_learning_rate_raises_model_fit_error() -> None:
    with pytest.raises(ModelFitError, match="step"):
        _model(lr=1e30, optimizer="sgd", epochs=5, max_norm=1e30).fit(_stream(200))


# -- the uniform sampler ---------------------------------------------------------------------------
@settings(deadline=None, max_examples=50)
@given(
    st.integers(2, 40),
    st.integers(1, 20),
    st.integers(1, 12),
    st.integers(0, 2**31 - 1),
    st.booleans(),
)
def test_uniform_sampler_avoids_positive_and_exclusions(
    n_items: int, n: int, rows: int, seed: int, with_exclude: bool
) -> None:
    from nmrn.sampling import UniformSampler

    g = torch.Generator().manual_seed(seed)
    sampler = UniformSampler(n_items)
    pos = torch.randint(0, n_items, (rows,), generator=g)
    exclude = None
    if with_exclude and n_items > 2:
        exclude = torch.stack([(pos + 1) % n_items, torch.full_like(pos, -1)], dim=1)  # [B, 2]
    neg = sampler.sample(torch.zeros(rows, dtype=torch.long), pos, n, generator=g, exclude=exclude)
    assert neg.shape == (rows, n) and neg.dtype == torch.long
    assert ((neg >= 0) & (neg < n_items)).all()
    assert (neg != pos[:, None]).all()
    if exclude is not None:
        assert (neg != exclude[:, :1]).all()


def test_uniform_sampler_is_uniform_and_rejects_tiny_catalogues() -> None:
    from nmrn.sampling import SamplingError, UniformSampler, make_sampler

    g = torch.Generator().manual_seed(0)
    neg = UniformSampler(5).sample(torch.zeros(1), torch.tensor([2]), 20_000, generator=g)
    counts = torch.bincount(neg[0], minlength=5).double() / 20_000
    assert counts[2] == 0 and torch.allclose(
        counts[[0, 1, 3, 4]], torch.full((4,), 0.25, dtype=torch.float64), atol=0.02
    )
    with pytest.raises(SamplingError, match="at least 2"):
        UniformSampler(1).sample(torch.zeros(1), torch.tensor([0]), 3, generator=g)
    with pytest.raises(ConfigError, match="did you mean 'uniform'"):
        make_sampler("unifom")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present on this machine")
def test_cuda_device_without_cuda_is_a_config_error() -> None:
    from nmrn.errors import ConfigError

    with pytest.raises(ConfigError, match="CUDA is not available"):
        NMRN(device="cuda")
    with pytest.raises(ConfigError, match="not a torch device"):
        NMRN(device="gpu0")


def test_the_score_cache_follows_training_exactly() -> None:
    # the cached item norms are updated row by row as training touches them; they must equal
    # a full recomputation bit for bit, or scores would depend on when the cache was built
    rec = _model().fit(_stream(2000, n_items=200))
    rec.recommend(rec.known_users[:3], k=5)  # build the cache
    for lo in range(0, 40, 8):
        rec.learn(_stream(8, n_items=200, seed=lo + 7, t0=5000 + lo))
        assert rec._dirty_items  # a few rows changed: the incremental path
        got = rec.score(rec.known_users[:4], rec.known_items)
        assert rec._score_cache is not None
        full = (rec.network.item_emb.detach().double() ** 2).sum(dim=-1)
        assert torch.equal(rec._score_cache[1], full)
        rec._score_cache = None  # force a full rebuild: the same scores
        np.testing.assert_array_equal(rec.score(rec.known_users[:4], rec.known_items), got)


def test_with_a_context_query_one_event_changes_the_users_recommendations() -> None:
    # the query moves to the item the user just consumed, even when training barely moves the
    # weights (lr 1e-9): the read changes at once
    log = _stream(200)
    rec = _model(context_len=5, per_user_memory=True, lr=1e-9).fit(log)
    user = log.user.iloc[0]
    top = rec.recommend(user, k=10).items.tolist()
    item = next(i for i in rec.known_items.tolist() if i not in top)
    query_before = _query(rec, user)
    rec.learn(pd.DataFrame({"user": [user], "item": [item], "timestamp": [1e9]}))
    assert rec.recommend(user, k=10).items.tolist() != top
    # the new query is the old one with the new item in front, the older ones decayed
    row = rec.users.get(user)
    gamma = rec.config.model.context_decay
    recent = rec.history.recent([row], 5)[0]
    assert recent[0] == rec.items.get(item)
    with torch.no_grad():
        e, u = rec.network.item_emb, rec.network.user_emb[row]
        sixth = rec.history.recent([row], 6)[0][5]  # fell out of the last five
        dropped = e[sixth] if sixth >= 0 else 0.0
        expected = u + e[recent[0]] + gamma * (query_before - u - gamma**4 * dropped)
    torch.testing.assert_close(_query(rec, user), expected, rtol=0, atol=1e-5)


def test_a_reads_context_vectors_are_the_training_paths_bit_for_bit() -> None:
    # without a leaf (reads, the generator's pretraining, the memory's advance) the context is
    # gathered without the training path's unique rows; users with one, fewer than L and more
    # than L items must get exactly the same [1, L, d] vectors (+0.0 where a user has fewer)
    log = _stream(300)
    rec = _model(context_len=6, per_user_memory=True).fit(log)
    counts = {row: len(rec.history.items_of(row)) for row in range(len(rec.known_users))}
    picked = [min(counts, key=counts.get), max(counts, key=counts.get)]
    picked += [row for row, n in counts.items() if 0 < n < 6][:2]
    assert counts[picked[1]] > 6
    rec.learn(pd.DataFrame({"user": ["a new user"], "item": [log.item.iloc[0]],
                            "timestamp": [1e9]}))
    for row in [*picked, rec.users.get("a new user")]:
        recent = torch.from_numpy(rec.history.recent([row], 6))
        want = rec._context_vectors(recent, leaf=True)[0].detach()
        got = rec._read_inputs(row)[2]
        assert got.shape == want.shape == (1, 6, rec.config.model.dim)
        assert torch.equal(got, want) and not torch.signbit(got[~(recent[0] >= 0)[None]]).any()
    # a batch of several users' contexts, as the memory's advance gathers them
    batch = torch.from_numpy(rec.history.recent([*picked, rec.users.get("a new user")], 6))
    assert torch.equal(rec._context_vectors(batch, leaf=False)[0],
                       rec._context_vectors(batch, leaf=True)[0].detach())


def _query(rec: NMRN, user: object) -> torch.Tensor:
    row = rec.users.get(user)
    recent = torch.from_numpy(rec.history.recent([row], rec.config.model.context_len))
    context = rec._context_vectors(recent, leaf=False)[0]
    with torch.no_grad():
        return rec.network.query(rec.network.user_emb[row : row + 1], context)[0]


def test_context_query_checkpoint_round_trip_and_old_checkpoints_load(tmp_path) -> None:
    rec = _model(context_len=4).fit(_stream(80))
    loaded = NMRN.load(rec.save(tmp_path / "ctx"))
    np.testing.assert_array_equal(loaded.score([0, 1], rec.known_items),
                                  rec.score([0, 1], rec.known_items))
    # a checkpoint written before context_len existed has no such architecture field
    plain = _model().fit(_stream(40))
    arrays, meta = plain._state()
    del meta["architecture"]["context_len"], meta["architecture"]["context_decay"]
    _model()._grow(len(plain.users), len(plain.items))
    twin = _model()
    twin.users, twin.items = plain.users, plain.items
    twin._grow(len(plain.users), len(plain.items))
    twin._load_state(arrays, meta)  # no architecture mismatch


def test_a_checkpoint_from_another_device_loads_with_a_device_override(tmp_path) -> None:
    # issue 13: a checkpoint saved with device="cuda" must load on a machine without CUDA
    import json

    from nmrn.models import load_model

    rec = _model().fit(_stream(60))
    path = rec.save(tmp_path / "gpu")
    meta = json.loads((path / "meta.json").read_text())
    meta["params"]["device"] = "cuda"  # as if saved on a GPU machine
    (path / "meta.json").write_text(json.dumps(meta))
    if not torch.cuda.is_available():
        with pytest.raises(CheckpointError, match="CUDA is not available"):
            NMRN.load(path)
    loaded = load_model(path, device="cpu")
    assert loaded.config.device == "cpu"
    np.testing.assert_array_equal(loaded.score([0, 1], rec.known_items),
                                  rec.score([0, 1], rec.known_items))


# -- the per-step fast paths (issue 14) ------------------------------------------------------------
def _clip_reference(table: torch.Tensor, rows, max_norm: float) -> None:
    """_clip_rows as it was before it skipped rows already inside the ball."""
    block = table if rows is None else table[rows]
    norms = torch.linalg.vector_norm(block, dim=-1, keepdim=True)
    scale = (max_norm / norms.clamp_min(1e-12)).clamp(max=1.0)
    scale = torch.where(torch.isfinite(norms), scale, torch.full_like(scale, float("nan")))
    if rows is None:
        table.mul_(scale)
    else:
        table[rows] = block * scale


@settings(deadline=None, max_examples=100)
@given(
    st.lists(st.floats(-2.0, 2.0, width=32), min_size=12, max_size=12),
    st.sampled_from([0.5, 1.0, 3.0]),
    st.sampled_from([None, [0, 2], [1], [0, 1, 2]]),
    st.sampled_from([None, float("inf"), float("nan")]),
)
def test_clip_rows_equals_the_unconditional_rescale(values, max_norm, rows, poison) -> None:
    """Skipping the rescale when every row is inside the ball must change no bit, and a row
    with an infinite or NaN norm must still become NaN (divergence is reported, not hidden)."""
    from nmrn.training.nmrn import _clip_rows

    table = torch.tensor(values, dtype=torch.float32).view(3, 4)
    if poison is not None:
        table[1, 2] = poison
    ours, ref = table.clone(), table.clone()
    index = None if rows is None else torch.tensor(rows)
    _clip_rows(ours, index, max_norm)
    _clip_reference(ref, index, max_norm)
    assert torch.equal(ours.isnan(), ref.isnan())
    assert torch.equal(torch.nan_to_num(ours), torch.nan_to_num(ref))
    assert torch.equal(ours.view(torch.int32)[~ours.isnan()], ref.view(torch.int32)[~ref.isnan()])


@pytest.mark.parametrize("optimizer", ["adagrad", "sgd"])
def test_dense_steps_at_once_equal_one_parameter_at_a_time(optimizer: str) -> None:
    """The _foreach dense step must give, bit for bit, the per-parameter loop it replaced."""
    model = _model(optimizer=optimizer).fit(_stream(64))
    g = torch.Generator().manual_seed(3)
    params = dict(model._dense)
    grads = {n: torch.randn(p.shape, generator=g) for n, p in params.items()}
    first = next(iter(params))  # a zero gradient on a zero accumulator: only eps keeps it finite
    model._accumulators[first].zero_()
    grads[first].view(-1)[:3] = 0.0
    expected_params = {n: p.detach().clone() for n, p in params.items()}
    expected_accs = {n: model._accumulators[n].clone() for n in params}
    lr = model.config.train.lr
    for n in params:  # the loop before issue 14
        if optimizer == "sgd":
            expected_params[n].add_(grads[n], alpha=-lr)
            continue
        acc = expected_accs[n]
        acc.addcmul_(grads[n], grads[n])
        expected_params[n].addcdiv_(grads[n], acc.sqrt().add_(1e-10), value=-lr)
    model._update_dense_all([(n, p, grads[n]) for n, p in params.items()])
    for n, p in params.items():
        assert torch.equal(p.detach(), expected_params[n]), n
        assert torch.equal(model._accumulators[n], expected_accs[n]), n


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"timestamp": [1.0, float("nan")]}, "NMRN.learn: row 1: timestamp nan is missing"),
        ({"user": [1.5, 2.0]}, "NMRN.learn: row 0: user id 1.5 is not an int or a string"),
        ({"item": [3, None]}, "NMRN.learn: row 1: item id is missing"),
    ],
)
def test_bad_input_to_learn_is_refused_before_anything_changes(bad: dict, message: str) -> None:
    from nmrn.errors import DataError

    model = _model().fit(_stream(64))
    before = (model.n_events, len(model.users), len(model.items), model._step)
    frame = pd.DataFrame({"user": [1, 2], "item": [3, 4], "timestamp": [100.0, 101.0], **bad})
    with pytest.raises(DataError, match=message):
        model.learn(frame)
    assert (model.n_events, len(model.users), len(model.items), model._step) == before
