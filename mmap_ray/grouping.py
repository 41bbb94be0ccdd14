"""Task partitions: which tasks share a group-level MmAP.

A partition splits the task list into disjoint, non-empty groups that together hold every task exactly
once. Its string form is the one users type and reports print: groups joined by "|", tasks within a
group by "+", e.g. "Art+Clipart|Product+RealWorld". Partitions are canonical: tasks within a group keep
the order of the task list, and groups are ordered by their first task, so equal partitions compare and
print equal however they were written.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

GROUP_SEP = "|"
TASK_SEP = "+"
SCHEMES = ("single", "independent", "tag", "race", "gradient", "lookahead", "random", "zeroshot", "features")


def parse_groups(text: str) -> tuple[tuple[str, ...], ...]:
    """The one parser of the string form: "A+B|C" -> (("A", "B"), ("C",)); whitespace is ignored."""
    return tuple(tuple(t for t in (t.strip() for t in g.split(TASK_SEP)) if t) for g in text.split(GROUP_SEP))


def format_groups(groups: Sequence[Sequence[str]]) -> str:
    """(("A", "B"), ("C",)) -> "A+B|C"."""
    return GROUP_SEP.join(TASK_SEP.join(g) for g in groups)


def is_partition_text(scheme: str) -> bool:
    """Whether a scheme is an explicit partition ("A+B|C", or one group "A+B") rather than a scheme name."""
    return scheme not in SCHEMES and (GROUP_SEP in scheme or TASK_SEP in scheme)


@dataclass(frozen=True)
class Partition:
    """A canonical partition of `tasks` into `groups` (tuples of task names)."""

    tasks: tuple[str, ...]
    groups: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        tasks, groups = tuple(self.tasks), tuple(tuple(g) for g in self.groups)
        if len(set(tasks)) != len(tasks):
            dup = sorted({t for t in tasks if tasks.count(t) > 1})
            raise ValueError(f"tasks={list(tasks)} repeats {dup}; task names must be unique")
        seen: list[str] = [t for g in groups for t in g]
        problems = []
        if any(len(g) == 0 for g in groups):
            problems.append("it has an empty group")
        unknown = sorted(set(seen) - set(tasks))
        if unknown:
            problems.append(f"it names unknown tasks {unknown}")
        missing = [t for t in tasks if t not in seen]
        if missing:
            problems.append(f"it misses tasks {missing}")
        repeated = sorted({t for t in seen if seen.count(t) > 1})
        if repeated:
            problems.append(f"it repeats tasks {repeated}")
        if problems:
            shown = format_groups(groups)
            raise ValueError(
                f"partition={shown!r} is not a partition of tasks {list(tasks)}: {'; '.join(problems)}. "
                f"Every task must appear in exactly one group, e.g. {TASK_SEP.join(tasks)!r}"
            )
        order = {t: i for i, t in enumerate(tasks)}
        canon = sorted((tuple(sorted(g, key=order.__getitem__)) for g in groups), key=lambda g: order[g[0]])
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "groups", tuple(canon))

    @classmethod
    def parse(cls, text: str, tasks: Sequence[str]) -> Partition:
        """Parse "A+B|C+D" (whitespace ignored) into a validated partition of `tasks`."""
        return cls(tuple(tasks), parse_groups(text))

    @classmethod
    def from_rgs(cls, tasks: Sequence[str], rgs: Sequence[int]) -> Partition:
        """From a restricted growth string: rgs[i] is task i's group (see `set_partitions`)."""
        if len(rgs) != len(tasks):
            raise ValueError(f"rgs={list(rgs)} has {len(rgs)} entries for {len(tasks)} tasks")
        groups: dict[int, list[str]] = {}
        for t, g in zip(tasks, rgs):
            groups.setdefault(g, []).append(t)
        return cls(tuple(tasks), tuple(tuple(g) for g in groups.values()))

    @classmethod
    def single(cls, tasks: Sequence[str]) -> Partition:
        """One group holding every task."""
        return cls(tuple(tasks), (tuple(tasks),))

    @classmethod
    def independent(cls, tasks: Sequence[str]) -> Partition:
        """Every task in a group of its own."""
        return cls(tuple(tasks), tuple((t,) for t in tasks))

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    def group_index(self) -> list[int]:
        """For each task, in task-list order, the index of its group."""
        where = {t: g for g, members in enumerate(self.groups) for t in members}
        return [where[t] for t in self.tasks]

    def __str__(self) -> str:
        return format_groups(self.groups)


# ---- enumeration and encoding ---------------------------------------------------------------------
#
# A partition of n ordered tasks is encoded by its restricted growth string (RGS): a[i] is the group of
# task i, with a[0] = 0 and a[i] <= 1 + max(a[:i]). Groups numbered this way are exactly the canonical
# order (by first task), so `Partition.group_index()` *is* the RGS. Enumerating RGSs in lexicographic
# order lists every partition once; a partition's position in that list is its integer code, which a
# search (Optuna) can sample as one integer in [0, num_partitions(n)).


