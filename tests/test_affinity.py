"""Task affinity: leaves weights and optimizer state untouched, reduces once per step, recovers planted pairs."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from mmap_ray.affinity import (
    AffinityConfig,
    _lookahead,
    _stream,
    measure_affinity,
    per_task_loss,
    shared_model,
    task_affinity,
    task_gradients,
    warm_up,
)
from mmap_ray.cli import main
from mmap_ray.data.toy import CONVENTION_GROUPS, ToyConfig, load_toy_tasks
from mmap_ray.engine import train_step

FAST = AffinityConfig(affinity_warmup_steps=2, affinity_steps=2, affinity_batch_size=8)


@pytest.fixture(scope="module")
def toy_tasks():
    return load_toy_tasks(ToyConfig(train_per_class=2, val_per_class=1, test_per_class=1))


def _state(model, opt):
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {i: {k: v.clone() for k, v in opt.state[p].items()} for i, p in enumerate(opt.param_groups[0]["params"])}
    return weights, moments


@pytest.mark.parametrize("method", ["gradient", "lookahead"])
def test_measuring_does_not_change_the_training_run_it_observes(tiny, toy_tasks, method):
    """TAG measures during joint training: the run with measuring ends bit-identical (weights, AdamW moments
    and step counts) to the same run without it."""
    cfg = AffinityConfig(method=method, affinity_warmup_steps=2, affinity_steps=3, affinity_batch_size=8)
    torch.manual_seed(0)
    measured = shared_model(tiny, toy_tasks)
    assert measured.bank.task_specific is None and measured.partition.num_groups == 1
    opt = warm_up(measured, toy_tasks, cfg)
    a = measure_affinity(measured, toy_tasks, cfg, opt)
    assert a.shape == (4, 4) and torch.isfinite(a).all()
    torch.manual_seed(0)
    plain = shared_model(tiny, toy_tasks)
    plain_opt = warm_up(plain, toy_tasks, cfg)
    for _, batch in zip(range(cfg.affinity_steps), _stream(toy_tasks, cfg, 1, torch.device("cpu"))):
        train_step(plain, batch, plain_opt, precision="fp32")
    (w1, m1), (w2, m2) = _state(measured, opt), _state(plain, plain_opt)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert m1.keys() == m2.keys() and all(torch.equal(m1[i][k], m2[i][k]) for i in m1 for k in m1[i])
    assert int(m1[0]["step"]) == cfg.affinity_warmup_steps + cfg.affinity_steps
    if method == "gradient":
        torch.testing.assert_close(a.diagonal(), torch.ones(4))
        torch.testing.assert_close(a, a.T)


def test_lookahead_is_the_optimizers_own_step_on_one_tasks_gradient(tiny, toy_tasks):
    """A reference written from TAG: copy the model and its AdamW, give the copy task i's gradient alone,
    step, and read every task's loss; Z[i, j] = 1 - L_j(after) / L_j(before)."""
    cfg = AffinityConfig(method="lookahead", affinity_warmup_steps=3, affinity_steps=1, affinity_batch_size=8)
    torch.manual_seed(0)
    model = shared_model(tiny, toy_tasks)
    opt = warm_up(model, toy_tasks, cfg)  # AdamW moments and a step count of 3: not a plain SGD step
    batch = next(_stream(toy_tasks, cfg, 1, torch.device("cpu")))
    images, labels, task_ids = batch
    reference = torch.zeros(4, 4)
    for i in range(4):
        twin = copy.deepcopy(model)
        twin_opt = torch.optim.AdamW([p for p in twin.parameters() if p.requires_grad], lr=cfg.affinity_lr)
        twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        losses = per_task_loss(twin(images, task_ids), labels, task_ids, 4)
        twin_opt.zero_grad()
        losses[i].backward()
        twin_opt.step()
        with torch.no_grad():
            after = per_task_loss(twin(images, task_ids), labels, task_ids, 4)
        reference[i] = 1 - after / losses.detach()
    grads, losses = task_gradients(model, batch, 4)
    torch.testing.assert_close(_lookahead(model, batch, grads, losses, opt), reference, atol=1e-5, rtol=1e-4)
    assert (reference.diagonal() > 0).all()  # a step on a task's own gradient lowers its own loss


def test_reduce_is_one_call_per_measured_step_on_grads_and_losses(tiny, toy_tasks):
    model = shared_model(tiny, toy_tasks)
    calls = []

    def reduce(x):
        calls.append(x.shape)
        return x * 1.0  # stands in for an all-reduce mean over one worker

    cfg = AffinityConfig(affinity_warmup_steps=0, affinity_steps=5, affinity_every=2, affinity_batch_size=8)
    measure_affinity(model, toy_tasks, cfg, reduce=reduce)
    n_params = sum(p.numel() for p in model.bank.groups.parameters())
    assert cfg.measured_steps == 3 and calls == [(4, n_params + 1)] * 3  # steps 0, 2 and 4


def test_task_gradients_match_separate_backward_passes(tiny, toy_tasks):
    model = shared_model(tiny, toy_tasks)
    images = torch.stack([t.train[i][0] for t in toy_tasks for i in range(2)])
    labels = torch.tensor([t.train[i][1] for t in toy_tasks for i in range(2)])
    task_ids = torch.arange(4).repeat_interleave(2)
    grads, losses = task_gradients(model, (images, labels, task_ids), 4)
    for t in range(4):
        model.zero_grad()
        sel = task_ids == t
        loss = F.cross_entropy(model(images[sel], task_ids[sel]), labels[sel])
        loss.backward()
        ref = torch.cat([p.grad.flatten() for p in model.bank.groups.parameters() if p.numel()])
        # batch composition changes float sums: compare as a whole (measured: 1e-6 to 4e-6 of the norm)
        assert (grads[t] - ref).norm() <= 1e-4 * ref.norm(), ((grads[t] - ref).norm(), ref.norm())
        torch.testing.assert_close(losses[t], loss.detach())


