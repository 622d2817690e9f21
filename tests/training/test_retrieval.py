"""ANN candidates + exact re-ranking behind ``recommend`` (NMRN and BPR, issue 13.1).

What must hold: the answer is the exact one whenever the candidates cover what the exact top-k
needs (all items, the delta set, new items, exclusions); recall on a seeded synthetic catalogue
with the defaults; the retrieval options travel with checkpoints while the index never does;
bad options and a missing faiss are refused with a clear message.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from nmrn.baselines.bpr import BPR
from nmrn.config import RetrievalConfig
from nmrn.errors import ConfigError
from nmrn.training import retrieval
from nmrn.training.nmrn import NMRN

faiss = pytest.importorskip("faiss")

SMALL = {"dim": 8, "memory_slots": 4, "batch_size": 32, "epochs": 1, "n_candidates": 5, "seed": 1}
EXACT_WHOLE = {"mode": "ann", "candidates": 100_000, "background": False}
NMRN_VARIANTS = {
    "faithful": {},
    "memory-context": {"per_user_memory": True, "context_len": 5, "addressing": "neg_dist"},
    "offset-squared": {"personal_offset": True, "squared_distance": True},
}


def _stream(n: int = 2000, n_users: int = 40, n_items: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"user": rng.integers(0, n_users, n), "item": rng.integers(0, n_items, n),
                         "timestamp": np.arange(n)})


def _exact(model, users, k=10, exclude_seen=True):
    """What scoring every item answers (the ANN hook switched off for one call)."""
    model._candidate_top_k = lambda *a: None
    try:
        return model.recommend(users, k=k, exclude_seen=exclude_seen)
    finally:
        del model._candidate_top_k


def _read(model: NMRN, user) -> np.ndarray:
    """NMRN's read ``s`` of an external user id, as recommend computes it now."""
    net = model.network
    u, values, context = model._read_inputs(int(model.users.encode([user])[0]))
    with torch.no_grad():
        q = net.query(u, context)
        return net.interest(q, net.address(q), values)[0].numpy()


# -- the ANN answer is the exact one where the candidates cover it ---------------------------------
@pytest.mark.parametrize("variant", list(NMRN_VARIANTS))
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_nmrn_ann_equals_exact_bit_for_bit_when_candidates_cover_the_catalogue(
    variant: str, exclude_seen: bool
) -> None:
    events = _stream()
    opts = {**SMALL, **NMRN_VARIANTS[variant]}
    exact = NMRN(**opts).fit(events)
    approx = NMRN(**opts, retrieval=EXACT_WHOLE).fit(events)
    users = list(range(40))
    a = exact.recommend(users, k=10, exclude_seen=exclude_seen)
    b = approx.recommend(users, k=10, exclude_seen=exclude_seen)
    assert approx.uses_ann() and approx.retrieval_index.builds == 1  # the index answered
    assert not exact.uses_ann()  # default "auto" below min_items: the exact path
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.scores, b.scores)  # the same score function, same bits


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_bpr_ann_equals_exact_when_candidates_cover_the_catalogue(exclude_seen: bool) -> None:
    events = _stream()
    exact = BPR(dim=8, epochs=2, seed=1).fit(events)
    approx = BPR(dim=8, epochs=2, seed=1, retrieval=EXACT_WHOLE).fit(events)
    a = exact.recommend(list(range(40)), k=10, exclude_seen=exclude_seen)
    b = approx.recommend(list(range(40)), k=10, exclude_seen=exclude_seen)
    assert approx.retrieval_index.builds == 1
    np.testing.assert_array_equal(a.items, b.items)
    # float64 products over a subset of the columns: the same up to the last bit
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-12)


