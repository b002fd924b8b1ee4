"""Baselines from training weeks only; the blend weights come from validation, never from the evaluated split."""
import json

import numpy as np
import pytest
import torch

from retailsim.data import schema
from retailsim.data.samples import write_samples
from retailsim.data.tensor_cache import write_tensor_cache
from retailsim.eval import baselines as bl
from retailsim.eval.evaluator import Evaluator
from tests.data.stage_fixtures import TableSource, lines


@pytest.fixture(scope="module")
def hand_cache(tmp_path_factory):
    """Weeks 1-6 train, 7 validation, 8-10 test (split 6,7). A in 3 training baskets, B in 2, C in 1 and in every
    test basket; Z only in test weeks."""
    rows, basket = [], 0

    def trip(week, customer, *products):
        nonlocal basket
        basket += 1
        rows.extend((week, 1, 10, f"b{basket}", customer, p, 1.0, 2.0, "s1") for p in products)

    trip(1, "c1", "A", "B"); trip(2, "c1", "A", "B"); trip(3, "c2", "A", "C"); trip(4, "c2", "D")
    trip(7, "c1", "A", "B")
    for week in (8, 9, 10):
        trip(week, "c1", "C", "Z"); trip(week, "c2", "C", "Z", "B")
    root = tmp_path_factory.mktemp("hand_cache")
    (root / "samples").mkdir(); (root / "cache").mkdir()
    write_samples(TableSource(lines(*rows), n_weeks=10), root / "samples", n_products=100, split_weeks=(6, 7),
                  show_progress=False)
    write_tensor_cache(root / "samples", root / "cache", show_progress=False)
    return root / "cache"


def test_popularity_counts_training_baskets_only(hand_cache):
    vocab = json.loads((hand_cache / "vocab.json").read_text())
    ids = {code: i + 1 for i, code in enumerate(vocab["products"])}
    stats = bl.BaselineStatistics.from_cache(hand_cache)
    assert "Z" not in ids  # seen only in test: not in the vocabulary, so UNK, which is never a candidate
    assert {code: int(stats.popularity_counts[i]) for code, i in ids.items()} == {"A": 3, "B": 2, "C": 1, "D": 1}
    unk = schema.unk_id(stats.n_products)
    assert stats.popularity_counts[unk] == 0 and stats.popularity[unk] == 0
    p = stats.popularity
    assert p[ids["A"]] > p[ids["B"]] > p[ids["C"]] == p[ids["D"]]  # C fills every test basket: not counted
    assert float(p.sum()) == pytest.approx(1.0)


def test_popularity_equals_distinct_training_basket_counts(eval_cache):
    stats = bl.BaselineStatistics.from_cache(eval_cache)
    offsets = np.load(eval_cache / "train" / "basket_item_offsets.npy")
    items = np.load(eval_cache / "train" / "item_ids.npy")
    basket = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    distinct = np.unique(basket.astype(np.int64) * 10**6 + items) % 10**6
    counts = np.bincount(distinct, minlength=stats.vocab_size)
    n = stats.n_products
    # Stage 2 truncates baskets at MAX_BASKET_ITEMS; Stage 1's counts see the whole basket, so >=, mostly equal
    assert (stats.popularity_counts[1:n + 1] >= counts[1:n + 1]).all()
    truncated = int((np.load(eval_cache / "train" / "n_items_total.npy") > schema.MAX_BASKET_ITEMS).sum())
    assert (stats.popularity_counts[1:n + 1] <= counts[1:n + 1] + truncated).all()


def test_personal_frequency_follows_the_history_window(eval_cache):
    stats = bl.BaselineStatistics.from_cache(eval_cache)
    history = torch.tensor([[3, 3, 3, 5, 0], [0, 0, 0, 0, 0]])
    probs = stats.personal_probs(history, history != 0)
    assert int(probs[0].argmax()) == 3 and probs[0, 3] > probs[0, 5] > probs[0, 7]
    assert torch.allclose(probs[1], stats.popularity)  # no history: popularity
    assert torch.allclose(probs.sum(1), torch.ones(2, dtype=torch.float64))
    top = int(torch.argmax(stats.popularity))
    others = [p for p in range(1, stats.n_products + 1) if p not in (3, 5)]
    assert int(others[int(probs[0, others].argmax())]) == top  # popularity breaks the ties among unseen items


def test_cooccurrence_scores_partners_of_the_visible_items(eval_cache):
    stats = bl.BaselineStatistics.from_cache(eval_cache)
    item = int(np.argmax(np.diff(stats.cooc_indptr)))  # a product with partners
    lo, hi = stats.cooc_indptr[item], stats.cooc_indptr[item + 1]
    probs = stats.cooccurrence_probs(torch.tensor([[item, 0]]))[0]
    partners, weight = stats.cooc_partners[lo:hi], stats.cooc_weight[lo:hi]
    assert int(probs.argmax()) == partners[np.argmax(weight)]
    share = (1 - bl.TIE_BREAK) * weight / weight.sum() + bl.TIE_BREAK * stats.popularity.numpy()[partners]
    assert np.allclose(probs.numpy()[partners], share)
    assert float(probs.sum()) == pytest.approx(1.0)


def test_blend_grid_is_the_simplex():
    grid = bl.blend_grid()
    assert len(grid) == 66 and all(abs(sum(w) - 1) < 1e-12 and min(w) >= 0 for w in grid)


def test_blend_weights_come_from_validation_not_the_evaluated_split(eval_cache, monkeypatch):
    evaluator = Evaluator(eval_cache, batch_size=64, max_batches=2)
    tuned_on = []
    original = Evaluator.batches

    def recording(self, split):
        tuned_on.append(split)
        return original(self, split)

    monkeypatch.setattr(Evaluator, "batches", recording)
    results = evaluator.evaluate(None, "test")
    # the blend's weights, then (the generated data has a promotion plan) the promotion lift, both on validation
    assert tuned_on == ["validation", "validation", "test"]
    weights, mrr = evaluator.tune_blend("validation")
    blend = results["baselines"]["blend"]
    assert tuple(blend["weights"].values()) == weights and blend["validation_mrr"] == pytest.approx(mrr)
    fixed = evaluator.evaluate(None, "test", blend_weights=(1.0, 0.0, 0.0))
    assert fixed["baselines"]["blend"]["mrr"] == pytest.approx(fixed["baselines"]["popularity"]["mrr"])
    assert results["baselines"]["blend"]["mrr"] >= fixed["baselines"]["popularity"]["mrr"]
