"""Stage 2 verb: ``retailsim prepare-tensor-cache`` / ``python -m retailsim.prepare_tensor_cache``."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from retailsim.cli import module_main

DESCRIPTION = """Stage 2: turn Stage 1 samples into flat memory-mappable .npy arrays (basket items, price features,
per-customer history streams, context features, labels, buckets) described by cache.json."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", required=True, help="a Stage 1 folder written by `retailsim prepare-samples`")
    parser.add_argument("--out", required=True, help="output folder (created; written whole or not at all)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from retailsim.data.atomic_output import atomic_folder, check_output_folder
    from retailsim.data.samples import read_metadata
    from retailsim.data.tensor_cache import write_tensor_cache

    started = time.perf_counter()
    read_metadata(Path(args.samples))  # a folder that is not a Stage 1 output fails before anything is created
    out = Path(args.out)
    inputs = [("--samples", args.samples)]
    check_output_folder(out, overwrite=args.overwrite, inputs=inputs)
    with atomic_folder(out, overwrite=args.overwrite, inputs=inputs) as staging:
        manifest = write_tensor_cache(Path(args.samples), staging, show_progress=not args.quiet)
    seconds = time.perf_counter() - started
    splits = manifest["splits"]
    baskets = sum(s["n_baskets"] for s in splits.values())
    items = sum(s["n_items"] for s in splits.values())
    size = sum(p.stat().st_size for p in out.rglob("*.npy"))
    print(f"prepare-tensor-cache: {baskets:,} baskets, {items:,} items in {seconds:.1f} s "
          f"({baskets / max(seconds, 1e-9):,.0f} baskets/s, streams built by the {manifest['stream_impl']} kernel)")
    for split, s in splits.items():
        print(f"  {split:<10} {s['n_baskets']:,} baskets, {s['n_items']:,} items")
    print(f"  customer streams: {manifest['n_customer_keys'] - 1:,} customers, {manifest['n_stream_items']:,} items; "
          f"vocabulary {manifest['vocab_size']:,} ids")
    print(f"  wrote {out} ({len(manifest['arrays'])} arrays, {size / 2**20:,.1f} MiB; manifest cache.json)")
    return 0


if __name__ == "__main__":
    sys.exit(module_main("retailsim.prepare_tensor_cache"))
