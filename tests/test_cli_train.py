import json

from mmap_ray.cli import main

FAST = ["--pretrained", "none", "--n-tokens", "2", "--epochs", "1", "--batch-size", "32", "--no-progress"]


def test_train_writes_run_and_eval_reproduces_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *FAST, "--domains", "Art,Product", "--partition", "Art|Product", "--out", str(out)]) == 0
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["test"]) == {"Art", "Product", "mean"} and summary["partition"] == "Art|Product"
    assert summary["trainable_params"] > 0 and summary["epochs"] == 1
    row = json.loads((out / "metrics.jsonl").read_text())  # the loop's row: the same on the Ray path
    assert summary["test"] == {k.removeprefix("test/"): v for k, v in row.items() if k.startswith("test/")}
    assert row["trainable_params"] == summary["trainable_params"] and row["total_params"] == summary["total_params"]
    assert "run folder:" in capsys.readouterr().out
    assert main(["eval", "--run", str(out), "--out", str(tmp_path / "acc.json")]) == 0
    assert json.loads((tmp_path / "acc.json").read_text()) == summary["test"]
    # same command again: resumes (nothing left to train) and gives the same result
    assert main(["train", *FAST, "--domains", "Art,Product", "--partition", "Art|Product", "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["test"] == summary["test"]


def test_train_refuses_bad_input_before_work(tmp_path, capsys):
    assert main(["train", *FAST, "--dataset", "office-home"]) == 2
    assert "root is required with dataset 'office-home'" in capsys.readouterr().err
    assert main(["train", *FAST, "--projection", "kron", "--source-dim", "5", "--out", str(tmp_path / "x")]) == 2
    assert "source_dim=5 does not divide" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(["train", *FAST, "--domains", "Art", "--out", str(out)]) == 0
    assert main(["train", *FAST, "--domains", "Art", "--lr", "0.5", "--out", str(out)]) == 2
    assert "holds a run with a different configuration" in capsys.readouterr().err


def test_train_prints_one_line_per_epoch_with_loss_and_validation_accuracy(tmp_path, capsys):
    fast = [a for a in FAST if a != "--no-progress"]
    argv = ["train", *fast, "--epochs", "2", "--domains", "Art,Product", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    out = capsys.readouterr().out
    lines = [x for x in out.splitlines() if x.startswith("epoch ")]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2: train loss ")
    assert f"val {100 * rows[1]['val/mean']:.1f}%, test {100 * rows[1]['test/mean']:.1f}%" in lines[1]
