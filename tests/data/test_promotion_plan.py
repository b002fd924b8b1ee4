"""The generator's promotion plan (issue 17, data step): written beside the week files, exactly the market's
discounts, read back in the canonical plan schema with the LGSR reader's ordinal weeks, and never derived
from any transaction (the leakage rule)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retailsim.data import promotions, schema
from retailsim.data.synthetic import PROMOTION_FILE, GeneratorConfig, generate
from retailsim.data.synthetic.catalogue import build_catalogue
from retailsim.data.synthetic.market import week_market
from retailsim.errors import RetailSimInputError

CONFIG = GeneratorConfig(customers=200, products=150, stores=4, weeks=6, seed=5)


def _week_files_only(generated_folder, folder):
    """A copy of the generated week files alone: an LGSR folder without a plan."""
    folder.mkdir()
    for path in generated_folder.glob(schema.LGSR_FILE_GLOB):
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan") / "data"
    summary = generate(CONFIG, out, progress=False)
    return out, summary


def test_the_plan_is_the_market_discounts_of_every_week(generated):
    out, summary = generated
    catalogue = build_catalogue(CONFIG)
    codes = np.array(catalogue.codes.to_pylist())
    tables = list(promotions.read_generator_plan(out))
    assert len(tables) == CONFIG.weeks and all(t.schema == promotions.CANONICAL_PLAN_SCHEMA for t in tables)
    for ordinal, table in enumerate(tables, start=1):
        market = week_market(catalogue, CONFIG.seed, ordinal - 1)
        promoted = np.flatnonzero(market.discount > 0)
        assert len(promoted) > 0
        assert table.column("product_id").to_pylist() == codes[promoted].tolist()
        assert (table.column("week").to_numpy() == ordinal).all()
        np.testing.assert_array_equal(table.column("discount").to_numpy(), market.discount[promoted])
        np.testing.assert_allclose(table.column("price").to_numpy(), market.price_cents[promoted] / 100.0)
    rows = sum(t.num_rows for t in tables)
    assert rows == summary.promotion_rows
    assert len({w for t in tables for w in t.column("week").to_pylist()}) == CONFIG.weeks
    assert any(f"{PROMOTION_FILE} ({rows:,} promoted product-weeks)" in line for line in summary.lines())
    described = json.loads((out / "generator.json").read_text())["promotions"]
    assert described["file"] == PROMOTION_FILE and described["rows"] == summary.promotion_rows
    assert any(PROMOTION_FILE in line for line in summary.lines())


def test_promoted_lines_are_sold_at_the_planned_discount(generated):
    """The plan is what the week's shelf prices follow: a promoted product's lines cost less per unit than the
    same product's lines in weeks it is not promoted (store factors average out over the lines)."""
    out, _ = generated
    plan = pa.concat_tables(promotions.read_generator_plan(out))
    planned = set(zip(plan.column("product_id").to_pylist(), plan.column("week").to_pylist()))
    import pyarrow.csv as pa_csv

    on, off = [], []
    for ordinal, path in enumerate(sorted(out.glob(schema.LGSR_FILE_GLOB)), start=1):
        week = pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(
            column_types={"PROD_CODE": pa.string(), "SPEND": pa.float64(), "QUANTITY": pa.float64()}))
        for product, spend, quantity in zip(week.column("PROD_CODE").to_pylist(), week.column("SPEND").to_pylist(),
                                            week.column("QUANTITY").to_pylist()):
            (on if (product, ordinal) in planned else off).append((product, spend / quantity))
    off_price = {}
    for product, unit in off:
        off_price.setdefault(product, []).append(unit)
    ratios = [unit / np.median(off_price[product]) for product, unit in on if product in off_price]
    assert len(ratios) > 20 and np.median(ratios) < 0.9


