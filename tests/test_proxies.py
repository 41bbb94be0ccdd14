"""Training-free proxies (zero-shot accuracy, frozen-feature centroids): what grouping must beat (issue 17)."""

import pytest
import torch
import torch.nn.functional as F

from mmap_ray.affinity import AffinityConfig, task_affinity
from mmap_ray.build import load_run_backbone, load_run_tasks
from mmap_ray.config import DataConfig, ModelConfig
from mmap_ray.data.toy import CONVENTION_GROUPS, PAIRS, ToyConfig, load_toy_tasks
from mmap_ray.evaluation import evaluate
from mmap_ray.grouping import best_partition
from mmap_ray.model import PromptedCLIP
from mmap_ray.prompts import MmAPConfig
from mmap_ray.proxies import proxy_affinity


@pytest.fixture(scope="module")
def small_tasks():
    return load_toy_tasks(ToyConfig(image_size=32, train_per_class=3, val_per_class=1, test_per_class=2))


def test_feature_proxy_is_the_cosine_of_frozen_image_centroids(tiny, small_tasks):
    centroids = []
    for task in small_tasks:
        images = torch.stack([task.train[i][0] for i in range(len(task.train))])  # (N, 3, S, S)
        with torch.no_grad():
            feats = F.normalize(tiny.model.encode_image(images), dim=-1)  # (N, E)
        centroids.append(F.normalize(feats.mean(0), dim=0))
    c = torch.stack(centroids)
    affinity = proxy_affinity("features", tiny, small_tasks)
    assert torch.allclose(affinity, c @ c.T, atol=1e-5) and torch.allclose(affinity, affinity.T)


def test_zero_shot_proxy_is_the_closeness_of_zero_shot_training_accuracy(tiny, small_tasks):
    plain = PromptedCLIP(tiny, {t.name: t.class_names for t in small_tasks}, MmAPConfig(layers=()))
    acc = evaluate(plain, small_tasks, "train")
    a = torch.tensor([acc[t.name] for t in small_tasks])
    assert torch.allclose(proxy_affinity("zeroshot", tiny, small_tasks), -(a[:, None] - a[None]).abs())
    # a scheme like the others: through task_affinity, no warm-up, no training
    same = task_affinity(tiny, small_tasks, AffinityConfig(method="zeroshot", affinity_warmup_steps=1000))
    assert torch.equal(same, proxy_affinity("zeroshot", tiny, small_tasks))


@pytest.mark.slow
@pytest.mark.parametrize(
    "dataset, planted, found",
    [("toy", PAIRS, True), ("toy2", CONVENTION_GROUPS, False), ("toy3", CONVENTION_GROUPS, False)],
)
def test_proxies_find_the_first_benchmarks_pairs_but_not_the_grouping_benchmarks_conventions(dataset, planted, found):
    """The confound issue 17 found, reproduced (toy: what the tiny CLIP saw gives the pairs away in all 5
    data seeds), and the requirement on toy2 and toy3: neither proxy gives its planted partition more often
    than chance would (1 of the 7 two-group partitions: 0.7 of 5 seeds; we allow 1)."""
    backbone = load_run_backbone(ModelConfig(), dataset)
    hits = {"zeroshot": 0, "features": 0}
    for seed in range(5):
        tasks = load_run_tasks(DataConfig(dataset=dataset, data_seed=seed), backbone)
        names = [t.name for t in tasks]
        for method in hits:
            hits[method] += str(best_partition(proxy_affinity(method, backbone, tasks), names, 2)) == planted
    assert all(n == 5 for n in hits.values()) if found else all(n <= 1 for n in hits.values()), hits
