"""The cache DataLoader (SPEC 3.6): coverage, determinism across workers and epochs, bucketing, DDP shards."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from retailsim.data.batching import Batch
from retailsim.data.loader import BucketBatchSampler, CacheBatchDataset, make_loader, padding_fraction, set_epoch
from retailsim.errors import RetailSimInputError
from tests.data.batching_fixtures import small_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return small_cache(tmp_path_factory)


def served(loader, epoch):
    set_epoch(loader, epoch)
    return list(loader)


def test_each_sample_once_per_epoch_and_batches_are_batches(cache):
    loader = make_loader(cache, "train", batch_size=64)
    n = len(loader.dataset)
    batches = served(loader, 0)
    assert len(batches) == len(loader) == -(-n // 64)
    assert all(isinstance(b, Batch) for b in batches)
    seen = np.concatenate([b.sample_index.numpy() for b in batches])
    assert sorted(seen.tolist()) == list(range(n))
    dropped = make_loader(cache, "train", batch_size=64, drop_last=True)
    assert len(served(dropped, 0)) == len(dropped) == n // 64


def test_workers_do_not_change_the_batches(cache):
    reference = served(make_loader(cache, "train", batch_size=48, num_workers=0), 2)
    loader = make_loader(cache, "train", batch_size=48, num_workers=2)
    for epoch in (2, 3, 2):  # persistent workers must follow the epoch set in the main process
        batches = served(loader, epoch)
        expected = reference if epoch == 2 else served(make_loader(cache, "train", batch_size=48), 3)
        assert len(batches) == len(expected)
        for got, want in zip(batches, expected):
            for name, value in vars(want).items():
                assert torch.equal(getattr(got, name), value), (epoch, name)


def test_epochs_reshuffle_and_remask_but_evaluation_is_fixed(cache):
    train = make_loader(cache, "train", batch_size=64)
    first, second = served(train, 0), served(train, 1)
    assert not torch.equal(first[0].sample_index, second[0].sample_index)
    evaluation = make_loader(cache, "validation", batch_size=64)
    assert not evaluation.dataset.train and not evaluation.sampler.shuffle
    a, b = served(evaluation, 0), served(evaluation, 7)
    for x, y in zip(a, b):
        assert torch.equal(x.basket_items, y.basket_items) and torch.equal(x.targets, y.targets)
    masked = torch.cat([x.basket_items[x.masked_positions] for x in a])
    assert (masked == evaluation.dataset.arrays.n_products + 2).all()  # evaluation: all MASK


def test_bucketing_reduces_padding(cache):
    dataset = CacheBatchDataset(cache, "train")
    basket, history = dataset.lengths()
    fractions = {}
    for bucket in (False, True):
        sampler = BucketBatchSampler(basket, history, 32, bucket=bucket, seed=1)
        batches = sampler.batches(0)
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(basket)))
        fractions[bucket] = padding_fraction(batches, basket, history)
    assert fractions[True]["history"] < 0.6 * fractions[False]["history"]
    assert fractions[True]["basket"] < 0.8 * fractions[False]["basket"]
    # the measured fraction is the padding of the collated tensors
    batch = dataset[(0, batches[0])]
    assert batch.history_items.shape[1] == max(1, history[batches[0]].max())
    assert batch.basket_items.shape[1] == max(1, basket[batches[0]].max())


def test_distributed_shards_are_disjoint_and_equal(cache):
    dataset = CacheBatchDataset(cache, "train")
    basket, history = dataset.lengths()
    shards = [list(BucketBatchSampler(basket, history, 40, seed=3, num_replicas=3, rank=r)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(BucketBatchSampler(basket, history, 40,
                                                                                           num_replicas=3))
    indices = [np.concatenate([i for _, i in s]) for s in shards]
    together = np.concatenate(indices)
    assert len(np.unique(together)) == len(together)


def test_dataset_pickles_without_its_memory_maps(cache):
    dataset = CacheBatchDataset(cache, "test", train=False)
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._arrays is None
    a, b = dataset[(0, np.arange(10))], clone[(0, np.arange(10))]
    assert torch.equal(a.basket_items, b.basket_items) and torch.equal(a.history_items, b.history_items)


def test_bad_arguments(cache, tmp_path):
    with pytest.raises(RetailSimInputError, match="not a tensor cache"):
        make_loader(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        make_loader(cache, "dev")
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(cache, "train", batch_size=0)
    with pytest.raises(ValueError, match="rank"):
        make_loader(cache, "train", num_replicas=2, rank=2)


@pytest.mark.cuda
def test_pinned_memory_on_cuda(cache):
    loader = make_loader(cache, "train", batch_size=64, device="cuda", num_workers=1)
    batch = next(iter(loader))
    assert batch.basket_items.is_pinned() and batch.history_items.is_pinned()
    assert batch.to("cuda", non_blocking=True).targets.device.type == "cuda"
