"""The study report: from a real smoke study's output, and from fabricated schema-v2 rows with failures, ASHA
stops, ablations, baselines, missing files or columns and a stray foreign Parquet file; the leaderboard groups
by config_id; the report writes only files it owns; the walkthrough notebook runs top to bottom."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import runpy
import shutil
import sys
from pathlib import Path

import matplotlib.image
import nbclient
import nbformat
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mmap_ray.cli import main as mmap_ray
from mmap_ray.report import (
    COMPARISONS,
    MANIFEST,
    build_report,
    comparisons,
    config_labels,
    format_layers,
    leaderboard,
    load_study,
    status_table,
    write_report,
)
from mmap_ray.report.plots import pareto_front
from mmap_ray.results import (
    EPOCH_SCHEMA,
    EPOCHS,
    SCHEMA_VERSION,
    TRIALS,
    canonical_json,
    config_id,
    row_key,
    trial_schema,
    write_table,
)
from mmap_ray.storage import Location, location

REPO = Path(__file__).resolve().parent.parent
TASKS = ("Art", "Clipart", "Product", "RealWorld")
PNG = b"\x89PNG\r\n\x1a\n"


# ---- fabricated studies -------------------------------------------------------------------------------

PLANTED = "Art+Clipart|Product+RealWorld"
SHARED = "Art+Clipart+Product+RealWorld"


def _trial(
    tid: str,
    scheme: str,
    seed: int,
    acc: float,
    *,
    status: str = "TERMINATED",
    early: bool = False,
    n_tokens: int = 8,
    layers: tuple[int, ...] = (0, 1, 2, 3),
    params: int = 4698,
    epochs_run: int = 4,
    partition: str = PLANTED,
    lr: float = 2e-3,
    dataset: str = "toy",
    data_seed: int = 0,
) -> dict:
    """A trial row of the current schema, `acc` a fraction written in percent; its config_id hashes the
    configuration (not the scheme, not the seed)."""
    ok = status == "TERMINATED"
    config = {
        "partition": partition,
        "n_tokens": n_tokens,
        "layers": list(layers),
        "projection": "kron",
        "combine": "concat",
        "lr": lr,
        "epochs": 4,
        "batch_size": 16,
        "dataset": dataset,
        "model": "tiny",
        "pretrained": "none",
        "data_seed": data_seed,
    }
    row = {
        **config,
        "study": "fab",
        "config_id": config_id(config),
        "config": canonical_json(config),
        "seed": seed,
        "trial_id": tid,
        "scheme": scheme,
        "status": status,
        "error": "" if ok else f"/tmp/{tid}/error.txt",
        "early_stopped": early,
        "k": partition.count("|") + 1,
        "depth": len(layers),
        "epochs_run": epochs_run,
        "trainable_params": params if ok else None,
        "total_params": 3_845_000 + params if ok else None,
        "val_mean_final": 100 * acc if ok else None,
        "val_mean_best": 100 * (acc + 0.01) if ok else None,
        "test_mean": 100 * acc if ok else None,
        "wall_s": 36.0,
        "device_hours": 0.01,
        "device_kind": "cpu",
        "schema_version": SCHEMA_VERSION,
        "git_commit": "abc123",
    }
    if ok:  # a failed trial has no history: its per-task columns are typed nulls
        for i, t in enumerate(TASKS):
            row |= {
                f"val_{t}_final": 100 * (acc + 0.01 * i),
                f"val_{t}_best": 100 * (acc + 0.01 * i + 0.01),
                f"test_{t}": 100 * (acc - 0.015 + 0.01 * i),
            }
    return row


def _epochs(row: dict) -> list[dict]:
    return [
        {
            "study": row["study"],
            "config_id": row["config_id"],
            "seed": row["seed"],
            "trial_id": row["trial_id"],
            "epoch": e,
            "task": t,
            "val_acc": 50 + 5 * e + i,
            "train_loss": 1.0 / e,
            "test_acc": None,
            "val_mean": 50 + 5 * e + (len(TASKS) - 1) / 2,
            "test_mean": None,
        }
        for e in range(1, row["epochs_run"] + 1)
        for i, t in enumerate(TASKS)
    ]


def write_rows(results: Path | Location, rows: list[dict], *, epochs: bool = True) -> None:
    """Each row as the study writes it: trials/<config_id>-s<seed>.parquet and its epochs."""
    for row in rows:
        key = row_key(row["config_id"], row["seed"])
        write_table(results, TRIALS, key, [row], trial_schema(list(TASKS)))
        if epochs and row["epochs_run"]:
            write_table(results, EPOCHS, key, _epochs(row), EPOCH_SCHEMA)


def fabricate(
    where: Path | str, *, epochs: bool = True, partitions: bool = True, drop: tuple[str, ...] = ()
) -> Location:
    """A study folder (local or a URI) with results/: 2 schemes x 3 seeds x 2 prompt lengths x 2 depths, 1 failed,
    2 ASHA-stopped."""
    root = location(where)
    results = root / "results"
    rows, n = [], 0
    for scheme, partition, base in (("single", SHARED, 0.70), ("gradient", PLANTED, 0.74)):
        for n_tokens, layers, bonus in ((2, (0, 1), 0.0), (8, (0, 1, 2, 3), 0.02)):
            for seed in (0, 1, 2):
                rows.append(
                    _trial(
                        f"t{n:03d}",
                        scheme,
                        seed,
                        base + bonus + 0.01 * seed,
                        n_tokens=n_tokens,
                        layers=layers,
                        params=1000 * n_tokens,
                        partition=partition,
                    )
                )
                n += 1
    rows.append(_trial("t100", "gradient", 3, 0.0, status="ERROR", epochs_run=0))
    rows.append(_trial("t101", "gradient", 4, 0.40, early=True, epochs_run=2))
    rows.append(_trial("t102", "single", 4, 0.35, early=True, epochs_run=2, partition=SHARED))
    write_rows(
        results, [{k: v for k, v in r.items() if not any(k.startswith(d) for d in drop)} for r in rows], epochs=epochs
    )
    if partitions:
        affinity = {
            f"gradient/{s}": {"tasks": list(TASKS), "matrix": (np.eye(4) * 0.8 + 0.1 * s).tolist()} for s in (0, 1)
        }
        saved = {
            "partitions": {"gradient/0": PLANTED, "gradient/1": "Art+Product|Clipart+RealWorld", "single/0": SHARED},
            "affinity": affinity,
        }
        (root / "partitions.json").write_text(json.dumps(saved))
    return results


def fabricate_baselines(root: Path) -> Path:
    for slug, label, _ in COMPARISONS:
        for seed in (0, 1):
            params = {"zero-shot": 0, "full-ft": 3_845_249}.get(slug, 9000)
            row = {
                "method": label,
                "seed": seed,
                "test_mean": 60 + 3 * len(slug) + seed,
                **{f"test_{t}": 60.0 for t in TASKS},
                "trainable_params": params,
                "total_params": 3_850_000,
            }
            write_table(root / "results", "baselines", f"{slug}-seed{seed}", [row])
    return root


def _check_pngs(paths: list[Path]) -> None:
    for p in paths:
        assert p.read_bytes()[:8] == PNG, p
        height, width = matplotlib.image.imread(p).shape[:2]
        assert width >= 400 and height >= 250, (p, width, height)


# ---- fast tests on fabricated rows --------------------------------------------------------------------


def test_pareto_front_and_layer_text():
    front = pareto_front([1000, 2000, 2000, 5000, 800, np.nan], [80, 85, 84, 85, 70, 99])
    assert front.tolist() == [True, True, False, False, True, False]  # 5000 is dominated by 2000 at equal accuracy
    shown = [format_layers(x) for x in ([0, 1, 2, 3], np.array([4, 0, 2]), [0, 1, 2, 5], [], None, np.nan)]
    assert shown == ["0-3", "0,2,4", "0-2,5", "none", "default", "default"]


def test_tables_count_outcomes_and_average_completed_trials(tmp_path):
    study = load_study(fabricate(tmp_path))
    status = status_table(study.trials)
    assert status.loc["gradient"].tolist() == [6, 1, 1, 8] and status.loc["single"].tolist() == [6, 1, 0, 7]
    assert study.trials["depth"].dtype == "Int64" and list(study.trials["layers"].iloc[0]) == [0, 1]
    board = leaderboard(study.trials)
    assert len(board) == 4 and (board[("trials", "n")] == 3).all()  # failed and ASHA-stopped trials left out
    best = board.iloc[0]
    assert board.index.names == ["scheme", "partition", "projection", "n_tokens", "depth", "config_id"]
    assert board.index[0][:5] == ("gradient", PLANTED, "kron", 8, 4)
    assert board.index[0][5] == study.trials.loc[study.trials["trial_id"] == "t100", "config_id"].item()
    assert best[("mean (%)", "mean")] == pytest.approx(100 * (0.76 + 0.77 + 0.78) / 3)
    assert best[("mean (%)", "std")] == pytest.approx(1.0)  # sample std over seeds 0, 1, 2
    assert best[("Art (%)", "mean")] == pytest.approx(100 * (0.77 - 0.015))
    assert best[("trainable params", "mean")] == 8000
    assert best[("trainable %", "mean")] == pytest.approx(100 * 8000 / 3_853_000)


def test_leaderboard_groups_by_configuration_not_by_scheme_label(tmp_path):
    other = "Art|Clipart+Product+RealWorld"
    rows = [  # random drew two partitions; gradient and lookahead chose one configuration for seeds 0 and 1
        _trial("r0", "random", 0, 0.70, partition=other),
        _trial("r1", "random", 1, 0.72, partition=other),
        _trial("r2", "random", 2, 0.60, partition="Art+Clipart+RealWorld|Product"),
        _trial("g0", "gradient, lookahead", 0, 0.80),
        _trial("g1", "gradient, lookahead", 1, 0.82),
        _trial("g2", "gradient", 2, 0.81),
        _trial("l2", "lookahead", 2, 0.75, partition="Art+Product|Clipart+RealWorld"),
    ]
    write_rows(tmp_path, rows)
    trials = load_study(tmp_path).trials
    board = leaderboard(trials)
    by_config = board[("trials", "n")].droplevel([0, 1, 2, 3, 4])
    assert by_config.to_dict() == trials.groupby("config_id")["seed"].count().to_dict()  # one row per config_id
    schemes = board.index.get_level_values("scheme").tolist()
    assert sorted(schemes) == ["gradient, lookahead", "lookahead", "random", "random"]
    assert schemes[0] == "gradient, lookahead" and board[("trials", "n")].iloc[0] == 3  # all three seeds, one row
    random = board.xs("random", level="scheme")
    assert sorted(random.index.get_level_values("partition")) == ["Art+Clipart+RealWorld|Product", other]
    assert sorted(random[("trials", "n")]) == [1, 2]
    labels = config_labels(board.index)
    assert labels[0] == "gradient, lookahead" and f"random, {other}" in labels  # short, unique, no hashes
    assert len(set(labels)) == len(labels) and not any("config " in label for label in labels)


def test_leaderboard_shows_a_setting_only_when_it_varies(tmp_path):
    rows = [_trial(f"a{s}", "single", s, 0.7, partition=SHARED) for s in (0, 1)]
    rows += [_trial(f"b{s}", "single", s, 0.8, partition=SHARED, lr=1e-3) for s in (0, 1)]
    rows += [_trial(f"c{s}", "single", s, 0.6, partition=SHARED, layers=(0, 2, 4, 6)) for s in (0, 1)]
    write_rows(tmp_path, rows)
    board = leaderboard(load_study(tmp_path).trials)
    assert len(board) == 3 and {"lr", "layers"} <= set(board.index.names)  # depth 4 both: the layers tell them apart
    assert sorted(board.index.get_level_values("layers")) == ["0,2,4,6", "0-3", "0-3"]
    assert config_labels(board.index) == [
        "single, layers 0-3, lr 0.001",
        "single, layers 0-3, lr 0.002",
        "single, layers 0,2,4,6, lr 0.002",
    ]
    only_depth = leaderboard(load_study(fabricate(tmp_path / "fab")).trials)
    assert "layers" not in only_depth.index.names and "lr" not in only_depth.index.names


def test_a_foreign_parquet_file_is_skipped_with_a_warning_naming_it(tmp_path):
    results = fabricate(tmp_path / "study")
    stray = Path(results.path) / TRIALS / "stray.parquet"
    pq.write_table(pa.table({"scheme": ["x"], "test_mean": [0.99]}), stray)  # no mmap-ray schema metadata
    with pytest.warns(UserWarning, match="stray.parquet"):
        study = load_study(results)
    assert len(study.trials) == 15 and 99.0 not in leaderboard(study.trials)[("mean (%)", "mean")].round(1).tolist()
    md = write_report(study, tmp_path / "out").markdown.read_text()
    assert "Not read: skipping" in md and "stray.parquet" in md


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_out_refuses_a_folder_it_did_not_write_and_leaves_it_untouched(tmp_path, capsys):
    results = fabricate(tmp_path / "study")
    foreign = tmp_path / "mine"
    (foreign / "figures").mkdir(parents=True)
    (foreign / "report.md").write_text("my own notes")
    (foreign / "figures" / "plot.png").write_bytes(PNG)
    before = _files(foreign)
    assert mmap_ray(["report", str(results), "--out", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert f"report folder {foreign} is not empty" in err and "choose an empty or new folder" in err
    assert err.count("\n") == 1 and _files(foreign) == before
    default = tmp_path / "study" / "report"  # the default folder follows the same rule
    default.mkdir()
    (default / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and has no .mmap-ray-report.json"):
        build_report(results)
    assert _files(default) == {default / "notes.txt": b"mine"}
    (tmp_path / "empty").mkdir()  # an empty folder, or a missing one, is fine
    assert len(build_report(results, out=tmp_path / "empty").figures) == 5
    assert len(build_report(results, out=tmp_path / "new" / "report").figures) == 5


def test_a_rewrite_removes_only_the_figures_it_no_longer_draws(tmp_path):
    results = fabricate(tmp_path / "study")
    out = tmp_path / "report"
    build_report(results, out=out)
    (out / "figures" / "mine.png").write_bytes(PNG)
    (out / "notes.md").write_text("mine")
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"] += ["notes.md", "figures/../notes.md"]  # a tampered manifest deletes nothing of the user's
    (out / MANIFEST).write_text(json.dumps(manifest))
    (tmp_path / "study" / "partitions.json").unlink()  # the next report draws no affinity figure
    second = build_report(results, out=out)
    assert not (out / "figures" / "affinity.png").exists()
    assert (out / "figures" / "mine.png").read_bytes() == PNG and (out / "notes.md").read_text() == "mine"
    drawn = [p.name for p in second.figures]
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted([*drawn, "mine.png"])
    listed = json.loads((out / MANIFEST).read_text())["files"]
    assert sorted(listed) == sorted(["report.md", "report.html", *(f"figures/{name}" for name in drawn)])
    (out / MANIFEST).write_text("[]")
    with pytest.raises(ValueError, match="is not a report manifest"):
        build_report(results, out=out)


def test_report_from_a_study_with_failed_and_early_stopped_trials(tmp_path):
    results = fabricate(tmp_path / "study")
    paths = build_report(results, baselines=fabricate_baselines(tmp_path / "base"))
    assert paths.markdown == tmp_path / "study" / "report" / "report.md"
    names = sorted(p.name for p in paths.figures)
    assert names == ["ablation-depth.png", "ablation-prompt-length.png", "affinity.png", "curves.png", "tradeoff.png"]
    _check_pngs(paths.figures)
    md, page = paths.markdown.read_text(), paths.html.read_text()
    for heading in (
        "Leaderboard",
        "Comparisons",
        "Accuracy vs trainable parameters",
        "Task affinity",
        "Learning curves",
        "Accuracy vs prompt length",
        "Accuracy vs alignment depth",
    ):
        assert f"## {heading}" in md and f"<h2>{heading}</h2>" in page
    assert "/tmp/t100/error.txt" in md  # the failed trial is listed with its error
    assert "77.0 ± 1.0" in md and "75.5 ± 1.0" in page  # mean ± std cells, from pandas
    assert page.count("data:image/png;base64,") == 5 and "figures/" not in page  # self-contained
    table = comparisons(load_study(results, tmp_path / "base"))
    labels = [label for _, label, _ in COMPARISONS]
    assert list(table.index) == labels[:-1] + ["MmAP (kron)", labels[-1]]  # baselines and the study's kron rows
    assert "Not in these results" not in md


def test_missing_optional_files_and_columns_degrade_to_notes(tmp_path):
    results = fabricate(tmp_path, epochs=False, partitions=False, drop=("test_", "total_params", "layers", "depth"))
    paths = build_report(results, out=tmp_path / "out")
    md = paths.markdown.read_text()
    assert "No per-epoch table" in md and "partitions.json: the task-affinity matrices are left out" in md
    assert "no test accuracy: the tables use the final validation accuracy" in md
    assert "No per-epoch rows: no learning curves" in md and "Not in these results: zero-shot" in md
    assert "'Accuracy vs alignment depth': every completed trial has the default alignment layers" in md
    assert sorted(p.name for p in paths.figures) == ["ablation-prompt-length.png", "tradeoff.png"]
    _check_pngs(paths.figures)
    assert "trainable %" not in md  # no total_params: no percentage column


def test_report_from_object_storage(s3, tmp_path, monkeypatch):
    base, _ = s3
    results = fabricate(base.format(prefix="studies/fab"))
    monkeypatch.chdir(tmp_path)
    paths = build_report(base.format(prefix="studies/fab"))  # the study folder's URI; the report is written here
    assert paths.html == tmp_path / "fab-report" / "report.html"
    assert len(paths.figures) == 5 and "No per-epoch table" not in paths.markdown.read_text()
    assert str(results) in paths.markdown.read_text()


def test_only_failed_trials_still_report(tmp_path):
    write_rows(tmp_path, [_trial("t0", "gradient", 0, 0.0, status="ERROR", epochs_run=0)])
    paths = build_report(tmp_path, out=tmp_path / "out")
    md = paths.markdown.read_text()
    assert "No completed trial with an accuracy" in md and "/tmp/t0/error.txt" in md
    assert paths.figures == []


def _bad_results(kind: str, root: Path) -> Path:
    if kind == "missing":
        return root / "missing"
    if kind in ("empty", "damaged"):
        (root / TRIALS).mkdir(parents=True)
    if kind == "damaged":
        (root / TRIALS / "a.parquet").write_text("not parquet")
    return root


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("missing", "does not exist"),
        ("not results", "is not a study results folder"),
        ("empty", "holds no trial rows yet"),
        ("damaged", "cannot read the results in"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(tmp_path, capsys, kind, needle):
    path = _bad_results(kind, tmp_path)
    assert mmap_ray(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(path) in err and "Traceback" not in err
    assert mmap_ray(["report", str(fabricate(tmp_path / "ok")), "--baselines", str(tmp_path / "nothing")]) == 2
    assert "--baselines" in capsys.readouterr().err


def test_a_report_folder_below_a_file_is_one_line_from_both_entry_points(tmp_path, capsys):
    from mmap_ray.report.cli import main as report_main

    results = fabricate(tmp_path / "study")
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" / "report"
    for run in (
        lambda: mmap_ray(["report", str(results), "--out", str(out)]),
        lambda: report_main([str(results), "--out", str(out)]),
    ):
        assert run() == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "notes.txt" in err and "Traceback" not in err, err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_analysis_script_writes_the_report(tmp_path, monkeypatch, capsys):
    results = fabricate(tmp_path)
    monkeypatch.setattr(sys, "argv", ["report.py", str(results), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as e:  # run as `python analysis/report.py ...`, in this process (no re-import)
        runpy.run_path(str(REPO / "analysis" / "report.py"), run_name="__main__")
    assert e.value.code == 0
    assert str(tmp_path / "r" / "report.html") in capsys.readouterr().out
    assert (tmp_path / "r" / "figures" / "tradeoff.png").is_file()


# ---- a real smoke study -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(smoke_study) -> tuple[Path, str]:
    """`python studies/grouping.py --smoke` (conftest's one per session), which ends by writing the report."""
    return smoke_study


@pytest.mark.slow
def test_smoke_study_ends_with_its_report(smoke):
    results, stdout = smoke
    report = results.parent / "report"
    assert f"report: {report / 'report.html'}" in stdout
    md = (report / "report.md").read_text()
    assert "## Leaderboard" in md and "single" in md and "gradient" in md
    figures = sorted((report / "figures").glob("*.png"))
    assert [p.name for p in figures] == ["affinity.png", "curves.png", "tradeoff.png"]
    _check_pngs(figures)
    assert "every completed trial has n_tokens 2" in md  # the smoke study varies no prompt length
    board = leaderboard(load_study(results).trials)
    assert len(board) == 2 and (board[("trials", "n")] == 1).all()


@pytest.mark.slow
def test_the_printed_tables_are_read_alike_by_every_reader(smoke):
    """The paths the study prints, as a user copies them into pandas, pyarrow, duckdb and polars: one row
    per (config_id, seed) in trials, accuracy in percent as stated, and epochs and predictions join to it."""
    import duckdb
    import polars as pl
    import pyarrow.dataset as pads

    results, stdout = smoke
    paths = dict(re.findall(r"^  (trials|epochs|predictions), .*: (\S+)$", stdout, re.M))
    assert paths == {t: str(results / t) for t in ("trials", "epochs", "predictions")}
    trials = pd.read_parquet(paths["trials"])
    keys = set(zip(trials["config_id"], trials["seed"]))
    assert len(trials) == len(keys) == 2
    assert "accuracies in percent" in stdout
    preds = pd.read_parquet(paths["predictions"])
    by_task = preds.groupby(["config_id", "seed", "task"])["correct"].mean().groupby(level=[0, 1]).mean()
    stated = trials.set_index(["config_id", "seed"])["test_mean"]
    assert (100 * by_task.reindex(stated.index) - stated).abs().max() < 1e-9
    assert pads.dataset(paths["trials"]).to_table().num_rows == 2
    sql = f"select count(*), count(distinct config_id), max(test_mean) from read_parquet('{paths['trials']}/*.parquet')"
    assert duckdb.sql(sql).fetchall() == [(2, 2, trials["test_mean"].max())]
    assert pl.scan_parquet(paths["trials"]).collect().height == 2
    for table in ("epochs", "predictions"):
        rows = pl.scan_parquet(paths[table]).collect().to_pandas()
        assert set(zip(rows["config_id"], rows["seed"])) == keys, table
        joined = rows.merge(trials[["config_id", "seed", "scheme"]], on=["config_id", "seed"], validate="m:1")
        assert len(joined) == len(rows) and joined["scheme"].notna().all()


@pytest.mark.slow
def test_walkthrough_notebook_finds_the_main_study_by_the_commands_rule(smoke, monkeypatch):
    """With no MMAP_RAY_RESULTS the notebook reads the main study where `make run` writes it: the default
    storage ($MMAP_RAY_STORAGE here, as for every study in the tests), study `grouping`."""
    results, _ = smoke
    default = Path(os.environ["MMAP_RAY_STORAGE"]) / "grouping" / "results"
    assert not default.exists()
    shutil.copytree(results, default)
    try:
        monkeypatch.delenv("MMAP_RAY_RESULTS", raising=False)
        outputs = run_walkthrough(None, monkeypatch)
        assert str(default) in "".join(o.get("text", "") for o in outputs)
    finally:
        shutil.rmtree(default.parent)


def run_walkthrough(results: Path | Location | None, monkeypatch) -> list:
    """Execute analysis/walkthrough.ipynb on `results` (None: its default); its code cells' outputs."""
    if results is not None:
        monkeypatch.setenv("MMAP_RAY_RESULTS", str(results))
    nb = nbformat.read(REPO / "analysis" / "walkthrough.ipynb", as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed without outputs
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # its own plot and the report's figures
    return outputs


def test_walkthrough_notebook_runs_on_fabricated_results(tmp_path, monkeypatch):
    outputs = run_walkthrough(fabricate(tmp_path / "study"), monkeypatch)
    text = "".join(o.get("data", {}).get("text/plain", "") + o.get("text", "") for o in outputs)
    assert PLANTED in text and "gradient" in text
    assert not (tmp_path / "study" / "report").exists()  # the notebook writes its report to a temporary folder


@pytest.mark.slow
def test_walkthrough_notebook_runs_on_the_smoke_study(smoke, monkeypatch):
    results, _ = smoke
    run_walkthrough(results, monkeypatch)


def test_designs_at_matched_budgets_figure(tmp_path):
    """One line per design (the variant, else the projection) through its budgets, mean over seeds."""
    from mmap_ray.report.figures import budget_figure, design_points

    rows, n = [], 0
    designs = {"projection=kron": (0.80, 1), "projection=coop": (0.70, 2), "projection=bitfit": (0.75, 100)}
    for variant, (acc, scale) in designs.items():
        budgets = (2, 4, 8) if variant != "projection=bitfit" else (8,)
        for n_tokens in budgets:
            for seed in (0, 1, 2):
                row = _trial(
                    f"t{n:03d}",
                    "single",
                    seed,
                    acc + 0.01 * n_tokens + 0.001 * seed,
                    n_tokens=n_tokens,
                    params=scale * 100 * n_tokens,
                    partition=SHARED,
                )
                rows.append(row | {"variant": variant, "config_id": f"{n // 3:016d}"})
                n += 1
    write_rows(tmp_path / "results", rows)
    study = load_study(tmp_path / "results")
    points = design_points(study.trials)
    assert set(points["design"]) == {"kron", "coop", "bitfit"} and len(points) == 7
    kron = points[points["design"] == "kron"].sort_values("params")
    assert kron["params"].tolist() == [200, 400, 800]
    assert kron["acc"].round(4).tolist() == [82.1, 84.1, 88.1] and (kron["acc_std"] > 0).all()
    fig, reason = budget_figure(study)
    assert fig is not None and reason is None
    assert len(fig.axes[0].get_legend().get_texts()) == 4  # 3 designs and the Pareto front
    fig, reason = budget_figure(load_study(fabricate(tmp_path / "plain")))
    assert fig is None and "--preset designs-budget" in reason


def test_designs_table_pairs_each_design_with_kron_by_seed(tmp_path):
    """analysis/designs_table.py: mean ± std per (design, budget), and a paired 95% CI against kron."""

    spec = importlib.util.spec_from_file_location("designs_table", REPO / "analysis" / "designs_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = []
    for i, (variant, acc) in enumerate((("projection=kron", 0.80), ("projection=coop", 0.75))):
        for seed, noise in zip((0, 1, 2), (0.0, 0.01, 0.02)):
            row = _trial(f"t{i}{seed}", "single", seed, acc + noise, n_tokens=4, partition=SHARED)
            rows.append(row | {"variant": variant, "config_id": f"{i:016d}"})
    write_rows(tmp_path / "results", rows)
    table = module.table(str(tmp_path / "results")).set_index("design")
    assert table.loc["kron", "test mean (%)"] == "81.0 ± 1.0"
    assert table.loc["coop", "vs kron, same n_tokens (paired, 95% CI)"] == "-5.0 [-5.0, -5.0]"  # same noise per seed


def test_oracle_ranks_partitions_and_scores_each_method_against_it(tmp_path):
    """An oracle study (every two-group partition, 3 seeds) with known accuracies: the ranking, and each
    method's chosen partitions, ranks, regret (paired by seed), agreement and cost."""
    from mmap_ray.grouping import set_partitions
    from mmap_ray.report.oracle import method_scores, partition_spread

    parts = [str(p) for p in set_partitions(TASKS, 2)]  # 7
    rows = []
    for i, part in enumerate(parts):
        for seed in (0, 1, 2):
            acc = 0.90 - 0.01 * i + 0.001 * seed  # partition i is the (i+1)-th best on every seed
            rows.append(_trial(f"p{i}s{seed}", part, seed, acc, partition=part))
    results = tmp_path / "results"
    write_rows(results, rows, epochs=False)
    chosen = {"gradient": [parts[0]] * 3, "random": [parts[3], parts[6], parts[3]]}
    side = {f"{m}/{s}": p for m, ps in chosen.items() for s, p in enumerate(ps)}
    seconds = {f"gradient/{s}": 12.0 for s in range(3)} | {f"random/{s}": 0.0 for s in range(3)}
    (tmp_path / "partitions.json").write_text(json.dumps({"partitions": side, "seconds": seconds}))
    study = load_study(results)
    scores = method_scores(study.trials, study.partitions, study.seconds).set_index("method")
    assert scores.loc["gradient", "rank"] == "1, 1, 1" and scores.loc["gradient", "agreement"] == 1.0
    assert scores.loc["gradient", "regret (points, 95% CI)"] == "+0.0 [+0.0, +0.0]"
    assert scores.loc["random", "rank"] == "4, 7, 4" and scores.loc["random", "agreement"] == pytest.approx(2 / 3)
    assert scores.loc["random", "regret (points, 95% CI)"].startswith("+4.0 [")  # (3 + 6 + 3) / 3 points
    assert scores.loc["gradient", "cost_s"] == 12.0 and scores.loc["gradient", "oracle_s"] == 7 * 36.0
    assert scores.loc["gradient", "cost / oracle"] == pytest.approx(12.0 / (7 * 36.0))
    # cross-fitted: halves {0, 2} and {1}; random's choices regret 6 points on seed 1 and 3 on seeds 0 and 2
    assert scores.loc["gradient", "regret, cross-fitted (points)"] == "+0.0"
    assert scores.loc["random", "regret, cross-fitted (points)"] == "+4.0"
    assert scores.loc["random", "cross-fitted / oracle spread"] == pytest.approx(0.04 / 0.06)
    assert scores.loc["gradient", "top-2 rate"] == 1.0 and scores.loc["random", "top-2 rate"] == 0.0
    assert scores.loc["gradient", "p (Holm)"] != "–" and scores.loc["random", "p (Holm)"] != "–"
    paths = write_report(study, tmp_path / "report")
    section = Path(paths.markdown).read_text().split("## Grouping methods against the oracle")[1].split("\n## ")[0]
    lines = [line for line in section.splitlines() if parts[0].replace("|", "\\|") in line]  # Markdown escapes |
    assert "90.1 ± 0.1" in lines[0] and "gradient" in section and "random" in section
    # how much the partition matters: best minus worst two-group partition, 6 points, every seed alike
    spread = partition_spread(study.trials)
    assert (spread["best"], spread["worst"]) == (parts[0], parts[6]) and spread["gap"] == pytest.approx(6.0)
    assert str(spread["by_seed"]) == "+6.0 [+6.0, +6.0]" and spread["gap_in_stds"] == pytest.approx(60.0)
    assert f"the worst ({parts[6]}) is 6.0 points" in section and "60.0 times the larger" in section
    # what a reader sees: human column names, not the frame's internal ones
    assert "choosing (s per seed)" in section and "oracle training (s per seed)" in section
    assert "cost_s" not in section and "oracle_s" not in section
    # regret against cost, one marker per method: gradient at its cost and no regret, random free and worse
    assert "![Grouping methods against the oracle](figures/regret-cost.png)" in section
    assert (tmp_path / "report" / "figures" / "regret-cost.png").is_file()
    from mmap_ray.report.figures import oracle_regret_points

    points = oracle_regret_points(scores.reset_index()).set_index("method")
    assert points.loc["gradient", "regret"] == 0.0 and points.loc["gradient", "cost"] == pytest.approx(12 / 252)
    assert points.loc["random", "regret"] == pytest.approx(4 / 6) and points.loc["random", "cost"] == 0.0


def test_rank_correlation_of_a_methods_partition_scores_with_the_oracle(tmp_path):
    """Spearman's rho between each method's scores of the oracle's partitions (from its stored affinity
    matrices, scored as its choice is) and their mean accuracy: +1 when the accuracies follow the scores,
    -1 for the reversed matrix, and for TAG's score, what a reference Spearman (ranks, then Pearson) gives."""
    from mmap_ray.grouping import partition_score, set_partitions, tag_score
    from mmap_ray.report.oracle import method_scores

    parts = list(set_partitions(TASKS, 2))  # 7
    g = np.random.default_rng(0)
    matrix = g.normal(size=(4, 4))
    score = [partition_score(torch.tensor(matrix), p) for p in parts]
    rows = [
        _trial(f"p{i}s{seed}", str(p), seed, 0.5 + 0.01 * score[i] + 0.0001 * seed, partition=str(p))
        for i, p in enumerate(parts)
        for seed in (0, 1)
    ]
    write_rows(tmp_path / "results", rows, epochs=False)
    best = str(parts[int(np.argmax(score))])
    side = {f"{m}/{s}": best for m in ("gradient", "lookahead", "tag") for s in (0, 1)}
    entry = {"tasks": list(TASKS), "matrix": matrix.tolist()}
    reverse = {"tasks": list(TASKS), "matrix": (-matrix).tolist()}
    affinity = {f"gradient/{s}": entry for s in (0, 1)} | {f"lookahead/{s}": reverse for s in (0, 1)}
    affinity |= {"tag/0": entry}
    (tmp_path / "partitions.json").write_text(json.dumps({"partitions": side, "affinity": affinity}))
    study = load_study(tmp_path / "results")
    scores = method_scores(study.trials, study.partitions, affinity=study.affinity).set_index("method")
    rho = scores["rank correlation (Spearman)"]
    assert rho["gradient"] == pytest.approx(1.0) and rho["lookahead"] == pytest.approx(-1.0)

    def ranks(x):  # no ties here
        r = np.empty(len(x))
        r[np.argsort(x)] = np.arange(len(x))
        return r

    tag = [tag_score(torch.tensor(matrix), p) for p in parts]
    assert rho["tag"] == pytest.approx(np.corrcoef(ranks(np.array(tag)), ranks(np.array(score)))[0, 1])
    without = method_scores(study.trials, study.partitions).set_index("method")  # no matrices given: NaN
    assert np.isnan(without.loc["tag", "rank correlation (Spearman)"])
    section = write_report(study, tmp_path / "report").markdown
    assert "rank correlation (Spearman)" in Path(section).read_text()


def test_the_html_report_reads_on_a_laptop_screen(tmp_path):
    """Tables scroll inside the 1200 px page instead of widening it; the weights are named in words; each
    learning-curve panel is titled by scheme, partition and seed, not by a Tune trial id."""
    import re as _re

    from mmap_ray.report.figures import curve_panels

    study = load_study(fabricate(tmp_path / "fab"))
    paths = write_report(study, tmp_path / "report")
    page = Path(paths.html).read_text()
    assert "max-width:1200px" in page and ".wide{overflow-x:auto" in page
    assert page.count("<table") == page.count('<div class="wide"><table') > 0
    md = Path(paths.markdown).read_text()
    assert "| weights " in md and "| pretrained" not in md and " None " not in md.split("## Trials")[0]
    titles = [p["title"] for p in curve_panels(study)]
    assert titles and all(_re.match(r"^[\w, +|]+: [\w+|]+ s\d+ \(best of \d+ trials?", t) for t in titles), titles
    assert not any(str(i) in t for i in study.trials["trial_id"] for t in titles)


def test_cross_fitting_removes_the_winners_curse():
    """P is best on seeds 0 and 2 only by luck (0.9 there, 0.5 on 1 and 3); Q is 0.7 everywhere. A method that
    always picks Q has no in-sample regret against the tie, and out of sample it beats the half-chosen best:
    chosen on {0, 2} the best is P, which loses 20 points to Q on {1, 3}; chosen on {1, 3} it is Q itself.
    Picking P fares the same: whichever half chooses, the choice does not carry to the other half."""
    from mmap_ray.report.oracle import cross_fitted_regret

    acc = {("P", s): v for s, v in enumerate((0.9, 0.5, 0.9, 0.5))} | {("Q", s): 0.7 for s in range(4)}
    assert cross_fitted_regret(acc, {s: "Q" for s in range(4)}) == pytest.approx(-0.1)
    assert cross_fitted_regret(acc, {s: "P" for s in range(4)}) == pytest.approx(-0.1)
    assert cross_fitted_regret(acc, {0: "P"}) != cross_fitted_regret(acc, {0: "P"})  # NaN


def test_an_ordinary_study_says_it_is_not_an_oracle(tmp_path):
    paths = write_report(load_study(fabricate(tmp_path / "fab")), tmp_path / "report")
    assert "Not an oracle study (`--preset oracle`)" in Path(paths.markdown).read_text()


def test_paired_table_pairs_each_value_with_the_base_by_seed(tmp_path, capsys):
    """analysis/paired_table.py: per scheme, mean ± std and the paired 95% t interval against the base; a
    trial two schemes chose counts for both."""
    spec = importlib.util.spec_from_file_location("paired_table", REPO / "analysis" / "paired_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = []
    for scheme, acc, part in (("single", 0.80, SHARED), ("gradient, lookahead", 0.83, PLANTED)):
        for seed, noise in zip((0, 1, 2), (0.0, 0.01, 0.02)):
            rows.append(_trial(f"{scheme[:3]}{seed}", scheme, seed, acc + noise, partition=part))
    write_rows(tmp_path / "results", rows)
    table = module.table(str(tmp_path / "results"), "scheme", "single").set_index("scheme")
    assert list(table.index) == ["gradient", "lookahead", "single"]  # best first; the shared trial counts twice
    assert table.loc["single", "test mean (%)"] == "81.0 ± 1.0"
    assert table.loc["gradient", "test vs single (paired, 95% CI)"] == "+3.0 [+3.0, +3.0] better"
    assert module.main([str(tmp_path / "results"), "--base", "nope"]) == 2
    assert "--base 'nope' is not a value of scheme" in capsys.readouterr().err


def test_halves_table_counts_toy3s_abundant_and_scarce_halves_from_the_per_image_outcomes(tmp_path, capsys):
    """analysis/halves_table.py on a fabricated toy3 study: each task's abundant half (Art, Clipart: classes
    0-5) all right; of its scarce half, 1 image in 4 right for one partition and 3 in 4 for the other."""
    from mmap_ray.data.toy import ABUNDANT
    from mmap_ray.results import PREDICTIONS, TRIAL_PREDICTION_SCHEMA

    spec = importlib.util.spec_from_file_location("halves_table", REPO / "analysis" / "halves_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = tmp_path / "results"
    for part, right in ((PLANTED, 1), (SHARED, 3)):
        for seed in (0, 1):
            row = {**_trial(f"{part[:3]}{seed}", "x", seed, 0.5, partition=part), "dataset": "toy3"}
            write_rows(results, [row])
            outcomes = []
            for task in TASKS:
                for label in range(12):
                    for i in range(4):
                        ok = label in ABUNDANT[task] or i < right
                        outcomes.append(
                            {
                                **{k: row[k] for k in ("study", "config_id", "seed")},
                                "task": task,
                                "image": 4 * label + i,
                                "label": label,
                                "prediction": label,
                                "correct": ok,
                            }
                        )
            write_table(results, PREDICTIONS, row_key(row["config_id"], seed), outcomes, TRIAL_PREDICTION_SCHEMA)
    table = module.table(str(results)).set_index("partition")
    assert table.loc[PLANTED, "abundant half (%)"] == table.loc[SHARED, "abundant half (%)"] == "100.0 ± 0.0"
    assert (
        table.loc[PLANTED, "scarce half (%)"] == "25.0 ± 0.0" and table.loc[SHARED, "scarce half (%)"] == "75.0 ± 0.0"
    )
    assert table.loc[PLANTED, "seeds"] == 2
    toy = tmp_path / "toy"
    write_rows(toy / "results", [_trial("a", "single", 0, 0.5)])
    assert module.main([str(toy / "results")]) == 2
    assert "is a study on ['toy']; only toy3's classes have halves" in capsys.readouterr().err


def test_family_oracle_ranks_partitions_within_each_instance_and_scores_methods_over_instances(tmp_path):
    """A family study (each seed its own instance, data_seed 1000 + seed) with known accuracies: the planted
    partition is the best on instances 1000-1002 and the second on 1003; partitions are ranked per instance,
    and a method's regret is against the planted partition (conflict instances) and the instance's best."""
    from mmap_ray.data.family import instance
    from mmap_ray.grouping import set_partitions
    from mmap_ray.report.family import family_instances, family_scores

    parts = [str(p) for p in set_partitions(TASKS, 2)]
    seeds = [s for s in range(40) if instance(1000 + s).conflict][:4]  # four instances with a planted partition
    planted = {s: instance(1000 + s).planted for s in seeds}
    rows, expected_best = [], {}
    for s in seeds:
        order = [planted[s], *sorted(p for p in parts if p != planted[s])]  # planted first, then by name
        if s == seeds[3]:
            order[0], order[1] = order[1], order[0]  # the planted partition second on the last instance
        expected_best[s] = order[0]
        for rank, part in enumerate(order):
            acc = 0.90 - 0.02 * rank
            rows.append(_trial(f"p{rank}s{s}", part, s, acc, partition=part, dataset="family", data_seed=1000 + s))
    write_rows(tmp_path / "results", rows, epochs=False)
    chosen = {f"gradient/{s}": planted[s] for s in seeds} | {f"random/{s}": expected_best[s] for s in seeds}
    (tmp_path / "partitions.json").write_text(json.dumps({"partitions": chosen, "seconds": {}}))
    study = load_study(tmp_path / "results")
    table = family_instances(study.trials).set_index("instance")
    assert list(table.index) == [1000 + s for s in seeds] and (table["partitions"] == 7).all()
    assert table["planted rank"].tolist() == [1, 1, 1, 2] and table["spread"].round(6).eq(12.0).all()
    assert table.loc[1000 + seeds[3], "best"] == expected_best[seeds[3]] != planted[seeds[3]]
    chose = family_instances(study.trials, study.partitions).set_index("instance")  # what each method chose where
    assert chose["gradient chose"].tolist() == [planted[s] for s in seeds]
    assert chose["random chose"].tolist() == [expected_best[s] for s in seeds]
    scores = family_scores(study.trials, study.partitions).set_index("method")
    # gradient chose the planted partition everywhere: no regret against it, 2 points against the last best
    assert scores.loc["gradient", "chose planted"] == 1.0 and scores.loc["gradient", "instances"] == 4
    assert scores.loc["gradient", "regret vs planted (points, 95% CI)"] == "+0.0 [+0.0, +0.0]"
    assert scores.loc["gradient", "regret vs instance best, in sample"].startswith("+0.5 [")  # (0+0+0+2) / 4
    assert scores.loc["random", "chose instance best"] == 1.0 and scores.loc["random", "chose planted"] == 0.75
    assert scores.loc["random", "regret vs planted (points, 95% CI)"].startswith("-0.5 [")  # it beat planted once
    # paired by instance against random (0, 0, 0, -2): gradient's is +0.5 worse; random is not compared with itself
    assert scores.loc["gradient", "regret minus random's (paired, 95% CI)"].startswith("+0.5 [")
    assert scores.loc["gradient", "p vs random (Holm)"] == "0.391"  # t = 1 on 3 degrees of freedom
    assert scores.loc["random", "regret minus random's (paired, 95% CI)"] == "–"
    from mmap_ray.report.family import family_regret_points

    points = family_regret_points(study.trials, study.partitions).set_index("method")
    assert points.loc["gradient", ["regret", "low", "high"]].tolist() == [0.0, 0.0, 0.0]
    assert points.loc["random", "regret"] == pytest.approx(-0.5) and (points["cost"] == 0.0).all()  # no seconds
    section = Path(write_report(study, tmp_path / "report").markdown).read_text()
    assert "figures/regret-cost.png" in section and "Lower left is better" in section
    assert "Grouping methods on the benchmark family" in section
    assert "Grouping methods against the oracle" not in section  # partition names mean other things per instance
