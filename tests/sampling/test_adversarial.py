"""The generator G (adversarial sampler): P_G, sampling, REINFORCE, isolation, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from torch import nn

from nmrn.config import SamplerConfig
from nmrn.sampling import AdversarialSampler, generator_probabilities, reinforce_objective
from nmrn.training.nmrn import NMRN
from tests.conformance import synthetic_stream


def _sampler(n_items: int, n_users: int = 1, **options: object) -> AdversarialSampler:
    s = AdversarialSampler(n_items, SamplerConfig(**options))  # type: ignore[arg-type]
    s.grow(n_items, n_users=n_users, generator=torch.Generator().manual_seed(0))
    return s


def _set_item_distance(s: AdversarialSampler, distances: list[float]) -> None:
    """Make ``d_G(u, v) = relu(f_v)`` with ``f_v = distances[v]`` (k = h = 1)."""
    net = s.network
    net.user_emb = nn.Parameter(torch.zeros(net.user_emb.shape[0], 1))
    net.item_emb = nn.Parameter(torch.tensor(distances)[:, None])
    # W1 picks f_v out of [e; f; e * f]
    net.hidden_weight = nn.Parameter(torch.tensor([[0.0, 1.0, 0.0]]))
    net.hidden_bias = nn.Parameter(torch.zeros(1))
    net.out_weight = nn.Parameter(torch.ones(1))


# -- P_G -------------------------------------------------------------------------------------------
def test_probabilities_match_a_hand_computed_softmax() -> None:
    s = _sampler(4, generator_dim=1, hidden=1, temperature=0.5)
    _set_item_distance(s, [0.0, math.log(2), math.log(4), 7.0])
    probs = s.probabilities(torch.tensor([0]), torch.tensor([[0, 1, 2]]))
    # exp(-d / 0.5) = 1, 1/4, 1/16  ->  16/21, 4/21, 1/21
    np.testing.assert_allclose(probs[0].numpy(), [16 / 21, 4 / 21, 1 / 21], rtol=1e-6)
    d = torch.tensor([[0.0, math.log(2), math.log(4)]])
    np.testing.assert_allclose(generator_probabilities(d)[0].numpy(), [4 / 7, 2 / 7, 1 / 7])


def test_sampling_frequencies_match_p_g() -> None:
    s = _sampler(6, n_users=2, generator_dim=1, hidden=1)
    _set_item_distance(s, [0.3, 0.0, 1.0, 2.0, 0.5, 1.5])
    users, cands = torch.tensor([1]), torch.tensor([[5, 0, 3, 2]])
    probs = s.probabilities(users, cands)[0].numpy()
    w = np.exp(-np.array([1.5, 0.3, 2.0, 1.0]))
    np.testing.assert_allclose(probs, w / w.sum(), rtol=1e-6)
    picks = s.choose(users, cands, 20_000, torch.Generator().manual_seed(0))[0].numpy()
    observed = np.bincount(picks, minlength=4)
    expected = probs.astype(np.float64) / probs.astype(np.float64).sum() * len(picks)
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_reinforce_objective_known_answer_and_sign() -> None:
    lp = torch.tensor([-1.0, -2.0], requires_grad=True)
    obj = reinforce_objective(lp, torch.tensor([3.0, 1.0]), baseline=2.0)
    assert obj.item() == pytest.approx(((3 - 2) * -1 + (1 - 2) * -2) / 2)
    (grad,) = torch.autograd.grad(obj, lp)
    # ascent raises log P of the above-baseline pick, lowers the below-baseline one
    assert grad.tolist() == [0.5, -0.5]
    ent = torch.tensor([1.0, 3.0])
    assert reinforce_objective(lp, torch.zeros(2), 0.0, ent, 0.1).item() == pytest.approx(0.2)


# -- REINFORCE -------------------------------------------------------------------------------------
def test_one_step_moves_p_g_towards_rewarded_pick_and_updates_baseline() -> None:
    s = _sampler(5, n_users=1)
    users, cands = torch.tensor([0, 0]), torch.tensor([[1, 2, 3], [1, 2, 3]])
    before = s.probabilities(users[:1], cands[:1])[0]
    reward = torch.tensor([[1.0, -1.0, -1.0], [1.0, -1.0, -1.0]])
    assert s.baseline == 0.0  # b0
    stats_ = s.update(users, torch.tensor([0, 0]), cands, reward, chosen=torch.tensor([0, 0]))
    after = s.probabilities(users[:1], cands[:1])[0]
    assert after[0] > before[0]  # r - b = 1 - 0 > 0: column 0 became likelier
    assert stats_["baseline"] == 0.0 and stats_["reward"] == 1.0
    assert s.baseline == 1.0  # the mean reward of this mini-batch, used by the next one
    s.update(users, torch.tensor([0, 0]), cands, reward, chosen=torch.tensor([0, 0]))
    # now r - b = 0: a pure REINFORCE step (no entropy term) leaves G unchanged
    np.testing.assert_allclose(s.probabilities(users[:1], cands[:1])[0], after, atol=1e-7)
    assert s.stats[-1]["baseline"] == 1.0 and s.steps == 2


def test_toy_world_generator_learns_the_item_d_places_nearest() -> None:
    """D's distance puts item 3 nearest user 0; G, rewarded by -d_D, must learn to propose it."""
    n_items, star = 8, 3
    d_dist = torch.full((n_items,), 1.5)
    d_dist[star] = 0.2
    d_dist[6] = 1.2
    s = _sampler(n_items, n_users=1, lr=0.1)
    g = torch.Generator().manual_seed(0)
    users, pos = torch.zeros(64, dtype=torch.long), torch.zeros(64, dtype=torch.long)
    for _ in range(150):
        prop = s.propose(users, pos, 4, generator=g)
        s.update(users, pos, prop.candidates, -d_dist[prop.candidates], chosen=prop.chosen)
    every = torch.arange(1, n_items)[None]  # all items but the positive 0
    probs = s.probabilities(torch.tensor([0]), every)[0]
    assert int(every[0, probs.argmax()]) == star
    assert probs[star - 1] > 0.6
    # second-nearest beats the far ones: G orders by reward, not just memorising one item
    far = [i - 1 for i in range(1, n_items) if i not in (star, 6)]
    assert probs[6 - 1] > probs[far].max()
    # mean reward: uniform picks get -1.27, the best policy about -0.66 (the star is among the
    # 4 candidates with probability 4/7)
    assert s.diagnostics(last=10)["reward"] > -0.9


