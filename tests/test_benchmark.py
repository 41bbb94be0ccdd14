"""The benchmark's correctness checks: compared variants compute the same thing; --quick writes its table.

Speed is never asserted here: only that truncation, no-grad below the first alignment layer and fused
multi-task batching change nothing but the cost, that DDP all-reduces exactly the trainable bytes, and
that `studies/benchmark.py --quick` writes the Parquet rows and the Markdown table it promises.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from mmap_ray.backbone import TINY_MODEL

STUDY = Path(__file__).resolve().parents[1] / "studies" / "benchmark.py"
sys.path.insert(0, str(STUDY.parent))  # the benchmark's building blocks live next to it (not in the package)
import bench  # noqa: E402
import bench_table  # noqa: E402


def _study():
    spec = importlib.util.spec_from_file_location("benchmark_study", STUDY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _model(backbone, **kw):
    setup = bench.Setup(batch_size=8, **kw)
    model = bench.prompted(backbone, setup)
    return model, bench.make_batch(model, setup.batch_size)


def test_truncated_context_gives_the_same_logits(tiny):
    truncated, batch = _model(tiny)
    full, _ = _model(tiny, truncate_context=False)
    assert truncated.text_tokens.shape[1] < full.text_tokens.shape[1] == tiny.info.context_length
    assert bench.check_truncation(truncated, full, batch) <= 1e-5


@pytest.mark.parametrize("layers", [None, "2"])
def test_no_grad_below_first_layer_gives_the_same_prompt_gradients(tiny, layers):
    model, batch = _model(tiny, layers=layers)
    default = bench.prompt_grads(model, batch)
    with bench.grad_below_first_layer(model):
        every = bench.prompt_grads(model, batch)
    assert not model.grad_below_first_layer  # the switch is restored
    assert all(g.abs().sum() > 0 for g in default)
    assert bench.grads_diff(default, every) <= 1e-6


def test_fused_multitask_forward_equals_a_loop_over_tasks(tiny):
    model, batch = _model(tiny)
    shuffled = bench.Batch(*(t[torch.randperm(len(t), generator=torch.Generator().manual_seed(1))] for t in batch))
    assert bench.check_fused(model, shuffled) <= 1e-5


def test_full_finetune_switch_restores_the_frozen_backbone(tiny):
    model, _ = _model(tiny)
    with bench.backbone_trainable(model):
        assert bench.trainable_bytes(model) == sum(p.numel() * 4 for p in model.parameters())
    assert bench.trainable_bytes(model) == sum(p.numel() * 4 for p in model.bank.parameters())


@pytest.mark.parametrize("full_finetune", [False, True])
def test_ddp_all_reduces_exactly_the_trainable_bytes(tmp_path, full_finetune):
    ranks = bench.ddp_bucket_bytes(bench.Setup(model=TINY_MODEL), full_finetune, tmp_path)
    assert len(ranks) == 2
    for r in ranks:
        assert r["bytes"] == r["trainable_bytes"] > 0
    if not full_finetune:
        assert ranks[0]["bytes"] < 100_000  # prompts only: tens of KB, not the backbone's MBs


def test_quick_writes_parquet_and_markdown(tmp_path):
    study = _study()
    assert study.main(["--quick", "--skip-ray", "--repeats", "1", "--out", str(tmp_path)]) == 0
    import sys

    assert sys.float_info.min / 2 > 0  # the run's denormal flush is cleared: the next test sees IEEE floats
    files = sorted((tmp_path / "results" / study.TABLE).glob("*.parquet"))
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    expected = {
        "MmAP step / frozen forward",
        "full FT step / frozen forward",
        "forward with autograd / frozen forward",
        "MmAP step, all blocks with grad / no-grad below first layer",
        "text tower step, 77 tokens / truncated",
        "text logits max |truncated - 77 tokens|",
        "MmAP step, loop over tasks / fused",
        "MmAP peak memory / full FT peak memory",
        "all-reduced bytes per step, MmAP / full FT",
        "MmAP: DDP hook bytes / trainable-parameter bytes",
        "full FT: DDP hook bytes / trainable-parameter bytes",
        "MmAP step, DomainNet 6x345 / Office-Home 4x65",
        "text tower / MmAP step, DomainNet 6x345",
    }
    assert expected <= set(df["figure"])
    assert (df["model"] == TINY_MODEL).all() and (df["device"] == "cpu").all()
    hook = df[df["figure"].str.contains("DDP hook bytes")]
    assert (hook["ratio_median"] == 1.0).all()
    checks = df[df["max_abs_diff"].notna()]
    assert len(checks) >= 3 and (checks["max_abs_diff"] <= 1e-5).all()
    assert df["flop_ratio"].notna().any() and {"git_commit", "cpu_model", "load_before"} <= set(df.columns)
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert bench_table.BEGIN in md and bench_table.END in md and "python studies/benchmark.py --quick" in md
    assert all(f in md for f in expected)


def test_the_shaped_models_encode_every_class_prompt_of_their_tasks(tiny):
    """The class-scaling figure's two shapes: Office-Home's 4 x 65 and DomainNet's 6 x 345 class prompts per step."""
    import bench_classes

    for tasks, classes in bench_classes.SHAPES.values():
        model = bench_classes.shaped_model(tiny, bench.Setup(), tasks, classes)
        feats, where = model.text_features(torch.arange(tasks))
        assert feats.shape[0] == tasks * classes and (where >= 0).all()
        assert len(set(model.bank.group_of_task.tolist())) == (tasks + 1) // 2  # the tasks in pairs


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when CUDA is missing")
def test_cuda_mode_without_cuda_fails_clearly(capsys):
    assert _study().main(["--device", "cuda", "--skip-ray"]) == 2
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err


