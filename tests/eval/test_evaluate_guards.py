"""What `retailsim evaluate` refuses instead of reporting nonsense or leaving files behind: NaN/Inf weights, a
model whose scores are not finite (a NaN ranks first under every comparison and would score as a perfect model),
an --output that is a folder or lies inside the cache, an empty split."""
from __future__ import annotations

import pytest
import torch

from retailsim.cli import module_main
from retailsim.data.cache_reader import TensorCache
from retailsim.errors import RetailSimInputError
from retailsim.eval.evaluator import Evaluator
from retailsim.model import WorldModelConfig
from tests.eval.conftest import save_checkpoint


def _evaluate(checkpoint, cache, output, *extra):
    return module_main("retailsim.evaluate", [str(checkpoint), "--data", str(cache), "--split", "test",
                                              "--output", str(output), "--max-batches", "2", "--device", "cpu",
                                              "--quiet", *extra])


def _damaged_checkpoint(tiny_checkpoint, tmp_path, edit):
    state = torch.load(tiny_checkpoint, weights_only=True)
    weights = dict(state["model_state_dict"])
    edit(weights)
    path = tmp_path / "damaged.pt"
    save_checkpoint(path, WorldModelConfig.from_dict(state["config"]), weights)
    return path


def test_nan_weights_are_refused(eval_cache, tiny_checkpoint, tmp_path, capsys):
    def poison(weights):
        name = next(n for n, t in weights.items() if t.is_floating_point() and t.numel() > 1)
        weights[name] = weights[name].clone()
        weights[name].view(-1)[0] = float("nan")

    code = _evaluate(_damaged_checkpoint(tiny_checkpoint, tmp_path, poison), eval_cache, tmp_path / "r.json")
    err = capsys.readouterr().err
    assert code == 2 and "NaN or Inf weights" in err and err.count("\n") == 1, err
    assert not list(tmp_path.glob("r*"))


def test_finite_weights_with_non_finite_scores_are_refused(eval_cache, tiny_checkpoint, tmp_path, capsys):
    """Byte-flipped exponents: every weight finite, the scores overflow to inf and then NaN."""
    def blow_up(weights):
        for name, tensor in weights.items():
            if tensor.is_floating_point() and tensor.ndim == 2:
                weights[name] = tensor * 1e30

    code = _evaluate(_damaged_checkpoint(tiny_checkpoint, tmp_path, blow_up), eval_cache, tmp_path / "r.json")
    err = capsys.readouterr().err
    assert code == 2 and "scores hold NaN or Inf" in err, err
    assert not list(tmp_path.glob("r*"))


def test_an_output_that_is_a_folder_or_inside_the_cache_is_refused(eval_cache, tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    assert _evaluate(tiny_checkpoint, eval_cache, folder) == 2
    assert "is a folder" in capsys.readouterr().err
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["results"]
    assert _evaluate(tiny_checkpoint, eval_cache, eval_cache / "results.json") == 2
    assert "lies inside the input --data" in capsys.readouterr().err
    assert not (eval_cache / "results.json").exists()


def test_an_empty_split_is_one_sentence(eval_cache, monkeypatch):
    real = TensorCache.n_baskets
    monkeypatch.setattr(TensorCache, "n_baskets", lambda self, split: 0 if split == "test" else real(self, split))
    with pytest.raises(RetailSimInputError, match="the test split has no baskets"):
        Evaluator(eval_cache).evaluate(None, "test")


def test_a_pickle_weights_only_refuses_is_one_line(eval_cache, tmp_path, capsys):
    import argparse

    torch.save({"config": {}, "model_state_dict": {}, "payload": argparse.Namespace(run="code")}, tmp_path / "p.pt")
    code = _evaluate(tmp_path / "p.pt", eval_cache, tmp_path / "r.json")
    err = capsys.readouterr().err
    assert code == 2 and "not a readable RetailSim checkpoint" in err and err.count("\n") == 1, err


def test_an_output_over_the_training_log_or_the_ground_truth_is_refused(eval_cache, tiny_checkpoint, tmp_path,
                                                                        capsys):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"kind": "epoch", "epoch": 1, "global_step": 1, "train_loss": 5.0}\n')
    assert _evaluate(tiny_checkpoint, eval_cache, log, "--metrics-log", str(log)) == 2
    assert "is the input --metrics-log" in capsys.readouterr().err
    truth = tmp_path / "ground_truth.parquet"
    truth.write_bytes(b"PAR1")
    assert _evaluate(tiny_checkpoint, eval_cache, tmp_path / "ground_truth.parquet", "--ground-truth",
                     str(truth)) == 2
    assert "is the input --ground-truth" in capsys.readouterr().err
    assert log.read_text().startswith('{"kind": "epoch"') and truth.read_bytes() == b"PAR1"
