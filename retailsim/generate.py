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

    defaults = GeneratorConfig()
    parser.add_argument("--out", type=Path, required=True, help="folder to create (replaced whole when done)")
    parser.add_argument("--customers", type=int, default=defaults.customers, help="number of shoppers")
    parser.add_argument("--products", type=int, default=defaults.products, help="catalogue size")
    parser.add_argument("--stores", type=int, default=defaults.stores, help="number of stores")
    parser.add_argument("--weeks", type=int, default=defaults.weeks, help="number of shop weeks (from 200607)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed; same seed, same bytes")
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
