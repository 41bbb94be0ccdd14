"""The tiny toy CLIP: deterministic, cached by content key, and good enough to show the method's effect."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import mmap_ray.toyclip
from mmap_ray.cli import main
from mmap_ray.toyclip import (
    SHIPPED,
    TOY2_RECIPE,
    WEIGHTS_DIR,
    ToyCLIPConfig,
    pretrain,
    pretrained_toy_clip,
    recipe_for,
    state_digest,
)


def test_pretraining_is_deterministic_and_cached(tmp_path, monkeypatch):
    cfg = ToyCLIPConfig(steps=3, batch_size=8, warmup=1)
    a, b = pretrain(cfg, progress=False), pretrain(cfg, progress=False)
    assert all(torch.equal(a[k], b[k]) for k in a)
    monkeypatch.setenv("MMAP_RAY_CACHE", str(tmp_path))
    path = pretrained_toy_clip(cfg, progress=False)
    assert path.parent == tmp_path and cfg.key() in path.name
    mtime = path.stat().st_mtime_ns
    assert pretrained_toy_clip(cfg, progress=False) == path and path.stat().st_mtime_ns == mtime  # reused
    assert ToyCLIPConfig(steps=3, batch_size=8, warmup=1, seed=1).key() != cfg.key()
    assert not list(tmp_path.glob(".*tmp*"))
    assert all(torch.equal(load_file(path)[k], a[k]) for k in a)  # cached as safetensors: read without unpickling


def test_pretraining_does_not_depend_on_the_callers_threads():
    """A Ray worker (OMP_NUM_THREADS=1) and a driver build the same weights: the thread count is pinned,
    and the caller's is restored after (issue 17: the tiny CLIP differed between environments)."""
    cfg = ToyCLIPConfig(steps=3, batch_size=16, warmup=1)
    saved = torch.get_num_threads()
    try:
        digests = set()
        for threads in (1, 3):
            torch.set_num_threads(threads)
            digests.add(state_digest(pretrain(cfg, progress=False)))
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(saved)
    assert len(digests) == 1


# One script for every CPU capability: the backbone a toy study loads, and the toy2 data it renders.
PROBE = """
import hashlib, torch
from mmap_ray.build import load_run_backbone
from mmap_ray.config import ModelConfig
from mmap_ray.data.toy import ToyConfig, load_toy_tasks
from mmap_ray.toyclip import state_digest
for dataset in ("toy", "toy2"):
    print(dataset, state_digest(load_run_backbone(ModelConfig(), dataset).model.state_dict()))
h = hashlib.sha256()
for task in load_toy_tasks(ToyConfig(conventions=True)):
    for split in (task.train, task.val, task.test):
        h.update(split.images.numpy().tobytes())
print("data", h.hexdigest()[:16], torch.backends.cpu.get_cpu_capability())
"""


def test_the_backbone_is_the_same_under_every_cpu_capability():
    """One backbone everywhere (issue 30, part 1): whatever kernels ATen dispatches to, a toy study loads the
    shipped weights, bit for bit. The rendered data is the same under AVX2 and AVX-512 kernels too (not
    under ATen's scalar `default` kernels, whose sin and sigmoid round differently)."""
    seen = {}
    for capability in ("default", "avx2", "avx512"):
        env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
        out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
        seen[capability] = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    for capability, lines in seen.items():
        assert lines["toy"] == SHIPPED[ToyCLIPConfig()].digest, capability
        assert lines["toy2"] == SHIPPED[TOY2_RECIPE].digest, capability
    assert seen["avx2"]["data"].split()[0] == seen["avx512"]["data"].split()[0]


def test_shipped_weights_are_checked_on_load(tmp_path, monkeypatch):
    """The package files are what SHIPPED records; a changed byte is refused in one line naming the file."""
    for cfg, shipped in SHIPPED.items():
        path = pretrained_toy_clip(cfg)
        assert path.name == shipped.file and recipe_for("toy2" if cfg == TOY2_RECIPE else "toy") == cfg
        assert state_digest(load_file(path)) == shipped.digest
    bad = tmp_path / SHIPPED[TOY2_RECIPE].file
    data = bytearray((WEIGHTS_DIR / bad.name).read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(mmap_ray.toyclip, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(ValueError, match=f"weights file {bad}.*changed or damaged"):
        pretrained_toy_clip(TOY2_RECIPE)
    with pytest.raises(ValueError, match="missing from the installed package"):
        pretrained_toy_clip(ToyCLIPConfig())


def test_the_maintainers_rebuild_checks_and_writes_the_shipped_weights(tmp_path, monkeypatch, capsys):
    """`python -m mmap_ray.toyclip` pretrains every shipped recipe and compares it with the recorded digest
    (exit 0 only if this CPU reproduces them all); `--write` writes the files that are then loaded and
    checked. Here SHIPPED holds one short recipe, so that the rebuild takes seconds."""
    short = ToyCLIPConfig(steps=3, batch_size=8, warmup=1)
    digest = state_digest(pretrain(short, progress=False))
    monkeypatch.setattr(mmap_ray.toyclip, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(
        mmap_ray.toyclip, "SHIPPED", {short: mmap_ray.toyclip.Shipped("short.safetensors", "0" * 64, "0" * 16)}
    )
    assert mmap_ray.toyclip.main([]) == 1 and not (tmp_path / "short.safetensors").exists()
    out = capsys.readouterr().out
    assert f"state digest {digest} (differs from the shipped 0000000000000000)" in out
    assert str(torch.backends.cpu.get_cpu_capability()) in out
    assert mmap_ray.toyclip.main(["--write"]) == 0
    sha = re.search(r"sha256 ([0-9a-f]{64})", capsys.readouterr().out).group(1)
    shipped = mmap_ray.toyclip.Shipped("short.safetensors", sha, digest)
    monkeypatch.setattr(mmap_ray.toyclip, "SHIPPED", {short: shipped})
    assert mmap_ray.toyclip.main([]) == 0 and "same as the shipped" in capsys.readouterr().out
    assert state_digest(load_file(pretrained_toy_clip(short))) == digest  # the written file, checked on load


def test_bad_recipe():
    with pytest.raises(ValueError, match="domain_mix"):
        ToyCLIPConfig(domain_mix=(("Sketch", 1.0),))


@pytest.mark.slow
def test_zero_shot_above_chance_and_mmap_beats_it(tmp_path):
    """The issue's acceptance on the embedded default (builds the cached tiny CLIP on first use)."""
    assert main(["eval", "--out", str(tmp_path / "zs.json")]) == 0
    zs = json.loads((tmp_path / "zs.json").read_text())
    assert zs["mean"] >= 200 / 12  # percent, at least twice chance (12 classes)
    assert zs["RealWorld"] > zs["Clipart"] and zs["RealWorld"] > zs["Art"]  # weaker off the photo domain
    again = tmp_path / "zs2.json"
    assert main(["eval", "--out", str(again)]) == 0 and json.loads(again.read_text()) == zs

    run = tmp_path / "mmap"
    assert main(["train", "--partition", "Art+Clipart|Product+RealWorld", "--out", str(run), "--no-progress"]) == 0
    test = json.loads((run / "summary.json").read_text())["test"]
    assert test["mean"] >= zs["mean"] + 10  # points
