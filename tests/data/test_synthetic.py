"""The synthetic generator (SPEC 3.2): determinism, LGSR domains, planted structure seen from the CSVs alone,
and ground truth checked against a brute-force evaluation of the generator's slot distribution."""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from retailsim.data import schema
from retailsim.data.synthetic import GROUND_TRUTH_FILE, PROMOTION_FILE, GeneratorConfig, generate
from retailsim.data.synthetic.catalogue import build_catalogue
from retailsim.data.synthetic.market import N_PRICE_BANDS, week_market
from retailsim.data.synthetic.missions import MAX_BASKET_LINES
from retailsim.data.synthetic import oracle
from retailsim.data.synthetic.oracle import ground_truth, slot_weights
from retailsim.data.synthetic.population import build_customers, build_stores
from retailsim.data.synthetic.shopping import habit_weights, simulate_week
from retailsim.data.synthetic.writer import basket_ids

SMALL = GeneratorConfig(customers=300, products=120, stores=5, weeks=8, seed=3)
# Large enough for the structure tests to see their effects clearly, small enough for seconds.
STRUCTURE = GeneratorConfig(customers=1500, products=300, stores=8, weeks=16, seed=11)
LABEL_COLUMNS = {
    "CUST_PRICE_SENSITIVITY": schema.LABELS["customer_price_band"],
    "CUST_LIFESTAGE": schema.LABELS["customer_segment"],
    "BASKET_SIZE": schema.LABELS["basket_size"],
    "BASKET_PRICE_SENSITIVITY": schema.LABELS["basket_price_band"],
    "BASKET_TYPE": schema.LABELS["basket_type"],
    "BASKET_DOMINANT_MISSION": schema.LABELS["basket_mission"],
    "STORE_FORMAT": schema.LABELS["store_format"],
}


def read_week_files(folder: Path) -> pa.Table:
    """All week files, every column as text, in file order."""
    as_text = pa_csv.ConvertOptions(column_types={column: pa.string() for column in schema.LGSR_COLUMNS})
    paths = sorted(folder.glob(schema.LGSR_FILE_GLOB))
    return pa.concat_tables(pa_csv.read_csv(path, convert_options=as_text) for path in paths)


def column(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_pylist(), dtype=object)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "small"
    generate(SMALL, out, progress=False)
    return out


@pytest.fixture(scope="module")
def structure_data(tmp_path_factory) -> tuple[Path, pa.Table]:
    out = tmp_path_factory.mktemp("synthetic") / "structure"
    generate(STRUCTURE, out, progress=False)
    return out, read_week_files(out)


def test_same_seed_same_bytes_other_seed_other_bytes(small_data, tmp_path):
    again = tmp_path / "again"
    generate(SMALL, again, progress=False)
    names = sorted(path.name for path in small_data.iterdir())
    assert names == sorted(path.name for path in again.iterdir())
    assert len(names) == SMALL.weeks + 3  # week files, ground_truth.parquet, promotions.parquet, generator.json
    for name in names:
        assert (small_data / name).read_bytes() == (again / name).read_bytes(), name

    other = tmp_path / "other"
    generate(GeneratorConfig(**{**SMALL.as_dict(), "seed": SMALL.seed + 1}), other, progress=False)
    for name in names:
        if name.startswith("transactions_") or name in (GROUND_TRUTH_FILE, PROMOTION_FILE):
            assert (small_data / name).read_bytes() != (other / name).read_bytes(), name


def test_longer_run_extends_shorter_one(small_data, tmp_path):
    """A week's content depends on the seed and sizes, not on how many weeks follow it."""
    shorter = tmp_path / "shorter"
    generate(GeneratorConfig(**{**SMALL.as_dict(), "weeks": 5}), shorter, progress=False)
    week_files = sorted(shorter.glob(schema.LGSR_FILE_GLOB))
    assert len(week_files) == 5
    for path in week_files:
        assert path.read_bytes() == (small_data / path.name).read_bytes(), path.name


