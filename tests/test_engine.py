"""The train/eval loop: prompt-only checkpoints, bit-for-bit resume, baselines as configurations, one
history row format, and the checkpoint module (atomic, validated, weights only)."""

import json

import pytest
import torch

from mmap_ray import checkpoint
from mmap_ray.data.base import split_digest
from mmap_ray.data.toy import ToyConfig, load_toy_tasks
from mmap_ray.engine import Context, TrainConfig, checkpoint_due, fit, train
from mmap_ray.evaluation import evaluate, predictions
from mmap_ray.model import PromptedCLIP
from mmap_ray.prompts import MmAPConfig

PARTITION = "Art+Clipart|Product+RealWorld"


@pytest.fixture(scope="module")
def toy_tasks():
    return load_toy_tasks(ToyConfig(train_per_class=3, val_per_class=1, test_per_class=2))


def _model(tiny, tasks, seed=0, **mmap):
    torch.manual_seed(seed)
    return PromptedCLIP(tiny, {t.name: t.class_names for t in tasks}, MmAPConfig(n_tokens=2, **mmap), PARTITION)


def test_resume_matches_uninterrupted_run(tiny, toy_tasks, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=16, lr=5e-3, seed=7, warmup_steps=2)
    full = _model(tiny, toy_tasks)
    ref = train(full, toy_tasks, cfg, tmp_path / "full", progress=False)

    part = _model(tiny, toy_tasks)
    first = train(part, toy_tasks, cfg, tmp_path / "split", progress=False, stop_after_epoch=1)
    assert len(first) == 1
    resumed = _model(tiny, toy_tasks, seed=123)  # different init: everything must come from the checkpoint
    hist = train(resumed, toy_tasks, cfg, tmp_path / "split", progress=False)
    assert hist == ref
    for (n, a), b in zip(full.bank.state_dict().items(), resumed.bank.state_dict().values()):
        assert torch.equal(a, b), n
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]  # no duplicated rows after resuming
    assert evaluate(full, toy_tasks) == evaluate(resumed, toy_tasks)


def test_checkpoints_every_k_epochs_and_after_the_last_and_resume_from_any_is_exact(tiny, toy_tasks, tmp_path):
    """checkpoint_every=2 over 5 epochs saves after epochs 2, 4 and 5; the default (0) saves every
    ceil(epochs / 10) epochs. A run stopped after epoch 3 (a crash) resumes from epoch 2, exactly."""
    assert [e for e in range(1, 6) if checkpoint_due(TrainConfig(epochs=5, checkpoint_every=2), e)] == [2, 4, 5]
    assert [e for e in range(1, 33) if checkpoint_due(TrainConfig(epochs=32), e)] == [4, 8, 12, 16, 20, 24, 28, 32]
    assert [e for e in range(1, 4) if checkpoint_due(TrainConfig(epochs=3), e)] == [1, 2, 3]
    cfg = TrainConfig(epochs=5, batch_size=16, checkpoint_every=2)
    saved: list[int] = []

    def report(row: dict, state: dict | None) -> None:
        if state is not None:  # it shares storage with the live prompts: save it now
            checkpoint.save(state, tmp_path / f"epoch{row['epoch']}.pt")
            saved.append(row["epoch"])

    ref = fit(_model(tiny, toy_tasks), toy_tasks, cfg, Context(torch.device("cpu"), report=report))
    assert saved == [2, 4, 5]
    buf = tmp_path / "epoch2.pt"
    crashed = fit(_model(tiny, toy_tasks, seed=5), toy_tasks, cfg, Context(torch.device("cpu")), stop_after_epoch=3)
    assert len(crashed) == 3
    ctx = Context(torch.device("cpu"), restore=lambda: checkpoint.load(buf))
    resumed = fit(_model(tiny, toy_tasks, seed=5), toy_tasks, cfg, ctx)
    assert resumed == ref


def test_checkpoint_holds_prompts_only(tiny, toy_tasks, tmp_path):
    model = _model(tiny, toy_tasks)
    train(model, toy_tasks, TrainConfig(epochs=1, batch_size=16), tmp_path, progress=False)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # plain tensors and values: no code runs
    assert ckpt["trainable"] and all(n.startswith("bank.") for n in ckpt["trainable"])
    assert (tmp_path / "checkpoint.pt").stat().st_size < 200_000
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    train(_model(tiny, toy_tasks), toy_tasks, TrainConfig(epochs=1, batch_size=16, optimizer="sgd"), progress=False)
    assert all(torch.equal(v, before[k]) for k, v in tiny.model.state_dict().items())


def test_training_reduces_loss_and_reports_every_task(tiny, toy_tasks):
    model = _model(tiny, toy_tasks)
    hist = train(model, toy_tasks, TrainConfig(epochs=4, batch_size=16, lr=1e-2), progress=False)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    val = [f"val/{t.name}" for t in toy_tasks] + ["val/mean"]
    every = ["epoch", "train_loss", "lr", "trainable_params", "total_params", *val]
    assert [list(r) for r in hist[:-1]] == [every] * 3  # the row format of every path (see test_distributed)
    test = [k.replace("val/", "test/") for k in val]
    zero_shot = [k.replace("val/", "zeroshot/") for k in val]
    assert list(hist[-1]) == every + test + zero_shot + ["test_images", "predictions"]  # after the last epoch
    assert hist[-1]["test_images"] == split_digest(toy_tasks, "test")  # which images the predictions are of
    assert hist[-1]["test/mean"] == evaluate(model, toy_tasks)["mean"]
    # the backbone's zero-shot accuracy on the same images: the model with no prompts at all
    plain = PromptedCLIP(tiny, {t.name: t.class_names for t in toy_tasks}, MmAPConfig(layers=()))
    assert {k: hist[-1][f"zeroshot/{k}"] for k in ["mean", *[t.name for t in toy_tasks]]} == evaluate(plain, toy_tasks)
    # every test image's outcome, in the order `predictions` lists them (task, then image index)
    assert hist[-1]["predictions"] == predictions(model, toy_tasks)
    assert hist[0]["trainable_params"] == sum(p.numel() for p in model.bank.parameters())


