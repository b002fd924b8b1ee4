"""Metrics on hand-made score matrices with known ranks (SPEC 5)."""
import json
import math

import pytest
import torch

from retailsim.data import schema
from retailsim.data.loader import make_loader
from retailsim.eval.evaluator import basket_chunks, masked_tokens
from retailsim.eval.metrics import allowed_candidates, score_tokens, summarize, target_ranks

N = 6  # products 1..6; UNK 7, MASK 8; V = 9


def test_special_ids_and_visible_items_are_never_candidates():
    allowed = allowed_candidates(N, torch.tensor([[2, 5, 0], [0, 0, 0]]))
    assert allowed.shape == (2, N + 3)
    assert allowed[0].tolist() == [False, True, False, True, True, False, True, False, False]
    assert allowed[1].tolist() == [False] + [True] * N + [False, False]


def test_ranks_skip_excluded_candidates_however_high_they_score():
    scores = torch.tensor([[50.0, 1.0, 9.0, 3.0, 2.0, 8.0, 0.5, 40.0, 30.0]])  # PAD, UNK, MASK score highest
    allowed = allowed_candidates(N, torch.tensor([[2]]))  # product 2 (9.0) is visible in the basket
    assert target_ranks(scores, allowed, torch.tensor([5])).item() == 1  # 8.0: only excluded ids beat it
    assert target_ranks(scores, allowed, torch.tensor([4])).item() == 3  # behind 5 (8.0) and 3 (3.0)
    assert target_ranks(scores, allowed, torch.tensor([6])).item() == 5


def test_ties_go_to_the_lower_product_id():
    scores = torch.zeros(3, N + 3)  # a constant scorer
    allowed = allowed_candidates(N, torch.zeros(3, 1, dtype=torch.long))
    assert target_ranks(scores, allowed, torch.tensor([1, 4, 6])).tolist() == [1, 4, 6]
    scores[:, [3, 5]] = 1.0  # 3 and 5 tie above the rest
    assert target_ranks(scores, allowed, torch.tensor([5, 3, 2])).tolist() == [2, 1, 4]  # 2: behind 3, 5 and 1


def test_loglik_is_the_log_softmax_over_allowed_candidates_only():
    scores = torch.tensor([[9.0, 1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 9.0, 9.0]], dtype=torch.float64)
    allowed = allowed_candidates(N, torch.tensor([[3]]))  # candidates 1, 2, 4, 5, 6
    out = score_tokens(scores, allowed, torch.tensor([2]), torch.tensor([0]))
    expected = 2.0 - math.log(math.exp(1) + math.exp(2) + 3 * math.exp(0))
    assert out["loglik"].item() == pytest.approx(expected, rel=1e-12)
    assert out["rank"].item() == 1


def test_joint_rank_scores_a_basket_by_the_mean_of_its_log_probability_rows():
    # one basket, two masked targets (1 and 2); row 0 loves 1, row 1 loves 3 and then 2
    scores = torch.tensor([[0, 5.0, 1.0, 0, 0, 0, 0, 0, 0],
                           [0, 0.0, 2.0, 4.0, 0, 0, 0, 0, 0]], dtype=torch.float64)
    allowed = allowed_candidates(N, torch.zeros(2, 1, dtype=torch.long))
    out = score_tokens(scores, allowed, torch.tensor([1, 2]), torch.tensor([7, 7]))
    assert out["rank"].tolist() == [1, 2]
    log_probs = torch.log_softmax(scores[:, 1:N + 1], dim=1).mean(0)  # joint score of products 1..6
    order = (torch.argsort(-log_probs, stable=True) + 1).tolist()
    assert out["joint_rank"].tolist() == [order.index(1) + 1, order.index(2) + 1]


def test_summary_values_by_hand():
    rank = torch.tensor([1, 3, 12])
    joint = torch.tensor([2, 3, 30])
    out = summarize(rank, joint, torch.tensor([-1.0, -2.0, -6.0]))
    assert out["accuracy"] == out["hr@1"] == pytest.approx(1 / 3)
    assert out["hr@5"] == out["hr@10"] == pytest.approx(2 / 3)
    assert out["hr@20"] == pytest.approx(1.0)
    assert out["recall@1"] == 0.0 and out["recall@10"] == pytest.approx(2 / 3)
    assert out["ndcg@10"] == pytest.approx((1.0 + 1.0 / math.log2(4)) / 3)
    assert out["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 12) / 3)
    assert out["loglik"] == pytest.approx(-3.0)
    assert all(v is None for v in summarize(*(torch.zeros(0),) * 3).values())


def test_unk_targets_are_left_out_and_counted(eval_cache):
    n_products = json.loads((eval_cache / "cache.json").read_text())["n_products"]
    batch = next(iter(make_loader(eval_cache, "test", batch_size=16, train=False, shuffle=False, bucket=False)))
    unk = schema.unk_id(n_products)
    total = int(batch.masked_positions.sum())
    before = int((batch.targets[batch.masked_positions] == unk).sum())
    rows, cols = batch.masked_positions.nonzero(as_tuple=True)
    changed = int((batch.targets[rows[:3], cols[:3]] != unk).sum())
    batch.targets[rows[:3], cols[:3]] = unk
    tokens, n_unk = masked_tokens(batch, n_products)
    assert n_unk == before + changed
    assert len(tokens["targets"]) + n_unk == total
    assert (tokens["targets"] != unk).all()


def test_basket_chunks_never_split_a_basket():
    rows = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    for max_rows in (1, 2, 3, 10):
        chunks = basket_chunks(rows, max_rows)
        assert sum(c.stop - c.start for c in chunks) == len(rows)
        for c in chunks:
            assert c.stop == len(rows) or rows[c.stop - 1] != rows[c.stop]
