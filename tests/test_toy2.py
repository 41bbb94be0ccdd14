"""toy2 and toy3, the grouping benchmarks: two labelling conventions that cross the style pairs, and (toy3)
halves of the classes that only a convention's two tasks cover together (issue 17, part 1)."""

import pytest
import torch

from mmap_ray.build import load_run_backbone, load_run_tasks
from mmap_ray.config import DataConfig, ModelConfig
from mmap_ray.data.toy import (
    ABUNDANT,
    CLASSES,
    CONVENTION_GROUPS,
    CONVENTIONS,
    DOMAINS,
    PAIRS,
    RELABELLED,
    TOY2_SHOTS,
    TOY3_SCARCE,
    TOY3_SHOTS,
    ToyConfig,
    _seed,
    load_toy_tasks,
    render,
    shape_of,
)
from mmap_ray.grouping import Partition
from mmap_ray.study import program as grouping
from mmap_ray.toyclip import TOY2_RECIPE, ToyCLIPConfig, recipe_for


def test_no_relabelled_name_means_the_same_shape_in_both_conventions_or_in_pretraining():
    a, b = shape_of("Art", True), shape_of("Clipart", True)
    assert sorted(a.tolist()) == sorted(b.tolist()) == list(range(len(CLASSES)))  # permutations of the shapes
    for c in range(len(CLASSES)):
        if c in RELABELLED:
            assert len({int(a[c]), int(b[c]), c}) == 3, CLASSES[c]
        else:
            assert a[c] == b[c] == c
    assert torch.equal(shape_of("Art", False), torch.arange(len(CLASSES)))
    # the conventions cross the style pairs: each style pair has one domain of each convention
    for pair in Partition.parse(PAIRS, DOMAINS).groups:
        assert {CONVENTIONS[d] for d in pair} == {"A", "B"}
    conventions = Partition(DOMAINS, [[d for d in DOMAINS if CONVENTIONS[d] == c] for c in "AB"])
    assert str(conventions) == CONVENTION_GROUPS


def test_a_relabelled_class_is_drawn_as_its_conventions_shape():
    cfg = ToyConfig(image_size=16, train_per_class=2, val_per_class=1, test_per_class=1, conventions=True)
    tasks = {t.name: t for t in load_toy_tasks(cfg)}
    star = CLASSES.index("star")
    for domain in ("Art", "Clipart"):
        labels = torch.arange(len(CLASSES)).repeat_interleave(2)
        g = torch.Generator().manual_seed(_seed(0, domain, "train"))
        expected = render(shape_of(domain, True)[labels], domain, 16, g)
        assert torch.equal(tasks[domain].train.images, expected)
        assert torch.equal(tasks[domain].train.labels, labels)
        assert tasks[domain].class_names == list(CLASSES)
        drawn = int(shape_of(domain, True)[star])
        assert drawn != star and CLASSES[drawn] in ("hexagon", "crescent")


