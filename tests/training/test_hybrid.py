"""NMRN-Hybrid: the evidence it sees, what it learns from, and that it learns."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nmrn.baselines.itemknn import ItemKNN
from nmrn.errors import ConfigError
from nmrn.training.hybrid import FEATURES, NMRNHybrid

SMALL_MEMORY = {"dim": 4, "memory_slots": 2, "epochs": 1, "batch_size": 32}


def _cycle_log(n_users: int = 12, n_items: int = 8, steps: int = 30) -> list[tuple[Any, ...]]:
    """Each user walks the items in a cycle from their own start; item 0 is also consumed by a
    crowd of one-off users, so it is by far the most popular and never what comes next."""
    log, t = [], 0
    for step in range(steps):
        for u in range(n_users):
            log.append((f"u{u}", (u + step) % n_items + 1, t))
            t += 1
        log.append((f"crowd{step}", 0, t))
        log.append((f"crowd{step}b", 0, t + 0.5))
        t += 1
    return log


def test_a_learned_gate_finds_the_informative_evidence() -> None:
    log = _cycle_log()
    rec = NMRNHybrid(features=["pop", "follows"], fit_chunk=50, fit_epochs=8, lr=0.05,
                     follow_history=1, seed=0).fit(log)
    hits = 0
    for u in range(12):
        last = [i for uu, i, _ in log if uu == f"u{u}"][-1]
        nxt = last % 8 + 1
        hits += rec.recommend(f"u{u}", k=1, exclude_seen=False).items.tolist() == [nxt]
    assert hits >= 11
    # popularity alone (a plain sum) recommends the crowd's item to everyone instead
    plain = NMRNHybrid(features=["pop"], gate="sum", fit_chunk=50).fit(log)
    assert plain.recommend("u0", k=1, exclude_seen=False).items.tolist() == [0]


def test_the_plain_sum_of_one_feature_is_that_feature_by_hand() -> None:
    log = [("a", "x", 0), ("b", "x", 1), ("c", "y", 2), ("a", "z", 3)]
    rec = NMRNHybrid(features=["pop"], gate="sum").fit(log)
    counts = {"x": 2, "y": 1, "z": 1}
    want = [math.log1p(counts[i]) / math.log1p(2) for i in ("x", "y", "z")]
    share = [counts[i] / 5 for i in ("x", "y", "z")]
    # the evidence is kept in float32
    np.testing.assert_allclose(rec.score(["b"], ["x", "y", "z"])[0],
                               np.array(want) + 1e-9 * np.array(share), rtol=1e-7)


def test_the_gate_trains_on_evidence_from_before_each_batch(monkeypatch: Any) -> None:
    # the rows of a batch are built before any component or count has seen it
    seen_counts: list[np.ndarray] = []
    original = NMRNHybrid._rows

    def spy(self: NMRNHybrid, users: Any, items: Any, history: Any, counts: Any,
            n_seen: int, reuse: Any = None) -> Any:
        seen_counts.append((counts.copy(), n_seen, len(history)))
        return original(self, users, items, history, counts, n_seen, reuse)

    monkeypatch.setattr(NMRNHybrid, "_rows", spy)
    log = _cycle_log(steps=6)
    rec = NMRNHybrid(features=["pop", "knn"], fit_chunk=20).fit(log[:60])
    for lo in range(0, 60, 20):  # during fit: the counts of the chunks before this one only
        counts, n_seen, n_history = seen_counts[lo // 20]
        assert n_seen == lo and n_history == lo and counts.sum() == lo
    rec.learn(log[60:70])
    counts, n_seen, n_history = seen_counts[-1]
    assert n_seen == 60 and n_history == 60 and counts.sum() == 60


def test_the_components_share_the_hybrids_ids_and_history(tmp_path: Any) -> None:
    rec = NMRNHybrid(memory=SMALL_MEMORY, fit_chunk=30).fit(_cycle_log(steps=5))
    for component in rec.components.values():
        assert component.users is rec.users and component.items is rec.items
    loaded = NMRNHybrid.load(rec.save(tmp_path / "h"))
    for component in loaded.components.values():
        assert component.users is loaded.users and component.history is loaded.history


@pytest.mark.parametrize(
    ("options", "message"),
    [({"features": []}, "non-empty list"), ({"features": ["pop", "pop"]}, "twice"),
     ({"features": ["recent-pop"]}, "did you mean 'recent_pop'"), ({"gate": "max"}, "gate"),
     ({"memory": {"dim": 0}}, "ModelConfig.dim must be >= 1")],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        NMRNHybrid(**options)


def test_every_feature_is_documented_and_buildable() -> None:
    from nmrn.training import hybrid

    for name in FEATURES:
        assert f"``{name}``" in (hybrid.__doc__ or "")
    assert NMRNHybrid(features=list(FEATURES)).config.features == FEATURES


def test_with_a_gate_fraction_the_components_fit_the_head_and_learn_the_tail() -> None:
    # known answer: the inner BPR is exactly a BPR fitted (its own epochs) on the events before
    # the replayed tail, then learned chunk by chunk over the tail
    from nmrn.baselines.bpr import BPR

    # every user and item appears in the head, so both models draw their initial rows alike
    log = [(f"u{u}", (u + step) % 8, 12 * step + u) for step in range(10) for u in range(12)]
    taste = {"dim": 4, "epochs": 3, "batch_size": 16}
    rec = NMRNHybrid(features=["taste", "pop"], taste=taste, gate_fraction=0.3, fit_chunk=20,
                     seed=5).fit(log)
    split = len(log) - math.ceil(0.3 * len(log))
    alone = BPR(**taste, seed=5).fit(log[:split])
    for lo in range(split, len(log), 20):
        alone.learn(log[lo : lo + 20])
    inner = rec.components["taste"]
    assert isinstance(inner, BPR)
    np.testing.assert_array_equal(inner.user_emb.numpy(), alone.user_emb.numpy())
    np.testing.assert_array_equal(inner.item_emb.numpy(), alone.item_emb.numpy())


def test_with_a_gate_fraction_the_gate_trains_on_the_tail_only(monkeypatch: Any) -> None:
    calls: list[int] = []
    original = NMRNHybrid._rows

    def spy(self: NMRNHybrid, users: Any, items: Any, history: Any, counts: Any,
            n_seen: int) -> Any:
        calls.append(n_seen)
        return original(self, users, items, history, counts, n_seen)

    monkeypatch.setattr(NMRNHybrid, "_rows", spy)
    NMRNHybrid(features=["pop", "knn"], gate_fraction=0.5, fit_chunk=20).fit(_cycle_log(steps=6))
    assert calls == [42, 62, 82]  # 84 events: the head (42) is fitted, the tail replayed by 20s


def test_the_rank_transform_by_hand() -> None:
    log = [("a", "x", 0), ("b", "x", 1), ("c", "x", 2), ("c", "y", 3), ("a", "z", 4),
           ("d", "w", 5)]
    rec = NMRNHybrid(features=["stage_pop"], gate="sum", transform="rank").fit(log[:5])
    rec.learn(log[5:])
    # stage of "b" (1 event): floor(log2(2)) = 1; the events made at stage 1 are the second
    # event of a user: c's y and a's z
    got = rec.score(["b"], ["x", "y", "z", "w"])[0]
    # y and z (one event each at stage 1) rank first, tied at rank 0.5; x and w (none) at 2.5
    want = -np.log1p(np.array([2.5, 0.5, 0.5, 2.5]))
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_a_linear_gate_is_the_weighted_sum_of_the_evidence() -> None:
    import torch

    log = _cycle_log(steps=4)
    rec = NMRNHybrid(features=["pop", "knn"], gate="linear", fit_epochs=0).fit(log)
    with torch.no_grad():
        rec.gate.linear.copy_(torch.tensor([2.0, -0.5]))
        rec.gate.w2.fill_(100.0)  # the hidden layer of "mlp" plays no part
    x, _ = rec._features(np.array([0, 1]), len(rec.items), rec.history, rec.item_counts,
                         rec.n_events)
    want = x.double().numpy() @ np.array([2.0, -0.5])
    got = rec._score_all(np.array([0, 1]))
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_learn_lr_sets_the_step_of_the_online_passes() -> None:
    log = _cycle_log(steps=8)

    def moved(learn_lr: float | None) -> float:
        rec = NMRNHybrid(features=["pop", "knn"], fit_chunk=40, learn_lr=learn_lr).fit(log[:80])
        before = [p.detach().clone() for p in rec.gate.parameters()]
        rec.learn(log[80:])
        return max(float((p.detach() - b).abs().max())
                   for p, b in zip(rec.gate.parameters(), before, strict=True))

    assert moved(1e-12) < 1e-9 < 1e-4 < moved(None)


def _growing_log(n_events: int = 900, seed: int = 0) -> list[tuple[Any, ...]]:
    """Users who come back and new items (one every ~15 events) until event 650, so that most
    batches learned before it bring an item nobody has seen and the ones after it none."""
    rng = np.random.default_rng(seed)
    log = []
    for t in range(n_events):
        n_items = 10 + min(t, 650) // 15
        item = int(min(rng.zipf(1.5) - 1, n_items - 1)) if rng.random() < 0.8 else n_items - 1
        log.append((f"u{int(rng.integers(0, 40 + t // 30))}", f"i{item}", float(t)))
    return log


@pytest.mark.parametrize("knn_dense_max", [None, 0, 40], ids=["dense", "sparse", "turns-sparse"])
def test_reads_before_a_learn_change_nothing_but_its_cost(knn_dense_max: int | None) -> None:
    # test-then-train: a read of a batch's users keeps their gate inputs and the learn that
    # follows reuses them. The end state must be bit for bit that of a model that was never
    # read (what a replay after a crash computes), with batches that bring new items, batches
    # learned without a read before them, item-kNN counts split into merged and pending ones
    # (sparse: growth only widens them, reuse stays on for batches that add items), and
    # (turns-sparse) a read batch whose new items switch the counts from dense to sparse
    # storage (the read's dense sums are not the sparse float32 products the learn would make)
    log = _growing_log()
    options = {"memory": SMALL_MEMORY, "fit_chunk": 60, "fit_epochs": 2, "hidden": 4,
               "seed": 5, "gate_fraction": 0.5}
    models = []
    for _ in range(2):
        rec = NMRNHybrid(**options)
        if knn_dense_max is not None:
            knn = ItemKNN(history_len=rec.config.knn_history, recency_decay=rec.config.knn_decay,
                          alpha=1.0, cooc_decay=rec.config.knn_cooc_decay,
                          dense_max_items=knn_dense_max)
            knn.users, knn.items = rec.users, rec.items
            rec.components["knn"] = knn
        models.append(rec.fit(log[:300]))
    read, never_read = models
    knn = read.components["knn"]
    assert isinstance(knn, ItemKNN)
    # the switch to sparse counts happens while streaming, not in fit
    assert knn.is_sparse == (knn_dense_max == 0)
    grew = read_without_growth = 0
    for k, lo in enumerate(range(300, len(log), 40)):
        chunk = log[lo : lo + 40]
        users = sorted({u for u, _, _ in chunk} & set(read.known_users.tolist()))
        grows = bool({i for _, i, _ in chunk} - set(read.known_items.tolist()))
        if k % 4 != 3 and users:  # every fourth batch is learned without a read
            read.score(users, read.known_items)
            read_without_growth += len(users) * (not grows)
        grew += grows
        read.learn(chunk)
        never_read.learn(chunk)
    assert grew >= 6
    assert read._evidence.hits > 50 and never_read._evidence.hits == 0
    assert read._evidence.hits > read_without_growth  # rows reused in batches that add items
    assert read._evidence.misses < read._evidence.hits  # misses: users new to a batch
    got, want = read._state()[0], never_read._state()[0]
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert knn.is_sparse == (knn_dense_max is not None)
    users = never_read.known_users
    np.testing.assert_array_equal(read.score(users, read.known_items),
                                  never_read.score(users, never_read.known_items))


def test_the_ease_evidence_is_a_standalone_ease_of_the_same_events_standardised() -> None:
    from nmrn.baselines import EASE

    log = [(f"u{u}", (u * 3 + step) % 9, 12 * step + u) for step in range(8) for u in range(12)]
    ease = {"l2": 2.0, "recency_decay": 0.8, "history_len": 5}
    rec = NMRNHybrid(features=["ease", "pop"], ease=ease, gate_fraction=0.4, fit_chunk=20,
                     seed=1).fit(log[:60])
    rec.learn(log[60:80]).learn(log[80:])
    alone = EASE(**ease).fit(log)
    inner = rec.components["ease"]
    np.testing.assert_array_equal(inner.item_weights(), alone.item_weights())
    users = np.arange(len(rec.users))
    x, _ = rec._features(users, len(rec.items), rec.history, rec.item_counts, rec.n_events)
    raw = alone.score(list(rec.users.ids), list(rec.items.ids))
    z = (raw - raw.mean(axis=1, keepdims=True)) / (raw.std(axis=1, keepdims=True) + 1e-9)
    np.testing.assert_allclose(x[:, :, 0].numpy(), z, rtol=1e-5, atol=1e-5)


def _autograd_loss(rec: NMRNHybrid, x: Any, c: Any, seen: Any, rows: np.ndarray,
                   items: np.ndarray) -> Any:
    """The gate's summed softmax loss as autograd sees it (the code before the closed form)."""
    import torch

    users, at = np.unique(rows, return_inverse=True)
    scores = rec.gate(x[users].float(), c[users])
    others = torch.logsumexp(scores.masked_fill(seen[users], -torch.inf), dim=1)
    pos = scores[torch.from_numpy(at), torch.from_numpy(items)]
    return (torch.logaddexp(others[torch.from_numpy(at)], pos) - pos).sum()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["mlp", "linear"]),
       n_users=st.integers(1, 5), n_items=st.integers(2, 40), n_events=st.integers(1, 70),
       scale=st.sampled_from([0.3, 3.0]), half=st.booleans(), seen_share=st.sampled_from(
           [0.0, 0.5, 1.0]))
