"""Task partitions: which tasks share a group-level MmAP.

A partition splits the task list into disjoint, non-empty groups that together hold every task exactly
once. Its string form is the one users type and reports print: groups joined by "|", tasks within a
group by "+", e.g. "Art+Clipart|Product+RealWorld". Partitions are canonical: tasks within a group keep
the order of the task list, and groups are ordered by their first task, so equal partitions compare and
print equal however they were written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

GROUP_SEP = "|"
TASK_SEP = "+"


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
            shown = GROUP_SEP.join(TASK_SEP.join(g) for g in groups)
            raise ValueError(
                f"partition={shown!r} is not a partition of tasks {list(tasks)}: {'; '.join(problems)}. "
                f"Every task must appear in exactly one group, e.g. {TASK_SEP.join(tasks)!r}"
            )
        order = {t: i for i, t in enumerate(tasks)}
        canon = sorted((tuple(sorted(g, key=order.__getitem__)) for g in groups), key=lambda g: order[g[0]])
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "groups", tuple(canon))

    @classmethod
    def parse(cls, text: str, tasks: Sequence[str]) -> "Partition":
        """Parse "A+B|C+D" (whitespace ignored) into a validated partition of `tasks`."""
        groups = [tuple(t.strip() for t in g.split(TASK_SEP)) for g in text.split(GROUP_SEP)]
        groups = [tuple(t for t in g if t) for g in groups]
        return cls(tuple(tasks), tuple(groups))

    @classmethod
    def single(cls, tasks: Sequence[str]) -> "Partition":
        """One group holding every task."""
        return cls(tuple(tasks), (tuple(tasks),))

    @classmethod
    def independent(cls, tasks: Sequence[str]) -> "Partition":
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
        return GROUP_SEP.join(TASK_SEP.join(g) for g in self.groups)
