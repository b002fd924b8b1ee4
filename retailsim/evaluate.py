"""Evaluate a checkpoint against the baselines (and the oracle on synthetic data): JSON, Markdown table, PNG plots.

Metrics over the masked tokens of the split's evaluation masks (SPEC 5): accuracy, HR@1/5/10/20, recall@K,
NDCG@10, MRR, log-likelihood, auxiliary label accuracies; the same for the popularity, personal, co-occurrence and
blend baselines (blend weights tuned on the validation split); buckets by prior baskets and repeat/explore.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retailsim.cli import module_main

DESCRIPTION = __doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="checkpoint written by retailsim train (e.g. checkpoints/best_model.pt)")
    parser.add_argument("--data", type=Path, default=Path("data/cache"), help="tensor cache folder (prepare-tensor-cache)")
    parser.add_argument("--split", choices=("validation", "test"), default="test", help="split to evaluate")
    parser.add_argument("--output", type=Path, default=Path("results/test_results.json"),
                        help="JSON result file; the Markdown table (.md) and PNG plots are written next to it")
    parser.add_argument("--max-batches", type=int, default=None,
                        help="evaluate only the first N batches of the split (and of validation for the blend); all by default")
    parser.add_argument("--batch-size", type=int, default=256, help="samples per batch")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                        help="auto: CUDA if available, else MPS, else CPU")
    parser.add_argument("--ground-truth", type=Path, default=None,
                        help="the generator's ground_truth.parquet for the oracle; default: found next to the raw data "
                             "the cache was prepared from (synthetic data only)")
    parser.add_argument("--metrics-log", type=Path, default=None,
                        help="the trainer's metrics.jsonl, for the training-curve plot")
    parser.add_argument("--seed", type=int, default=0, help="seed of the evaluation masks")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _check_positive(name: str, value: int | None) -> None:
    from retailsim.errors import RetailSimInputError

    if value is not None and value < 1:
        raise RetailSimInputError(f"{name} must be at least 1, got {value}.")


def run(args: argparse.Namespace) -> int:
    from retailsim.data.atomic_output import check_creatable, check_not_overlapping, output_lock
    from retailsim.data.cache_reader import TensorCache
    from retailsim.errors import RetailSimInputError
    from retailsim.eval.checkpoint import load_model, resolve_device
    from retailsim.eval.evaluator import Evaluator
    from retailsim.eval.oracle import default_ground_truth
    from retailsim.eval.report import markdown_table, report_paths, write_report

    _check_positive("--max-batches", args.max_batches)
    _check_positive("--batch-size", args.batch_size)
    TensorCache.open(args.data, "--data")  # a missing or damaged cache is one sentence, before any work
    if args.output.is_dir():
        raise RetailSimInputError(f"--output {args.output} is a folder; expected the JSON file to write, e.g. "
                                  f"{args.output / 'test_results.json'}.")
    if args.metrics_log is not None and not args.metrics_log.is_file():
        raise RetailSimInputError(f"--metrics-log {args.metrics_log} does not exist.")
    ground_truth = args.ground_truth if args.ground_truth is not None else default_ground_truth(args.data)
    inputs = [("--data", args.data), ("checkpoint", args.checkpoint), ("--metrics-log", args.metrics_log),
              ("--ground-truth", ground_truth)]
    for path in report_paths(args.output).values():  # the .md and .png beside the JSON too
        check_not_overlapping(path, inputs, "--output")
    check_creatable(args.output, "--output")
    device = resolve_device(args.device)
    with output_lock(args.output, "--output"):  # a second evaluate into the same file is refused at once
        model = load_model(args.checkpoint, args.data, device)
        evaluator = Evaluator(args.data, batch_size=args.batch_size, max_batches=args.max_batches, seed=args.seed,
                              device=device, max_history=model.config.max_history,
                              max_promotions=model.config.max_promotions, ground_truth=ground_truth,
                              show_progress=not args.quiet)
        results = {"checkpoint": str(args.checkpoint), **evaluator.evaluate(model, args.split)}
        paths = write_report(results, args.output, metrics_log=args.metrics_log)
    print(markdown_table(results))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(module_main("retailsim.evaluate"))
