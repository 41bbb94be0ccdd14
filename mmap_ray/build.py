"""Build a run's backbone, tasks and model from its `RunConfig` (the one place a config becomes objects).

The `mmap-ray` commands, every Ray Train worker, a study's partition planning and the benchmark call
these; each part of the config is already checked, so what can still fail here is what needs the
backbone or the files: weights that do not load, a dataset folder that is not one, a partition that
names tasks the data does not have.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .backbone import Backbone, BackboneConfig, load_backbone
from .config import TOY_DATASETS, DataConfig, ModelConfig, RunConfig
from .data.base import TaskData
from .grouping import Partition
from .model import PromptedCLIP

if TYPE_CHECKING:
    from .data.toy import ToyConfig


def load_run_backbone(cfg: ModelConfig, dataset: str = "toy") -> Backbone:
    """The backbone; pretrained 'toy' is our tiny CLIP pretrained for the run's toy benchmark (`dataset`
    'toy2' and 'toy3' have their own recipe), built on first use and cached."""
    pretrained = cfg.pretrained
    if pretrained == "toy":
        from .toyclip import pretrained_toy_clip, recipe_for

        pretrained = str(pretrained_toy_clip(recipe_for(dataset)))
    return load_backbone(BackboneConfig(cfg.model, pretrained))


def run_task_names(cfg: DataConfig) -> list[str]:
    """The task names `load_run_tasks` would give, from the folder names alone (no image is read):
    what a study checks its schemes against before it starts anything."""
    if cfg.dataset in TOY_DATASETS:
        from .data.toy import DOMAINS, ToyConfig

        return list(ToyConfig(domains=cfg.domains or DOMAINS).domains)
    from .data.folders import FolderDataConfig, task_names

    return task_names(FolderDataConfig(layout=cfg.dataset, root=cfg.root, domains=cfg.domains))


def _toy_config(cfg: DataConfig, image_size: int) -> ToyConfig:
    """The rendering settings of a toy benchmark: its default shots, or `cfg.shots` images per class."""
    from .data.toy import DOMAINS, TOY2_SHOTS, TOY3_SCARCE, TOY3_SHOTS, ToyConfig

    default = {"toy": {}, "toy2": {"train_per_class": TOY2_SHOTS}}
    shots = {"train_per_class": cfg.shots} if cfg.shots else default.get(cfg.dataset, {"train_per_class": TOY3_SHOTS})
    if cfg.dataset in ("toy3", "family"):  # the scarce half: TOY3_SCARCE images per class, or k if fewer
        shots["scarce_per_class"] = min(TOY3_SCARCE, shots["train_per_class"])
    conventions = cfg.dataset in ("toy2", "toy3")
    domains = cfg.domains or DOMAINS
    return ToyConfig(image_size=image_size, seed=cfg.data_seed, domains=domains, conventions=conventions, **shots)


def run_train_sizes(cfg: DataConfig) -> list[int] | None:
    """Training images per task, known without reading an image for the toy benchmarks (None for a dataset
    folder, whose sizes are known once it is listed): what a study checks its batch size against."""
    if cfg.dataset not in TOY_DATASETS:
        return None
    toy = _toy_config(cfg, image_size=8)  # the counts do not depend on the image size
    if cfg.dataset == "family":
        from .data.family import instance

        return instance(cfg.data_seed).train_sizes(toy.domains, toy.train_per_class, toy.scarce_per_class)
    return [sum(toy.train_counts(d)) for d in toy.domains]


def load_run_tasks(cfg: DataConfig, backbone: Backbone, splits_dir: Path | None = None) -> list[TaskData]:
    """The tasks (one per domain), rendered (toy) or read from the dataset folder."""
    if cfg.dataset == "family":
        from .data.family import load_family_tasks

        toy = _toy_config(cfg, backbone.model.visual.image_size[0])
        return load_family_tasks(toy, toy.train_per_class, toy.scarce_per_class)
    if cfg.dataset in TOY_DATASETS:
        from .data.toy import load_toy_tasks

        return load_toy_tasks(_toy_config(cfg, backbone.model.visual.image_size[0]))
    from .data.folders import FolderDataConfig, load_folder_tasks

    folders = FolderDataConfig(
        layout=cfg.dataset,
        root=cfg.root,
        domains=cfg.domains,
        shots=cfg.shots,
        seed=cfg.data_seed,
        skip_bad_images=cfg.skip_bad_images,
        max_image_pixels=cfg.max_image_pixels,
        splits_dir=str(splits_dir) if splits_dir else None,
    )
    return load_folder_tasks(folders, backbone.preprocess_train, backbone.preprocess_val)


def run_partition(cfg: RunConfig, names: list[str]) -> Partition:
    """The run's partition of the loaded tasks (one group when none is set)."""
    return Partition.single(names) if cfg.partition is None else Partition(tuple(names), cfg.partition)


def build_run(cfg: RunConfig, splits_dir: Path | None = None) -> tuple[PromptedCLIP, list[TaskData]]:
    """The run's PromptedCLIP and tasks; random weights and prompt init follow the run's seed."""
    torch.manual_seed(cfg.seed)
    backbone = load_run_backbone(cfg.backbone, cfg.data.dataset)
    tasks = load_run_tasks(cfg.data, backbone, splits_dir)
    names = [t.name for t in tasks]
    model = PromptedCLIP(backbone, {t.name: t.class_names for t in tasks}, cfg.prompts, run_partition(cfg, names))
    return model, tasks