def test_the_plan_does_not_depend_on_any_transaction(generated, tmp_path):
    """The leakage rule: another population (other customers, other stores, so other transactions in every
    week) leaves the plan byte for byte the same."""
    out, _ = generated
    other = tmp_path / "other"
    generate(GeneratorConfig(**{**CONFIG.as_dict(), "customers": 350, "stores": 6}), other, progress=False)
    first_week = sorted(out.glob(schema.LGSR_FILE_GLOB))[0].name
    assert (out / first_week).read_bytes() != (other / first_week).read_bytes()
    assert pq.read_table(out / PROMOTION_FILE).equals(pq.read_table(other / PROMOTION_FILE))


def test_bad_plans_are_one_clear_error(generated, tmp_path):
    out, _ = generated
    broken = _week_files_only(out, tmp_path / "broken")
    with pytest.raises(RetailSimInputError, match="no promotion plan"):
        list(promotions.read_generator_plan(broken))
    plan = pq.read_table(out / PROMOTION_FILE)
    pq.write_table(plan.drop(["DISCOUNT"]), broken / PROMOTION_FILE)
    with pytest.raises(RetailSimInputError, match="DISCOUNT"):
        list(promotions.read_generator_plan(broken))
    week = plan.column("SHOP_WEEK").to_numpy().copy()
    week[0] = 199901
    pq.write_table(plan.set_column(1, "SHOP_WEEK", pa.array(week)), broken / PROMOTION_FILE)
    with pytest.raises(RetailSimInputError, match="SHOP_WEEK 199901"):
        list(promotions.read_generator_plan(broken))
    discount = plan.column("DISCOUNT").to_numpy().copy()
    discount[3] = 1.5
    pq.write_table(plan.set_column(2, "DISCOUNT", pa.array(discount)), broken / PROMOTION_FILE)
    with pytest.raises(RetailSimInputError, match="fraction"):
        list(promotions.read_generator_plan(broken))
    (broken / PROMOTION_FILE).write_text("not parquet")
    with pytest.raises(RetailSimInputError, match="Parquet"):
        list(promotions.read_generator_plan(broken))


def test_stage1_keeps_the_plan_over_the_vocabulary(generated, tmp_path, capsys):
    from retailsim.cli import module_main

    out, _ = generated
    samples = tmp_path / "samples"
    assert module_main("retailsim.prepare_samples",
                       ["--input", str(out), "--out", str(samples), "--n-products", "60", "--quiet"]) == 0
    printed = capsys.readouterr().out
    metadata = json.loads((samples / "metadata.json").read_text())
    entry = metadata["promotions"]
    vocab = json.loads((samples / "vocab.json").read_text())
    raw = pa.concat_tables(promotions.read_generator_plan(out))
    raw_pairs = set(zip(raw.column("product_id").to_pylist(), raw.column("week").to_pylist()))
    in_vocab = set(vocab["products"])
    expected = {(p, w) for p, w in raw_pairs if p in in_vocab}
    kept = pq.read_table(samples / promotions.SAMPLES_PLAN_FILE)
    assert kept.schema == promotions.SAMPLES_PLAN_SCHEMA
    pairs = {(vocab["products"][p - 1], w) for p, w in zip(kept.column("product").to_pylist(),
                                                           kept.column("week").to_pylist())}
    assert pairs == expected and len(pairs) == kept.num_rows > 0
    assert entry["rows"] == kept.num_rows and entry["rows_in_source"] == raw.num_rows
    assert entry["dropped_out_of_vocabulary"] == raw.num_rows - kept.num_rows > 0   # 60 of 150 products kept
    assert "promotion plan:" in printed and "promotions.parquet" in printed
    discount = dict(zip(zip(raw.column("product_id").to_pylist(), raw.column("week").to_pylist()),
                        raw.column("discount").to_pylist()))
    for p, w, d in zip(kept.column("product").to_pylist(), kept.column("week").to_pylist(),
                       kept.column("discount").to_pylist()):
        assert d == pytest.approx(discount[(vocab["products"][p - 1], w)], rel=1e-6)