def test_inner_product_transform_makes_l2_nearest_the_highest_scores() -> None:
    rng = np.random.default_rng(3)
    items = rng.normal(size=(500, 6))
    query = rng.normal(size=6)
    moved, phi = retrieval.l2_from_inner_product(items)
    assert phi == pytest.approx(np.linalg.norm(items, axis=1).max(), rel=1e-6)
    np.testing.assert_allclose(np.linalg.norm(moved, axis=1), phi, rtol=1e-5)  # on a sphere
    dist = ((moved - np.concatenate([query, [0.0]])) ** 2).sum(axis=1)
    assert np.argsort(dist)[:20].tolist() == np.argsort(-(items @ query))[:20].tolist()


# -- recall with the defaults on a seeded synthetic catalogue --------------------------------------
def _clustered(rng, n, d, centres):
    x = centres[rng.integers(0, len(centres), n)] + rng.normal(scale=0.05, size=(n, d))
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1.0)).astype(np.float32)


def _catalogue_model(n_items: int, d: int, n_users: int, seed: int = 0, **retrieval_opts):
    """NMRN with per-user memory over ``n_items`` clustered synthetic item vectors; each user's
    memory rows all equal one query drawn like the items, so the read ``s`` is that query."""
    rng = np.random.default_rng(seed)
    users = np.concatenate([np.full(n_items, -1), np.repeat(np.arange(n_users), 5)])
    items = np.concatenate([np.arange(n_items), rng.integers(0, n_items, 5 * n_users)])
    events = pd.DataFrame({"user": users, "item": items, "timestamp": np.arange(len(users))})
    model = NMRN(dim=d, memory_slots=4, epochs=0, per_user_memory=True, batch_size=4096,
                 retrieval={"mode": "ann", "background": False, **retrieval_opts}).fit(events)
    centres = rng.normal(size=(500, d))
    centres *= 0.8 / np.linalg.norm(centres, axis=1, keepdims=True)
    rows = torch.from_numpy(model.items.encode(np.arange(n_items)))
    urows = torch.from_numpy(model.users.encode(np.arange(n_users)))
    with torch.no_grad():
        model.network.item_emb.data[rows] = torch.from_numpy(_clustered(rng, n_items, d, centres))
        queries = torch.from_numpy(_clustered(rng, n_users, d, centres))
        model._memory[urows] = queries[:, None, :].expand(-1, 4, -1)
        model._has_memory[urows] = True
    model._items_changed(None)
    model.retrieval_index.invalidate()
    return model


def test_recall_at_10_with_the_defaults_on_20000_clustered_items() -> None:
    model = _catalogue_model(20_000, 16, 200)
    hits = []
    for user in range(200):
        approx = model.recommend(user, k=10)
        exact = _exact(model, user)
        hits.append(len(set(approx.items.tolist()) & set(exact.items.tolist())) / 10)
    assert model.retrieval_index.builds == 1
    assert np.mean(hits) >= 0.99, np.mean(hits)


# -- the delta set: changed and new items are scored exactly at once -------------------------------
def _far_then_learned(model: NMRN, item, user) -> None:
    """Put ``item`` opposite ``user``'s read (far from it) before the index is built."""
    row = int(model.items.encode([item])[0])
    s = _read(model, user)
    with torch.no_grad():
        model.network.item_emb.data[row] = torch.from_numpy(-s / np.linalg.norm(s))
    model._items_changed(None)


def test_an_item_moved_by_learn_is_found_at_its_new_place_at_once() -> None:
    model = _catalogue_model(5_000, 16, 20, candidates=10, rebuild_fraction=1.0)
    item, user = 123, 7
    _far_then_learned(model, item, user)
    first = model.recommend(user, k=10)  # builds the index with the item far away
    assert model.retrieval_index.builds == 1 and item not in first.items.tolist()
    model.learn(pd.DataFrame({"user": [3], "item": [item], "timestamp": [10**7]}))
    row = int(model.items.encode([item])[0])
    with torch.no_grad():  # the learned row, now put where the user reads
        model.network.item_emb.data[row] = torch.from_numpy(_read(model, user))
    model._items_changed(torch.tensor([row]))
    got = model.recommend(user, k=10)
    assert model.retrieval_index.builds == 1  # the same index: the delta found it
    assert got.items[0] == item
    np.testing.assert_array_equal(got.items, _exact(model, user).items)