def test_header_and_value_domains_match_lgsr(small_data):
    paths = sorted(small_data.glob(schema.LGSR_FILE_GLOB))
    codes = [int(re.fullmatch(r"transactions_(\d{6})\.csv", path.name).group(1)) for path in paths]
    assert codes[0] == 200607
    expected = [200607]
    while len(expected) < len(codes):
        year, week = divmod(expected[-1], 100)
        expected.append((year + 1) * 100 + 1 if week == 52 else expected[-1] + 1)
    assert codes == expected
    for path, code in zip(paths, codes):
        with open(path) as lines:
            assert lines.readline().rstrip("\n") == ",".join(schema.LGSR_COLUMNS)
        week = read_week_files_one(path)
        assert set(column(week, "SHOP_WEEK")) == {str(code)}

    table = read_week_files(small_data)
    for name, vocabulary in LABEL_COLUMNS.items():
        values = column(table, name)
        assert set(values) <= set(vocabulary), name
    for name in ("CUST_LIFESTAGE", "BASKET_SIZE", "BASKET_TYPE", "BASKET_DOMINANT_MISSION"):
        unknown_share = (column(table, name) == schema.UNKNOWN_LABEL).mean()
        assert 0.0 < unknown_share < 0.25, name  # a small share of XX (anonymous shoppers included for CUST_*)

    weekday = column(table, "SHOP_WEEKDAY").astype(int)
    assert weekday.min() >= 1 and weekday.max() <= 7
    hour = column(table, "SHOP_HOUR").astype(int)
    assert hour.min() >= 0 and hour.max() <= 23
    for date, day in set(zip(column(table, "SHOP_DATE"), weekday)):
        as_date = dt.datetime.strptime(date, "%Y%m%d").date()
        assert as_date.isoweekday() % 7 + 1 == day  # 1 = Sunday .. 7 = Saturday
    assert all(re.fullmatch(r"[1-9]\d*", value) for value in set(column(table, "QUANTITY")))
    assert all(re.fullmatch(r"\d+\.\d\d", value) for value in set(column(table, "SPEND")))
    assert all(re.fullmatch(r"[EWNS]\d\d", value) for value in set(column(table, "STORE_REGION")))
    assert all(re.fullmatch(r"STORE\d{5}", value) for value in set(column(table, "STORE_CODE")))

    customer = column(table, "CUST_CODE")
    anonymous = customer == ""
    assert 0.02 < anonymous.mean() < 0.4
    assert (column(table, "CUST_LIFESTAGE")[anonymous] == schema.UNKNOWN_LABEL).all()
    assert (column(table, "CUST_PRICE_SENSITIVITY")[anonymous] == schema.UNKNOWN_LABEL).all()

    # The hierarchy is a tree: each code has one parent.
    levels = ("PROD_CODE", "PROD_CODE_10", "PROD_CODE_20", "PROD_CODE_30", "PROD_CODE_40")
    for child, parent in zip(levels, levels[1:]):
        pairs = set(zip(column(table, child), column(table, parent)))
        assert len(pairs) == len({code for code, _ in pairs}), (child, parent)

    # Baskets: contiguous lines, one product per line, one trip context and one set of labels each.
    basket = column(table, "BASKET_ID")
    starts = np.flatnonzero(np.r_[True, basket[1:] != basket[:-1]])
    assert len(starts) == len(set(basket))
    per_basket = {
        name: len(set(zip(basket, column(table, name))))
        for name in ("CUST_CODE", "STORE_CODE", "SHOP_DATE", "SHOP_HOUR", "BASKET_SIZE", "BASKET_TYPE")
    }
    assert set(per_basket.values()) == {len(starts)}
    assert len(set(zip(basket, column(table, "PROD_CODE")))) == table.num_rows
    assert np.diff(np.r_[starts, table.num_rows]).max() <= MAX_BASKET_LINES


def read_week_files_one(path: Path) -> pa.Table:
    as_text = pa_csv.ConvertOptions(column_types={column: pa.string() for column in schema.LGSR_COLUMNS})
    return pa_csv.read_csv(path, convert_options=as_text)


def test_trip_frequency_and_basket_sizes_resemble_lgsr(structure_data):
    _, table = structure_data
    basket = column(table, "BASKET_ID")
    lines_per_basket = np.unique(basket, return_counts=True)[1]
    assert 7.0 < lines_per_basket.mean() < 13.0
    assert lines_per_basket.max() >= 40
    customer = column(table, "CUST_CODE")
    card = customer != ""
    trips = len(set(zip(basket[card], customer[card])))
    trips_per_customer_week = trips / len(set(customer[card])) / STRUCTURE.weeks
    assert 0.4 < trips_per_customer_week < 1.5  # a few trips a month


