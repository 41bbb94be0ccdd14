import pytest

from mmap_ray.data.sampler import MultiTaskBatchSampler, task_quotas


def test_quotas():
    assert task_quotas([100, 100, 100, 100], 64) == [16, 16, 16, 16]
    assert task_quotas([100, 100, 100], 10) == [4, 3, 3]
    assert task_quotas([300, 100, 100], 10, "proportional") == [6, 2, 2]
    assert task_quotas([1000, 1, 1], 10, "proportional") == [8, 1, 1]  # every task at least once
    with pytest.raises(ValueError, match="batch_size=3 must be >= the number of tasks"):
        task_quotas([5, 5, 5, 5], 3)
    with pytest.raises(ValueError, match="sampling='mixed' is not valid"):
        task_quotas([5], 3, "mixed")


def _task(i, offsets):
    return max(t for t, o in enumerate(offsets) if i >= o)


def test_every_task_in_every_batch_and_epoch_covers_largest_task():
    sizes = [40, 10, 25]
    s = MultiTaskBatchSampler(sizes, 12, seed=3)
    offsets = [0, 40, 50]
    batches = list(s)
    assert len(batches) == len(s) == 10  # the 40-image task at 4 per batch
    for b in batches:
        assert sorted(_task(i, offsets) for i in b) == [0] * 4 + [1] * 4 + [2] * 4
    seen0 = sorted(i for b in batches for i in b if i < 40)
    assert seen0 == list(range(40))  # the largest task is seen exactly once per epoch


def test_order_depends_only_on_seed_and_epoch():
    a, b = MultiTaskBatchSampler([30, 30], 8, seed=1), MultiTaskBatchSampler([30, 30], 8, seed=1)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)


def test_ranks_split_the_global_batch():
    sizes = [20, 12]
    one = list(MultiTaskBatchSampler(sizes, 8, seed=0))
    r0 = list(MultiTaskBatchSampler(sizes, 8, seed=0, rank=0, world_size=2))
    r1 = list(MultiTaskBatchSampler(sizes, 8, seed=0, rank=1, world_size=2))
    for full, a, b in zip(one, r0, r1):
        assert sorted(a + b) == sorted(full) and len(a) == len(b) == 4
        assert {i < 20 for i in a} == {True, False}  # each rank sees both tasks
    with pytest.raises(ValueError, match="fewer than the 4 workers"):
        MultiTaskBatchSampler(sizes, 6, world_size=4)