def test_entropy_bonus_keeps_p_g_spread() -> None:
    n_items = 8
    d_dist = torch.linspace(0.1, 2.0, n_items)
    entropies = []
    for weight in (0.0, 1.0):
        s = _sampler(n_items, n_users=1, lr=0.1, entropy_weight=weight)
        g = torch.Generator().manual_seed(0)
        users, pos = torch.zeros(64, dtype=torch.long), torch.zeros(64, dtype=torch.long)
        for _ in range(100):
            prop = s.propose(users, pos, 4, generator=g)
            s.update(users, pos, prop.candidates, -d_dist[prop.candidates], chosen=prop.chosen)
        entropies.append(s.diagnostics(last=10)["entropy"])
        assert s.stats[-1]["max_entropy"] == pytest.approx(math.log(4))
    assert entropies[1] > entropies[0] + 0.1


def test_warmup_and_training_flag() -> None:
    s = _sampler(6, n_users=1, warmup_steps=2)
    users, pos, g = torch.tensor([0]), torch.tensor([0]), torch.Generator().manual_seed(0)
    flags = []
    for _ in range(3):
        prop = s.propose(users, pos, 3, generator=g)
        flags.append(prop.use_chosen)
        s.update(users, pos, prop.candidates, torch.zeros(1, 3), chosen=prop.chosen)
    assert flags == [False, False, True]
    s.training = False
    prop = s.propose(users, pos, 3, generator=g)
    assert prop.chosen is None
    before = s.state_dict()["g.out_weight"].copy()
    s.update(users, pos, prop.candidates, torch.ones(1, 3), chosen=torch.tensor([0]))
    np.testing.assert_array_equal(s.state_dict()["g.out_weight"], before)


# -- inside NMRN -----------------------------------------------------------------------------------
def _model(**kw: object) -> NMRN:
    params: dict[str, object] = dict(
        dim=8,
        memory_slots=4,
        epochs=3,
        batch_size=16,
        n_candidates=5,
        sampler="adversarial",
        sampler_options={"adversarial_epochs": 1, "pretrain_epochs": 1},
        seed=0,
    )
    params.update(kw)
    return NMRN(**params)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def stream() -> pd.DataFrame:
    return synthetic_stream(n_users=10, n_items=24, n_events=200, seed=0)


