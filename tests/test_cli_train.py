import json

from conftest import terminal_signals

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
    said = capsys.readouterr().out
    assert "run folder:" in said
    # one unit: the files hold the percent the console prints (and every table stores)
    assert f"mean {summary['test']['mean']:.1f}" in said and summary["final"]["val/mean"] == row["val/mean"]
    assert all(1 < v <= 100 for k, v in row.items() if k.startswith(("val/", "test/"))), row
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
    assert f"val {rows[1]['val/mean']:.1f}%, test {rows[1]['test/mean']:.1f}%" in lines[1]  # metrics.jsonl: percent


def test_ctrl_c_during_train_exits_130_in_one_line_and_the_same_command_resumes(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    argv = [sys.executable, "-m", "mmap_ray.cli", "train", *FAST, "--epochs", "5", "--domains", "Art,Product"]
    argv += ["--out", str(out)]
    pipe = subprocess.PIPE
    proc = subprocess.Popen(argv, stdout=pipe, stderr=pipe, text=True, preexec_fn=terminal_signals)
    metrics, deadline = out / "metrics.jsonl", time.time() + 300
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().strip()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # Ctrl-C after the first epoch
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    last = "mmap-ray train: interrupted; the same command continues from the last checkpoint"
    assert err.strip().splitlines()[-1] == last
    done = len(metrics.read_text().splitlines())
    assert 1 <= done < 5
    resumed = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    epochs = [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()]
    assert json.loads((out / "summary.json").read_text())["epochs"] == 5
    assert epochs == list(range(1, 6))  # each epoch once: the resumed run appends after the checkpoint