def test_learn_marks_the_items_it_trains_as_changed() -> None:
    model = _catalogue_model(5_000, 16, 20, candidates=10, rebuild_fraction=1.0)
    model.recommend(0, k=10)
    assert model.retrieval_index.delta_size(len(model.items)) == 0
    model.learn(pd.DataFrame({"user": [3, 4], "item": [11, 12], "timestamp": [10**7, 10**7]}))
    delta = set(model.retrieval_index._delta.indices().tolist())
    assert {int(model.items.encode([i])[0]) for i in (11, 12)} <= delta


def test_a_new_item_is_recommendable_at_once() -> None:
    model = _catalogue_model(5_000, 16, 20, candidates=10, rebuild_fraction=1.0)
    user = 5
    model.recommend(user, k=10)
    model.learn(pd.DataFrame({"user": [2], "item": ["brand-new"], "timestamp": [10**7]}))
    row = int(model.items.encode(["brand-new"])[0])
    assert row == 5_000  # past the index's snapshot
    with torch.no_grad():
        model.network.item_emb.data[row] = torch.from_numpy(_read(model, user))
    model._items_changed(torch.tensor([row]))
    got = model.recommend(user, k=10)
    assert model.retrieval_index.builds == 1 and got.items[0] == "brand-new"


def test_the_index_is_rebuilt_once_the_delta_passes_its_threshold() -> None:
    model = _catalogue_model(2_000, 8, 10, index="hnsw", candidates=10, rebuild_fraction=0.01)
    model.recommend(0, k=10)
    model.retrieval_index.changed(np.arange(15))  # 0.75 % of the catalogue: kept as delta
    model.recommend(0, k=10)
    assert model.retrieval_index.builds == 1
    model.retrieval_index.changed(np.arange(15, 30))  # 1.5 %: rebuilt, delta empty again
    model.recommend(0, k=10)
    assert model.retrieval_index.builds == 2
    assert model.retrieval_index.delta_size(2_000) == 0


def test_background_build_answers_exactly_until_the_index_is_ready() -> None:
    model = _catalogue_model(3_000, 8, 10, candidates=10, background=True)
    first = model.recommend(1, k=10)  # starts the build; this read is exact
    model.retrieval_index.wait(timeout=60)
    assert model.retrieval_index.builds == 0  # swapped in by the next read, not by the thread
    second = model.recommend(1, k=10)
    assert model.retrieval_index.builds == 1
    np.testing.assert_array_equal(first.items, second.items)


@pytest.mark.parametrize(("kind", "cls"), [("hnsw", "IndexHNSWFlat"), ("ivf", "IndexIVFFlat")])
def test_a_failed_background_build_leaves_reads_exact(monkeypatch, caplog, kind, cls) -> None:
    model = _catalogue_model(3_000, 8, 10, index=kind, candidates=10, background=True)

    def broken(*args):
        raise RuntimeError("no memory for the graph")

    monkeypatch.setattr(faiss, cls, broken)
    model.recommend(1, k=10)
    model.retrieval_index.wait(timeout=60)
    with caplog.at_level(logging.ERROR, logger="nmrn.training.retrieval"):
        got = model.recommend(1, k=10)
    assert "no memory for the graph" in caplog.text and model.retrieval_index.broken
    np.testing.assert_array_equal(got.items, _exact(model, 1).items)
    model.recommend(1, k=10)  # no retry storm: nothing is started again
    assert model.retrieval_index._build is None


