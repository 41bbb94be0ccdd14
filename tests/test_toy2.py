"""toy2, the grouping benchmark: two labelling conventions that cross the style pairs (issue 17, part 1)."""

import pytest
import torch

from mmap_ray.build import load_run_backbone, load_run_tasks
from mmap_ray.config import DataConfig, ModelConfig
from mmap_ray.data.toy import (
    CLASSES,
    CONVENTION_GROUPS,
    CONVENTIONS,
    DOMAINS,
    PAIRS,
    RELABELLED,
    TOY2_SHOTS,
    ToyConfig,
    _seed,
    load_toy_tasks,
    render,
    shape_of,
)
from mmap_ray.grouping import Partition
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
