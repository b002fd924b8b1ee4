"""Run the whole pipeline on built-in synthetic data: generate, prepare, train, evaluate, report.

The first thing a new user runs: it trains the ``small`` model on the CPU for a few minutes, evaluates it
against the baselines and the generator's oracle, and writes everything under ``--out`` (default
``runs/demo``), ending with the results table printed.

Each step is the same code as its own verb, called with the arguments shown in its log line, so the demo is
also a worked example of the command line.
"""
from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
from pathlib import Path

DESCRIPTION = __doc__.split("\n\n")[0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for everything the demo writes")
    parser.add_argument("--customers", type=int, default=2000, help="synthetic customers")
    parser.add_argument("--weeks", type=int, default=60, help="synthetic weeks")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generator and of training")
    parser.add_argument("--preset", default="small", choices=("tiny", "small", "default"), help="model preset")
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=DEMO_BATCH_SIZE, help="training batch size")
    parser.add_argument("--lr", type=float, default=DEMO_LR,
                        help="peak learning rate (higher than the SPEC's 5e-5 for 20 epochs: the demo trains minutes)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="training device")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads for training (0: torch's default, one per core)")
    parser.add_argument("--val-batches", type=int, default=DEMO_VAL_BATCHES,
                        help="validation batches per training epoch (0 = the whole validation split)")
    parser.add_argument("--promotions", action="store_true",
                        help="train the model that reads the generator's promotion plan (retailsim train --promotions)")
    parser.add_argument("--eval-batches", type=int, default=DEMO_EVAL_BATCHES,
                        help="test (and validation-tuning) batches evaluated; 0 = the whole split")


# Sized for the SPEC's 15-minute budget on a 2-core CPU: the small preset trains ~210 samples/s there with two
# threads, so three epochs of the demo data (two main, one fine-tune) take ~12 minutes; validating each epoch
# on its first 40 batches instead of the whole split saves ~9 s an epoch (16 s instead of 25, measured).
DEMO_EPOCHS = 3
DEMO_BATCH_SIZE = 128
DEMO_LR = 2e-3
DEMO_VAL_BATCHES = 40
DEMO_EVAL_BATCHES = 40


def run_verb(module_name: str, argv: list[str]) -> None:
    """Run one verb as ``python -m <module> <argv>`` would, in this process; stop the demo if it fails."""
    module = importlib.import_module(module_name)
    shown = module_name.removesuffix(".cli")  # retailsim.train.cli is what `python -m retailsim.train` runs
    parser = argparse.ArgumentParser(prog=f"python -m {shown}")
    module.add_arguments(parser)
    print(f"\n$ python -m {shown} {shlex.join(argv)}", flush=True)
    status = module.run(parser.parse_args(argv))
    if status:
        raise SystemExit(status)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = args.out
    raw, samples, cache, checkpoints = out / "raw", out / "samples", out / "cache", out / "checkpoints"
    results = out / "test_results.json"
    run_verb("retailsim.generate", ["--out", str(raw), "--customers", str(args.customers), "--weeks",
                                    str(args.weeks), "--seed", str(args.seed), "--overwrite"])
    run_verb("retailsim.prepare_samples", ["--input", str(raw), "--out", str(samples), "--overwrite"])
    run_verb("retailsim.prepare_tensor_cache", ["--samples", str(samples), "--out", str(cache), "--overwrite"])
    run_verb(TRAIN_MODULE, ["--data", str(cache), "--out", str(checkpoints), "--preset", args.preset,
                            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                            "--device", args.device, "--seed", str(args.seed), "--threads", str(args.threads),
                            "--val-batches", str(args.val_batches), "--overwrite"]
             + (["--promotions"] if args.promotions else []))
    evaluate = [str(checkpoints / "best_model.pt"), "--data", str(cache), "--split", "test",
                "--output", str(results), "--ground-truth", str(raw / "ground_truth.parquet"),
                "--metrics-log", str(checkpoints / METRICS_LOG), "--device", args.device]
    if args.eval_batches:
        evaluate += ["--max-batches", str(args.eval_batches)]
    run_verb("retailsim.evaluate", evaluate)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; report: {results} (+ .md and plots beside it)")
    return 0


TRAIN_MODULE = "retailsim.train.cli"
METRICS_LOG = "metrics.jsonl"

if __name__ == "__main__":
    from retailsim.cli import module_main

    sys.exit(module_main("retailsim.demo"))
