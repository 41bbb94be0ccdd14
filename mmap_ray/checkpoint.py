"""Run state: the only writer and reader of a training run's checkpoints.

A checkpoint holds what an exact resume needs and nothing more: the trainable tensors (the prompts, or
the whole backbone for the full fine-tuning baseline; never a frozen backbone), the optimizer and
schedule state, the metrics history and the training configuration. It is written atomically (readers
see the old file or the new one, never a part) through `storage.Location`, and read with
`torch.load(weights_only=True)` (`safeload`, so no code from the file runs), then checked to be a run
checkpoint before anything uses it.

Where checkpoints live: an in-process run keeps `checkpoint.pt` and `metrics.jsonl` in its run folder;
a study trial keeps folders `checkpoint_<time>/state.pt` (Ray Train's layout and names, so they sort by
time), written by Ray Train when the trial has several workers and by `save_numbered` when it trains in
the Tune trial's own process. A study reads the newest back (`newest`) for the trial's history.
"""

from __future__ import annotations

import datetime
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .evaluation import in_percent
from .fields import to_dict
from .safeload import load_tensor_bytes, load_tensor_file
from .storage import Location, location, move_folder

if TYPE_CHECKING:
    from torch.optim.lr_scheduler import LRScheduler

    from .engine import TrainConfig
    from .model import PromptedCLIP

RUN_FILE = "checkpoint.pt"  # an in-process run's checkpoint, in its run folder
METRICS_FILE = "metrics.jsonl"  # the history, one JSON row per epoch, next to it
PREDICTIONS_FILE = "predictions.parquet"  # every test image's outcome after the last epoch
STATE_FILE = "state.pt"  # the file in each Ray Train checkpoint folder
KEYS = ("trainable", "optimizer", "scheduler", "history", "train_config")
# what each key must hold; checked on load, so a damaged or foreign file fails here, not mid-resume
_TYPES = {"trainable": dict, "optimizer": dict, "scheduler": dict, "history": list, "train_config": dict}


def state(
    model: PromptedCLIP, opt: torch.optim.Optimizer, sched: LRScheduler, history: list[dict], cfg: TrainConfig
) -> dict:
    """What a checkpoint holds: trainable tensors only (never the frozen backbone), optimizer, schedule."""
    return {
        "trainable": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "history": history,
        "train_config": asdict(cfg),
        "prompts": to_dict(model.cfg),  # what the tensors mean: checked against the model they load into
    }


def save(run_state: dict, where: str | Path | Location) -> None:
    """Write `run_state` to a file (local or object storage) atomically; StorageError names a failed write."""
    buf = io.BytesIO()
    torch.save(run_state, buf)
    location(where, "checkpoint").write_bytes(buf.getvalue())


def _checkpoint_dirs(folder: Location) -> list[Location]:
    """The checkpoint folders in `folder` that hold a state file, oldest first (names sort by time)."""
    return [d for d in folder.dirs("checkpoint_*") if (d / STATE_FILE).exists()]


def newest(folder: str | Path | Location) -> Location | None:
    """The newest complete checkpoint folder of a study trial (`checkpoint_<time>/state.pt`), or None."""
    found = _checkpoint_dirs(location(folder, "checkpoint"))
    return found[-1] if found else None


def set_aside_unreadable(folder: str | Path | Location) -> list[tuple[Location, str]]:
    """Move a study trial's newest checkpoints that do not load (a planted pickle, a damaged file) to
    `unreadable-checkpoint_<time>/`, newest first, until one loads: the trial then continues from that one,
    or from scratch. Returns (where each went, why); nothing is deleted."""
    moved = []
    for found in reversed(_checkpoint_dirs(location(folder, "checkpoint"))):
        try:
            load(found / STATE_FILE)
            break
        except ValueError as e:
            moved.append((move_folder(found, found.parent / f"unreadable-{found.name}"), str(e)))
    return moved


def save_numbered(run_state: dict, folder: str | Path | Location, keep: int = 2) -> Location:
    """Save `run_state` as a new `checkpoint_<time>/state.pt` in `folder` (Ray Train's name format, so
    both writers' checkpoints sort together), then delete all but the newest `keep` complete ones."""
    folder = location(folder, "checkpoint")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S.%f")
    new = folder / f"checkpoint_{stamp}"
    save(run_state, new / STATE_FILE)  # atomic: a crash leaves no state file, and `newest` skips the folder
    for old in _checkpoint_dirs(folder)[:-keep]:
        old.remove_tree()
    return new


def without_predictions(row: dict) -> dict:
    """A history row without its (large) "predictions" columns: what metrics files and summaries keep."""
    return {k: v for k, v in row.items() if k != "predictions"}


