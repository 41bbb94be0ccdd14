"""The benchmark family (data/family.py): every factor cell covered, roles drawn so that the planted partition
follows neither style nor the halves, and the rendered instance is what its factors say."""

from collections import Counter

import torch

from mmap_ray.build import load_run_tasks, run_train_sizes
from mmap_ray.config import DataConfig
from mmap_ray.data.family import CELLS, PAIRINGS, REPORT_SEEDS, STYLE_PAIRS, _text, instance
from mmap_ray.data.toy import TOY3_SCARCE, TOY3_SHOTS, convention_shapes


def test_every_run_of_ten_seeds_covers_each_cell_once():
    assert len(CELLS) == len(set(CELLS)) == 10
    for start in (0, 1000, 1234):
        cells = [(i.conflict, i.halves, i.prior) for i in map(instance, range(start, start + 10))]
        assert sorted(cells) == sorted(CELLS)


def test_the_planted_partition_follows_neither_style_nor_the_halves():
    """Over 3,000 instances: the planted pairing is each of the 3 pairings about a third of the time, the
    style pairing included, whatever the halves; `style` halves are the style pairs and `cross` ones never."""
    drawn = [instance(s) for s in range(3000)]
    style = _text(STYLE_PAIRS)
    for halves in ("style", "cross", "none"):
        planted = Counter(i.planted for i in drawn if i.conflict and i.halves == halves)
        assert set(planted) == {_text(p) for p in PAIRINGS}
        assert all(0.27 < n / sum(planted.values()) < 0.40 for n in planted.values()), (halves, planted)
    for i in drawn:
        assert (i.planted is None) == (not i.conflict) and i.planted_is_style == (i.planted == style)
        assert set(i.convention.values()) == ({"A", "B"} if i.conflict else {"A"})
        if i.abundant is None:
            assert i.halves == "none"
            continue
        same = frozenset(frozenset(d for d in i.abundant if i.abundant[d] == h) for h in (0, 1))
        assert (same == STYLE_PAIRS) == (i.halves == "style")


def test_an_instance_renders_as_its_factors_say(tiny):
    """The rendered tasks: abundant and scarce halves (or repeated scarce images with a balanced prior), the
    study's size check agrees with them, and the same seed renders the same images."""
    for seed in REPORT_SEEDS[:4]:  # style/skewed, style/balanced, cross/skewed, cross/balanced (conflict)
        inst = instance(seed)
        cfg = DataConfig(dataset="family", data_seed=seed)
        tasks = load_run_tasks(cfg, tiny)
        assert [len(t.train) for t in tasks] == run_train_sizes(cfg)
        for task in tasks:
            counts = torch.bincount(task.train.labels, minlength=12).tolist()
            if inst.prior == "balanced":
                assert counts == [TOY3_SHOTS] * 12
                scarce = [c for c in range(12) if inst.train_counts(task.name, TOY3_SHOTS, TOY3_SCARCE)[c] == 2]
                rows = task.train.images[task.train.labels == scarce[0]]  # (16, 3, S, S): 2 images repeated
                assert len(torch.unique(rows.flatten(1), dim=0)) == TOY3_SCARCE
            else:
                assert counts == inst.train_counts(task.name, TOY3_SHOTS, TOY3_SCARCE)
                assert sorted(set(counts)) == [TOY3_SCARCE, TOY3_SHOTS]
    again, first = (load_run_tasks(DataConfig(dataset="family", data_seed=REPORT_SEEDS[0]), tiny) for _ in "ab")
    assert all(torch.equal(a.train.images, b.train.images) for a, b in zip(again, first))


def test_conventions_relabel_every_class_and_disagree_everywhere():
    a, b = convention_shapes("A"), convention_shapes("B")
    assert sorted(a.tolist()) == sorted(b.tolist()) == list(range(12))  # permutations
    assert (a != torch.arange(12)).all() and (b != torch.arange(12)).all() and (a != b).all()