def test_complement_pairs_co_occur_well_above_chance(structure_data):
    _, table = structure_data
    catalogue = build_catalogue(STRUCTURE)
    code_index = {code: index for index, code in enumerate(catalogue.codes.to_pylist())}
    product = np.array([code_index[code] for code in column(table, "PROD_CODE")])
    basket = np.unique(column(table, "BASKET_ID"), return_inverse=True)[1]
    n_baskets = basket.max() + 1
    holds = np.zeros((n_baskets, catalogue.n_products), dtype=bool)
    holds[basket, product] = True
    share = holds.mean(axis=0)

    def lift(first: np.ndarray, second: np.ndarray) -> float:
        together = (holds[:, first] & holds[:, second]).mean(axis=0)
        return together.sum() / (share[first] * share[second]).sum()

    paired = np.flatnonzero(catalogue.partner > np.arange(catalogue.n_products))
    rng = np.random.default_rng(0)
    random_first, random_second = rng.integers(0, catalogue.n_products, (2, 2000))
    distinct = random_first != random_second
    pair_lift = lift(paired, catalogue.partner[paired])
    random_lift = lift(random_first[distinct], random_second[distinct])
    assert pair_lift > 3.0 * random_lift, (pair_lift, random_lift)
    assert 0.5 < random_lift < 2.0


def test_price_band_shifts_spend_per_item(structure_data):
    _, table = structure_data
    unit_price = column(table, "SPEND").astype(float) / column(table, "QUANTITY").astype(float)
    band = column(table, "CUST_PRICE_SENSITIVITY")
    mean_price = {name: unit_price[band == name].mean() for name in ("LA", "MM", "UM")}
    assert mean_price["LA"] < mean_price["MM"] < mean_price["UM"], mean_price
    assert mean_price["UM"] > 1.2 * mean_price["LA"], mean_price

    premium_share = {}
    basket_band = column(table, "BASKET_PRICE_SENSITIVITY")
    for name in ("LA", "UM"):
        premium_share[name] = (basket_band[band == name] == "UM").mean()
    assert premium_share["UM"] > 1.5 * premium_share["LA"], premium_share


