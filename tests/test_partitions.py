"""Set partitions: enumeration against Bell / Stirling numbers, encodings, search, fixed schemes."""

import math

import pytest
import torch

from mmap_ray.grouping import (
    Partition,
    best_partition,
    fixed_partition,
    num_partitions,
    partition_from_index,
    partition_index,
    partition_score,
    set_partitions,
)


def stirling2(n: int, k: int) -> int:  # closed form, independent of the recurrence in the code
    return sum((-1) ** i * math.comb(k, i) * (k - i) ** n for i in range(k + 1)) // math.factorial(k)


BELL = [1, 1, 2, 5, 15, 52, 203, 877, 4140]


@pytest.mark.parametrize("n", range(1, 9))
def test_enumeration_counts_and_uniqueness(n):
    tasks = [f"t{i}" for i in range(n)]
    parts = list(set_partitions(tasks))
    assert len(parts) == num_partitions(n) == BELL[n]
    assert len({str(p) for p in parts}) == BELL[n]
    for k in range(1, n + 1):
        with_k = list(set_partitions(tasks, k))
        assert len(with_k) == num_partitions(n, k) == stirling2(n, k)
        assert all(p.num_groups == k for p in with_k)


@pytest.mark.parametrize("n", [4, 6])
def test_encodings_round_trip(n):
    tasks = [f"t{i}" for i in range(n)]
    for i, p in enumerate(set_partitions(tasks)):
        assert partition_index(p) == i and partition_from_index(tasks, i) == p
        assert Partition.from_rgs(tasks, p.group_index()) == p
        assert Partition.parse(str(p), tasks) == p
    for i, p in enumerate(set_partitions(tasks, 2)):
        assert partition_from_index(tasks, i, 2) == p and partition_index(p, 2) == i


def test_bad_k_and_index():
    tasks = ["A", "B", "C"]
    with pytest.raises(ValueError, match=r"k=4 groups is not valid for 3 tasks; choose 1 <= k <= 3"):
        list(set_partitions(tasks, 4))
    with pytest.raises(ValueError, match=r"k=0 groups is not valid"):
        best_partition(torch.eye(3), tasks, 0)
    with pytest.raises(ValueError, match=r"index=5 is out of range; valid: 0..4"):
        partition_from_index(tasks, 5)


def _planted(n_per=2, groups=2, noise=0.0, seed=0):
    n = n_per * groups
    a = torch.full((n, n), -0.3)
    for g in range(groups):
        a[g * n_per : (g + 1) * n_per, g * n_per : (g + 1) * n_per] = 0.6
    a += noise * torch.randn(n, n, generator=torch.Generator().manual_seed(seed))
    return a


def test_best_partition_recovers_planted_groups():
    tasks = ["Art", "Clipart", "Product", "RealWorld"]
    a = _planted()
    assert str(best_partition(a, tasks, 2)) == "Art+Clipart|Product+RealWorld"
    assert str(best_partition(a, tasks)) == "Art+Clipart|Product+RealWorld"  # k chosen by separation
    assert best_partition(a, tasks, 1) == Partition.single(tasks)
    assert best_partition(a, tasks, 4) == Partition.independent(tasks)
    assert partition_score(a, Partition.parse("Art+Clipart|Product+RealWorld", tasks)) == pytest.approx(0.6)
    assert partition_score(a, Partition.independent(tasks)) == float("-inf")


def test_agglomerative_beyond_exhaustive_limit():
    tasks = [f"t{i}" for i in range(10)]
    a = _planted(n_per=5, groups=2, noise=0.05)
    p = best_partition(a, tasks, 2)
    assert str(p) == "t0+t1+t2+t3+t4|t5+t6+t7+t8+t9"


def test_fixed_schemes():
    tasks = ["A", "B", "C", "D"]
    assert fixed_partition("single", tasks) == Partition.single(tasks)
    assert fixed_partition("independent", tasks) == Partition.independent(tasks)
    assert str(fixed_partition("B+A|D+C", tasks)) == "A+B|C+D"
    r = [fixed_partition("random", tasks, 2, seed=s) for s in range(20)]
    assert all(p.num_groups == 2 for p in r) and len({str(p) for p in r}) > 2
    assert fixed_partition("random", tasks, 2, seed=3) == r[3]
    with pytest.raises(ValueError, match="unknown tasks \\['E'\\]"):
        fixed_partition("A+B|C+E", tasks)
    with pytest.raises(ValueError, match="scheme='clusters' is not valid"):
        fixed_partition("clusters", tasks)
    with pytest.raises(ValueError, match="needs an affinity matrix"):
        fixed_partition("gradient", tasks)