def test_a_source_without_a_plan_gets_none(generated, tmp_path):
    from retailsim.cli import module_main

    out, _ = generated
    bare = _week_files_only(out, tmp_path / "bare")
    samples = tmp_path / "samples"
    assert module_main("retailsim.prepare_samples", ["--input", str(bare), "--out", str(samples), "--quiet"]) == 0
    assert json.loads((samples / "metadata.json").read_text())["promotions"] is None
    assert not (samples / promotions.SAMPLES_PLAN_FILE).exists()


@pytest.fixture(scope="module")
def plan_cache(generated, tmp_path_factory):
    from retailsim.cli import module_main

    out, _ = generated
    root = tmp_path_factory.mktemp("plan_cache")
    assert module_main("retailsim.prepare_samples", ["--input", str(out), "--out", str(root / "samples"),
                                                     "--n-products", "100", "--quiet"]) == 0
    assert module_main("retailsim.prepare_tensor_cache", ["--samples", str(root / "samples"), "--out",
                                                          str(root / "cache"), "--quiet"]) == 0
    return root


def test_stage2_keeps_the_plan_as_per_week_product_lists(plan_cache):
    from retailsim.data.cache_reader import TensorCache

    cache = TensorCache.open(plan_cache / "cache")
    plan = cache.promotion_plan()
    kept = pq.read_table(plan_cache / "samples" / promotions.SAMPLES_PLAN_FILE)
    assert plan.n_rows == kept.num_rows > 0 and (kept.column("store").to_numpy() == 0).all()
    for week in range(CONFIG.weeks + 2):
        expected = sorted(p for p, w in zip(kept.column("product").to_pylist(), kept.column("week").to_pylist())
                          if w == week)
        assert plan.products_for(week, 1).tolist() == expected   # chain-wide rows hold in every store
    rows = plan.rows(np.array([1, 2, 0]), np.array([3, 0, 1]))
    assert rows.shape == (3, cache.vocab_size) and not rows[2].any()
    assert set(np.flatnonzero(rows[0].numpy())) == set(plan.products_for(1, 3).tolist())


def test_store_specific_plans_hold_in_their_store_only(tmp_path):
    """A hand-made source whose plan has chain-wide rows (null store) and single stores' rows: Stage 1 maps the
    stores to training ids (sorted names: S0 -> 1, S1 -> 2, S2 -> 3; an unknown store is dropped and counted),
    Stage 2 keeps them, and a basket sees the chain-wide products plus its own store's."""
    from retailsim.data.cache_reader import TensorCache
    from retailsim.data.samples import write_samples
    from retailsim.data.tensor_cache import write_tensor_cache
    from tests.data.stage_fixtures import TableSource, random_lines

    class PlannedSource(TableSource):
        def promotion_plan(self):
            plan = pa.table({"product_id": pa.array(["P001", "P002", "P003", "P002", "P001", "P999"]),
                             "week": pa.array([3, 3, 3, 4, 3, 3], pa.int64()),
                             "store_id": pa.array([None, "S1", "S2", "S1", "nowhere", None]),
                             "discount": pa.array([0.1, 0.2, 0.3, 0.2, 0.5, 0.1])})
            return iter([plan]), tmp_path / "plan.parquet"

    samples, cache_dir = tmp_path / "samples", tmp_path / "cache"
    samples.mkdir()
    cache_dir.mkdir()
    metadata = write_samples(PlannedSource(random_lines(seed=3, n_weeks=12, n_products=12)), samples,
                             show_progress=False)
    vocab_id = {p: i + 1 for i, p in enumerate(json.loads((samples / "vocab.json").read_text())["products"])}
    assert {"P001", "P002", "P003"} <= vocab_id.keys() and "P999" not in vocab_id
    entry = metadata["promotions"]
    assert (entry["rows"], entry["dropped_unknown_store"], entry["dropped_out_of_vocabulary"]) == (4, 1, 1)
    assert entry["store_specific_rows"] == 3 and metadata["n_stores"] == 3
    write_tensor_cache(samples, cache_dir, show_progress=False)
    plan = TensorCache.open(cache_dir).promotion_plan()
    p1, p2, p3 = vocab_id["P001"], vocab_id["P002"], vocab_id["P003"]
    assert plan.products_for(3, 0).tolist() == [p1]                   # unknown store: the chain-wide rows only
    assert plan.products_for(3, 1).tolist() == [p1]                   # S0
    assert plan.products_for(3, 2).tolist() == sorted([p1, p2])       # S1
    assert plan.products_for(3, 3).tolist() == sorted([p1, p3])       # S2
    assert plan.products_for(4, 2).tolist() == [p2] and plan.products_for(4, 3).tolist() == []
    rows = plan.rows(np.array([3, 4]), np.array([3, 2]))
    assert set(np.flatnonzero(rows[0].numpy())) == {p1, p3} and set(np.flatnonzero(rows[1].numpy())) == {p2}


