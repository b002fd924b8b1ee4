"""The Evaluator end to end: SPEC 5 JSON, report files, the oracle join, and checkpoints that do not fit."""
import json

import pytest
import torch

from retailsim.cli import module_main
from retailsim.eval.evaluator import BUCKETS, PLAN_BUCKETS, Evaluator
from retailsim.eval.oracle import Oracle, default_ground_truth, oracle_metrics
from retailsim.model import WorldModel, WorldModelConfig, data_sizes_from_cache
from tests.eval.conftest import save_checkpoint

METRICS = ("accuracy", "hr@1", "hr@5", "hr@10", "hr@20", "recall@10", "ndcg@10", "mrr", "loglik")
AUX = ("acc_basket_size", "acc_price_band", "acc_basket_type", "acc_mission")


@pytest.fixture(scope="module")
def cli_run(eval_cache, tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_out") / "test_results.json"
    log = out.with_name("metrics.jsonl")
    log.write_text("".join(json.dumps({"global_step": s, "epoch": 1, "loss": 5.0 - s / 10, "lr": 1e-4}) + "\n"
                           for s in range(1, 11)))
    code = module_main("retailsim.evaluate", [str(tiny_checkpoint), "--data", str(eval_cache), "--split", "test",
                                              "--output", str(out), "--max-batches", "3", "--batch-size", "64",
                                              "--device", "cpu", "--metrics-log", str(log), "--quiet"])
    return code, out


def test_json_follows_spec_5(cli_run, tiny_checkpoint):
    code, out = cli_run
    assert code == 0
    results = json.loads(out.read_text())
    assert set(results) == {"checkpoint", "split", "n_tokens", "n_unk_targets", "metrics", "baselines", "oracle",
                            "buckets"}
    assert results["checkpoint"] == str(tiny_checkpoint) and results["split"] == "test"
    assert results["n_tokens"] > 0 and results["n_unk_targets"] >= 0
    assert set(METRICS + AUX) <= set(results["metrics"])
    assert set(results["baselines"]) == {"popularity", "personal", "cooccurrence", "blend", "promotion_blend"}
    for values in results["baselines"].values():
        assert set(METRICS) <= set(values)
    assert set(BUCKETS) == {"prior_0", "prior_1_4", "prior_5_19", "prior_20_plus", "repeat", "explore"}
    # the generated data carries its promotion plan, so the plan's two buckets come too
    assert set(results["buckets"]) == set(BUCKETS) | set(PLAN_BUCKETS)
    for bucket in results["buckets"].values():
        assert set(bucket) == {"n_tokens", "model", "blend", "promotion_blend"}
    prior = sum(results["buckets"][b]["n_tokens"] for b in BUCKETS[:4])
    assert prior == results["n_tokens"] == results["buckets"]["repeat"]["n_tokens"] + results["buckets"]["explore"]["n_tokens"]
    m = results["metrics"]
    assert 0 <= m["hr@1"] <= m["hr@5"] <= m["hr@10"] <= m["hr@20"] <= 1 and m["accuracy"] == m["hr@1"]
    assert m["loglik"] < 0 and 0 < m["mrr"] <= 1


def test_report_files_are_written(cli_run):
    _, out = cli_run
    for name in ("test_results.md", "test_results_metrics.png", "test_results_buckets.png",
                 "test_results_training.png"):
        path = out.with_name(name)
        assert path.is_file() and path.stat().st_size > 1000, name
    assert out.with_name("test_results_metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = out.with_suffix(".md").read_text()
    assert "| metric | model | popularity | personal | cooccurrence | blend | promotion_blend | oracle |" in table
    assert not list(out.parent.glob(".*tmp*"))


def test_oracle_join_covers_the_masked_tokens_and_beats_popularity(cli_run, eval_cache):
    _, out = cli_run
    results = json.loads(out.read_text())
    oracle = results["oracle"]
    assert oracle is not None and oracle["coverage"] > 0.95
    assert oracle["hr@10"] > results["baselines"]["popularity"]["hr@10"]
    assert oracle["hr@1"] <= oracle["hr@10"] <= 1 and oracle["loglik"] < 0
    # ranks >= 1 on every joined token, straight from the join
    evaluator = Evaluator(eval_cache, batch_size=64, max_batches=1)
    batch = next(iter(evaluator.batches("test")))
    rows, cols = batch.masked_positions.nonzero(as_tuple=True)
    found, rank, prob = Oracle(default_ground_truth(eval_cache), eval_cache, "test").lookup(
        batch.sample_index[rows].numpy(), batch.targets[rows, cols].numpy())
    assert found.mean() > 0.95 and (rank[found] >= 1).all() and ((prob[found] > 0) & (prob[found] <= 1)).all()
    assert oracle_metrics(found, rank, prob)["n_tokens"] == int(found.sum())


def test_validation_has_no_oracle(eval_cache):
    evaluator = Evaluator(eval_cache, batch_size=64, max_batches=1, ground_truth=default_ground_truth(eval_cache))
    assert evaluator.evaluate(None, "validation", blend_weights=(0.2, 0.5, 0.3))["oracle"] is None


def test_results_do_not_depend_on_chunking_and_repeat(eval_cache):
    kwargs = dict(batch_size=64, max_batches=2)
    small = Evaluator(eval_cache, chunk_rows=1, **kwargs).evaluate(None, "test", blend_weights=(0.1, 0.6, 0.3))
    large = Evaluator(eval_cache, chunk_rows=4096, **kwargs).evaluate(None, "test", blend_weights=(0.1, 0.6, 0.3))
    assert small == large


def test_the_default_chunk_keeps_a_score_tile_near_4_mib(eval_cache):
    from retailsim.eval.evaluator import default_chunk_rows

    assert [default_chunk_rows(v) for v in (10, 5003, 56785, 10**7)] == [1024, 209, 18, 1]
    evaluator = Evaluator(eval_cache)
    assert evaluator.chunk_rows == default_chunk_rows(evaluator.n_products)


def test_model_scores_match_unchunked_scores(eval_cache, tiny_checkpoint):
    from retailsim.eval.checkpoint import load_model
    from retailsim.eval.metrics import allowed_candidates, summarize, target_ranks

    model = load_model(tiny_checkpoint, eval_cache)
    evaluator = Evaluator(eval_cache, batch_size=32, max_batches=1, chunk_rows=7)
    results = evaluator.evaluate(model, "test", blend_weights=(0.0, 1.0, 0.0))
    batch = next(iter(evaluator.batches("test")))
    with torch.no_grad():
        output = model(batch)
        rows, cols = batch.masked_positions.nonzero(as_tuple=True)
        logits = model.slot_scores(output, batch, rows, cols)  # all rows at once
    visible = torch.where(batch.basket_valid & ~batch.masked_positions, batch.basket_items, 0)
    allowed = allowed_candidates(evaluator.n_products, visible[rows])
    rank = target_ranks(logits, allowed, batch.targets[rows, cols])
    assert results["metrics"]["mrr"] == pytest.approx(float((1.0 / rank.double()).mean()), rel=1e-9)
    assert results["metrics"]["hr@10"] == pytest.approx(summarize(rank, rank, torch.zeros(len(rank)))["hr@10"])


def test_checkpoint_from_another_config_fails_with_one_line(eval_cache, tmp_path, capsys):
    sizes = data_sizes_from_cache(eval_cache)
    other = WorldModelConfig.from_name("tiny", **{**sizes, "vocab_size": sizes["vocab_size"] + 10})
    path = tmp_path / "other.pt"
    save_checkpoint(path, other, WorldModel(other).state_dict())
    code = module_main("retailsim.evaluate", [str(path), "--data", str(eval_cache), "--output",
                                              str(tmp_path / "r.json"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "vocab_size" in err and str(path) in err and "Traceback" not in err
    assert not (tmp_path / "r.json").exists()


def test_weights_that_do_not_fit_their_config_fail_with_one_line(eval_cache, tmp_path, capsys):
    sizes = data_sizes_from_cache(eval_cache)
    tiny = WorldModelConfig.from_name("tiny", **sizes)
    small = WorldModelConfig.from_name("small", **sizes)
    path = tmp_path / "mixed.pt"
    save_checkpoint(path, tiny, WorldModel(small).state_dict())
    code = module_main("retailsim.evaluate", [str(path), "--data", str(eval_cache), "--output",
                                              str(tmp_path / "r.json"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "do not match its config" in err


@pytest.mark.parametrize("argv, needle", [(["--max-batches", "0"], "--max-batches"),
                                          (["--data", "/nonexistent"], "--data")])
def test_bad_arguments_fail_with_one_line(tiny_checkpoint, eval_cache, tmp_path, capsys, argv, needle):
    base = [str(tiny_checkpoint), "--data", str(eval_cache), "--output", str(tmp_path / "r.json"), "--quiet"]
    assert module_main("retailsim.evaluate", base + argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


@pytest.mark.cuda
def test_cuda_evaluation_matches_cpu(eval_cache, tiny_checkpoint):
    from retailsim.eval.checkpoint import load_model

    kwargs = dict(batch_size=32, max_batches=2)
    cpu = Evaluator(eval_cache, device="cpu", **kwargs).evaluate(load_model(tiny_checkpoint, eval_cache, "cpu"),
                                                                  "test", blend_weights=(0.0, 1.0, 0.0))
    cuda = Evaluator(eval_cache, device="cuda", **kwargs).evaluate(load_model(tiny_checkpoint, eval_cache, "cuda"),
                                                                    "test", blend_weights=(0.0, 1.0, 0.0))
    assert cuda["baselines"] == cpu["baselines"] and cuda["n_tokens"] == cpu["n_tokens"]
    for name in ("hr@10", "mrr", "loglik"):
        assert cuda["metrics"][name] == pytest.approx(cpu["metrics"][name], rel=1e-3, abs=1e-3)


def test_training_curves_from_the_trainers_log(tmp_path):
    from retailsim.eval.report import plot_training

    log = tmp_path / "metrics.jsonl"
    log.write_text(json.dumps({"kind": "step", "epoch": 1, "global_step": 5, "loss": 6.0, "focal": 5.5, "lr": 1e-4,
                               "grad_norm": 2.0}) + "\n" + json.dumps({"kind": "epoch", "epoch": 1, "global_step": 10,
                               "train_loss": 5.0, "val_loss": float("nan"), "samples_per_s": 90.0}) + "\n")
    assert plot_training(log, tmp_path / "curves.png") and (tmp_path / "curves.png").stat().st_size > 1000
    (tmp_path / "empty.jsonl").write_text(json.dumps({"kind": "epoch", "phase": "main"}) + "\n")
    assert not plot_training(tmp_path / "empty.jsonl", tmp_path / "none.png")