def test_fit_reports_every_epoch_and_resumes_from_the_context(tiny, toy_tasks, tmp_path):
    """The loop's context: report gets each row and the state to save; restore() is where a run resumes."""
    cfg = TrainConfig(epochs=2, batch_size=16, seed=3)
    rows = []

    def report(row, state):
        rows.append(row)
        checkpoint.save(state, tmp_path / f"epoch{row['epoch']}.pt")

    hist = fit(_model(tiny, toy_tasks), toy_tasks, cfg, Context(torch.device("cpu"), report=report))
    assert rows == hist and checkpoint.load(tmp_path / "epoch1.pt")["history"] == hist[:1]
    restore = lambda: checkpoint.load(tmp_path / "epoch1.pt")  # noqa: E731
    resumed = fit(_model(tiny, toy_tasks, seed=9), toy_tasks, cfg, Context(torch.device("cpu"), restore=restore))
    assert resumed == hist  # epoch 2 trained from the state saved after epoch 1


def test_checkpoint_round_trip_from_file_and_bytes(tiny, toy_tasks, tmp_path):
    model = _model(tiny, toy_tasks)
    train(model, toy_tasks, TrainConfig(epochs=1, batch_size=16), tmp_path, progress=False)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["checkpoint.pt", "metrics.jsonl", "predictions.parquet"]  # no temporary file left
    state = checkpoint.load(tmp_path / "checkpoint.pt")
    again = checkpoint.from_bytes((tmp_path / "checkpoint.pt").read_bytes(), "s3://bucket/state.pt")
    assert again["history"] == state["history"] and again["train_config"] == state["train_config"]
    assert all(torch.equal(again["trainable"][n], t) for n, t in state["trainable"].items())
    checkpoint.save({**state, "history": []}, tmp_path / "checkpoint.pt")  # replaced whole
    assert checkpoint.load(tmp_path / "checkpoint.pt")["history"] == []


@pytest.mark.parametrize(
    "state, needle",
    [
        ({"trainable": {}}, "it lacks ['optimizer', 'scheduler', 'history', 'train_config']"),
        ([1, 2], "it lacks ['trainable', 'optimizer'"),
        (dict.fromkeys(checkpoint.KEYS, {}), "history is a dict, not a list"),
        ({**dict.fromkeys(checkpoint.KEYS, {}), "trainable": {"x": [1.0]}, "history": []}, "['x'] is not a tensor"),
    ],
)
def test_checkpoint_that_is_not_a_run_state_is_named(tmp_path, state, needle):
    torch.save(state, tmp_path / "state.pt")
    with pytest.raises(ValueError, match="is not an mmap-ray run checkpoint") as e:
        checkpoint.load(tmp_path / "state.pt")
    assert f"checkpoint {tmp_path / 'state.pt'} " in str(e.value) and needle in str(e.value)
    with pytest.raises(ValueError, match=r"checkpoint s3://b/state.pt is not an mmap-ray run checkpoint"):
        checkpoint.from_bytes((tmp_path / "state.pt").read_bytes(), "s3://b/state.pt")
    with pytest.raises(ValueError, match=r"checkpoint s3://b/state.pt is not a PyTorch checkpoint"):
        checkpoint.from_bytes((tmp_path / "state.pt").read_bytes()[:100], "s3://b/state.pt")  # truncated


def test_full_finetune_trains_the_backbone(toy_tasks):
    from mmap_ray.backbone import TINY_MODEL, BackboneConfig, load_backbone

    torch.manual_seed(0)
    own = load_backbone(BackboneConfig(TINY_MODEL))  # not the shared fixture: this one gets unfrozen
    before = own.model.visual.proj.detach().clone()
    model = PromptedCLIP(own, {t.name: t.class_names for t in toy_tasks}, MmAPConfig(layers=()), PARTITION)
    train(model, toy_tasks, TrainConfig(epochs=1, batch_size=16, lr=1e-3, full_finetune=True), progress=False)
    assert model.clip.training and not torch.equal(own.model.visual.proj, before)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"epochs": -1}, "epochs=-1 must be >= 0"),
        ({"optimizer": "adam"}, "optimizer='adam' is not valid; choose one of ('adamw', 'sgd')"),
        ({"sampling": "rand"}, "sampling='rand' is not valid"),
        ({"grad_clip": 0}, "grad_clip=0 must be > 0 and finite, or None"),
        ({"precision": "fp16"}, "precision='fp16' is not valid; choose one of ('auto', 'bf16', 'fp32')"),
    ],
)
def test_train_config_errors(kwargs, needle):
    with pytest.raises(ValueError) as e:
        TrainConfig(**kwargs)
    assert needle in str(e.value)