def test_the_gates_closed_form_gradient_is_autograds(
        seed: int, kind: str, n_users: int, n_items: int, n_events: int, scale: float,
        half: bool, seen_share: float) -> None:
    # random gates, evidence (float16 as fit keeps it, or float32), consumed items (none,
    # half, all: a user with nothing unseen) and events, repeated positives included
    import torch

    rng = np.random.default_rng(seed)
    rec = NMRNHybrid(features=["pop", "knn", "follows"], gate=kind, hidden=5, seed=seed % 97)
    with torch.no_grad():
        for p in rec.gate.parameters():
            p.copy_(torch.from_numpy(rng.normal(0.0, scale, p.shape).astype(np.float32)))
    x = torch.from_numpy(rng.normal(0.0, 2.0, (n_users, n_items, 3)).astype(np.float32))
    if half:
        x = x.half()
    c = torch.from_numpy(rng.uniform(0.0, 1.0, (n_users, 1, 2)).astype(np.float32))
    seen = torch.from_numpy(rng.random((n_users, n_items)) < seen_share)
    rows = rng.integers(0, n_users, n_events)
    items = rng.integers(0, n_items, n_events)
    seen[rows[: n_events // 2], items[: n_events // 2]] = True  # positives consumed, mostly
    loss, grads = rec._loss_and_grads(x, c, seen, rows, items)
    want = _autograd_loss(rec, x, c, seen, rows, items)
    want.backward()
    assert loss == pytest.approx(float(want.detach()), rel=1e-5, abs=1e-5)
    params = dict(rec.gate.named_parameters())
    assert grads.keys() == {n for n, p in params.items() if p.grad is not None}
    for name, grad in grads.items():
        ref = params[name].grad.numpy()
        assert grad.dtype == np.float32 and grad.shape == ref.shape
        # both sum every event's float32 terms (|x| up to ~8): the rounding grows with the
        # events summed, so the absolute tolerance does too (57 events once gave 1.3e-5 on a
        # gradient of 0.006, the terms cancelling)
        atol = 1e-5 * (1.0 + np.abs(ref).max()) * max(1.0, n_events / 20)
        np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=atol, err_msg=name)


@pytest.mark.parametrize("options", [{"learn_passes": 0}, {"gate": "sum"}])
def test_without_a_gate_step_learn_computes_no_gate_rows(options: dict[str, Any],
                                                         monkeypatch: Any) -> None:
    # learn_passes 0, or a gate that does not learn: no step to take, so no rows are computed;
    # computing them changes no state (the model ends where one that computed them does)
    log = _cycle_log(steps=8)
    made = [NMRNHybrid(features=["pop", "knn", "memory"], memory=SMALL_MEMORY, fit_chunk=40,
                       seed=2, **options).fit(log[:80]) for _ in range(2)]
    rec, computed = made
    computed._rows(np.arange(5),
                   np.zeros(5, dtype=np.int64), computed.history, computed.item_counts,
                   computed.n_events)
    calls: list[int] = []
    original = NMRNHybrid._rows

    def counted(self: NMRNHybrid, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(NMRNHybrid, "_rows", counted)
    for model in made:
        model.learn(log[80:120])
    assert calls == []
    got, want = rec._state()[0], computed._state()[0]
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_the_age_evidence_is_the_events_since_each_items_first_event_by_hand() -> None:
    # known answer: items first appear at positions x 0, y 2, z 4, w 7 of the whole log; the
    # replay of fit (gate_fraction 0.5: a fitted head, a replayed tail) and the learn calls
    # keep one event count, so after 9 events the ages are 9 - first
    log = [("a", "x", 0), ("b", "x", 1), ("c", "y", 2), ("a", "y", 3), ("b", "z", 4),
           ("c", "x", 5), ("a", "z", 6), ("d", "w", 7), ("b", "w", 8)]
    rec = NMRNHybrid(features=["age"], gate="sum", gate_fraction=0.5, fit_chunk=2).fit(log[:5])
    rec.learn(log[5:7]).learn(log[7:])
    age = np.array([9 - 0, 9 - 2, 9 - 4, 9 - 7], dtype=np.float64)
    share = np.array([3, 2, 2, 2]) / 10
    np.testing.assert_allclose(rec.score(["a"], ["x", "y", "z", "w"])[0],
                               np.log1p(age) / np.log1p(age.max()) + 1e-9 * share, rtol=1e-6)
    # the same events in other calls give the same ages
    other = NMRNHybrid(features=["age"], gate="sum").fit(log[:2])
    for e in log[2:]:
        other.learn([e])
    np.testing.assert_array_equal(other._item_first, rec._item_first)


def test_the_gate_trains_on_the_age_the_replay_saw_not_the_final_one(monkeypatch: Any) -> None:
    # in fit's replay the age of an item is counted at the chunk being replayed (its own event
    # count), not at the end of the history
    seen: list[np.ndarray] = []
    original = NMRNHybrid._raw_evidence

    def spy(self: NMRNHybrid, name: str, *args: Any) -> np.ndarray:
        raw = original(self, name, *args)
        seen.append(raw.copy())
        return raw

    monkeypatch.setattr(NMRNHybrid, "_raw_evidence", spy)
    log = [("a", "x", 0), ("b", "y", 1), ("a", "y", 2), ("b", "x", 3), ("a", "z", 4),
           ("b", "x", 5)]
    NMRNHybrid(features=["age"], fit_chunk=2, fit_epochs=0).fit(log)
    # chunks start at events 2 and 4: x (first at 0) and y (first at 1) are 2/1, then 4/3
    # events old; z is not known before the last chunk (the first has no known user)
    assert [r.tolist() for r in seen] == [[[2.0, 1.0]], [[4.0, 3.0]]]


def test_a_checkpoint_without_item_ages_loads_only_where_no_age_is_read(tmp_path: Any) -> None:
    from nmrn.errors import CheckpointError
    from nmrn.io import read_checkpoint
    from nmrn.training.contract import Recommender

    log = _cycle_log(steps=3)
    for features, ok in ((["pop"], True), (["pop", "age"], False)):
        rec = NMRNHybrid(features=features, fit_epochs=0).fit(log)
        meta, arrays = read_checkpoint(rec.save(tmp_path / "-".join(features)))
        del arrays["model.item_first"]
        if ok:  # an older checkpoint: the ages start from the load, nothing else changes
            loaded = Recommender.from_state(meta, arrays, source="old")
            np.testing.assert_array_equal(loaded.score(["u1"], [1, 2, 3]),
                                          rec.score(["u1"], [1, 2, 3]))
        else:
            with pytest.raises(CheckpointError, match="item_first"):
                Recommender.from_state(meta, arrays, source="old")