# -- exclusions stay exact -------------------------------------------------------------------------
def test_exclude_seen_stays_exact_when_the_nearest_items_are_seen() -> None:
    model = _catalogue_model(5_000, 16, 20, candidates=5, rebuild_fraction=1.0)
    user = 4
    s = _read(model, user)
    rng = np.random.default_rng(9)
    near = np.arange(100, 140)  # 40 items right at the user's read, 30 of them seen
    with torch.no_grad():
        model.network.item_emb.data[torch.from_numpy(model.items.encode(near))] = torch.from_numpy(
            (s + rng.normal(scale=1e-3, size=(40, 16))).astype(np.float32))
    model._items_changed(None)
    model.retrieval_index.invalidate()
    model.learn(pd.DataFrame({"user": [user] * 30, "item": near[:30],
                              "timestamp": np.arange(30) + 10**7}))
    got = model.recommend(user, k=10, exclude_seen=True)
    index = model.retrieval_index
    assert (index.answered, index.fell_back) == (1, 0)  # C + seen candidates: enough survived
    exact = _exact(model, user)
    np.testing.assert_array_equal(got.items, exact.items)
    assert not set(got.items.tolist()) & set(near[:30].tolist())


def test_too_few_items_left_after_exclusions_falls_back_to_the_padded_exact_answer() -> None:
    events = pd.DataFrame({"user": [0] * 8 + [1], "item": list(range(8)) + [8],
                           "timestamp": range(9)})
    model = NMRN(**SMALL, retrieval={"mode": "ann", "candidates": 2, "background": False})
    model.fit(events)
    got = model.recommend(0, k=5)  # 9 items, 8 seen: one left, then None padding
    assert model.retrieval_index.fell_back == 1
    exact = _exact(model, 0, k=5)
    assert got.items.tolist() == exact.items.tolist() == [8, None, None, None, None]


# -- configuration, checkpoints, missing faiss -----------------------------------------------------
def test_save_load_keeps_the_retrieval_options_and_rebuilds_the_index(tmp_path) -> None:
    model = _catalogue_model(3_000, 8, 10, candidates=7, ef_search=64)
    before = model.recommend(list(range(10)), k=10)
    path = model.save(tmp_path / "ckpt")
    loaded = NMRN.load(path)
    assert loaded.config.retrieval == model.config.retrieval
    assert loaded.config.retrieval.candidates == 7 and loaded.config.retrieval.ef_search == 64
    assert not loaded.retrieval_index.ready  # the index is never saved
    names = np.load(path / "arrays.npz").files
    assert not [n for n in names if "ann" in n or "hnsw" in n or "index" in n]
    after = loaded.recommend(list(range(10)), k=10)
    assert loaded.retrieval_index.builds == 1
    np.testing.assert_array_equal(before.items, after.items)
    np.testing.assert_array_equal(before.scores, after.scores)


def test_bpr_checkpoint_keeps_the_retrieval_options(tmp_path) -> None:
    model = BPR(dim=4, epochs=1, retrieval={"mode": "ann", "candidates": 3}).fit(_stream(300))
    loaded = BPR.load(model.save(tmp_path / "bpr"))
    assert loaded.config.retrieval == RetrievalConfig(mode="ann", candidates=3)
    assert not loaded.retrieval_index.ready


def test_default_params_record_no_retrieval_options() -> None:
    assert NMRN().get_params()["retrieval"] is None
    assert BPR().get_params()["retrieval"] is None
    assert NMRN(retrieval={"candidates": 50}).get_params()["retrieval"]["candidates"] == 50


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "approx"}, "RetrievalConfig.mode must be one of 'auto', 'exact', 'ann'"),
        ({"candidates": 0}, "RetrievalConfig.candidates must be >= 1, got 0"),
        ({"ef_search": True}, "RetrievalConfig.ef_search must be an int"),
        ({"rebuild_fraction": 0.0}, "RetrievalConfig.rebuild_fraction must be > 0.0"),
        ({"candidate": 5}, "unknown retrieval option 'candidate'; did you mean 'candidates'?"),
    ],
)
def test_bad_retrieval_options_are_refused_by_name(options, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("?", r"\?")):
        NMRN(retrieval=options)
    with pytest.raises(ConfigError):
        BPR(retrieval=options)


