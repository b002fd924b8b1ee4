"""Data loading over a Stage 2 cache split (SPEC 3.6): a batch-level Dataset, a length-bucketed batch sampler and
the DataLoader factory (workers, pinned memory on CUDA, persistent workers).

The sampler yields ``(epoch, sample indices)`` and the dataset turns one such item into a whole :class:`Batch`
with :func:`retailsim.data.batching.collate` (native kernel or NumPy twin): one call per batch, no per-sample
Python. The epoch travels with the indices, so persistent workers (which keep their own copy of the dataset)
still mask each epoch differently, and the masks never depend on the number of workers or their order.

Length bucketing (``bucket=True``): each epoch the shuffled samples are cut into pools of ``pool_batches``
batches; a pool is sorted by capped history length, cut into groups of ``group_batches`` batches, each group
sorted by capped basket length and cut into batches; the batch order is then shuffled. Batches therefore hold
samples of similar history *and* basket length, so the per-batch widths (S, H) of the collate shrink;
:func:`padding_fraction` measures by how much.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from retailsim.data import schema
from retailsim.data.batching import DEFAULT_MASK_RATE, DEFAULT_MAX_HISTORY, Batch, CollateArrays, collate
from retailsim.data.promotions import DEFAULT_MAX_PROMOTIONS


class CacheBatchDataset(Dataset):
    """Batches of one cache split; ``dataset[(epoch, indices)]`` is the :class:`Batch` of those rows.

    The arrays are memory-mapped lazily in each process (workers open their own maps; nothing is pickled but
    the folder name), so an epoch over a large cache never loads it into RAM.
    """

    def __init__(self, folder: Path, split: str, *, train: bool = True, seed: int = 0,
                 mask_rate: float = DEFAULT_MASK_RATE, max_items: int = schema.MAX_BASKET_ITEMS,
                 max_history: int = DEFAULT_MAX_HISTORY, use_native: bool | None = None,
                 max_promotions: int = DEFAULT_MAX_PROMOTIONS, read_plan: bool = True) -> None:
        if max_items < 1 or max_history < 1 or max_promotions < 1:
            raise ValueError(f"max_items, max_history and max_promotions must be at least 1, got {max_items}, "
                             f"{max_history} and {max_promotions}.")
        self.max_promotions, self.read_plan = max_promotions, read_plan
        if not 0.0 < mask_rate <= 1.0:
            raise ValueError(f"mask_rate must be in (0, 1], got {mask_rate}.")
        self.folder, self.split, self.train, self.seed = Path(folder), split, train, seed
        self.mask_rate, self.max_items, self.max_history, self.use_native = mask_rate, max_items, max_history, use_native
        self._arrays: CollateArrays | None = None
        self.arrays  # opens (and validates) the cache now, so a bad folder fails in the caller, not in a worker

    @property
    def arrays(self) -> CollateArrays:
        if self._arrays is None:
            self._arrays = CollateArrays.from_cache(self.folder, self.split)
        return self._arrays

    def __getstate__(self):
        return {**self.__dict__, "_arrays": None}

    def __len__(self) -> int:
        return self.arrays.n_baskets

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """(capped basket length, capped history length) of every sample, int64 [n]: the bucketing keys."""
        b = self.arrays.basket
        basket = np.minimum(np.diff(np.asarray(b["basket_item_offsets"])), self.max_items)
        history = np.minimum(np.asarray(b["history_end_week"]) - np.asarray(b["history_start"]), self.max_history)
        return basket.astype(np.int64), history.astype(np.int64)

    def __getitem__(self, item) -> Batch:
        epoch, indices = item
        return collate(self.arrays, indices, seed=self.seed, epoch=epoch, train=self.train, mask_rate=self.mask_rate,
                       max_items=self.max_items, max_history=self.max_history, use_native=self.use_native,
                       max_promotions=self.max_promotions, read_plan=self.read_plan)


class BucketBatchSampler(Sampler):
    """Yields ``(epoch, indices)`` per batch; deterministic in (seed, epoch); call :meth:`set_epoch` each epoch.

    ``shuffle=False`` keeps the split order (evaluation); ``bucket`` sorts within pools as the module says.
    With ``num_replicas > 1`` (DistributedDataParallel) rank r takes batches r, r + R, ... of the epoch's order,
    every rank the same number (the last ``n_batches % R`` batches of that epoch's order are skipped).
    """

    def __init__(self, basket_lengths: np.ndarray, history_lengths: np.ndarray, batch_size: int, *,
                 shuffle: bool = True, bucket: bool = True, drop_last: bool = False, seed: int = 0,
                 pool_batches: int = 64, group_batches: int = 8, num_replicas: int = 1, rank: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        if pool_batches < 1 or group_batches < 1:
            raise ValueError("pool_batches and group_batches must be at least 1.")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in 0..num_replicas-1, got rank {rank} of {num_replicas}.")
        if len(basket_lengths) != len(history_lengths):
            raise ValueError("basket_lengths and history_lengths must have one entry per sample.")
        self.basket_lengths, self.history_lengths = np.asarray(basket_lengths), np.asarray(history_lengths)
        self.batch_size, self.shuffle, self.bucket, self.drop_last, self.seed = batch_size, shuffle, bucket, drop_last, seed
        self.pool_batches, self.group_batches, self.num_replicas, self.rank = pool_batches, group_batches, num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """All batches of ``epoch`` (every rank's), in the order they are served."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.basket_lengths)
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.bucket:
            pool = self.batch_size * self.pool_batches
            group = self.batch_size * self.group_batches
            sorted_pools = []
            for start in range(0, n, pool):
                chunk = order[start:start + pool]
                chunk = chunk[np.argsort(self.history_lengths[chunk], kind="stable")]
                for g in range(0, len(chunk), group):
                    part = chunk[g:g + group]
                    sorted_pools.append(part[np.argsort(self.basket_lengths[part], kind="stable")])
            order = np.concatenate(sorted_pools) if sorted_pools else order
        cut = range(0, n - (n % self.batch_size if self.drop_last else 0), self.batch_size)
        batches = [order[i:i + self.batch_size] for i in cut]
        if self.bucket and self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _own(self) -> list[np.ndarray]:
        batches = self.batches()
        per_rank = len(batches) // self.num_replicas if self.num_replicas > 1 else len(batches)
        return batches[self.rank::self.num_replicas][:per_rank]

    def __iter__(self):
        epoch = self.epoch
        for indices in self._own():
            yield epoch, indices

    def __len__(self) -> int:
        n = len(self.basket_lengths)
        total = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return total // self.num_replicas if self.num_replicas > 1 else total


def padding_fraction(batches: list[np.ndarray], basket_lengths: np.ndarray, history_lengths: np.ndarray) -> dict:
    """Share of padded slots in the collated tensors (basket [B, S] and history [B, H]) over ``batches``."""
    totals = {}
    for name, lengths in (("basket", basket_lengths), ("history", history_lengths)):
        real = sum(int(lengths[b].sum()) for b in batches)
        slots = sum(len(b) * max(1, int(lengths[b].max(initial=0))) for b in batches)
        totals[name] = 1.0 - real / slots if slots else 0.0
    return totals


def make_loader(folder: Path, split: str, *, batch_size: int = 256, train: bool | None = None,
                shuffle: bool | None = None, bucket: bool = True, seed: int = 0, mask_rate: float = DEFAULT_MASK_RATE,
                max_items: int = schema.MAX_BASKET_ITEMS, max_history: int = DEFAULT_MAX_HISTORY,
                num_workers: int = 0, device: torch.device | str = "cpu", drop_last: bool = False,
                num_replicas: int = 1, rank: int = 0, prefetch_factor: int = 4,
                use_native: bool | None = None, max_promotions: int = DEFAULT_MAX_PROMOTIONS,
                read_plan: bool = True) -> DataLoader:
    """A DataLoader of :class:`Batch` over ``split`` of the cache in ``folder``.

    ``train`` defaults to ``split == "train"`` (BERT 80/10/10 masking; otherwise evaluation masking with the
    fixed ``seed``), ``shuffle`` to ``train``. ``pin_memory`` is on when ``device`` is CUDA; workers are
    persistent. Call ``loader.sampler.set_epoch(e)`` (or :func:`set_epoch`) before each epoch.
    ``read_plan=False`` skips the cache's promotion plan (batches carry empty promotion lists).
    """
    train = split == "train" if train is None else train
    shuffle = train if shuffle is None else shuffle
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}.")
    dataset = CacheBatchDataset(folder, split, train=train, seed=seed, mask_rate=mask_rate, max_items=max_items,
                                max_history=max_history, use_native=use_native, max_promotions=max_promotions,
                                read_plan=read_plan)
    basket_lengths, history_lengths = dataset.lengths()
    sampler = BucketBatchSampler(basket_lengths, history_lengths, batch_size, shuffle=shuffle, bucket=bucket,
                                 drop_last=drop_last, seed=seed, num_replicas=num_replicas, rank=rank)
    device = torch.device(device)
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=num_workers,
                      pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
                      prefetch_factor=prefetch_factor if num_workers > 0 else None)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Selects the epoch whose shuffle and masks the loader's next pass serves."""
    loader.sampler.set_epoch(epoch)