def test_customers_rebuy_their_favourites(structure_data):
    """The share of a customer's later items that they bought in the first half is far above the share that
    another, random customer bought."""
    _, table = structure_data
    customer = column(table, "CUST_CODE")
    week = column(table, "SHOP_WEEK").astype(int)
    product = column(table, "PROD_CODE")
    card = customer != ""
    half = np.sort(np.unique(week))[STRUCTURE.weeks // 2]
    early = {}
    for who, what in zip(customer[card & (week < half)], product[card & (week < half)]):
        early.setdefault(who, set()).add(what)
    late = [(who, what) for who, what in zip(customer[card & (week >= half)], product[card & (week >= half)])
            if who in early]
    people = sorted(early)
    rng = np.random.default_rng(0)
    stranger = dict(zip(people, rng.permutation(people)))
    own = np.mean([what in early[who] for who, what in late])
    other = np.mean([what in early[stranger[who]] for who, what in late])
    assert own > 2.0 * other, (own, other)
    assert own > 0.4


def test_ground_truth_covers_exactly_the_test_week_lines(small_data):
    truth = pq.read_table(small_data / GROUND_TRUTH_FILE)
    _, validation_end = schema.split_boundaries(SMALL.weeks)
    test_paths = sorted(small_data.glob(schema.LGSR_FILE_GLOB))[validation_end:]
    lines = pa.concat_tables(read_week_files_one(path) for path in test_paths)
    basket = column(lines, "BASKET_ID").astype(np.int64)
    starts = np.flatnonzero(np.r_[True, basket[1:] != basket[:-1]])
    position = np.arange(len(basket)) - np.repeat(starts, np.diff(np.r_[starts, len(basket)]))
    assert truth.num_rows == lines.num_rows > 0
    assert truth.column("basket_id").to_numpy().tolist() == basket.tolist()
    assert truth.column("position").to_numpy().tolist() == position.tolist()
    assert truth.column("product_id").to_pylist() == column(lines, "PROD_CODE").tolist()
    assert set(truth.column("week").to_numpy()) == set(range(validation_end + 1, SMALL.weeks + 1))
    for name in ("probability", "probability_excluding_basket"):
        values = truth.column(name).to_numpy()
        assert (values > 0).all() and (values <= 1).all(), name
    assert (truth.column("probability_excluding_basket").to_numpy() >= truth.column("probability").to_numpy()).all()
    rank = truth.column("rank").to_numpy()
    assert rank.min() >= 1 and rank.max() <= SMALL.products


def brute_force_slots(config: GeneratorConfig, week_index: int):
    """The week's lines scored one by one over the whole catalogue, straight from the formula in shopping.py."""
    catalogue = build_catalogue(config)
    stores = build_stores(config)
    customers = build_customers(config, catalogue, stores)
    market = week_market(catalogue, config.seed, week_index)
    week = simulate_week(config.seed, week_index, catalogue, stores, customers, market)
    n_partners, w_complement, w_habit, w_explore = slot_weights(week, catalogue, customers)
    habit = habit_weights(customers, catalogue, week.trip_customer, week.trip_mission)
    distributions, probability, excluding, rank = [], [], [], []
    for line in range(len(week.line_trip)):
        trip = week.line_trip[line]
        customer = week.trip_customer[trip]
        basket = week.line_product[week.line_trip == trip]
        position = week.line_position[line]
        earlier, true = basket[:position], week.line_product[line]
        group = week.trip_mission[trip] * N_PRICE_BANDS + customers.price_band[customer]
        slot = w_explore[line] * market.explore[group].copy()
        np.add.at(slot, customers.favourites[customer], w_habit[line] * habit[trip])
        partners = catalogue.partner[earlier]
        partners = partners[partners >= 0]
        assert len(partners) == n_partners[line]
        if len(partners):
            np.add.at(slot, partners, w_complement[line] / len(partners))
        others = basket[basket != true]
        probability.append(slot[true] / (1 - slot[earlier].sum()))
        excluding.append(slot[true] / (1 - slot[others].sum()))
        outside = np.ones(catalogue.n_products, dtype=bool)
        outside[basket] = False
        rank.append(1 + int((slot[outside] > slot[true]).sum()))
        restricted = slot.copy()
        restricted[earlier] = 0
        distributions.append(restricted / restricted.sum())
    truth = ground_truth(week, basket_ids(week), 0, market, catalogue, customers)
    return truth, np.array(probability), np.array(excluding), np.array(rank), distributions, week


@pytest.mark.parametrize("lines_per_chunk", [16384, 37], ids=["one-chunk", "many-chunks"])
def test_ground_truth_matches_brute_force_over_the_catalogue(monkeypatch, lines_per_chunk):
    monkeypatch.setattr(oracle, "LINES_PER_CHUNK", lines_per_chunk)
    config = GeneratorConfig(customers=150, products=60, stores=3, weeks=4, seed=5)
    truth, probability, excluding, rank, _, _ = brute_force_slots(config, week_index=3)
    assert truth.num_rows == len(rank) > 300
    np.testing.assert_allclose(truth.column("probability").to_numpy(), probability, rtol=1e-9)
    np.testing.assert_allclose(truth.column("probability_excluding_basket").to_numpy(), excluding, rtol=1e-9)
    np.testing.assert_array_equal(truth.column("rank").to_numpy(), rank)


def test_items_are_drawn_from_the_distribution_the_oracle_reports():
    """Calibration: the mean probability of the drawn items equals the mean of sum_p P(p)^2, as it must when
    the items are drawn from P."""
    config = GeneratorConfig(customers=600, products=60, stores=3, weeks=3, seed=8)
    _, probability, _, _, distributions, week = brute_force_slots(config, week_index=2)
    expected = np.array([(slot**2).sum() for slot in distributions])
    spread = np.sqrt(probability.var() / len(probability))
    assert abs(probability.mean() - expected.mean()) < 4 * spread, (probability.mean(), expected.mean(), spread)
    sources = np.bincount(week.line_source, minlength=3) / len(week.line_source)
    assert (sources > 0.05).all()  # complement, habit and explore slots all occur


def test_promotions_lower_the_price_and_raise_sales(structure_data):
    """Seen from the CSVs: in the weeks a product sells below its usual unit price it sells more lines."""
    _, table = structure_data
    product = np.unique(column(table, "PROD_CODE"), return_inverse=True)[1]
    week = np.unique(column(table, "SHOP_WEEK"), return_inverse=True)[1]
    unit_price = column(table, "SPEND").astype(float) / column(table, "QUANTITY").astype(float)
    n_products, n_weeks = product.max() + 1, week.max() + 1
    cell = product * n_weeks + week
    lines = np.bincount(cell, minlength=n_products * n_weeks).reshape(n_products, n_weeks)
    lowest = np.full(n_products * n_weeks, np.inf)
    np.minimum.at(lowest, cell, unit_price)
    lowest = lowest.reshape(n_products, n_weeks)
    usual = np.median(np.where(np.isfinite(lowest), lowest, np.nan), axis=1, keepdims=True)
    sold = lines > 0
    promoted = sold & (lowest < 0.92 * usual)
    regular = sold & ~promoted
    busy = (lines.sum(axis=1) >= 5 * n_weeks)[:, None]  # products with enough weekly sales to compare
    assert (promoted & busy).sum() > 50
    ratio = lines[promoted & busy].mean() / lines[regular & busy].mean()
    assert ratio > 1.3, ratio
