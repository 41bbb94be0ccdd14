"""The study report: from a real smoke study's output, and from fabricated rows with failures, ASHA stops,
ablations, baselines and missing files or columns; the walkthrough notebook runs top to bottom."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import nbclient
import nbformat
import numpy as np
import pytest

from mmap_ray.cli import main as mmap_ray
from mmap_ray.plots import pareto_front
from mmap_ray.report import (
    COMPARISONS,
    alignment_depth,
    build_report,
    comparisons,
    leaderboard,
    load_study,
    status_table,
)
from mmap_ray.results import EPOCHS, TRIALS, write_table
from mmap_ray.storage import Location, location

REPO = Path(__file__).resolve().parent.parent
TASKS = ("Art", "Clipart", "Product", "RealWorld")
PNG = b"\x89PNG\r\n\x1a\n"


# ---- fabricated studies -------------------------------------------------------------------------------


def _trial(tid: str, scheme: str, seed: int, acc: float, *, status: str = "TERMINATED", early: bool = False,
           n_tokens: int = 8, layers: str = "0-3", params: int = 4698, epochs_run: int = 4) -> dict:  # fmt: skip
    ok = status == "TERMINATED"
    row = {
        "study": "fab", "trial_id": tid, "scheme": scheme, "status": status, "error": "" if ok else f"/tmp/{tid}/error.txt",
        "early_stopped": early, "partition": "Art+Clipart|Product+RealWorld", "k": 2, "seed": seed,
        "n_tokens": n_tokens, "layers": layers, "projection": "kron", "combine": "concat", "lr": 2e-3, "epochs": 4,
        "batch_size": 16, "dataset": "toy", "model": "tiny", "pretrained": "none", "epochs_run": epochs_run,
        "trainable_params": params if ok else None, "total_params": 3_845_000 + params if ok else None,
        "val_mean_final": acc if ok else None, "val_mean_best": acc + 0.01 if ok else None,
        "test_mean": acc if ok else None, "wall_s": 36.0, "device_hours": 0.01, "device_kind": "cpu",
        "schema_version": 1, "git_commit": "abc123",
    }  # fmt: skip
    if ok:  # a failed trial has no history, hence no per-task columns at all
        for i, t in enumerate(TASKS):
            row |= {
                f"val_{t}_final": acc + 0.01 * i,
                f"val_{t}_best": acc + 0.01 * i + 0.01,
                f"test_{t}": acc - 0.015 + 0.01 * i,
            }
    return row


def _epochs(row: dict) -> list[dict]:
    return [
        {
            "trial_id": row["trial_id"],
            "epoch": e,
            "task": t,
            "val_acc": 0.5 + 0.05 * e + 0.01 * i,
            "train_loss": 1.0 / e,
            "test_acc": None,
        }
        for e in range(1, row["epochs_run"] + 1)
        for i, t in enumerate((*TASKS, "mean"))
    ]


def fabricate(
    where: Path | str, *, epochs: bool = True, partitions: bool = True, drop: tuple[str, ...] = ()
) -> Location:
    """A study folder (local or a URI) with results/: 2 schemes x 3 seeds x 2 prompt lengths x 2 depths, 1 failed,
    2 ASHA-stopped."""
    root = location(where)
    results = root / "results"
    rows, n = [], 0
    for scheme, base in (("single", 0.70), ("gradient", 0.74)):
        for n_tokens, layers, bonus in ((2, "0-1", 0.0), (8, "0-3", 0.02)):
            for seed in (0, 1, 2):
                rows.append(_trial(f"t{n:03d}", scheme, seed, base + bonus + 0.01 * seed, n_tokens=n_tokens,
                                   layers=layers, params=1000 * n_tokens))  # fmt: skip
                n += 1
    rows.append(_trial("t100", "gradient", 3, 0.0, status="ERROR", epochs_run=0))
    rows.append(_trial("t101", "gradient", 4, 0.40, early=True, epochs_run=2))
    rows.append(_trial("t102", "single", 4, 0.35, early=True, epochs_run=2))
    for row in rows:
        row = {k: v for k, v in row.items() if not any(k.startswith(d) for d in drop)}
        write_table(results, TRIALS, row["scheme"], row["trial_id"], [row])
        if epochs and row["epochs_run"]:
            write_table(results, EPOCHS, row["scheme"], row["trial_id"], _epochs(row))
    if partitions:
        affinity = {
            f"gradient/{s}": {"tasks": list(TASKS), "matrix": (np.eye(4) * 0.8 + 0.1 * s).tolist()} for s in (0, 1)
        }
        saved = {"partitions": {"gradient/0": "Art+Clipart|Product+RealWorld", "gradient/1": "Art+Product|Clipart+RealWorld",
                                "single/0": "Art+Clipart+Product+RealWorld"}, "affinity": affinity}  # fmt: skip
        (root / "partitions.json").write_text(json.dumps(saved))
    return results


def fabricate_baselines(root: Path) -> Path:
    for slug, label, _ in COMPARISONS:
        for seed in (0, 1):
            params = {"zero-shot": 0, "full-ft": 3_845_249}.get(slug, 9000)
            row = {"method": label, "seed": seed, "test_mean": 0.6 + 0.03 * len(slug) + 0.01 * seed,
                   **{f"test_{t}": 0.6 for t in TASKS}, "trainable_params": params, "total_params": 3_850_000}  # fmt: skip
            write_table(root / "results", "baselines", slug, f"seed{seed}", [row])
    return root


def _check_pngs(paths: list[Path]) -> None:
    for p in paths:
        assert p.read_bytes()[:8] == PNG, p
        height, width = matplotlib.image.imread(p).shape[:2]
        assert width >= 400 and height >= 250, (p, width, height)


# ---- fast tests on fabricated rows --------------------------------------------------------------------


def test_pareto_front_and_depth():
    front = pareto_front([1000, 2000, 2000, 5000, 800, np.nan], [80, 85, 84, 85, 70, 99])
    assert front.tolist() == [True, True, False, False, True, False]  # 5000 is dominated by 2000 at equal accuracy
    assert [alignment_depth(x) for x in ("0-3", "0,2,4", "0-2,5", "none")] == [4, 3, 4, 0]
    assert np.isnan(alignment_depth("default"))


def test_tables_count_outcomes_and_average_completed_trials(tmp_path):
    study = load_study(fabricate(tmp_path))
    status = status_table(study.trials)
    assert status.loc["gradient"].tolist() == [6, 1, 1, 8] and status.loc["single"].tolist() == [6, 1, 0, 7]
    board = leaderboard(study.trials)
    assert len(board) == 4 and (board[("trials", "n")] == 3).all()  # failed and ASHA-stopped trials left out
    best = board.iloc[0]
    assert board.index[0] == ("gradient", "kron", 8, "0-3")
    assert best[("mean (%)", "mean")] == pytest.approx(100 * (0.76 + 0.77 + 0.78) / 3)
    assert best[("mean (%)", "std")] == pytest.approx(1.0)  # sample std over seeds 0, 1, 2
    assert best[("Art (%)", "mean")] == pytest.approx(100 * (0.77 - 0.015))
    assert best[("trainable params", "mean")] == 8000
    assert best[("trainable %", "mean")] == pytest.approx(100 * 8000 / 3_853_000)


def test_report_from_a_study_with_failed_and_early_stopped_trials(tmp_path):
    results = fabricate(tmp_path / "study")
    paths = build_report(results, baselines=fabricate_baselines(tmp_path / "base"))
    assert paths.markdown == tmp_path / "study" / "report" / "report.md"
    names = sorted(p.name for p in paths.figures)
    assert names == ["ablation-depth.png", "ablation-prompt-length.png", "affinity.png", "curves.png", "tradeoff.png"]
    _check_pngs(paths.figures)
    md, page = paths.markdown.read_text(), paths.html.read_text()
    for heading in ("Leaderboard", "Comparisons", "Accuracy vs trainable parameters", "Task affinity", "Learning curves",
                    "Accuracy vs prompt length", "Accuracy vs alignment depth"):  # fmt: skip
        assert f"## {heading}" in md and f"<h2>{heading}</h2>" in page
    assert "/tmp/t100/error.txt" in md  # the failed trial is listed with its error
    assert "77.0 ± 1.0" in md and "75.5 ± 1.0" in page  # mean ± std cells, from pandas
    assert page.count("data:image/png;base64,") == 5 and "figures/" not in page  # self-contained
    table = comparisons(load_study(results, tmp_path / "base"))
    labels = [label for _, label, _ in COMPARISONS]
    assert list(table.index) == labels[:-1] + ["MmAP (kron)", labels[-1]]  # baselines and the study's kron rows
    assert "Not in these results" not in md


def test_missing_optional_files_and_columns_degrade_to_notes(tmp_path):
    results = fabricate(tmp_path, epochs=False, partitions=False, drop=("test_", "total_params", "layers"))
    paths = build_report(results, out=tmp_path / "out")
    md = paths.markdown.read_text()
    assert "No per-epoch table" in md and "partitions.json: the task-affinity matrices are left out" in md
    assert "no test accuracy: the tables use the final validation accuracy" in md
    assert "No per-epoch rows: no learning curves" in md and "Not in these results: zero-shot" in md
    assert "No depth or accuracy column" in md
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
    write_table(tmp_path, TRIALS, "gradient", "t0", [_trial("t0", "gradient", 0, 0.0, status="ERROR", epochs_run=0)])
    paths = build_report(tmp_path, out=tmp_path / "out")
    md = paths.markdown.read_text()
    assert "No completed trial with an accuracy" in md and "/tmp/t0/error.txt" in md
    assert paths.figures == []


def _bad_results(kind: str, root: Path) -> Path:
    if kind == "missing":
        return root / "missing"
    if kind in ("empty", "damaged"):
        (root / TRIALS / "scheme=x").mkdir(parents=True)
    if kind == "damaged":
        (root / TRIALS / "scheme=x" / "a.parquet").write_text("not parquet")
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


def test_analysis_script_writes_the_report(tmp_path, monkeypatch, capsys):
    results = fabricate(tmp_path)
    monkeypatch.setattr(sys, "argv", ["report.py", str(results), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as e:  # run as `python analysis/report.py ...`, in this process (no re-import)
        runpy.run_path(str(REPO / "analysis" / "report.py"), run_name="__main__")
    assert e.value.code == 0
    assert str(tmp_path / "r" / "report.html") in capsys.readouterr().out
    assert (tmp_path / "r" / "figures" / "tradeoff.png").is_file()


# ---- a real smoke study -------------------------------------------------------------------------------


def _env(**extra) -> dict:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, str]:
    """`python studies/grouping.py --smoke`: the study's own run, which ends by writing the report."""
    storage = tmp_path_factory.mktemp("studies")
    out = subprocess.run([sys.executable, str(REPO / "studies" / "grouping.py"), "--smoke", "--storage", str(storage)],
                         env=_env(RAY_AUTH_MODE="disabled"), check=False, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return storage / "smoke" / "results", out.stdout


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
def test_walkthrough_notebook_runs_on_the_smoke_study(smoke, monkeypatch):
    results, _ = smoke
    monkeypatch.setenv("MMAP_RAY_RESULTS", str(results))
    nb = nbformat.read(REPO / "analysis" / "walkthrough.ipynb", as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed without outputs
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # its own plot and the report's figures
