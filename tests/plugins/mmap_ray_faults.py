"""Test-only fault injection for the training loop, installed from outside the package.

A test that wants a fault puts this folder first on PYTHONPATH (`with_plugins`) of the process it starts,
or of the local Ray instance it starts (Ray workers inherit that environment), and sets PLAN_ENV to the
path of a plan file. `sitecustomize.py` here then wraps `mmap_ray.engine.train_epoch`, the loop's per-epoch
hook, as soon as `mmap_ray.engine` is imported. Without the variable nothing is installed, and production
code never reads it.

The plan, a JSON file read at every epoch (so a test arms and disarms it while one Ray instance runs; a
missing file is no fault), holds any of:
- "die": {"rank": R, "epoch": E, "marker": FILE}: rank R exits (`os._exit(1)`, no clean-up) at the start of
  epoch E (0-based), once: it writes FILE first and never dies while FILE exists. A list of such deaths is
  several; one with "after": FILE2 only happens in an attempt of the run that started (its first epoch in
  this process) when FILE2 existed, so in a later attempt than the death that wrote FILE2, never the same one.
- "nan_seed": S: runs with training seed S produce NaN logits from their second epoch on.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import sys
import weakref
from pathlib import Path

PLAN_ENV = "MMAP_RAY_TEST_FAULT_PLAN"
FOLDER = Path(__file__).resolve().parent
HOOKED = "mmap_ray.engine"
_AT_START = weakref.WeakKeyDictionary()  # optimizer (one attempt of a run) -> the markers there when it started


def with_plugins(env: dict[str, str]) -> dict[str, str]:
    """`env` with this folder first on PYTHONPATH, so processes started with it load the faults."""
    path = [str(FOLDER), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return {**env, "PYTHONPATH": os.pathsep.join(path)}


def wanted() -> bool:
    return bool(os.environ.get(PLAN_ENV))


def _plan() -> dict:
    plan = Path(os.environ.get(PLAN_ENV, ""))
    return json.loads(plan.read_text()) if os.environ.get(PLAN_ENV) and plan.is_file() else {}


def _maybe_die(rank: int, epoch: int, opt) -> None:
    deaths = _plan().get("die") or []
    deaths = [deaths] if isinstance(deaths, dict) else deaths
    there = _AT_START.setdefault(opt, {d["marker"] for d in deaths if Path(d["marker"]).exists()})
    for die in deaths:
        if rank != die["rank"] or epoch != die["epoch"] or Path(die["marker"]).exists():
            continue
        if die.get("after") and die["after"] not in there:
            continue
        Path(die["marker"]).write_text("failed once\n")
        os._exit(1)


def patch(engine) -> None:
    """Wrap `engine.train_epoch` (which `engine.fit` looks up at every epoch) with the planned faults."""
    original = engine.train_epoch

    def train_epoch(forward, loader, opt, sched, cfg, ctx, epoch):
        _maybe_die(ctx.rank, epoch, opt)
        nan_seed = _plan().get("nan_seed")
        if nan_seed is not None and cfg.seed == nan_seed and epoch > 0:
            clean = forward
            forward = lambda images, task_ids: clean(images, task_ids) * float("nan")  # noqa: E731
        return original(forward, loader, opt, sched, cfg, ctx, epoch)

    engine.train_epoch = train_epoch


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds `mmap_ray.engine` with the other finders and patches it right after it has run."""

    def find_spec(self, name, path, target=None):
        if name != HOOKED:
            return None
        others = (f for f in sys.meta_path if f is not self and hasattr(f, "find_spec"))
        spec = next((s for f in others if (s := f.find_spec(name, path, target)) is not None), None)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Patch `mmap_ray.engine` now if it is imported, else when it is."""
    if HOOKED in sys.modules:
        patch(sys.modules[HOOKED])
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())
