"""TAG (Fifty et al. 2021) as the `tag` scheme, against references written from its paper and its published
selection algorithm: the look-ahead is a plain SGD step (with weight decay) on one task's gradient, measured
over the joint run every N steps without changing that run, and a grouping is scored by the affinity onto
each task from its group-mates."""

import copy
import itertools
import json
import math

import pytest
import torch

from mmap_ray.affinity import (
    AffinityConfig,
    _stream,
    per_task_loss,
    plan_partition,
    shared_model,
    shared_parameters,
    tag_affinity,
    tag_lookahead,
)
from mmap_ray.cli import main
from mmap_ray.data.sampler import MultiTaskBatchSampler
from mmap_ray.data.toy import ToyConfig, load_toy_tasks
from mmap_ray.engine import TrainConfig
from mmap_ray.grouping import Partition, best_partition, set_partitions, tag_partition, tag_score
from mmap_ray.prompts import MmAPConfig

TASKS = ["Art", "Clipart", "Product", "RealWorld"]


@pytest.fixture(scope="module")
def toy_tasks():
    return load_toy_tasks(ToyConfig(train_per_class=2, val_per_class=1, test_per_class=1))


def _batch(tasks):
    return next(_stream(tasks, AffinityConfig(affinity_batch_size=8), 1, torch.device("cpu")))


def test_lookahead_is_an_sgd_step_with_weight_decay_on_one_tasks_gradient(tiny, toy_tasks):
    """Reference from the paper: copy the model, backpropagate task i's loss alone, move the shared prompt
    parameters by -lr (grad + wd * theta), read every task's loss on the same batch."""
    torch.manual_seed(0)
    model = shared_model(tiny, toy_tasks)
    batch = _batch(toy_tasks)
    images, labels, task_ids = batch
    lr, wd = 0.05, 0.1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference = torch.zeros(4, 4)
    for i in range(4):
        twin = copy.deepcopy(model)
        losses = per_task_loss(twin(images, task_ids), labels, task_ids, 4)
        losses[i].backward()
        with torch.no_grad():
            for p in shared_parameters(twin).values():
                p -= lr * (p.grad + wd * p)
            after = per_task_loss(twin(images, task_ids), labels, task_ids, 4)
        reference[i] = 1 - after / losses.detach()
    z = tag_lookahead(model, batch, 4, lr, wd)
    torch.testing.assert_close(z, reference, atol=1e-5, rtol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # put back exactly
    assert all(p.grad is None for p in model.parameters())  # nothing written to .grad
    small = tag_lookahead(model, batch, 4, 1e-3, 0.0)
    assert (small.diagonal() > 0).all()  # a small step on a task's own gradient lowers its own loss


def test_tag_measures_every_nth_step_of_the_runs_own_schedule_without_changing_it(tiny, toy_tasks):
    """The joint run is the study's schedule (epochs x batches); measuring every 3rd or every 5th step ends
    in bit-identical weights, and the number of measurements is ceil(steps / N)."""
    train = TrainConfig(epochs=2, batch_size=8, lr=5e-3, warmup_steps=1, weight_decay=0.01)
    steps = train.epochs * len(MultiTaskBatchSampler([len(t.train) for t in toy_tasks], train.batch_size))
    finals, counts = [], []
    for every in (3, 5):
        torch.manual_seed(0)
        model = shared_model(tiny, toy_tasks)
        z, measured = tag_affinity(model, toy_tasks, train, every)
        assert z.shape == (4, 4) and torch.isfinite(z).all()
        finals.append({k: v.clone() for k, v in shared_parameters(model).items()})
        counts.append(measured)
    assert counts == [math.ceil(steps / 3), math.ceil(steps / 5)]
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])
    start = shared_model(tiny, toy_tasks)
    assert any(not torch.equal(start.state_dict()[k], v) for k, v in finals[0].items())  # it trained