def _rgs(n: int, k: int | None) -> Iterator[tuple[int, ...]]:
    def rec(prefix: list[int], used: int) -> Iterator[tuple[int, ...]]:
        i = len(prefix)
        if i == n:
            if k is None or used == k:
                yield tuple(prefix)
            return
        remaining = n - i
        for g in range(min(used + 1, k if k is not None else n)):
            new_used = max(used, g + 1)
            if k is not None and new_used + remaining - 1 < k:
                continue  # too few tasks left to open the groups still needed
            yield from rec(prefix + [g], new_used)

    if n == 0:
        return
    yield from rec([0], 1)


def check_k(n: int, k: int | None) -> None:
    """Refuse a number of groups that `n` tasks cannot be split into."""
    if k is not None and not (isinstance(k, int) and 1 <= k <= n):
        raise ValueError(f"k={k!r} groups is not valid for {n} tasks; choose 1 <= k <= {n}")


def set_partitions(tasks: Sequence[str], k: int | None = None) -> Iterator[Partition]:
    """Every partition of `tasks` (Bell(n) of them), or those with exactly `k` groups (Stirling S(n, k))."""
    check_k(len(tasks), k)
    for rgs in _rgs(len(tasks), k):
        yield Partition.from_rgs(tasks, rgs)


def num_partitions(n: int, k: int | None = None) -> int:
    """Bell(n), or the Stirling number of the second kind S(n, k)."""
    check_k(n, k)
    # S(i, j) = j * S(i-1, j) + S(i-1, j-1)
    row = [1]  # S(0, 0)
    for i in range(1, n + 1):
        row = [0] + [j * (row[j] if j < len(row) else 0) + row[j - 1] for j in range(1, i + 1)]
    return row[k] if k is not None else sum(row)


def partition_from_index(tasks: Sequence[str], index: int, k: int | None = None) -> Partition:
    """The `index`-th partition (0-based) in the canonical enumeration of `set_partitions(tasks, k)`."""
    total = num_partitions(len(tasks), k)
    if not (isinstance(index, int) and 0 <= index < total):
        raise ValueError(f"partition index={index!r} is out of range; valid: 0..{total - 1} for {len(tasks)} tasks")
    for i, p in enumerate(set_partitions(tasks, k)):
        if i == index:
            return p
    raise AssertionError("unreachable")


def partition_index(p: Partition, k: int | None = None) -> int:
    """Inverse of `partition_from_index`."""
    target = tuple(p.group_index())
    for i, rgs in enumerate(_rgs(len(p.tasks), k)):
        if rgs == target:
            return i
    raise ValueError(f"partition {p} has {p.num_groups} groups, not k={k}")


# ---- choosing a partition from a task-affinity matrix ------------------------------------------------

EXHAUSTIVE_MAX_TASKS = 8  # Bell(8) = 4140 partitions; beyond that, agglomerative merging


def partition_score(affinity: torch.Tensor, p: Partition) -> float:
    """Mean within-group affinity: the mean of A[i, j] over ordered pairs i != j in the same group.

    A partition of singletons has no such pairs and scores -inf. A may be asymmetric (look-ahead).
    """
    idx = p.group_index()
    pairs = [(i, j) for i in range(len(idx)) for j in range(len(idx)) if i != j and idx[i] == idx[j]]
    if not pairs:
        return float("-inf")
    return float(sum(float(affinity[i, j]) for i, j in pairs) / len(pairs))


def separation_score(affinity: torch.Tensor, p: Partition) -> float:
    """Mean within-group minus mean between-group affinity: the criterion that picks k when k is free."""
    idx = p.group_index()
    n = len(idx)
    within = [float(affinity[i, j]) for i in range(n) for j in range(n) if i != j and idx[i] == idx[j]]
    between = [float(affinity[i, j]) for i in range(n) for j in range(n) if idx[i] != idx[j]]
    if not within or not between:
        return float("-inf")
    return sum(within) / len(within) - sum(between) / len(between)


