"""NMRNNetwork: distances, growth, variants, and agreement of the batch and all-items paths."""

from __future__ import annotations

import pytest
import torch

from nmrn.model.memory import address, evolve_sequential
from nmrn.model.network import NMRNNetwork


def _net(**kw) -> NMRNNetwork:
    g = torch.Generator().manual_seed(0)
    return NMRNNetwork(4, 6, dim=3, memory_slots=2, generator=g, **kw).double()


def test_distance_is_euclidean_with_finite_gradient_at_zero() -> None:
    net = _net()
    s = torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    v = torch.tensor([[3.0, 4.0, 0.0]], dtype=torch.float64)
    assert net.distance(s, v).item() == pytest.approx(5.0)
    net.distance(s, s.detach().clone()).sum().backward()
    assert torch.isfinite(s.grad).all()
    sq = _net(squared_distance=True)
    assert sq.distance(s.detach(), v).item() == pytest.approx(25.0)


def test_forward_matches_a_per_event_oracle() -> None:
    net = _net(personal_offset=True, item_bias=True)
    with torch.no_grad():
        net.bias.copy_(torch.arange(6, dtype=torch.float64) / 10)
    users, pos = torch.tensor([0, 2, 0]), torch.tensor([1, 5, 3])
    neg = torch.tensor([[2, 3], [0, 4], [5, 1]])
    u, v, vn = net.user_emb[users], net.item_emb[pos], net.item_emb[neg]
    d_pos, d_neg, final = net(u, v, vn, net.init_values, None, net.bias[pos], net.bias[neg])
    w = address(u, net.keys)
    erase, add = net.gates(v)
    reads, final_ref = evolve_sequential(net.init_values, w, erase, add)
    for t in range(3):  # row t against a direct computation for event t (no reshape mix-up)
        s = reads[t] + u[t]
        assert d_pos[t].item() == pytest.approx((s - v[t]).norm().item() + net.bias[pos[t]].item())
        for j in range(2):
            want = (s - net.item_emb[neg[t, j]]).norm() + net.bias[neg[t, j]]
            assert d_neg[t, j].item() == pytest.approx(want.item())
    torch.testing.assert_close(final, final_ref)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"squared_distance": True, "item_bias": True},
        {"addressing": "neg_dist", "personal_offset": True},
    ],
)
def test_score_all_agrees_with_distance(kw: dict) -> None:
    net = _net(**kw)
    users = torch.tensor([1, 3])
    u = net.user_emb[users]
    values = torch.randn(2, 3, dtype=torch.float64)
    all_d = net.score_all(u, values)
    s = net.interest(u, net.address(u), values)
    for j in range(6):
        v = net.item_emb[j].expand(2, 3)
        bias = None if net.bias is None else net.bias[j].expand(2)
        torch.testing.assert_close(all_d[:, j], net.distance(s, v, bias).detach().double())


def test_learned_temperature_is_a_parameter() -> None:
    net = _net(learn_temperature=True, temperature=0.5)
    assert "log_temperature" in dict(net.named_parameters())
    assert net.temperature().item() == pytest.approx(0.5)
    assert "log_temperature" not in dict(_net().named_parameters())


def test_growth_keeps_old_rows_exactly() -> None:
    net = _net(item_bias=True)
    users, items, bias = net.user_emb.detach().clone(), net.item_emb.detach().clone(), None
    bias = net.bias.detach().clone()
    param = net.user_emb
    net.grow(7, 9, torch.Generator().manual_seed(1))
    assert net.user_emb is param  # same Parameter object
    assert net.n_users == 7 and net.n_items == 9 and net.bias.shape == (9,)
    assert torch.equal(net.user_emb[:4], users)
    assert torch.equal(net.item_emb[:6], items)
    assert torch.equal(net.bias[:6], bias) and (net.bias[6:] == 0).all()
    net.grow(2, 2)  # never shrinks
    assert net.n_users == 7


def test_bad_addressing_rejected() -> None:
    with pytest.raises(ValueError, match="addressing"):
        NMRNNetwork(1, 1, dim=2, memory_slots=1, addressing="cos")