def test_warm_up_trains_the_shared_prompt(tiny, toy_tasks):
    model = shared_model(tiny, toy_tasks)
    before = model.bank.groups.source.detach().clone()
    warm_up(model, toy_tasks, FAST)
    assert not torch.equal(model.bank.groups.source, before)


def test_warm_up_takes_the_training_step_and_stops_on_divergence(tiny, toy_tasks):
    """The warm-up is the training loop's step: a non-finite loss stops it before any weight is updated."""
    model = shared_model(tiny, toy_tasks)
    with pytest.raises(FloatingPointError, match=r"training loss is (nan|inf) at step \d+ of the affinity warm-up"):
        warm_up(model, toy_tasks, AffinityConfig(affinity_warmup_steps=5, affinity_batch_size=8, affinity_lr=1e30))
    assert torch.isfinite(model.bank.groups.source).all()


def test_affinity_progress_bar_counts_warm_up_and_measured_steps(tiny, toy_tasks, capsys):
    """The affinity phase takes minutes on real models: with progress on, a bar on stderr says where it is."""
    cfg = AffinityConfig(affinity_warmup_steps=2, affinity_steps=3, affinity_batch_size=8, seed=4)
    with_bar = task_affinity(tiny, toy_tasks, cfg, progress=True)
    err = capsys.readouterr().err
    # tqdm redraws at most every 0.1 s and clears a finished bar (leave=False): its first frame names the total
    assert "gradient affinity (seed 4):   0%|" in err and " 0/5 [" in err
    assert torch.equal(with_bar, task_affinity(tiny, toy_tasks, cfg))  # the bar changes nothing measured
    assert capsys.readouterr().err == ""  # and is off by default


def test_affinity_config_errors():
    with pytest.raises(ValueError, match="method='tga' is not valid; choose one of"):
        AffinityConfig(method="tga")
    with pytest.raises(ValueError, match="tag_every=0 must be >= 1"):
        AffinityConfig(tag_every=0)
    with pytest.raises(ValueError, match="steps=0 must be >= 1"):
        AffinityConfig(affinity_steps=0)
    with pytest.raises(ValueError, match="affinity_every=0 must be >= 1"):
        AffinityConfig(affinity_every=0)


def test_group_cli_writes_a_partition_train_accepts(tmp_path, capsys):
    out = tmp_path / "group.json"
    common = ["--pretrained", "none", "--n-tokens", "2"]
    fast = ["--affinity-warmup-steps", "1", "--affinity-steps", "1", "--affinity-batch-size", "8"]
    assert main(["group", *common, "--k", "2", *fast, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["tasks"] == ["Art", "Clipart", "Product", "RealWorld"] and len(result["affinity"]) == 4
    assert f"partition: {result['partition']}" in printed and "RealWorld" in printed.splitlines()[1]
    run = tmp_path / "run"
    train = ["train", *common, "--epochs", "1", "--batch-size", "32", "--no-progress"]
    assert main([*train, "--partition", str(out), "--out", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["partition"] == result["partition"]
    assert main(["group", *common, "--k", "0"]) == 2
    assert "--k 0 is not valid for 4 tasks" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["gradient"])
def test_trained_affinity_finds_toy2s_conventions_where_the_proxies_do_not(scheme, tmp_path):
    """On toy2 the planted partition (the labelling conventions) is what gradient affinity finds in >= 4
    of 5 seeds, each seed with its own data; test_proxies checks that zero-shot and frozen-feature proxies
    do not find it. (The look-ahead found it for 2 of the oracle study's 3 seeds: docs/results.md.)"""
    hits = 0
    for seed in range(5):
        out = tmp_path / f"{scheme}-{seed}.json"
        argv = ["group", "--dataset", "toy2", "--scheme", scheme, "--k", "2", "--seed", str(seed)]
        assert main([*argv, "--data-seed", str(seed), "--out", str(out)]) == 0
        hits += json.loads(out.read_text())["partition"] == CONVENTION_GROUPS
    assert hits >= 4


@pytest.mark.slow
def test_on_toy3_the_label_prior_drives_gradient_affinity_unless_batches_are_class_balanced(tmp_path):
    """toy3's tasks are labelled for halves of the classes: gradient affinity as TAG measures it groups the
    tasks with the same half (the style pairs, the oracle's worst partition) in every seed (5 of 5 in the
    oracle study; 3 here, for time); drawn
    class-balanced (--affinity-balance) it finds the planted conventions in >= 4 of 5 (docs/results.md)."""
    chosen = {False: [], True: []}
    for balance in chosen:
        for seed in range(5 if balance else 3):
            out = tmp_path / f"{balance}-{seed}.json"
            argv = ["group", "--dataset", "toy3", "--scheme", "gradient", "--k", "2", "--seed", str(seed)]
            flag = "--affinity-balance" if balance else "--no-affinity-balance"
            assert main([*argv, "--data-seed", str(seed), flag, "--out", str(out)]) == 0
            chosen[balance].append(json.loads(out.read_text())["partition"])
    assert chosen[False] == ["Art+Clipart|Product+RealWorld"] * 3, chosen
    assert chosen[True].count(CONVENTION_GROUPS) >= 4, chosen