def best_partition(affinity: torch.Tensor, tasks: Sequence[str], k: int | None = None) -> Partition:
    """The partition with the highest mean within-group affinity among those with exactly k groups.

    k=None chooses k too, by the highest `separation_score` over 2 <= k <= n-1 (one group when n <= 2).
    Exhaustive up to EXHAUSTIVE_MAX_TASKS tasks; beyond, average-linkage agglomerative merging.
    """
    n = len(tasks)
    if tuple(affinity.shape) != (n, n):
        raise ValueError(f"affinity has shape {tuple(affinity.shape)}, expected ({n}, {n}) for tasks {list(tasks)}")
    check_k(n, k)
    if k is None:
        if n <= 2:
            return Partition.single(tasks)
        candidates = [best_partition(affinity, tasks, kk) for kk in range(2, n)]
        return max(candidates, key=lambda p: separation_score(affinity, p))
    if k == n:
        return Partition.independent(tasks)
    if n <= EXHAUSTIVE_MAX_TASKS:
        return max(set_partitions(tasks, k), key=lambda p: partition_score(affinity, p))
    groups = [[i] for i in range(n)]
    sym = (affinity + affinity.T) / 2
    while len(groups) > k:
        a, b = max(
            ((a, b) for a in range(len(groups)) for b in range(a + 1, len(groups))),
            key=lambda ab: float(sym[groups[ab[0]]][:, groups[ab[1]]].mean()),
        )
        groups[a] += groups.pop(b)
    return Partition(tuple(tasks), tuple(tuple(tasks[i] for i in g) for g in groups))


# ---- schemes -----------------------------------------------------------------------------------------


def tag_score(affinity: torch.Tensor, p: Partition) -> float:
    """TAG's score of a partition (Fifty et al. 2021, its published selection): for each task j, the mean
    affinity onto it from its group-mates, Z[i->j] = affinity[i, j] over i != j in j's group, summed over
    tasks. A task alone in its group receives no transfer and adds 0 (TAG lets groups overlap, and there a
    singleton never wins; with disjoint groups of a given k a task may have to be alone)."""
    idx = p.group_index()
    score = 0.0
    for j in range(len(idx)):
        mates = [i for i in range(len(idx)) if i != j and idx[i] == idx[j]]
        if mates:
            score += sum(float(affinity[i, j]) for i in mates) / len(mates)
    return score


def tag_partition(affinity: torch.Tensor, tasks: Sequence[str], k: int | None = None) -> Partition:
    """The partition with the highest `tag_score` among those with exactly k groups (any k if None);
    exhaustive, up to EXHAUSTIVE_MAX_TASKS tasks. Ties go to the first in `set_partitions`' order."""
    n = len(tasks)
    if tuple(affinity.shape) != (n, n):
        raise ValueError(f"affinity has shape {tuple(affinity.shape)}, expected ({n}, {n}) for tasks {list(tasks)}")
    check_k(n, k)
    if n > EXHAUSTIVE_MAX_TASKS:
        raise ValueError(f"tag selection enumerates partitions: at most {EXHAUSTIVE_MAX_TASKS} tasks, got {n}")
    return max(set_partitions(tasks, k), key=lambda p: tag_score(affinity, p))


def choose_partition(scheme: str, affinity: torch.Tensor, tasks: Sequence[str], k: int | None = None) -> Partition:
    """The partition an affinity scheme chooses from its matrix: TAG's selection for `tag`, the highest mean
    within-group affinity (`best_partition`) for the probes and proxies."""
    return tag_partition(affinity, tasks, k) if scheme == "tag" else best_partition(affinity, tasks, k)


def scheme_score(scheme: str, affinity: torch.Tensor, p: Partition) -> float:
    """The score `choose_partition` maximises for `scheme`: `tag_score` for tag, `partition_score` else."""
    return tag_score(affinity, p) if scheme == "tag" else partition_score(affinity, p)


FIXED_SCHEMES = ("single", "independent", "random")
AFFINITY_SCHEMES = ("tag", "gradient", "lookahead", "zeroshot", "features")  # the last two: training-free proxies


def fixed_partition(scheme: str, tasks: Sequence[str], k: int | None = None, seed: int = 0) -> Partition:
    """A scheme that needs no training: 'single', 'independent', 'random' (seeded, k groups if given,
    uniform over partitions) or an explicit partition string such as 'Art+Clipart|Product+RealWorld'."""
    if scheme == "single":
        return Partition.single(tasks)
    if scheme == "independent":
        return Partition.independent(tasks)
    if scheme == "random":
        import random

        check_k(len(tasks), k)
        return partition_from_index(tasks, random.Random(seed).randrange(num_partitions(len(tasks), k)), k)
    if scheme in AFFINITY_SCHEMES:
        raise ValueError(f"scheme {scheme!r} needs an affinity matrix: use mmap_ray.affinity.task_affinity")
    if scheme == "race":
        raise ValueError(
            "scheme 'race' races every partition as trials: run it in a study (mmap-ray study --schemes race)"
        )
    if any(t in scheme for t in tasks) or is_partition_text(scheme):
        return Partition.parse(scheme, tasks)
    raise ValueError(
        f"scheme={scheme!r} is not valid; choose one of {FIXED_SCHEMES + AFFINITY_SCHEMES} or give a partition "
        f"of {list(tasks)} such as {TASK_SEP.join(tasks)!r}"
    )