def test_context_query_by_hand_and_against_a_per_event_oracle() -> None:
    # q = u + sum_j gamma^j c_j addresses the read and the write, and is the personal offset
    net = _net(context_len=2, context_decay=0.5, personal_offset=True)
    users, pos = torch.tensor([0, 2, 0]), torch.tensor([1, 5, 3])
    u, v = net.user_emb[users], net.item_emb[pos]
    ctx_items = torch.tensor([[4, -1], [0, 2], [1, 4]])  # -1: the user has no second item
    present = (ctx_items >= 0)[..., None]  # [3, 2, 1]
    context = net.item_emb[ctx_items.clamp_min(0)] * present  # zero vectors where absent
    q = net.query(u, context)
    e = net.item_emb
    by_hand = torch.stack([u[0] + e[4], u[1] + e[0] + 0.5 * e[2], u[2] + e[1] + 0.5 * e[4]])
    torch.testing.assert_close(q, by_hand)
    s, final = net.read_batch(u, v, net.init_values, None, context)
    reads, final_ref = evolve_sequential(net.init_values, address(by_hand, net.keys), *net.gates(v))
    torch.testing.assert_close(s, reads + by_hand)
    torch.testing.assert_close(final, final_ref)
    # scoring every item uses the same query
    all_d = net.score_all(u, net.init_values, context=context)
    s_now = net.interest(q, net.address(q), net.init_values)
    torch.testing.assert_close(all_d[:, 3], net.distance(s_now, net.item_emb[3].expand(3, 3)))


def test_gradcheck_through_the_context_query() -> None:
    net = _net(context_len=3, context_decay=0.7, addressing="neg_dist")
    g = torch.Generator().manual_seed(3)
    u = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    context = torch.randn(4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)

    def interests(u: torch.Tensor, v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s, final = net.read_batch(u, v, net.init_values, None, c)
        return torch.cat([s.reshape(-1), final.reshape(-1)])

    assert torch.autograd.gradcheck(interests, (u, v, context))


def test_item_memory_read_by_hand() -> None:
    net = _net(item_memory_len=2)
    with torch.no_grad():
        net.item_log_scale.fill_(0.0)  # scale a = 1
        net.item_weight.fill_(0.5)  # b = 0.5
    m = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]],
                      [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)  # row 2: empty
    v = torch.tensor([[1.0, 1.0, 0.0], [3.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    r = net.item_read(v, m)
    att = torch.softmax(torch.tensor([1.0, 2.0], dtype=torch.float64), 0)  # v0 . m0_j
    torch.testing.assert_close(r[0], 0.5 * (att[0] * m[0, 0] + att[1] * m[0, 1]))
    torch.testing.assert_close(r[1], 0.5 * m[1, 0])  # the absent second item gets no weight
    torch.testing.assert_close(r[2], torch.zeros(3, dtype=torch.float64))  # no items: reads 0
    # a candidate's distance uses its own read; scoring every item agrees with it
    all_d = net.score_all(net.user_emb[:3], net.init_values, context=m)
    q = net.user_emb[:3]
    s = net.interest(q, net.address(q), net.init_values)
    for j in range(6):
        v_j = net.item_emb[j].expand(3, 3)
        want = net.distance(net.candidate_interest(s, v_j, m), v_j)
        torch.testing.assert_close(all_d[:, j], want.detach())


def test_gradcheck_through_the_item_memory() -> None:
    net = _net(item_memory_len=3, context_len=2)
    g = torch.Generator().manual_seed(4)
    s = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(4, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    context = torch.randn(4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)

    def distances(s: torch.Tensor, v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return net.distance(net.candidate_interest(s, v, c), v)

    assert torch.autograd.gradcheck(distances, (s, v, context))
    # and through the learned scale and weight of the read: swap them for plain tensors
    scale0, weight0 = net.item_log_scale, net.item_weight
    del net._parameters["item_log_scale"], net._parameters["item_weight"]

    def by_params(scale: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        net.item_log_scale, net.item_weight = scale, weight
        return net.item_read(v.detach(), context.detach())

    try:
        inputs = tuple(t.detach().clone().requires_grad_() for t in (scale0, weight0))
        assert torch.autograd.gradcheck(by_params, inputs)
    finally:
        del net.item_log_scale, net.item_weight
        net.item_log_scale, net.item_weight = scale0, weight0
