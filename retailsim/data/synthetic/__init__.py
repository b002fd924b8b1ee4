"""The built-in synthetic data set (SPEC 3.2): LGSR-format week files from a shopping process with known
structure, plus the generator's own probabilities for the test weeks (``ground_truth.parquet``) and its
promotion plan for every week (``promotions.parquet``: what a retailer knows before the week starts).

The world (``catalogue``, ``population``) is drawn once from the seed; then each week is simulated, written and
dropped (``market`` -> ``shopping`` -> ``labels`` -> ``writer``, and ``oracle`` for test weeks), so memory stays
bounded by one week plus the latent state.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from retailsim.data import schema
from retailsim.data.atomic_output import atomic_folder, check_output_folder
from retailsim.data.synthetic.calendar import shop_week_code
from retailsim.data.synthetic.catalogue import build_catalogue
from retailsim.data.synthetic.config import STREAM_WEEK_LINES, GeneratorConfig, stream
from retailsim.data.synthetic.labels import basket_labels
from retailsim.data.synthetic.market import week_market
from retailsim.data.synthetic.oracle import GROUND_TRUTH_SCHEMA, ground_truth
from retailsim.data.synthetic.population import build_customers, build_stores
from retailsim.data.synthetic.shopping import simulate_week
from retailsim.data.synthetic.writer import (
    GENERATOR_MARKER,
    PROMOTION_SCHEMA,
    basket_ids,
    promotion_table,
    week_file_name,
    week_table,
    write_week_csv,
)

GROUND_TRUTH_FILE = "ground_truth.parquet"
PROMOTION_FILE = schema.GENERATOR_PROMOTION_FILE
FORMAT_VERSION = 1
CONDITIONING = (
    "P(item in slot j) under the generator's slot distribution given the customer's latent state (price band, "
    "habit strength, favourites and weights), the trip's latent mission, the week's promotions and seasonality, "
    "and the items at positions < j of the basket (complements); 'probability' renormalises over products not at "
    "positions < j (the generator redraws repeats), 'probability_excluding_basket' over products not among the "
    "basket's other items; 'rank' is 1 + the number of products outside the basket with a strictly higher slot "
    "probability."
)

__all__ = ["GeneratorConfig", "GenerationSummary", "generate", "GROUND_TRUTH_FILE", "PROMOTION_FILE"]


@dataclass
class GenerationSummary:
    out: Path
    rows: int = 0
    baskets: int = 0
    customers: int = 0  # distinct card holders with at least one trip
    anonymous_baskets: int = 0
    products: int = 0  # distinct products sold
    weeks: int = 0
    ground_truth_rows: int = 0
    promotion_rows: int = 0
    csv_bytes: int = 0
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        rate = self.rows / self.seconds if self.seconds > 0 else float("nan")
        return [
            f"wrote {self.out}",
            f"  rows {self.rows:,}  baskets {self.baskets:,} ({self.anonymous_baskets:,} anonymous)  "
            f"customers {self.customers:,}  products {self.products:,}  weeks {self.weeks}",
            f"  {self.weeks} week files ({self.csv_bytes / 1e6:,.1f} MB), {GROUND_TRUTH_FILE} "
            f"({self.ground_truth_rows:,} test lines), {PROMOTION_FILE} ({self.promotion_rows:,} promoted "
            f"product-weeks), {GENERATOR_MARKER}",
            f"  {self.seconds:,.1f} s ({rate:,.0f} rows/s)",
        ]


def generate(
    config: GeneratorConfig, out: Path, *, overwrite: bool = False, progress: bool = True
) -> GenerationSummary:
    """Write the synthetic data set to ``out`` (replaced whole at the end; nothing is left on failure)."""
    config.validate()
    out = Path(out)
    check_output_folder(out, overwrite=overwrite)
    started = time.perf_counter()
    summary = GenerationSummary(out=out)

    catalogue = build_catalogue(config)
    stores = build_stores(config)
    customers = build_customers(config, catalogue, stores, progress)
    _, validation_end = schema.split_boundaries(config.weeks)
    seen_customers = np.zeros(config.customers, dtype=bool)
    seen_products = np.zeros(config.products, dtype=bool)

    with atomic_folder(out, overwrite=overwrite) as staging:
        truth_writer = pq.ParquetWriter(staging / GROUND_TRUTH_FILE, GROUND_TRUTH_SCHEMA)
        plan_writer = pq.ParquetWriter(staging / PROMOTION_FILE, PROMOTION_SCHEMA)
        try:
            weeks = tqdm(range(config.weeks), desc="generate", unit="week", disable=not progress)
            for week_index in weeks:
                market = week_market(catalogue, config.seed, week_index)
                plan = promotion_table(market, catalogue)
                plan_writer.write_table(plan)
                summary.promotion_rows += plan.num_rows
                week = simulate_week(config.seed, week_index, catalogue, stores, customers, market)
                labels = basket_labels(week, catalogue, stream(config.seed, STREAM_WEEK_LINES, week_index, 1))
                table = week_table(week, labels, catalogue, stores, customers)
                name = week_file_name(week_index)
                summary.csv_bytes += write_week_csv(table, staging / name)
                summary.files.append(name)
                if week_index + 1 > validation_end:
                    truth = ground_truth(
                        week, basket_ids(week), shop_week_code(week_index), market, catalogue, customers
                    )
                    truth_writer.write_table(truth)
                    summary.ground_truth_rows += truth.num_rows
                summary.rows += table.num_rows
                summary.baskets += week.n_trips
                summary.anonymous_baskets += int(customers.anonymous[week.trip_customer].sum())
                seen_customers[week.trip_customer] = True
                seen_products[week.line_product] = True
                summary.weeks += 1
                weeks.set_postfix(rows=f"{summary.rows:,}", refresh=False)
        finally:
            truth_writer.close()
            plan_writer.close()
        summary.customers = int((seen_customers & ~customers.anonymous).sum())
        summary.products = int(seen_products.sum())
        (staging / GENERATOR_MARKER).write_text(json.dumps(_description(config, summary, validation_end), indent=2))
    summary.seconds = time.perf_counter() - started
    return summary


def _description(config: GeneratorConfig, summary: GenerationSummary, validation_end: int) -> dict:
    """generator.json: parameters, seed and what was written (no timings: same seed, same bytes)."""
    return {
        "generator": "retailsim.data.synthetic",
        "format_version": FORMAT_VERSION,
        "parameters": config.as_dict(),
        "shop_weeks": [shop_week_code(0), shop_week_code(config.weeks - 1)],
        "split_boundaries": list(schema.split_boundaries(config.weeks)),
        "ground_truth": {
            "file": GROUND_TRUTH_FILE,
            "weeks": [validation_end + 1, config.weeks],
            "rows": summary.ground_truth_rows,
            "conditioning": CONDITIONING,
        },
        "promotions": {
            "file": PROMOTION_FILE,
            "rows": summary.promotion_rows,
            "columns": [field.name for field in PROMOTION_SCHEMA],
            "known_in_advance": "drawn from the seed and the catalogue before each week's shopping; no "
                                "transaction of any week enters it",
        },
        "rows": summary.rows,
        "baskets": summary.baskets,
        "anonymous_baskets": summary.anonymous_baskets,
        "customers_with_trips": summary.customers,
        "products_sold": summary.products,
        "week_files": summary.files,
    }