def test_fit_schedule_counts_generator_steps(stream: pd.DataFrame) -> None:
    hist = stream.iloc[:120]
    model = _model().fit(hist)
    sampler = model.negative_sampler
    assert isinstance(sampler, AdversarialSampler)
    n_batches = math.ceil(len(hist) / 16)
    # Algorithm 1: 2 uniform epochs (G idle), 1 pre-training pass on frozen D, 1 joint epoch
    assert sampler.steps == 2 * n_batches
    model.learn(stream.iloc[120:150])
    assert sampler.steps == 2 * n_batches + math.ceil(30 / 16)
    diag = model.sampler_diagnostics()
    for key in (
        "reward",
        "baseline",
        "entropy",
        "max_entropy",
        "violation_rate",
        "uniform_violation_rate",
    ):
        assert np.isfinite(diag[key])
    assert 0 <= diag["entropy"] <= diag["max_entropy"] == pytest.approx(math.log(5))


def test_d_trains_on_g_pick_with_rank_from_uniform_candidates(stream: pd.DataFrame) -> None:
    """With G active, D's hard negative is G's pick, not the nearest candidate."""
    model = _model(sampler_options={"adversarial_epochs": 0, "pretrain_epochs": 0}, epochs=1).fit(
        stream.iloc[:64]
    )
    sampler = model.negative_sampler
    picks: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_propose = sampler.propose

    def spy(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        prop = real_propose(*args, **kwargs)  # type: ignore[arg-type]
        picks.append((prop.candidates, prop.chosen))
        return prop

    sampler.propose = spy  # type: ignore[method-assign]
    stats_before = len(sampler.stats)
    model.learn(stream.iloc[64:80])
    assert len(picks) == 1 and len(sampler.stats) == stats_before + 1
    # hardest_rate < 1 means some picks differ from D's nearest candidate: D used G's picks
    assert sampler.stats[-1]["hardest_rate"] < 1.0


def test_gradient_isolation_between_d_and_g(stream: pd.DataFrame) -> None:
    model = _model().fit(stream.iloc[:100])
    sampler = model.negative_sampler
    g_before = {n: p.detach().clone() for n, p in sampler.network.named_parameters()}
    d_before = {n: p.detach().clone() for n, p in model.network.named_parameters()}
    # a D step alone (G's step disabled): G's parameters get no gradient and do not move
    real_update = sampler.update
    sampler.update = lambda *a, **k: {}  # type: ignore[method-assign]
    model.learn(stream.iloc[100:116])
    sampler.update = real_update  # type: ignore[method-assign]
    for name, param in sampler.network.named_parameters():
        assert param.grad is None
        assert torch.equal(param.detach(), g_before[name]), name
    assert any(
        not torch.equal(p.detach(), d_before[n]) for n, p in model.network.named_parameters()
    )
    # a G step alone: D's parameters get no gradient and do not move
    d_after = {n: p.detach().clone() for n, p in model.network.named_parameters()}
    users, pos = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    prop = sampler.propose(users, pos, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reward = -model.network.distance(
            model.network.item_emb[pos], model.network.item_emb[prop.candidates]
        )
    sampler.update(users, pos, prop.candidates, reward, chosen=prop.chosen)
    for name, param in model.network.named_parameters():
        assert param.grad is None
        assert torch.equal(param.detach(), d_after[name]), name
    assert any(
        not torch.equal(p.detach(), g_before[n]) for n, p in sampler.network.named_parameters()
    )


def test_checkpoint_round_trip_resumes_identically(tmp_path, stream: pd.DataFrame) -> None:
    model = _model(sampler_options={"adversarial_epochs": 1, "entropy_weight": 0.01}).fit(
        stream.iloc[:120]
    )
    path = model.save(tmp_path / "ckpt")
    loaded = NMRN.load(path)
    assert isinstance(loaded, NMRN)
    assert loaded.config.sampler_options == model.config.sampler_options
    assert loaded.negative_sampler.baseline == model.negative_sampler.baseline
    for chunk in (stream.iloc[120:160], stream.iloc[160:200]):  # includes new users and items
        model.learn(chunk)
        loaded.learn(chunk)
    users = sorted(stream.user.unique())
    items = sorted(stream.item.unique())
    np.testing.assert_array_equal(
        model.score(users, [items] * len(users)), loaded.score(users, [items] * len(users))
    )
    a, b = model.negative_sampler.state_dict(), loaded.negative_sampler.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert list(model.negative_sampler.stats)[-5:] == list(loaded.negative_sampler.stats)[-5:]


def test_popularity_sampler_in_nmrn_follows_the_stream(stream: pd.DataFrame) -> None:
    model = NMRN(
        dim=8,
        memory_slots=4,
        epochs=2,
        batch_size=16,
        sampler="popularity",
        sampler_options={"beta": 1.0},
    ).fit(stream.iloc[:100])
    model.learn(stream.iloc[100:150])
    # counted once per event (not once per epoch), in the model's item order
    np.testing.assert_array_equal(model.negative_sampler.counts.numpy(), model.item_counts)
    assert "violation_rate" in model.sampler_diagnostics()


def test_candidates_baseline_is_the_expected_reward_under_p_g() -> None:
    s = _sampler(5, n_users=1, baseline="candidates", generator_dim=1, hidden=1)
    _set_item_distance(s, [0.0, 0.0, math.log(2), math.log(4), 0.0])
    users, cands = torch.tensor([0]), torch.tensor([[1, 2, 3]])  # P_G = 4/7, 2/7, 1/7
    # rewards equal across candidates: r - E[r] = 0 whatever the batch mean, so G stays put
    s.baseline = -5.0
    before = s.probabilities(users, cands)
    s.update(users, torch.tensor([0]), cands, torch.full((1, 3), 2.0), chosen=torch.tensor([2]))
    np.testing.assert_allclose(s.probabilities(users, cands), before, atol=1e-7)
    # r = (1, 0, 0), pick column 1: r - E[r] = 0 - 4/7 < 0, so column 1 becomes less likely
    s.update(
        users, torch.tensor([0]), cands, torch.tensor([[1.0, 0.0, 0.0]]), chosen=torch.tensor([1])
    )
    assert s.probabilities(users, cands)[0, 1] < before[0, 1]
    assert s.baseline == 0.0  # the batch mean is still recorded for diagnostics


def test_generator_pool_larger_than_t() -> None:
    s = _sampler(30, n_users=2, n_candidates=12)
    prop = s.propose(
        torch.tensor([0, 1]), torch.tensor([0, 1]), 4, generator=torch.Generator().manual_seed(0)
    )
    assert prop.candidates.shape == (2, 12)
    assert s.sample(torch.tensor([0]), torch.tensor([3]), 2, generator=torch.Generator()).shape == (
        1,
        2,
    )


# -- inside BPR ------------------------------------------------------------------------------------
def test_bpr_with_the_adversarial_sampler(tmp_path, stream: pd.DataFrame) -> None:
    from nmrn.baselines.bpr import BPR

    def make() -> BPR:
        return BPR(
            dim=8,
            epochs=3,
            batch_size=16,
            learn_passes=1,
            sampler="adversarial",
            sampler_options={"adversarial_epochs": 1},
            n_candidates=5,
            seed=0,
        )

    model = make().fit(stream.iloc[:120])
    sampler = model.negative_sampler
    assert isinstance(sampler, AdversarialSampler)
    n_batches = math.ceil(120 / 16)
    assert sampler.steps == 2 * n_batches  # one pre-training pass + one joint epoch
    assert 0 <= model.sampler_diagnostics()["entropy"] <= math.log(5) + 1e-6
    loaded = BPR.load(model.save(tmp_path / "bpr"))
    for chunk in (stream.iloc[120:160], stream.iloc[160:200]):
        model.learn(chunk)
        loaded.learn(chunk)
    users, items = sorted(stream.user.unique()), sorted(stream.item.unique())
    np.testing.assert_array_equal(
        model.score(users, [items] * len(users)), loaded.score(users, [items] * len(users))
    )
    a, b = sampler.state_dict(), loaded.negative_sampler.state_dict()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # the default BPR draws its own negatives and has no sampler
    assert BPR().negative_sampler is None and BPR().sampler_diagnostics() == {}
