"""The generator's promotion plan (issue 17, data step): written beside the week files, exactly the market's
discounts, read back in the canonical plan schema with the LGSR reader's ordinal weeks, and never derived
from any transaction (the leakage rule)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

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


def test_padded_lists_carry_what_the_plan_says_of_each_product():
    """Week 1: product 5 chain-wide (10% off) and again at store 2 (on display), product 7 at store 2 only
    (in the mailer, no discount given), product 9 at store 3; week 2: four chain-wide products."""
    plan = promotions.PromotionPlan(
        week_offsets=np.array([0, 0, 4, 8]), stores=np.array([0, 2, 2, 3, 0, 0, 0, 0]),
        products=np.array([5, 5, 7, 9, 4, 6, 8, 3]), vocab_size=12,
        discount=np.array([0.1, np.nan, np.nan, 0.3, 0.2, 0.2, np.nan, np.nan], np.float32),
        display=np.array([-1, 1, 0, 0, 0, 1, 0, 0], np.int8), mailer=np.array([-1, 0, 1, 0, 0, 0, 0, 1], np.int8))
    items, features, valid = plan.padded(np.array([1, 1, 0, 2]), np.array([2, 1, 2, 1]))
    assert items.shape == (4, 4) and features.shape == (4, 4, len(promotions.PROMOTION_FEATURES))
    assert items[0].tolist() == [5, 7, 0, 0] and valid[0].tolist() == [True, True, False, False]
    np.testing.assert_allclose(features[0, :2], [[0.1, 1, 1, 0], [0, 0, 0, 1]], rtol=1e-6)  # 5: max of both rows
    assert items[1].tolist() == [5, 0, 0, 0] and valid[1].sum() == 1       # store 1: the chain-wide row only
    assert not valid[2].any() and not features[2].any()                    # week 0 has no plan
    assert items[3].tolist() == [3, 4, 6, 8] and not features[3][~valid[3]].any()
    # over the cap: the largest discounts first (4 and 6 at 20%; 6 also on display), then display or mailer
    # (3, over 8), then the lowest id; the kept ones in id order
    capped, _, capped_valid = plan.padded(np.array([2, 2]), np.array([1, 1]), max_promotions=3)
    assert capped.tolist() == [[3, 4, 6], [3, 4, 6]] and capped_valid.all()
    assert plan.padded(np.array([2]), np.array([1]), max_promotions=1)[0].tolist() == [[6]]
    assert plan.padded(np.array([1]), np.array([3]), max_promotions=1)[0].tolist() == [[9]]
    with pytest.raises(ValueError, match="max_promotions"):
        plan.padded(np.array([2]), np.array([1]), max_promotions=0)


def test_batches_carry_the_promoted_products_of_their_week_and_store(plan_cache, generated, tmp_path):
    from retailsim.cli import module_main
    from retailsim.data.batching import CollateArrays, collate
    from retailsim.data.cache_reader import TensorCache

    plan = TensorCache.open(plan_cache / "cache").promotion_plan()
    kept = pq.read_table(plan_cache / "samples" / promotions.SAMPLES_PLAN_FILE).to_pydict()
    discount = {(w, p): d for w, p, d in zip(kept["week"], kept["product"], kept["discount"])}
    arrays = CollateArrays.from_cache(plan_cache / "cache", "test")
    samples = np.arange(0, arrays.n_baskets, max(1, arrays.n_baskets // 40))
    batch = collate(arrays, samples, seed=0, train=False)
    weeks, stores = batch.time[:, 0].numpy(), batch.store[:, 0].numpy()
    assert batch.promotion_valid.any(1).all()              # the generator promotes products every week
    for b in range(len(samples)):
        got = batch.promotion_items[b][batch.promotion_valid[b]].tolist()
        assert got == plan.products_for(int(weeks[b]), int(stores[b])).tolist()
        features = batch.promotion_features[b][batch.promotion_valid[b]].numpy()
        np.testing.assert_allclose(features[:, 0], [discount[(int(weeks[b]), p)] for p in got], rtol=1e-6)
        assert (features[:, 1] == 1).all() and not features[:, 2:].any()   # a discount, no display or mailer
    # a model that does not read the plan (the default) gets empty lists, the rest of the batch unchanged
    skipped = collate(arrays, samples, seed=0, train=False, read_plan=False)
    assert skipped.promotion_items.shape == (len(samples), 1) and not skipped.promotion_valid.any()
    assert torch.equal(skipped.basket_items, batch.basket_items) and torch.equal(skipped.targets, batch.targets)
    # a cache without a plan: one empty slot per basket
    bare = _week_files_only(generated[0], tmp_path / "bare")
    assert module_main("retailsim.prepare_samples", ["--input", str(bare), "--out", str(tmp_path / "samples"),
                                                     "--n-products", "100", "--quiet"]) == 0
    assert module_main("retailsim.prepare_tensor_cache", ["--samples", str(tmp_path / "samples"), "--out",
                                                          str(tmp_path / "cache"), "--quiet"]) == 0
    plain = collate(CollateArrays.from_cache(tmp_path / "cache", "test"), np.arange(5), seed=0, train=False)
    assert plain.promotion_items.shape == (5, 1) and not plain.promotion_valid.any()


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


# --- a plan of your own beside generic transactions (--promotions PATH --promotions-map ...) ------------------

def _generic_lines(path, weeks, stores=("s1", "s2")):
    """Three products bought by four customers in each of ``weeks`` (raw week values) at two stores."""
    rows = ["basket_id,customer_id,product_id,week,store_id"]
    for i, week in enumerate(weeks):
        for c in range(4):
            for p in ("x", "y", "z")[: 1 + (c + i) % 3]:
                rows.append(f"b{i}{c},c{c},{p},{week},{stores[c % 2]}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_generic_plan_is_read_in_the_transactions_weeks(tmp_path):
    from retailsim.data.readers import open_source, parse_mapping
    from retailsim.data.readers.generic_plan import PLAN_MAPPABLE

    lines = _generic_lines(tmp_path / "lines.csv", [200651, 200652, 200701, 200702])   # YYYYWW across a year
    plan = tmp_path / "plan.csv"
    plan.write_text("SKU,WK,SHOP,OFF,DISP\nx,200652,,0.2,1\ny,200701,s2,,0\nz,200702,s1,0.1,\n")
    mapping = parse_mapping("product_id=SKU,week=WK,store_id=SHOP,discount=OFF,display=DISP", PLAN_MAPPABLE,
                            "--promotions-map")
    source = open_source(lines, "generic", promotions=plan, promotions_mapping=mapping)
    tables, where = source.promotion_plan()
    table = pa.concat_tables(list(tables))
    assert where == plan
    assert table.column("week").to_pylist() == [2, 3, 4]            # the transactions' ordinal weeks
    assert table.column("store_id").to_pylist() == [None, "s2", "s1"]
    assert table.column("discount").to_pylist() == [0.2, None, 0.1]
    assert table.column("display").to_pylist() == [1, 0, None]      # empty: not given
    # the same plan as Parquet, one row group per row: read chunk by chunk, the same table
    as_parquet = tmp_path / "plan.parquet"
    pq.write_table(pacsv.read_csv(plan, convert_options=pacsv.ConvertOptions(
        column_types={"SKU": pa.string(), "SHOP": pa.string()}, strings_can_be_null=True)), as_parquet,
        row_group_size=1)
    parquet_tables = list(open_source(lines, "generic", promotions=as_parquet,
                                      promotions_mapping=mapping).promotion_plan()[0])
    assert len(parquet_tables) == 3 and pa.concat_tables(parquet_tables).to_pylist() == table.to_pylist()
    # Stage 1 keeps it over the vocabulary and the training stores, as any plan
    from retailsim.data.samples import write_samples

    samples = tmp_path / "samples"
    samples.mkdir()
    source = open_source(lines, "generic", promotions=plan, promotions_mapping=mapping)
    entry = write_samples(source, samples, show_progress=False, split_weeks=(2, 3))["promotions"]
    assert entry["rows"] == 3 and entry["store_specific_rows"] == 2
    kept = pq.read_table(samples / promotions.SAMPLES_PLAN_FILE).to_pydict()
    assert sorted(zip(kept["week"], kept["display"])) == [(2, 1), (3, 0), (4, -1)]
    # the plan's files are part of the input's fingerprint
    other = tmp_path / "plan2.csv"
    other.write_text("SKU,WK\nx,200652\n")
    assert (open_source(lines, "generic", promotions=other, promotions_mapping={"product_id": "SKU", "week": "WK"})
            .fingerprint() != source.fingerprint())


def test_a_generic_plan_follows_timestamps_too(tmp_path):
    from retailsim.data.readers import open_source

    lines = tmp_path / "orders.csv"
    lines.write_text("basket_id,customer_id,product_id,timestamp\n1,a,x,2017-01-02 10:00:00\n"
                     "2,a,y,2017-01-10 10:00:00\n3,b,x,2017-01-18 10:00:00\n")
    plan = tmp_path / "plan.csv"
    plan.write_text("product_id,timestamp,mailer\ny,2017-01-12,1\nx,2017-01-22 23:00:00,0\n")
    table = pa.concat_tables(list(open_source(lines, "generic", promotions=plan).promotion_plan()[0]))
    assert table.column("week").to_pylist() == [2, 3] and table.column("mailer").to_pylist() == [1, 0]


@pytest.mark.parametrize("plan_text, message", [
    ("SKU,WK\nx,200650\n", "outside the transactions' weeks 1..2"),          # before the first week
    ("SKU,WK\nx,200702\n", "outside the transactions' weeks 1..2"),          # after the last
    ("SKU,WK\nx,7\n", "outside the transactions' weeks 1..2 (it would be week -200643)"),
    ("SKU,WK\nx,8\n", "do not follow the transactions' week numbering"),   # (200652, 200701) are not 1 apart
    ("SKU,WK\n,200651\n", "line 2 (row 1), column SKU: a required value is empty"),
    ("SKU,WEEKNO\nx,200651\n", "column mapped to week by --promotions-map is not in the file"),
    ("SKU,WK,OFF\nx,200651,1.5\n", "a discount must be a fraction in [0, 1)"),
], ids=["before", "after", "plain-number", "numbering", "empty-product", "missing-column", "discount"])
def test_bad_generic_plans_are_one_clear_error(tmp_path, plan_text, message):
    from retailsim.data.readers import open_source

    weeks = [200652, 200701] if "x,8" in plan_text else [200651, 200652]
    lines = _generic_lines(tmp_path / "lines.csv", weeks)
    plan = tmp_path / "plan.csv"
    plan.write_text(plan_text)
    with pytest.raises(RetailSimInputError, match="plan.csv") as info:
        source = open_source(lines, "generic", promotions=plan,
                             promotions_mapping={"product_id": "SKU", "week": "WK", "discount": "OFF"}
                             if "OFF" in plan_text else {"product_id": "SKU", "week": "WK"})
        list(source.promotion_plan()[0])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_promotions_flags_are_checked_before_any_work(tmp_path, capsys):
    from retailsim.cli import module_main

    lines = _generic_lines(tmp_path / "lines.csv", [1, 2, 3])
    cases = [
        (["--promotions", str(tmp_path / "nowhere.csv")], "--promotions"),
        (["--promotions-map", "product_id=SKU"], "--promotions-map needs --promotions PATH"),
        (["--promotions", str(lines), "--promotions-map", "colour=C"], "--promotions-map: 'colour'"),
        (["--format", "lgsr", "--promotions", str(lines)], "--promotions applies to --format generic only"),
    ]
    for flags, message in cases:
        out = tmp_path / "out"
        code = module_main("retailsim.prepare_samples", ["--input", str(lines), "--out", str(out), "--quiet", *flags])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1 and not out.exists(), (flags, err)
    orders = tmp_path / "orders.csv"
    orders.write_text("order_id,user_id,product_id,order_number\n1,a,x,1\n2,a,y,2\n")
    plan = tmp_path / "plan.csv"
    plan.write_text("product_id,week\nx,1\n")
    code = module_main("retailsim.prepare_samples", ["--input", str(orders), "--out", str(tmp_path / "o"), "--quiet",
                                                     "--map", "basket_id=order_id,customer_id=user_id",
                                                     "--promotions", str(plan)])
    assert code == 2 and "needs calendar weeks" in capsys.readouterr().err
