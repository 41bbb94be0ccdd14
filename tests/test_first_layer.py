"""Prompts at the first layer only, trained on the toy benchmark, must beat zero-shot (they used not to)."""

import json

import pytest

from mmap_ray.cli import main


@pytest.mark.slow
def test_first_layer_prompts_beat_zero_shot_on_the_toy_benchmark(tmp_path):
    assert main(["eval", "--out", str(tmp_path / "zero-shot.json")]) == 0
    zero_shot = json.loads((tmp_path / "zero-shot.json").read_text())["mean"]
    argv = ["train", "--layers", "0", "--epochs", "3", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 0
    trained = json.loads((tmp_path / "run" / "summary.json").read_text())["test"]["mean"]
    print(f"zero-shot {zero_shot:.1f}%, layer-0 prompts after 3 epochs {trained:.1f}%")
    assert trained > zero_shot + 1  # points
