"""`retailsim demo` end to end at a tiny size: every stage runs through the CLI and the report lands."""
import json

import pytest
import torch

from retailsim.cli import main


@pytest.mark.parametrize("promotions", [False, True], ids=["default", "promotions"])
def test_demo_writes_the_report(tmp_path, capsys, promotions):
    out = tmp_path / "demo"
    status = main(["demo", "--out", str(out), "--customers", "120", "--weeks", "12", "--preset", "tiny",
                   "--batch-size", "32", "--eval-batches", "2"] + (["--promotions"] if promotions else []))
    assert status == 0
    results = json.loads((out / "test_results.json").read_text())
    assert results["split"] == "test" and results["n_tokens"] > 0
    # the generated data carries its promotion plan, so the promotion-aware blend is reported too
    assert set(results["baselines"]) == {"popularity", "personal", "cooccurrence", "blend", "promotion_blend"}
    assert {"promoted", "not_promoted"} <= set(results["buckets"])
    assert results["oracle"] is not None  # the generator's ground truth was found and joined
    checkpoint = torch.load(out / "checkpoints" / "best_model.pt", weights_only=True)
    assert checkpoint["config"]["promotions"] is promotions      # the model reads the plan with --promotions
    assert (out / "test_results.md").read_text().strip()
    assert "python -m retailsim.train --data" in capsys.readouterr().out  # each step shows its command
