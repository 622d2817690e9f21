"""Conformance of every registered negative sampler, and the popularity sampler's known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from nmrn.config import SamplerConfig
from nmrn.errors import ConfigError
from nmrn.sampling import (
    SAMPLERS,
    BaseSampler,
    NegativeSampler,
    PopularitySampler,
    SamplingError,
    make_sampler,
)

NAMES = sorted(SAMPLERS)


def _ready(name: str, n_items: int, n_users: int = 4) -> BaseSampler:
    """A sampler that knows ``n_items`` items and ``n_users`` users and has seen some events."""
    sampler = make_sampler(name, n_items, generator=torch.Generator().manual_seed(1))
    sampler.grow(n_items, n_users=n_users, generator=torch.Generator().manual_seed(2))
    items = torch.arange(n_items) % max(n_items // 2, 1)  # a skewed count profile
    sampler.observe(torch.zeros_like(items), items)
    return sampler


@pytest.mark.parametrize("name", NAMES)
def test_implements_the_protocol(name: str) -> None:
    sampler = make_sampler(name, 5)
    assert isinstance(sampler, NegativeSampler)
    assert sampler.n_items == 5
    assert type(sampler).__doc__


@pytest.mark.parametrize("name", NAMES)
@settings(deadline=None, max_examples=25)
@given(
    n_items=st.integers(3, 40),
    rows=st.integers(1, 6),
    n=st.integers(1, 8),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_shape_never_positive_never_excluded(
    name: str, n_items: int, rows: int, n: int, seed: int, data: st.DataObject
) -> None:
    sampler = _ready(name, n_items)
    users = torch.tensor(data.draw(st.lists(st.integers(0, 3), min_size=rows, max_size=rows)))
    item = st.integers(0, n_items - 1)
    pos = torch.tensor(data.draw(st.lists(item, min_size=rows, max_size=rows)))
    n_excl = data.draw(st.integers(0, n_items - 2))
    exclude = (
        torch.stack(
            [
                torch.randperm(n_items, generator=torch.Generator().manual_seed(seed + r))[:n_excl]
                for r in range(rows)
            ]
        )
        if n_excl
        else None
    )
    if exclude is not None:  # the positive itself may also appear in exclude; keep >= 1 item free
        exclude = torch.where(exclude == pos[:, None], torch.full_like(exclude, -1), exclude)
        free = [set(range(n_items)) - set(exclude[r].tolist()) - {int(pos[r])} for r in range(rows)]
        if min(len(f) for f in free) == 0:
            return
    g = torch.Generator().manual_seed(seed)
    neg = sampler.sample(users, pos, n, generator=g, exclude=exclude)
    assert neg.shape == (rows, n) and neg.dtype == torch.long
    assert bool(((neg >= 0) & (neg < n_items)).all())
    assert bool((neg != pos[:, None]).all())
    if exclude is not None:
        assert not bool((neg[:, :, None] == exclude[:, None, :]).any())
    # propose: T candidates, same guarantees
    prop = sampler.propose(users, pos, n, generator=g, exclude=exclude)
    assert prop.candidates.shape == (rows, n)
    assert bool((prop.candidates != pos[:, None]).all())
    if prop.chosen is not None:
        assert prop.chosen.shape == (rows,)
        assert bool(((prop.chosen >= 0) & (prop.chosen < n)).all())


@pytest.mark.parametrize("name", NAMES)
def test_seeded_reproducibility(name: str) -> None:
    users, pos = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 3, 5, 7])
    draws = []
    for _ in range(2):
        sampler = _ready(name, 12)
        g = torch.Generator().manual_seed(42)
        neg = sampler.sample(users, pos, 6, generator=g)
        draws.append((neg, sampler.propose(users, pos, 6, generator=g)))
    assert torch.equal(draws[0][0], draws[1][0])
    assert torch.equal(draws[0][1].candidates, draws[1][1].candidates)
    other = _ready(name, 12).sample(users, pos, 6, generator=torch.Generator().manual_seed(43))
    assert not torch.equal(draws[0][0], other)


def _train_a_little(sampler: BaseSampler, g: torch.Generator, steps: int = 3) -> None:
    users, pos = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3])
    for _ in range(steps):
        prop = sampler.propose(users, pos, 4, generator=g)
        reward = -prop.candidates.float() / 10  # a fixed "D": low indices are hard
        sampler.update(
            users, pos, prop.candidates, reward, chosen=prop.chosen, violating=reward > -0.3
        )


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    sampler = _ready(name, 10)
    _train_a_little(sampler, g)
    state = sampler.state_dict()
    for value in state.values():  # checkpointable: numbers only
        assert isinstance(value, np.ndarray) and value.dtype != object
    twin = make_sampler(name, 0)
    twin.grow(10, n_users=4)
    twin.load_state_dict({k: np.array(v) for k, v in state.items()})
    assert twin.n_items == 10
    for key, value in twin.state_dict().items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    # identical behaviour from here on, including further learning
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    _train_a_little(sampler, g1)
    _train_a_little(twin, g2)
    users, pos = torch.tensor([0, 3]), torch.tensor([4, 9])
    assert torch.equal(
        sampler.sample(users, pos, 7, generator=g1), twin.sample(users, pos, 7, generator=g2)
    )


@pytest.mark.parametrize("name", NAMES)
def test_diagnostics_report_violation_rate(name: str) -> None:
    sampler = _ready(name, 10)
    assert sampler.diagnostics() == {}
    users, pos = torch.tensor([0, 1]), torch.tensor([1, 2])
    cands = torch.tensor([[3, 4], [5, 6]])
    violating = torch.tensor([[True, False], [False, False]])
    chosen = torch.tensor([0, 0]) if name == "adversarial" else None
    sampler.update(users, pos, cands, -torch.ones(2, 2), chosen=chosen, violating=violating)
    diag = sampler.diagnostics()
    assert diag["steps"] == 1.0
    # on G's picks (columns 0: one of two violates) or over all candidates (one of four)
    assert diag["violation_rate"] == (0.5 if name == "adversarial" else 0.25)


@pytest.mark.parametrize("name", NAMES)
def test_too_few_items(name: str) -> None:
    with pytest.raises(SamplingError, match="at least 2"):
        _ready(name, 1).sample(torch.tensor([0]), torch.tensor([0]), 1, generator=torch.Generator())


def test_registry_errors_and_options() -> None:
    with pytest.raises(ConfigError, match="did you mean 'popularity'"):
        make_sampler("populariti")
    with pytest.raises(ConfigError, match="did you mean 'beta'"):
        make_sampler("popularity", 3, {"betta": 1.0})
    with pytest.raises(ConfigError, match="beta must be >= 0"):
        SamplerConfig(beta=-1.0)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        SamplerConfig(temperature=0.0)


# -- popularity ------------------------------------------------------------------------------------
def test_popularity_probabilities_known_answer_and_online_counts() -> None:
    s = PopularitySampler(4, SamplerConfig(beta=0.5))
    s.observe(torch.zeros(9, dtype=torch.long), torch.tensor([0] * 9))
    # counts (9, 0, 0, 0) floored at 1 -> sqrt weights 3 : 1 : 1 : 1
    np.testing.assert_allclose(s.probabilities().numpy(), [0.5, 1 / 6, 1 / 6, 1 / 6])
    s.observe(torch.zeros(4, dtype=torch.long), torch.tensor([3, 3, 3, 4]))  # item 4 is new
    assert s.n_items == 5
    np.testing.assert_allclose(s.counts.numpy(), [9, 0, 0, 3, 1])
    w = np.array([3, 1, 1, np.sqrt(3), 1])
    np.testing.assert_allclose(s.probabilities().numpy(), w / w.sum())


def test_popularity_frequencies_match_chi_square() -> None:
    s = PopularitySampler(5, SamplerConfig(beta=1.0))
    s.observe(torch.zeros(10, dtype=torch.long), torch.tensor([0, 1, 1, 2, 2, 2, 3, 3, 3, 3]))
    g = torch.Generator().manual_seed(0)
    rows = 4000
    neg = s.sample(torch.zeros(rows, dtype=torch.long), torch.full((rows,), 4), 5, generator=g)
    observed = np.bincount(neg.flatten().numpy(), minlength=5)
    assert observed[4] == 0
    expected = np.array([1, 2, 3, 4], dtype=float) / 10 * neg.numel()  # item 4 excluded
    assert stats.chisquare(observed[:4], expected).pvalue > 1e-3


def test_popularity_beta_zero_is_uniform() -> None:
    s = PopularitySampler(3, SamplerConfig(beta=0.0))
    s.observe(torch.zeros(5, dtype=torch.long), torch.tensor([0, 0, 0, 0, 1]))
    np.testing.assert_allclose(s.probabilities().numpy(), [1 / 3] * 3)