def _tag_reference(z: torch.Tensor, tasks: list[str], k: int | None) -> tuple[str, float]:
    """TAG's published selection, written from it: affinity[target][source] = Z[source -> target]; every
    group's per-task score is the summed affinity onto the task from the others, divided by (|group| - 1)
    (a task alone scores 0 in disjoint groups); a grouping scores the sum of its tasks' scores. Enumerated
    here over subsets of the tasks, independently of `set_partitions`."""
    affinity = {t: {s: float(z[tasks.index(s), tasks.index(t)]) for s in tasks} for t in tasks}
    group_scores = {}
    for size in range(1, len(tasks) + 1):
        for group in itertools.combinations(tasks, size):
            group_scores[group] = {
                t: sum(affinity[t][s] for s in group if s != t) / (len(group) - 1) if len(group) > 1 else 0.0
                for t in group
            }
    best, best_val = None, -math.inf

    def cover(left: tuple, chosen: list):
        nonlocal best, best_val
        if not left:
            if k is None or len(chosen) == k:
                value = sum(v for g in chosen for v in group_scores[g].values())
                if value > best_val + 1e-12:
                    best, best_val = list(chosen), value
            return
        first = left[0]
        for group in group_scores:
            if first in group and set(group) <= set(left):
                cover(tuple(t for t in left if t not in group), [*chosen, group])

    cover(tuple(tasks), [])
    return str(Partition.parse("|".join("+".join(g) for g in best), tasks)), best_val


@pytest.mark.parametrize("n, k", [(4, 2), (4, 3), (4, None), (5, 2), (5, 3), (5, None)])
def test_tag_selection_matches_the_published_algorithm(n, k):
    tasks = [f"t{i}" for i in range(n)]
    for seed in range(20):
        z = torch.randn(n, n, generator=torch.Generator().manual_seed(seed))
        expected, value = _tag_reference(z, tasks, k)
        chosen = tag_partition(z, tasks, k)
        assert str(chosen) == expected and tag_score(z, chosen) == pytest.approx(value), (seed, str(chosen))


def test_tags_score_is_not_the_mean_within_group_affinity():
    """The direction matters (affinity onto a task, averaged per task) and singletons add 0: on some matrices
    TAG chooses another partition than the probes' mean-over-pairs selection."""
    differs = 0
    for seed in range(50):
        z = torch.randn(4, 4, generator=torch.Generator().manual_seed(seed))
        differs += str(tag_partition(z, TASKS, 2)) != str(best_partition(z, TASKS, 2))
    assert differs > 0
    z = torch.zeros(4, 4)
    z[0, 1] = 1.0  # Art's step helps Clipart only
    assert tag_score(z, Partition.parse("Art+Clipart|Product+RealWorld", TASKS)) == pytest.approx(1.0)
    assert tag_score(z, Partition.parse("Art|Clipart+Product+RealWorld", TASKS)) == 0.0
    assert str(tag_partition(z, TASKS, 2)) == "Art+Clipart|Product+RealWorld"
    assert len(list(set_partitions(TASKS, 2))) == 7


def test_plan_partition_and_the_group_command_run_tag(tiny, toy_tasks, tmp_path, capsys):
    cfg = AffinityConfig(seed=0)
    train = TrainConfig(epochs=1, batch_size=8)
    partition, z = plan_partition("tag", tiny, toy_tasks, cfg, MmAPConfig(n_tokens=2), train, k=2)
    assert partition.num_groups == 2 and z.shape == (4, 4)
    assert str(partition) == str(tag_partition(z, TASKS, 2))
    out = tmp_path / "tag.json"
    argv = ["group", "--scheme", "tag", "--k", "2", "--pretrained", "none", "--n-tokens", "2", "--epochs", "1"]
    assert main([*argv, "--shots", "2", "--batch-size", "16", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["scheme"] == "tag" and len(Partition.parse(result["partition"], TASKS).groups) == 2
    assert result["score"] == pytest.approx(
        tag_score(torch.tensor(result["affinity"]), Partition.parse(result["partition"], TASKS))
    )
    assert "Z[i->j]" in capsys.readouterr().out