@pytest.mark.parametrize(("option", "why"), [({"item_bias": True}, "item_bias"),
                                            ({"item_memory_len": 3}, "item_memory_len")])
def test_ann_is_refused_where_the_score_is_not_a_distance_to_one_vector(option, why) -> None:
    with pytest.raises(ConfigError, match=f"retrieval mode 'ann' needs .*{why}"):
        NMRN(**option, retrieval={"mode": "ann"})
    model = NMRN(**option, retrieval={"mode": "auto", "min_items": 1})
    assert not model.uses_ann()  # auto: exact


def test_without_faiss_ann_is_refused_and_auto_stays_exact(monkeypatch) -> None:
    monkeypatch.setattr(retrieval, "_FAISS", [None])
    with pytest.raises(ConfigError, match=r"needs faiss, which is not installed: pip install "
                                          r"'nmrn\[ann\]'"):
        NMRN(retrieval={"mode": "ann"})
    with pytest.raises(ConfigError, match="needs faiss"):
        BPR(retrieval={"mode": "ann"})
    model = NMRN(**SMALL, retrieval={"mode": "auto", "min_items": 1}).fit(_stream(300))
    assert not model.uses_ann()
    got = model.recommend(3, k=5)
    np.testing.assert_array_equal(got.items, _exact(model, 3, k=5).items)


def test_auto_switches_at_min_items() -> None:
    events = _stream(300, n_items=50)
    assert not NMRN(**SMALL, retrieval={"min_items": 51}).fit(events).uses_ann()
    assert NMRN(**SMALL, retrieval={"min_items": 50}).fit(events).uses_ann()
    assert not NMRN(**SMALL, retrieval={"mode": "exact", "min_items": 1}).fit(events).uses_ann()


# -- IVF: cells searched, items moved in place -----------------------------------------------------
IVF = {"index": "ivf", "candidates": 10, "rebuild_fraction": 1.0}


def test_ivf_probing_every_cell_equals_exact() -> None:
    model = _catalogue_model(4_000, 16, 30, index="ivf", nlist=40, nprobe=40, candidates=10)
    for user in range(30):
        np.testing.assert_array_equal(model.recommend(user, k=10).items,
                                      _exact(model, user).items)
    index = model.retrieval_index
    assert isinstance(index._index, faiss.IndexIVFFlat) and index._index.nlist == 40
    assert index.answered == 30 and index.fell_back == 0


def test_ivf_moves_a_learned_item_in_place_and_empties_the_delta() -> None:
    model = _catalogue_model(5_000, 16, 20, **IVF)
    item, user = 123, 7
    _far_then_learned(model, item, user)
    assert item not in model.recommend(user, k=10).items.tolist()  # built with it far away
    index = model.retrieval_index
    row = int(model.items.encode([item])[0])
    target = _read(model, user)
    with torch.no_grad():
        model.network.item_emb.data[row] = torch.from_numpy(target)
    model._items_changed(torch.tensor([row]))
    assert index.delta_size(5_000) == 1
    got = model.recommend(user, k=10)
    assert index.builds == 1 and index.delta_size(5_000) == 0 and index.refreshed == 1
    np.testing.assert_array_equal(index._index.reconstruct(row), target)  # moved in the index
    assert got.items[0] == item
    # and it is found by the search itself now, not as a delta item
    assert row in index.candidates(target, 10, 5_000).tolist()


def test_ivf_adds_new_items_to_the_index() -> None:
    model = _catalogue_model(5_000, 16, 20, **IVF)
    user = 5
    model.recommend(user, k=10)
    model.learn(pd.DataFrame({"user": [2], "item": ["brand-new"], "timestamp": [10**7]}))
    row = int(model.items.encode(["brand-new"])[0])
    with torch.no_grad():
        model.network.item_emb.data[row] = torch.from_numpy(_read(model, user))
    model._items_changed(torch.tensor([row]))
    got = model.recommend(user, k=10)
    index = model.retrieval_index
    assert got.items[0] == "brand-new" and index.builds == 1
    assert index._index.ntotal == 5_001 and index.delta_size(5_001) == 0


