"""The `race` scheme: every candidate partition starts as a real trial and ASHA halves them on validation
accuracy; the winner's trial is the study's, resumed from the race's finished checkpoint."""

import json

import pytest

from mmap_ray.grouping import fixed_partition, set_partitions
from mmap_ray.results import load
from mmap_ray.study import StudyConfig, program
from mmap_ray.study.partitions import check_tasks
from mmap_ray.study.race import race_grace

TASKS = ["Art", "Clipart", "Product", "RealWorld"]


def test_the_first_rung_leaves_room_to_halve_down_to_one():
    assert race_grace(32, 7) == 4  # 7 -> 4 -> 2 -> 1: three halvings, at epochs 4, 8, 16, then 32
    assert race_grace(54, 15) == 3 and race_grace(4, 7) == 1 and race_grace(1, 2) == 1


def test_race_is_refused_where_it_cannot_run(tmp_path):
    with pytest.raises(ValueError, match="race trains every partition: it needs mode 'compare'"):
        check_tasks(StudyConfig(schemes=("race",), mode="search", storage=str(tmp_path)))
    with pytest.raises(ValueError, match="run it in a study"):
        fixed_partition("race", TASKS)
    check_tasks(StudyConfig(schemes=("race", "single"), k=2, storage=str(tmp_path)))


@pytest.mark.slow
def test_race_runs_in_a_smoke_study(tmp_path, ray_local, capsys):
    argv = ["--smoke", "--schemes", "race", "--k", "2", "--epochs", "4", "--storage", str(tmp_path)]
    code = program.main([*argv, "--name", "race"])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert "race (seed 0): 7 partitions, halved by ASHA from epoch 1 to 4" in out.out
    saved = json.loads((tmp_path / "race" / "partitions.json").read_text())
    won = saved["partitions"]["race/0"]
    assert won in {str(p) for p in set_partitions(TASKS, 2)} and saved["seconds"]["race/0"] > 0
    assert f"race (seed 0): {won} won" in out.out
    assert "| Trial name" in out.out.split(f"{won} won")[1]  # the study's own trials have their table too
    rows = load(tmp_path / "race" / "results")
    assert len(rows) == 1 and rows["scheme"].iloc[0] == "race" and rows["partition"].iloc[0] == won
    assert rows["epochs_run"].iloc[0] == 4 and rows["test_mean"].notna().all()
    # the race trained the runs in the study's own folders: every candidate has one, the winner's to the end
    assert len(list((tmp_path / "race" / "train").iterdir())) == 7