def test_toy2_from_a_run_config_is_few_shot_with_its_own_tiny_clip():
    tiny = load_run_backbone(ModelConfig(pretrained=None))
    tasks = load_run_tasks(DataConfig(dataset="toy2", domains=("Art", "Clipart")), tiny)
    assert [len(t.train) for t in tasks] == [TOY2_SHOTS * len(CLASSES)] * 2 and TOY2_SHOTS == 16
    plain = load_run_tasks(DataConfig(dataset="toy", domains=("Art",), shots=TOY2_SHOTS), tiny)[0]
    assert not torch.equal(plain.train.images, tasks[0].train.images)  # the relabelled classes differ
    shots = load_run_tasks(DataConfig(dataset="toy2", domains=("Art",), shots=3), tiny)[0]
    assert len(shots.train) == 3 * len(CLASSES)
    assert recipe_for("toy2") == TOY2_RECIPE and recipe_for("toy") == ToyCLIPConfig()
    assert TOY2_RECIPE.key() != ToyCLIPConfig().key()
    assert {d for d, _ in TOY2_RECIPE.domain_mix} == set(DOMAINS)  # pretraining crosses the planted groups


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"dataset": "toy2", "root": "/data"}, "not used with dataset 'toy2'"),
        ({"dataset": "toy2", "domains": ("Sketch",)}, "toy benchmark does not have"),
    ],
)
def test_toy2_config_errors(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        DataConfig(**kwargs)


def test_toy3_halves_are_complementary_within_a_convention_and_shared_within_a_style_pair():
    every = set(range(len(CLASSES)))
    for group in Partition.parse(CONVENTION_GROUPS, DOMAINS).groups:  # the planted partition
        a, b = (set(ABUNDANT[d]) for d in group)
        assert a | b == every and not a & b, group
    for pair in Partition.parse(PAIRS, DOMAINS).groups:  # the halves alone point to the style pairs
        assert len({tuple(ABUNDANT[d]) for d in pair}) == 1, pair


def test_toy3_from_a_run_config_has_an_abundant_and_a_scarce_half_drawn_in_its_convention():
    tiny = load_run_backbone(ModelConfig(pretrained=None))
    tasks = {t.name: t for t in load_run_tasks(DataConfig(dataset="toy3"), tiny)}
    assert (TOY3_SHOTS, TOY3_SCARCE) == (16, 2)
    for domain, task in tasks.items():
        counts = torch.bincount(task.train.labels, minlength=len(CLASSES)).tolist()
        assert counts == [TOY3_SHOTS if c in ABUNDANT[domain] else TOY3_SCARCE for c in range(len(CLASSES))]
        for split in (task.val, task.test):  # evaluation stays balanced
            assert len(set(torch.bincount(split.labels).tolist())) == 1
        g = torch.Generator().manual_seed(_seed(0, domain, "train"))
        assert torch.equal(task.train.images, render(shape_of(domain, True)[task.train.labels], domain, 32, g))
    assert recipe_for("toy3") == TOY2_RECIPE  # the same tiny CLIP as toy2: pretrained on every domain
    for shots, expected in ((3, (3, 2)), (1, (1, 1))):  # --shots k caps both halves
        art = load_run_tasks(DataConfig(dataset="toy3", domains=("Art",), shots=shots), tiny)[0]
        assert torch.bincount(art.train.labels).tolist() == [expected[0]] * 6 + [expected[1]] * 6


def test_toy_config_refuses_a_scarce_count_below_one():
    with pytest.raises(ValueError, match="scarce_per_class=0 must be >= 1"):
        ToyConfig(scarce_per_class=0)


def test_the_oracle_presets_run_toy3_with_group_prompts_only_and_keep_toy2s():

    study = lambda *argv: grouping.build_study(grouping.build_parser().parse_args(list(argv)))  # noqa: E731
    for preset, partitions in (("oracle", 15), ("oracle-k2", 7)):
        toy3, toy2 = study("--preset", preset), study("--preset", f"{preset}-toy2")
        assert (toy3.run.data.dataset, toy3.run.prompts.task_prompts, toy3.run.train.lr) == ("toy3", False, 5e-3)
        assert (toy2.run.data.dataset, toy2.run.prompts.task_prompts) == ("toy2", True)
        assert toy3.schemes == toy2.schemes and len(toy3.schemes) == partitions + 5  # + the 5 methods and proxies
    # MmAP's task prompts on top: the same study but for that one setting
    assert study("--preset", "oracle-k2", "--task-prompts").run.prompts.task_prompts is True


def test_class_balanced_repeats_each_classs_images_in_order_up_to_the_largest_class():
    from mmap_ray.data.base import ImageListDataset, class_balanced
    from mmap_ray.data.toy import ToyImages

    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 3, 2, 2)
    toy = class_balanced(ToyImages(images, torch.tensor([0, 0, 0, 1, 2, 2])))
    assert toy.indices == [0, 1, 2, 3, 3, 3, 4, 5, 4]
    assert [label for _, label in toy] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    listed = class_balanced(ImageListDataset([("a.png", 1), ("b.png", 0), ("c.png", 1), ("d.png", 1)]))
    assert listed.indices == [1, 1, 1, 0, 2, 3]  # ImageListDataset's labels; nothing is decoded