def save_run(out: str | Path, run_state: dict) -> None:
    """An in-process run folder's checkpoint.pt and metrics.jsonl (the whole history, so a resumed run
    never duplicates a row; accuracies in percent there, as in every file a user reads)."""
    save(run_state, Path(out) / RUN_FILE)
    history = run_state["history"]
    rows = "".join(json.dumps(in_percent(without_predictions(r))) + "\n" for r in history)
    location(Path(out) / METRICS_FILE, "out").write_text(rows)
    if history and "predictions" in history[-1]:  # the last epoch's test outcomes, one row per image
        from .predictions import write_predictions

        data = {"split": "test", "images": str(history[-1].get("test_images", ""))}
        write_predictions(Path(out) / PREDICTIONS_FILE, history[-1]["predictions"], data)


def load(where: str | Path | Location, map_location: str | torch.device = "cpu") -> dict:
    """A run checkpoint from a local file or an object-storage URI / Location, validated; ValueError
    (naming the file) if it is not one or would run code, FileNotFoundError if it is missing."""
    if isinstance(where, str) and "://" in where:
        where = location(where, "checkpoint")
    if isinstance(where, Location):
        if not where.is_local:
            return from_bytes(where.read_bytes(), where.uri, map_location)
        where = where.path
    return _validated(load_tensor_file(where, "checkpoint", map_location), where)


def from_bytes(data: bytes, source: str, map_location: str | torch.device = "cpu") -> dict:
    """A run checkpoint from the bytes of a checkpoint file fetched elsewhere; `source` names it in errors."""
    return _validated(load_tensor_bytes(data, source, "checkpoint", map_location), source)


def _validated(obj: object, source: str | Path) -> dict:
    """`obj` if it has every key of a run checkpoint, each of the right kind; else ValueError naming `source`."""
    lacks = [k for k in KEYS if k not in obj] if isinstance(obj, dict) else list(KEYS)
    if lacks:
        raise ValueError(
            f"checkpoint {source} is not an mmap-ray run checkpoint: it lacks {lacks}; delete it to start the "
            f"run afresh, or point at the run folder that wrote it"
        )
    wrong = [
        f"{k} is a {type(obj[k]).__name__}, not a {t.__name__}" for k, t in _TYPES.items() if not isinstance(obj[k], t)
    ]
    if not wrong:
        wrong = [f"trainable[{n!r}] is not a tensor" for n, t in obj["trainable"].items() if not torch.is_tensor(t)]
        wrong += [f"history[{i}] is not a dict" for i, r in enumerate(obj["history"]) if not isinstance(r, dict)]
    if wrong:
        raise ValueError(f"checkpoint {source} is not an mmap-ray run checkpoint: {'; '.join(wrong[:3])}")
    return obj


def _changed(saved: dict, now: dict) -> str:
    """'combine: concat (checkpoint) != add (model), ...' for the settings that differ."""
    keys = sorted(set(saved) | set(now))
    return ", ".join(
        f"{k}: {saved.get(k)!r} (checkpoint) != {now.get(k)!r} (model)" for k in keys if saved.get(k) != now.get(k)
    )


def restore(run_state: dict, model: PromptedCLIP, opt: torch.optim.Optimizer, sched: LRScheduler) -> list[dict]:
    """Load a checkpoint into model, optimizer and schedule; returns the metrics history."""
    load_trainable(model, run_state["trainable"], run_state.get("prompts"))
    opt.load_state_dict(run_state["optimizer"])
    sched.load_state_dict(run_state["scheduler"])
    return list(run_state["history"])


def load_trainable(model: PromptedCLIP, tensors: dict[str, torch.Tensor], prompts: dict | None = None) -> None:
    """Copy saved trainable tensors into `model`: exactly its trainable parameters, each of the same shape,
    saved with the same prompt settings (`prompts`, where the checkpoint records them); else ValueError."""
    if prompts is not None and (changed := _changed(prompts, to_dict(model.cfg))):
        raise ValueError(f"the checkpoint was trained with other prompt settings than the model's: {changed}")
    params = dict(model.named_parameters())
    extra = [n for n in tensors if n not in params]
    if extra:
        raise ValueError(f"checkpoint holds parameters the model does not have: {extra[:5]}")
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    if missing:
        raise ValueError(
            f"checkpoint lacks {len(missing)} of the model's trainable parameters ({missing[:5]}): it was trained "
            f"with other settings"
        )
    with torch.no_grad():
        for n, t in tensors.items():
            if params[n].shape != t.shape:
                raise ValueError(
                    f"checkpoint parameter {n} has shape {tuple(t.shape)}, model has {tuple(params[n].shape)}"
                )
            params[n].copy_(t)