def test_ivf_under_learn_keeps_the_delta_empty_and_recall() -> None:
    model = _catalogue_model(5_000, 16, 40, **{**IVF, "candidates": 100})
    model.recommend(0, k=10)
    rng = np.random.default_rng(2)
    for step in range(5):  # 500 learned events: hundreds of items moved
        model.learn(pd.DataFrame({"user": rng.integers(0, 40, 100),
                                  "item": rng.integers(0, 5_000, 100),
                                  "timestamp": 10**7 + step * 100 + np.arange(100)}))
        hits = [len(set(model.recommend(u, k=10).items.tolist())
                    & set(_exact(model, u).items.tolist())) / 10 for u in range(40)]
        assert model.retrieval_index.delta_size(5_000) == 0
        assert np.mean(hits) >= 0.99
    assert model.retrieval_index.refreshed > 100 and model.retrieval_index.builds == 1


def test_bpr_ivf_keeps_an_item_past_phi_in_the_delta() -> None:
    events = _stream()
    model = BPR(dim=8, epochs=2, seed=1, retrieval={**EXACT_WHOLE, **IVF, "nprobe": 1000,
                                                     "nlist": 4}).fit(events)
    model.recommend(0, k=10)
    index = model.retrieval_index
    phi = index._phi
    norms = np.sqrt((model.item_emb.numpy() ** 2).sum(1) + model.item_bias.numpy() ** 2)
    assert phi == pytest.approx(norms.max(), rel=1e-5)
    small, big = 3, 4
    model.item_emb[big] *= 2 * phi / float(norms[big])  # past phi: not placeable
    model.item_emb[small] *= 0.5
    index.changed(np.array([small, big]))
    for user in range(40):
        np.testing.assert_array_equal(model.recommend(user, k=10).items,
                                      _exact(model, user).items)
    assert index._delta.indices().tolist() == [big] and index.refreshed == 1


# -- a reader's next snapshot keeps the index ----------------------------------------------------
@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_handover_keeps_the_index_and_puts_the_changed_items_in_its_delta(tmp_path, kind) -> None:
    model = _catalogue_model(4_000, 16, 20, index=kind, candidates=50, rebuild_fraction=1.0)
    model.recommend(0, k=10)
    model.save(tmp_path / "a.ckpt")
    old = NMRN.load(tmp_path / "a.ckpt")
    old.recommend(0, k=10)
    assert old.retrieval_index.builds == 1
    model.learn(pd.DataFrame({"user": [1, 2], "item": [10, 20], "timestamp": [10**7] * 2}))
    model.save(tmp_path / "b.ckpt")
    new = NMRN.load(tmp_path / "b.ckpt")
    moved = np.flatnonzero((old.network.item_emb != new.network.item_emb).any(dim=1).numpy())
    assert len(moved) >= 2
    handover = new._retrieval_handover(old)
    assert handover is not None
    built = old.retrieval_index._index
    handover()
    index = new.retrieval_index
    assert index._index is built and index.builds == 1
    assert set(index._delta.indices().tolist()) == set(moved.tolist())
    answered = index.answered
    for user in range(20):
        np.testing.assert_array_equal(new.recommend(user, k=10).items, _exact(new, user).items)
    assert index.builds == 1 and index.answered == answered + 20


def test_no_handover_between_different_retrieval_options(tmp_path) -> None:
    model = _catalogue_model(2_000, 8, 10, candidates=10)
    model.recommend(0, k=10)
    other = _catalogue_model(2_000, 8, 10, candidates=20)
    assert other._retrieval_handover(model) is None
    fresh = _catalogue_model(2_000, 8, 10, candidates=10)
    assert model._retrieval_handover(fresh) is None  # fresh has no index to give
