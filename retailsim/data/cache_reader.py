"""The one reader of a Stage 2 tensor cache: ``TensorCache.open(folder)`` parses and checks ``cache.json`` once and
hands out its arrays, memory-mapped and read-only.

Everything that reads a cache (the model's sizes, batching, co-occurrence, baselines, evaluator, oracle, trainer)
goes through here, so a damaged cache fails in one place with one sentence naming the file and what is wrong:
- on open: the manifest parses and names this format; every listed ``.npy`` exists, opens (a truncated or empty
  file does not) and has the dtype and shape the manifest gives; ``vocab.json`` parses;
- on first use of a split (:meth:`split_arrays`): every id lies inside the sizes the manifest declares (product ids
  inside the vocabulary, customer, store and region ids inside their counts, labels inside their label lists,
  offsets non-decreasing and ending at the array they index). Ids are never "grown into": an embedding is sized
  from the manifest, and an id beyond it is a corrupt cache, not a bigger one.
Checks are vectorised (min/max per array) and done once per process per cache file.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from retailsim.data import schema
from retailsim.data.tensor_cache import CACHE_FORMAT_VERSION
from retailsim.errors import RetailSimInputError, first_line

CACHE_FORMAT = "retailsim-tensor-cache"
_INT_KEYS = ("n_products", "vocab_size", "n_customer_keys", "n_customers", "n_stores", "n_store_regions",
             "n_stream_items")
_SHARED = ("streams", "vocab")
_checked_splits: dict[tuple, set] = {}  # (folder, cache.json mtime and size) -> splits whose ids were checked


class TensorCache:
    """A validated tensor cache. ``argument`` names the flag the folder came from, for error messages."""

    def __init__(self, folder: Path, manifest: dict, vocab: dict, argument: str) -> None:
        self.folder, self.manifest, self.vocab, self.argument = folder, manifest, vocab, argument
        self._arrays: dict[str, np.ndarray] = {}

    @classmethod
    def open(cls, folder, argument: str = "--data") -> "TensorCache":
        folder = Path(folder)
        where = f"{argument} {folder}"
        if not folder.is_dir():
            raise RetailSimInputError(f"{where}: no such folder (expected a tensor cache from prepare-tensor-cache).")
        manifest_path = folder / "cache.json"
        if not manifest_path.is_file():
            raise RetailSimInputError(f"{where} is not a tensor cache (no cache.json); run prepare-tensor-cache.")
        manifest = _read_json(manifest_path, "the cache manifest")
        if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
            raise RetailSimInputError(f"{manifest_path} is not a RetailSim tensor cache manifest; rerun "
                                      f"prepare-tensor-cache.")
        if manifest.get("format_version") != CACHE_FORMAT_VERSION:
            raise RetailSimInputError(f"{manifest_path} has cache format {manifest.get('format_version')!r}, "
                                      f"expected {CACHE_FORMAT_VERSION}; rerun prepare-tensor-cache.")
        for key in _INT_KEYS:
            if not isinstance(manifest.get(key), int) or isinstance(manifest.get(key), bool) or manifest[key] < 0:
                raise RetailSimInputError(f"{manifest_path}: {key} is {manifest.get(key)!r}, expected a count "
                                          f"(0 or more); the manifest is damaged, rerun prepare-tensor-cache.")
        if manifest["vocab_size"] != schema.vocab_size(manifest["n_products"]):
            raise RetailSimInputError(f"{manifest_path}: vocab_size {manifest['vocab_size']} does not match "
                                      f"n_products {manifest['n_products']} + 3; rerun prepare-tensor-cache.")
        arrays = manifest.get("arrays")
        if not isinstance(arrays, dict):
            raise RetailSimInputError(f"{manifest_path} lists no arrays; rerun prepare-tensor-cache.")
        for split in schema.SPLITS:
            if not isinstance((manifest.get("splits") or {}).get(split), dict):
                raise RetailSimInputError(f"{manifest_path} describes no {split} split; rerun prepare-tensor-cache.")
        vocab = _read_json(folder / "vocab.json", "the vocabulary") if (folder / "vocab.json").is_file() else {}
        if not isinstance(vocab, dict):
            raise RetailSimInputError(f"{folder / 'vocab.json'} is not a vocabulary object; rerun prepare-tensor-cache.")
        cache = cls(folder, manifest, vocab, argument)
        for name in arrays:
            cache.array(name)  # opens and checks every file's header now
        for name in ("vocab/product_category", "vocab/product_train_baskets", "streams/stream_items",
                     "streams/stream_weeks", "streams/stream_offsets"):
            cache.array(name)
        return cache

    # ------------------------------------------------------------------------------------------ sizes
    @property
    def n_products(self) -> int:
        return self.manifest["n_products"]

    @property
    def vocab_size(self) -> int:
        return self.manifest["vocab_size"]

    @property
    def n_customers(self) -> int:
        return self.manifest["n_customers"]

    @property
    def n_customer_keys(self) -> int:
        return self.manifest["n_customer_keys"]

    @property
    def n_stores(self) -> int:
        return self.manifest["n_stores"]

    @property
    def n_store_regions(self) -> int:
        return self.manifest["n_store_regions"]

    @property
    def unk_id(self) -> int:
        return schema.unk_id(self.n_products)

    def n_baskets(self, split: str) -> int:
        return len(self.array(f"{split}/basket_item_offsets")) - 1

    def category_names(self, level: int) -> list:
        """Names of hierarchy level ``level`` (0 = finest); id i + 1 is names[i], 0 unknown."""
        names = (self.vocab.get("categories") or {}).get(schema.HIERARCHY_COLUMNS[level], {}).get("names", [])
        return list(names) if isinstance(names, list) else []

    def data_sizes(self) -> dict:
        """``{vocab_size, category_sizes, n_stores, n_store_regions}`` as embedding rows (id 0 = unknown), from
        the manifest and vocab.json; :meth:`product_category` guarantees the hierarchy ids fit."""
        category = self.product_category()
        sizes = [len(self.category_names(level)) + 1 for level in range(len(schema.HIERARCHY_COLUMNS))]
        for level, size in enumerate(sizes):
            self._check_range(category[:, level], "vocab/product_category", 0, size - 1,
                              f"vocab.json's {schema.HIERARCHY_COLUMNS[level]} names")
        return {"vocab_size": self.vocab_size, "category_sizes": sizes, "n_stores": self.n_stores + 1,
                "n_store_regions": self.n_store_regions + 1}

    # ------------------------------------------------------------------------------------------ arrays
    def array(self, name: str) -> np.ndarray:
        """The array ``name`` (e.g. ``train/item_ids``, ``vocab/product_category``), read-only memory map."""
        if name not in self._arrays:
            entry = self.manifest["arrays"].get(name)
            manifest_path = self.folder / "cache.json"
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                raise RetailSimInputError(f"{manifest_path} lists no array {name!r}; rerun prepare-tensor-cache.")
            path = self.folder / entry["path"]
            try:
                values = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as error:
                problem = "is missing" if not path.exists() else f"cannot be read ({first_line(error)})"
                raise RetailSimInputError(f"{path} {problem}; the tensor cache is damaged, rerun "
                                          f"prepare-tensor-cache.") from None
            if str(values.dtype) != entry.get("dtype") or list(values.shape) != list(entry.get("shape", [])):
                raise RetailSimInputError(f"{path} holds {values.dtype} {list(values.shape)}, but cache.json says "
                                          f"{entry.get('dtype')} {entry.get('shape')}; the tensor cache is damaged, "
                                          f"rerun prepare-tensor-cache.")
            self._arrays[name] = values
        return self._arrays[name]

    def split_arrays(self, split: str) -> dict[str, np.ndarray]:
        """Every array of ``split`` plus the shared streams and vocab arrays, by short name, ids checked."""
        if split not in schema.SPLITS:
            raise ValueError(f"split must be one of {', '.join(schema.SPLITS)}, got {split!r}.")
        self.check_ids(split)
        return {name.split("/", 1)[1]: self.array(name) for name in self.manifest["arrays"]
                if name.split("/", 1)[0] in (split, *_SHARED)}

    def product_category(self) -> np.ndarray:
        """int64 [vocab_size, 4]: hierarchy ids of each product id (a fresh array)."""
        category = self.array("vocab/product_category")
        if category.shape != (self.vocab_size, len(schema.HIERARCHY_COLUMNS)):
            raise RetailSimInputError(f"{self.folder / 'vocab/product_category.npy'} has shape {category.shape}, "
                                      f"expected ({self.vocab_size}, {len(schema.HIERARCHY_COLUMNS)}); rerun "
                                      f"prepare-tensor-cache.")
        return np.asarray(category, np.int64)

    def product_counts(self) -> np.ndarray:
        """int64 [vocab_size]: training baskets holding each product id (a fresh array)."""
        counts = np.array(self.array("vocab/product_train_baskets"), np.int64)
        if counts.shape != (self.vocab_size,) or (len(counts) and counts.min() < 0):
            raise RetailSimInputError(f"{self.folder / 'vocab/product_train_baskets.npy'} is not {self.vocab_size} "
                                      f"counts; rerun prepare-tensor-cache.")
        return counts

    def promotion_plan(self):
        """The cache's promotion plan (``retailsim.data.promotions.PromotionPlan``), or None without one. A
        week, store or product id outside the cache's sizes is a damaged cache."""
        if "promotions/plan_week_offsets" not in self.manifest["arrays"]:
            return None
        from retailsim.data.promotions import PromotionPlan

        offsets = self.array("promotions/plan_week_offsets")
        products, stores = self.array("promotions/plan_products"), self.array("promotions/plan_store")
        self._check_offsets(offsets, "promotions/plan_week_offsets", len(products), "promotions/plan_products")
        self._check_range(products, "promotions/plan_products", 1, self.n_products, "the vocabulary's products")
        self._check_range(stores, "promotions/plan_store", 0, self.n_stores, "n_stores")
        if len(stores) != len(products):
            raise self._damaged("promotions/plan_store", f"has {len(stores)} rows, plan_products {len(products)}")
        features = {}
        for name in ("discount", "display", "mailer"):
            values = self.array(f"promotions/plan_{name}")
            if len(values) != len(products):
                raise self._damaged(f"promotions/plan_{name}", f"has {len(values)} rows, plan_products {len(products)}")
            features[name] = np.asarray(values)
        return PromotionPlan(np.asarray(offsets), np.asarray(stores), np.asarray(products), self.vocab_size,
                             **features)

    @property
    def samples_folder(self) -> Path | None:
        """The Stage 1 folder the cache was built from, as recorded (it may have moved since)."""
        samples = self.manifest.get("samples")
        return Path(samples) if isinstance(samples, str) else None

    @property
    def source_input(self) -> str | None:
        """The raw input Stage 1 read, as recorded in its metadata."""
        source = (self.manifest.get("samples_metadata") or {}).get("input")
        return source if isinstance(source, str) else None

    def fingerprint(self) -> str:
        """What identifies the data set: Stage 1's input fingerprint and the baskets of each split."""
        source = (self.manifest.get("samples_metadata") or {}).get("input_fingerprint", "")
        return f"{source}:" + ",".join(str(self.n_baskets(split)) for split in schema.SPLITS)

    # ------------------------------------------------------------------------------------------ id checks
    def check_ids(self, split: str) -> None:
        stat = (self.folder / "cache.json").stat()
        key = (str(self.folder.resolve()), stat.st_mtime_ns, stat.st_size)
        done = _checked_splits.setdefault(key, set())
        if split in done:
            return
        if "shared" not in done:
            self._check_shared()
            done.add("shared")
        self._check_split(split)
        done.add(split)

    def _check_shared(self) -> None:
        offsets = self.array("streams/stream_offsets")
        self._check_offsets(offsets, "streams/stream_offsets", len(self.array("streams/stream_items")),
                            "streams/stream_items")
        if len(offsets) != self.n_customer_keys + 1:
            raise self._damaged("streams/stream_offsets", f"has {len(offsets)} entries, expected n_customer_keys + 1 "
                                                          f"= {self.n_customer_keys + 1}")
        self._check_range(self.array("streams/stream_items"), "streams/stream_items", 1, self.unk_id,
                          "the product ids of the vocabulary")
        for name in ("vocab/product_train_baskets", "vocab/product_log_price_median", "vocab/product_has_price"):
            if name in self.manifest["arrays"] and len(self.array(name)) != self.vocab_size:
                raise self._damaged(name, f"has {len(self.array(name))} rows, expected vocab_size {self.vocab_size}")

    def _check_split(self, split: str) -> None:
        a = lambda name: self.array(f"{split}/{name}")  # noqa: E731
        n_items = len(a("item_ids"))
        self._check_offsets(a("basket_item_offsets"), f"{split}/basket_item_offsets", n_items, f"{split}/item_ids")
        self._check_range(a("item_ids"), f"{split}/item_ids", 1, self.unk_id, "the product ids of the vocabulary")
        limits = {
            "customer_id": (0, self.n_customers, "n_customers"),
            "customer_key": (0, self.n_customer_keys - 1, "n_customer_keys - 1"),
            "store_id": (0, self.n_stores, "n_stores"),
            "store_region": (0, self.n_store_regions, "n_store_regions"),
            "bucket": (0, len(schema.PRIOR_BUCKETS) - 1, "the prior-basket buckets"),
            "weekday": (0, 6, "weekdays"),
            "hour": (0, 23, "hours"),
            **{name: (0, len(schema.LABELS[name]) - 1, f"schema.LABELS[{name!r}]")
               for name in ("store_format", "customer_segment", "customer_price_band")},
        }
        for name, (low, high, what) in limits.items():
            if f"{split}/{name}" in self.manifest["arrays"]:
                self._check_range(a(name), f"{split}/{name}", low, high, what)
        labels = a("labels")
        for column, target in enumerate(schema.LABEL_TARGETS):
            self._check_range(labels[:, column], f"{split}/labels", 0, len(schema.LABELS[target]) - 1,
                              f"schema.LABELS[{target!r}]")
        start, end, end_week = a("history_start"), a("history_end"), a("history_end_week")
        n_stream = len(self.array("streams/stream_items"))
        if len(start) and (start.min() < 0 or end.max() > n_stream or np.any(start > end_week)
                           or np.any(end_week > end)):
            raise self._damaged(f"{split}/history_start", f"history windows outside the stream of {n_stream} items")

    def _check_offsets(self, offsets: np.ndarray, name: str, total: int, of: str) -> None:
        if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != total or np.any(np.diff(offsets) < 0):
            raise self._damaged(name, f"is not a non-decreasing offset array from 0 to the {total} entries of {of}")

    def _check_range(self, values: np.ndarray, name: str, low: int, high: int, what: str) -> None:
        if len(values) == 0:
            return
        smallest, largest = int(values.min()), int(values.max())
        if smallest < low or largest > high:
            bad = smallest if smallest < low else largest
            raise self._damaged(name, f"holds {bad}, outside {low}..{high} ({what} in cache.json/vocab.json)")

    def _damaged(self, name: str, problem: str) -> RetailSimInputError:
        path = self.folder / self.manifest["arrays"][name]["path"]
        return RetailSimInputError(f"{path} {problem}; the tensor cache is damaged, rerun prepare-tensor-cache.")


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise RetailSimInputError(f"{path}: {what} cannot be read ({first_line(error)}); rerun "
                                  f"prepare-tensor-cache.") from None
