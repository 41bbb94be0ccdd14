"""The benchmark family: toy3-like grouping benchmarks drawn from factors, each instance with its own domain
roles, so that the partition planted in it lines up with neither style nor label prior by construction.

Why: toy3 was built while looking at the grouping methods. Its scarce halves are aligned with style and
label prior (the tasks with the same half are the style pairs), so every similarity signal points away from
its planted partition, and a method judged on it may have been fitted to that one design. An instance of the
family is drawn from its seed (the run's `data_seed`):

- its factor cell, `CELLS[seed % len(CELLS)]`, so that every run of `len(CELLS)` consecutive seeds covers
  each cell once:
  - `conflict`: the tasks follow two labelling conventions (toy2's: A swaps the names in pairs, B shifts
    them by two), each shared by two domains: the planted partition. Without conflict every domain follows
    convention A and no partition is planted (sharing a prompt with any task is harmless).
  - `halves`: each domain is labelled mostly for one half of the classes (`TOY3_SHOTS` images per class,
    `TOY3_SCARCE` for the other half). The domains with the same half are the style pairs (`style`, as in
    toy3), another pairing of the domains (`cross`), or there are no scarce halves (`none`).
  - `prior` (with halves only): the scarce half's few images as drawn, so its classes are also rare in
    the label prior (`skewed`, as in toy3), or repeated up to the abundant count (`balanced`: the same
    information, a uniform prior).
- its roles, at random from the seed: which pairing of the domains shares a convention, which side gets
  which convention, which half each domain has, and for `cross` halves which non-style pairing shares one.

So the planted pairing is the style pairing in about a third of the conflict instances, whatever the
halves. Seeds: `DEV_SEEDS` are for developing a grouping method, `REPORT_SEEDS` for the figures reported
on it; a method's figures on the dev seeds are not evidence. Drawing an instance needs no torch (the report
reads instances too); rendering it uses `toy.render`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import product
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import TaskData
    from .toy import ToyConfig

DOMAINS = ("Art", "Clipart", "Product", "RealWorld")  # as data/toy.py (no torch import here)
STYLE_PAIRS = frozenset({frozenset({"Art", "Clipart"}), frozenset({"Product", "RealWorld"})})
HALVES = ("style", "cross", "none")
PRIORS = ("skewed", "balanced")
# The factor cells: conflict x halves x prior, the prior only where there are halves (10 cells).
CELLS = tuple(
    (conflict, halves, prior)
    for conflict, halves, prior in product((True, False), HALVES, PRIORS)
    if halves != "none" or prior == "skewed"
)
DEV_SEEDS = range(0, 100)  # for developing a method: never quote figures from them
REPORT_SEEDS = range(1000, 2000)  # for the figures: `--preset family` uses the first ones


def _pairings() -> tuple[frozenset[frozenset[str]], ...]:
    """The 3 ways to split the 4 domains into two pairs."""
    a = DOMAINS[0]
    return tuple(frozenset({frozenset({a, b}), frozenset(set(DOMAINS) - {a, b})}) for b in DOMAINS[1:])


PAIRINGS = _pairings()


def _text(pairing: frozenset[frozenset[str]]) -> str:
    """A pairing as a partition string in canonical order ('Art+Product|Clipart+RealWorld')."""
    groups = sorted((sorted(g, key=DOMAINS.index) for g in pairing), key=lambda g: DOMAINS.index(g[0]))
    return "|".join("+".join(g) for g in groups)


@dataclass(frozen=True)
class Instance:
    """One benchmark of the family: its factors and its domains' roles."""

    seed: int
    conflict: bool
    halves: str  # style | cross | none
    prior: str  # skewed | balanced (skewed where there are no halves)
    convention: dict[str, str]  # domain -> "A" | "B"
    abundant: dict[str, int] | None  # domain -> the half (0, 1) of the classes it has many images of

    @property
    def planted(self) -> str | None:
        """The convention pairing ('Art+Product|Clipart+RealWorld'), or None without conflict."""
        if not self.conflict:
            return None
        return _text(frozenset(frozenset(d for d in DOMAINS if self.convention[d] == c) for c in "AB"))

    @property
    def planted_is_style(self) -> bool:
        return self.planted is not None and self.planted == _text(STYLE_PAIRS)

    def train_counts(self, domain: str, shots: int, scarce: int, classes: int = 12) -> list[int]:
        """Training images per class of `domain` as drawn: `shots` for its abundant half, `scarce` for the
        other (all `shots` without halves)."""
        if self.abundant is None:
            return [shots] * classes
        return [shots if (c >= classes // 2) == bool(self.abundant[domain]) else scarce for c in range(classes)]

    def train_sizes(self, domains: tuple[str, ...], shots: int, scarce: int) -> list[int]:
        """Training images per task once the prior is applied (a balanced prior repeats the scarce ones)."""
        if self.prior == "balanced" and self.abundant is not None:
            return [12 * shots for _ in domains]
        return [sum(self.train_counts(d, shots, scarce)) for d in domains]

    def factors(self) -> dict[str, object]:
        """The instance's cell and roles as a flat record (the report's per-instance table)."""
        return {
            "instance": self.seed,
            "conflict": self.conflict,
            "halves": self.halves,
            "prior": self.prior,
            "planted": self.planted or "–",
            "planted is style": self.planted_is_style,
        }


def instance(seed: int) -> Instance:
    """The family's instance `seed`: its cell from the seed's position, its roles drawn from the seed."""
    conflict, halves, prior = CELLS[seed % len(CELLS)]
    rng = random.Random(f"mmap-ray family {seed}")
    sides = list(rng.choice(PAIRINGS))
    rng.shuffle(sides)
    convention = {d: ("A" if d in sides[0] or not conflict else "B") for d in DOMAINS}
    abundant = None
    if halves != "none":
        if halves == "style":
            same = STYLE_PAIRS
        else:
            same = rng.choice([p for p in PAIRINGS if p != STYLE_PAIRS])
        first, second = sorted(same, key=lambda g: sorted(g))
        if rng.random() < 0.5:
            first, second = second, first
        abundant = {d: 0 if d in first else 1 for d in DOMAINS}
    return Instance(seed, conflict, halves, prior, convention, abundant)


def load_family_tasks(cfg: ToyConfig, shots: int, scarce: int) -> list[TaskData]:
    """Instance `cfg.seed` of the family, rendered as toy3 is (`cfg`'s sizes, `shots` images per abundant
    class and `scarce` per scarce one): one task per domain in `cfg.domains`."""
    inst = instance(cfg.seed)
    return [_task(inst, d, cfg, shots, scarce) for d in cfg.domains]


def _task(inst: Instance, domain: str, cfg: ToyConfig, shots: int, scarce: int) -> TaskData:
    import torch

    from .base import TaskData
    from .toy import CLASSES, ToyImages, convention_shapes, render_split

    shapes = convention_shapes(inst.convention[domain])
    split = lambda n, stream: render_split(domain, n, cfg.image_size, cfg.seed, stream, shapes=shapes)  # noqa: E731
    counts = inst.train_counts(domain, shots, scarce, len(CLASSES))
    train = split(counts, "train")
    if inst.prior == "balanced" and inst.abundant is not None:  # the scarce images repeated up to `shots`
        # render_split sorts by class: each class's rows repeated cyclically to `shots` rows
        index = torch.cat(
            [torch.nonzero(train.labels == c).flatten().repeat(-(-shots // n))[:shots] for c, n in enumerate(counts)]
        )  # (classes * shots,)
        train = ToyImages(train.images[index], train.labels[index])
    val, test = split(cfg.val_per_class, "val"), split(cfg.test_per_class, "test")
    return TaskData(name=domain, class_names=list(CLASSES), train=train, val=val, test=test)