def test_the_search_benchmark_asks_the_studys_own_searcher_and_tells_it_every_result():
    """studies/bench_tpe.py: every suggestion is a point of the study's wide search space (6 axes), and the
    summary reads the window before 10 told results."""
    import bench_tpe

    df = bench_tpe.run(bench_tpe.SPACES["wide"], trials=12)
    assert df["told"].tolist() == list(range(12)) and (df["axes"] == 6).all()
    assert df["depth"].isin([3, 6, 9, 12]).all() and df["projection"].isin(["kron", "linear", "phm"]).all()
    assert df["combine"].isin(["concat", "add"]).all() and df["lr"].between(5e-4, 5e-3).all()
    assert (df["suggest_s"] > 0).all() and (df["tell_s"] > 0).all()
    assert [r["told results"] for r in bench_tpe.summary(df, 12)] == [10]


def test_the_results_benchmark_writes_a_study_per_size_that_the_report_and_compare_read(tmp_path, capsys):
    """studies/bench_results.py at a small size: its fabricated trials go through the study's writer, each
    size's folder holds that many trials (hard links), and `mmap-ray report` pairs the schemes down to images."""
    import bench_results

    assert bench_results.main(["--trials", "2", "4", "--images", "600", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "|        2 |             1,200 |" in out and "|        4 |             2,400 |" in out
    assert "compare of two runs' 600 predictions" in out
    for n in (2, 4):
        assert len(list((tmp_path / f"n{n}" / "results" / "trials").glob("*.parquet"))) == n
    report = (tmp_path / "n4" / "report" / "report.md").read_text()
    assert "| independent | single    |       2 |" in report  # paired by seed, and by seeds + images


def test_the_trial_benchmark_times_every_phase_of_a_default_trial_and_leaves_the_loop_as_it_was():
    """studies/bench_trial.py on a one-epoch default trial: each phase is timed once per call of what it wraps
    (one epoch: one train pass of 12 steps, one validation, one test, one checkpoint), the phases add up, and
    the engine's functions are its own again afterwards."""
    import bench_trial

    from mmap_ray import checkpoint, engine

    before = (engine.train_epoch, engine.train_step, engine._split_accuracy, checkpoint.save_numbered)
    table, totals = bench_trial.measure(epochs=1)
    assert (engine.train_epoch, engine.train_step, engine._split_accuracy, checkpoint.save_numbered) == before
    calls = dict(zip(table["phase"], table["calls"]))
    once = ["build", "train steps", "validation", "test", "checkpoints"]
    assert {p: calls[p] for p in once} == dict.fromkeys(once, 1)
    assert totals["epochs"] == 1 and totals["steps"] == 12 and totals["torch threads"] == 1
    assert (table["seconds"] >= 0).all() and abs(table["share %"].sum() - 100) < 0.5
    inside = table[table["phase"].isin(["build", "train steps", "validation", "test", "checkpoints", "other"])]
    assert abs(inside["seconds"].sum() - totals["trial s (start-up excluded)"]) < 0.1


def test_the_study_scale_benchmark_asks_for_n_one_epoch_trials_in_either_mode():
    """studies/bench_study.py --scale N: the study it runs is N one-epoch trials, one core each, as a grid of
    N seeds or a TPE search of N samples without early stopping."""
    import bench_study

    from mmap_ray.study import program
    from mmap_ray.study.trials import grid_axes

    def study(mode: str):
        return program.build_study(program.build_parser().parse_args(bench_study.scale_args(7, mode)))

    grid, search = study("compare"), study("search")
    assert grid.mode == "compare" and len(grid.schemes) * len(grid.seeds) == 7
    assert all(len(values) == 1 for values in grid_axes(grid).values())
    assert search.mode == "search" and search.num_samples == 7 and not search.asha
    for s in (grid, search):
        assert s.run.train.epochs == 1 and s.resources.cpus_per_worker == 1


@pytest.mark.slow
def test_the_study_scale_benchmark_times_writes_reads_and_suggestions_of_a_search(ray_local):
    """bench_study.measure on a 2-trial search study (on the session's Ray): every trial's three files are
    timed as written, the read-back and the report as phases, and each TPE suggestion."""
    import bench_study

    table, totals = bench_study.measure(bench_study.scale_args(2, "search"))
    assert totals["trials"] == 2 and totals["write s per trial"] > 0 and totals["suggest ms (mean)"] > 0
    assert list(table["phase"]) == ["imports", "Ray start", "partitions", "trials", "load", "report", "other"]
    assert (table["seconds"] >= 0).all() and abs(table["share %"].sum() - 100) < 0.5
