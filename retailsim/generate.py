"""Generate the built-in synthetic data set: LGSR-format weekly CSVs with known structure, ground_truth.parquet
(the generator's own probability and rank of every test-week line, for an oracle ceiling) and generator.json."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retailsim.cli import module_main

DESCRIPTION = __doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from retailsim.data.synthetic.config import GeneratorConfig

    defaults, limits = GeneratorConfig(), GeneratorConfig.LIMITS
    parser.add_argument(
        "--out", type=Path, required=True, default=argparse.SUPPRESS,
        help="folder to create (required); written under a temporary name and renamed when complete",
    )
    helps = {
        "customers": "number of shoppers (card holders and anonymous)",
        "products": "catalogue size",
        "stores": "number of stores",
        "weeks": "number of shop weeks, from 200607; the last 19%% are the test weeks of ground_truth.parquet",
        "seed": "random seed; the same seed and sizes give the same bytes",
    }
    for name, text in helps.items():
        low, high = limits[name]
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name), help=f"{text}; {low}..{high}")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from retailsim.data.synthetic import GeneratorConfig, generate

    config = GeneratorConfig(
        customers=args.customers, products=args.products, stores=args.stores, weeks=args.weeks, seed=args.seed
    ).validate()
    summary = generate(config, args.out, overwrite=args.overwrite, progress=not args.quiet)
    print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(module_main("retailsim.generate"))
