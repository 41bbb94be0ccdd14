"""Build a run's model and data from one flat, JSON-serialisable mapping (the "run spec").

The CLI, Ray Train workers and Tune trials all describe a run the same way: a dict of plain values
(dataset, root, domains, model, pretrained, partition, MmAP fields, seed). Keeping it a plain mapping
means it can be written to config.json, sent to remote workers and flattened into a Parquet row as is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from .backbone import TINY_MODEL, Backbone, BackboneConfig, load_backbone
from .data.base import TaskData
from .grouping import Partition
from .model import PromptedCLIP
from .prompts import MmAPConfig, parse_layers

# Keys of a run spec and their defaults (the embedded default: MmAP on the toy benchmark).
DEFAULTS: dict[str, object] = {
    "dataset": "toy", "root": None, "domains": None, "shots": None, "data_seed": 0, "skip_bad_images": False,
    "model": TINY_MODEL, "pretrained": "toy", "partition": None,
    "n_tokens": MmAPConfig.n_tokens, "layers": None, "text_layers": None, "vision_layers": None,
    "source_dim": None, "projection": "kron", "combine": "concat", "no_task_prompts": False, "seed": 0,
}  # fmt: skip


def did_you_mean(unknown: list[str], valid) -> str:
    """' (did you mean 'epochs'?)' for the closest valid name of each unknown one, or ''."""
    import difflib

    hints = [f"{u!r} -> {m[0]!r}" for u in unknown if (m := difflib.get_close_matches(u, list(valid), n=1, cutoff=0.6))]
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


def spec(run: Mapping | None = None, **overrides) -> dict:
    """A complete run spec: DEFAULTS, then `run`, then `overrides`; unknown keys are an error."""
    out = dict(DEFAULTS)
    for source in (run or {}, overrides):
        unknown = sorted(set(source) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"unknown run settings {unknown}{did_you_mean(unknown, DEFAULTS)}; valid: {sorted(DEFAULTS)}")
        out.update(source)
    return out


def mmap_config(run: Mapping) -> MmAPConfig:
    return MmAPConfig(
        n_tokens=run["n_tokens"],
        layers=parse_layers(run["layers"]) if isinstance(run["layers"], str) else run["layers"],
        text_layers=parse_layers(run["text_layers"]) if isinstance(run["text_layers"], str) else run["text_layers"],
        vision_layers=parse_layers(run["vision_layers"]) if isinstance(run["vision_layers"], str) else run["vision_layers"],
        source_dim=run["source_dim"],
        projection=run["projection"],
        combine=run["combine"],
        task_prompts=not run["no_task_prompts"],
    )


def load_run_backbone(run: Mapping) -> Backbone:
    """The run's backbone; pretrained 'toy' is our tiny CLIP pretrained on the toy benchmark (cached)."""
    pretrained = run["pretrained"]
    if pretrained == "toy":
        if run["model"] != TINY_MODEL:
            raise ValueError(f"pretrained='toy' is only for model {TINY_MODEL!r}, not {run['model']!r}")
        from .toyclip import pretrained_toy_clip

        pretrained = str(pretrained_toy_clip())
    elif pretrained in (None, "", "none"):
        pretrained = None
    return load_backbone(BackboneConfig(run["model"], pretrained))


def load_run_tasks(run: Mapping, backbone: Backbone, splits_dir: Path | None = None) -> list[TaskData]:
    domains = tuple(d.strip() for d in run["domains"].split(",")) if run["domains"] else None
    shots = run["shots"]
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 1):
        raise ValueError(f"shots={shots!r} must be None (all images) or an integer >= 1")
    if run["dataset"] == "toy":
        from .data.toy import DOMAINS, ToyConfig, load_toy_tasks

        if run["root"]:
            raise ValueError("root is not used with dataset 'toy' (the toy benchmark is rendered)")
        size = backbone.model.visual.image_size[0]
        shots = {"train_per_class": run["shots"]} if run["shots"] else {}  # k-shot: k rendered images per class
        return load_toy_tasks(ToyConfig(image_size=size, seed=run["data_seed"], domains=domains or DOMAINS, **shots))
    from .data.folders import FolderDataConfig, load_folder_tasks

    if not run["root"]:
        raise ValueError(f"root is required with dataset {run['dataset']!r}: the folder that holds the dataset")
    cfg = FolderDataConfig(
        layout=run["dataset"],
        root=str(Path(run["root"]).resolve()),
        domains=domains,
        shots=run["shots"],
        seed=run["data_seed"],
        skip_bad_images=run["skip_bad_images"],
        splits_dir=str(splits_dir) if splits_dir else None,
    )
    return load_folder_tasks(cfg, backbone.preprocess_train, backbone.preprocess_val)


def resolve_partition(value: str | None, names: list[str]) -> Partition:
    """A partition string, the JSON file `mmap-ray group` wrote, or None (one group)."""
    if not value:
        return Partition.single(names)
    if value.endswith(".json") and Path(value).is_file():
        try:
            saved = json.loads(Path(value).read_text())["partition"]
        except (json.JSONDecodeError, KeyError, TypeError):
            saved = None
        if not isinstance(saved, str):
            raise ValueError(f"partition file {value} is not what `mmap-ray group` writes: JSON with a "
                             f"'partition' string such as 'A+B|C'")
        value = saved
    return Partition.parse(value, names)


def build_run(run: Mapping, splits_dir: Path | None = None) -> tuple[PromptedCLIP, list[TaskData]]:
    """The run's PromptedCLIP and tasks; random weights and prompt init follow the run's seed."""
    run = spec(run)
    cfg = mmap_config(run)  # validate cheap things before loading anything
    torch.manual_seed(run["seed"])
    backbone = load_run_backbone(run)
    tasks = load_run_tasks(run, backbone, splits_dir)
    names = [t.name for t in tasks]
    model = PromptedCLIP(backbone, {t.name: t.class_names for t in tasks}, cfg, resolve_partition(run["partition"], names))
    return model, tasks