def test_evaluation_splits_promoted_from_other_targets(plan_cache):
    from retailsim.data.cache_reader import TensorCache
    from retailsim.eval.evaluator import Evaluator

    results = Evaluator(plan_cache / "cache", batch_size=64).evaluate(None, "test")
    buckets = results["buckets"]
    assert {"promoted", "not_promoted"} <= buckets.keys()
    assert buckets["promoted"]["n_tokens"] + buckets["not_promoted"]["n_tokens"] == results["n_tokens"]
    assert buckets["promoted"]["n_tokens"] > 0 and buckets["promoted"]["blend"]["hr@10"] is not None
    # Recount from the cache's own arrays: the test baskets' items that are in their week's plan, of the masked
    # ones the evaluator saw (all of them: no max_batches), can only be that many or fewer.
    cache = TensorCache.open(plan_cache / "cache")
    arrays = cache.split_arrays("test")
    plan = cache.promotion_plan()
    offsets, items, weeks = arrays["basket_item_offsets"], arrays["item_ids"], arrays["week"]
    on_plan_items = sum(int(np.isin(items[offsets[b]:offsets[b + 1]], plan.products_for(int(weeks[b]), 0)).sum())
                        for b in range(len(weeks)))
    assert 0 < buckets["promoted"]["n_tokens"] <= on_plan_items


def test_a_cache_without_a_plan_has_no_plan_buckets(generated, tmp_path):
    from retailsim.cli import module_main
    from retailsim.data.cache_reader import TensorCache
    from retailsim.eval.evaluator import Evaluator

    out, _ = generated
    bare = _week_files_only(out, tmp_path / "bare")
    assert module_main("retailsim.prepare_samples", ["--input", str(bare), "--out", str(tmp_path / "s"),
                                                     "--quiet"]) == 0
    assert module_main("retailsim.prepare_tensor_cache", ["--samples", str(tmp_path / "s"), "--out",
                                                          str(tmp_path / "c"), "--quiet"]) == 0
    assert TensorCache.open(tmp_path / "c").promotion_plan() is None
    results = Evaluator(tmp_path / "c", batch_size=64, max_batches=1).evaluate(None, "test")
    assert "promoted" not in results["buckets"]


def test_the_promotion_aware_blend(tmp_path):
    """Tuned on validation it never loses there (weight 0 is the blend itself); given weight, it ranks the
    promoted targets higher than the blend does (the generator plants the effect) and the others lower."""
    from retailsim.cli import module_main
    from retailsim.eval import baselines as bl
    from retailsim.eval.evaluator import Evaluator

    generate(GeneratorConfig(customers=1500, products=300, stores=6, weeks=16, seed=7), tmp_path / "raw",
             progress=False)
    assert module_main("retailsim.prepare_samples", ["--input", str(tmp_path / "raw"), "--out",
                                                     str(tmp_path / "samples"), "--quiet"]) == 0
    assert module_main("retailsim.prepare_tensor_cache", ["--samples", str(tmp_path / "samples"), "--out",
                                                          str(tmp_path / "cache"), "--quiet"]) == 0
    evaluator = Evaluator(tmp_path / "cache", batch_size=256)
    weights, blend_mrr = evaluator.tune_blend("validation")
    weight, promotion_mrr = evaluator.tune_promotion_weight(weights)
    assert weight in bl.PROMOTION_WEIGHTS and promotion_mrr >= blend_mrr
    tuned = evaluator.evaluate(None, "test", blend_weights=weights)
    assert tuned["baselines"][bl.PROMOTION_BASELINE]["promotion_weight"] == weight
    forced = evaluator.evaluate(None, "test", blend_weights=weights, promotion_weight=0.05)
    promoted, others = forced["buckets"]["promoted"], forced["buckets"]["not_promoted"]
    assert promoted["n_tokens"] > 50
    assert promoted[bl.PROMOTION_BASELINE]["mrr"] > promoted["blend"]["mrr"]
    assert others[bl.PROMOTION_BASELINE]["mrr"] <= others["blend"]["mrr"]


def test_complete_journey_promotions_become_a_store_plan(tmp_path):
    """The Complete Journey's promotions table (display and mailer codes by product, store and week) read from a
    folder: rows with neither a display nor a mailer are no promotion, weeks shift as the transactions' do,
    and Stage 1 keeps the rest per training store with display and mailer."""
    from retailsim.data.readers import open_source
    from retailsim.data.samples import write_samples
    from tests.data.test_readers import complete_journey_tables

    transactions, products, demographics = complete_journey_tables()
    transactions = transactions.set_column(transactions.column_names.index("week"), "week",
                                           pa.array([11, 11, 12, 12, 14, 14]))   # raw weeks 11..14 -> 1..4
    folder = tmp_path / "cj"
    folder.mkdir()
    for name, table in (("transactions", transactions), ("products", products), ("demographics", demographics)):
        pq.write_table(table, folder / f"{name}.parquet")
    pq.write_table(pa.table({
        "product_id": [1095275, 9878513, 1041453, 1095275, 9878513],
        "store_id": [330, 406, 330, 999, 319],
        "display_location": ["0", "3", "0", "1", "A"],
        "mailer_location": ["A", "0", "0", "D", "0"],
        "week": [11, 12, 12, 13, 14],
    }), folder / "promotions.parquet")
    source = open_source(folder, "completejourney")
    tables, where = source.promotion_plan()
    plan = pa.concat_tables(list(tables))
    assert plan.num_rows == 4                                  # the row with neither code is dropped
    assert plan.column("week").to_pylist() == [1, 2, 3, 4]
    assert plan.column("display").to_pylist() == [0, 1, 1, 1] and plan.column("mailer").to_pylist() == [1, 0, 1, 0]
    samples = tmp_path / "samples"
    samples.mkdir()
    metadata = write_samples(open_source(folder, "completejourney"), samples, show_progress=False,
                             split_weeks=(2, 3))
    entry = metadata["promotions"]
    # training weeks 1-2 saw stores 330 and 406: 999 never shopped, 319 only in week 4 (test)
    assert entry["rows_in_source"] == 4 and entry["dropped_unknown_store"] == 2
    kept = pq.read_table(samples / promotions.SAMPLES_PLAN_FILE)
    assert kept.num_rows == 2 and (kept.column("store").to_numpy() > 0).all()
    assert sorted(zip(kept.column("week").to_pylist(), kept.column("display").to_pylist(),
                      kept.column("mailer").to_pylist())) == [(1, 0, 1), (2, 1, 0)]


def test_complete_journey_plan_needs_the_week_column():
    from retailsim.data.readers.completejourney import CompleteJourneySource
    from tests.data.test_readers import complete_journey_tables

    transactions, products, _ = complete_journey_tables()
    source = CompleteJourneySource(transactions.drop_columns(["week"]), products,
                                   promotions=pa.table({"product_id": [1], "store_id": [1], "display_location": ["1"],
                                                        "mailer_location": ["0"], "week": [1]}))
    with pytest.raises(RetailSimInputError, match="week"):
        source.promotion_plan()
