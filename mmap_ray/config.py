"""One typed configuration for a run: `RunConfig` = data + backbone + prompts + training + partition.

Every way of starting a run (the `mmap-ray` commands, a study's trials, Ray Train workers, the
benchmark) builds a `RunConfig`; nothing else describes a run. Each part is a frozen dataclass checked
once, in its `__post_init__`, with messages that name the field, the value and what is valid:

    RunConfig
      data      DataConfig     which benchmark, where, which domains, k-shot, data seed
      backbone  ModelConfig    open_clip model name and weights
      prompts   MmAPConfig     prompt length, alignment layers, projection, combine (prompts.py)
      train     TrainConfig    epochs, batch, optimizer, schedule, seed (engine.py)
      partition                task groups, e.g. (("Art", "Clipart"), ("Product", "RealWorld")); None: one group

`fields.to_dict` / `fields.from_dict` are its only wire format (config.json, Ray, Parquet rows, study
files); the string forms of layers ("0-2") and partitions ("A+B|C") are parsed at the edges only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .backbone import NO_WEIGHTS, TINY_MODEL
from .data.images import MAX_IMAGE_PIXELS
from .engine import TrainConfig
from .fields import check_types, from_dict, option
from .grouping import format_groups, parse_groups
from .parse import parse_json
from .prompts import MmAPConfig
from .storage import is_uri, location

TOY_DATASETS = ("toy", "toy2", "toy3")  # rendered, no folder (data/toy.py)
DATASETS = ("toy", "toy2", "toy3", "office-home", "minidomainnet", "domainnet", "folders")


def comma_list(text: str) -> tuple[str, ...]:
    """'Art, Clipart' -> ('Art', 'Clipart') (a command-line list of names)."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


def partition_arg(text: str) -> tuple[tuple[str, ...], ...]:
    """A partition as typed ('A+B|C') or the JSON file `mmap-ray group` wrote."""
    if text.endswith(".json") and Path(text).is_file():
        try:
            saved = parse_json(Path(text).read_text(), text)["partition"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            saved = None
        if not isinstance(saved, str):
            raise ValueError(
                f"partition file {text} is not what `mmap-ray group` writes: JSON with a 'partition' string "
                f"such as 'A+B|C'"
            )
        text = saved
    return parse_groups(text)


@dataclass(frozen=True)
class DataConfig:
    """Which benchmark the tasks come from and how they are split."""

    dataset: str = option(
        "toy",
        "benchmark; toy, toy2 and toy3 (the grouping benchmark) are rendered, the others read a dataset folder",
        choices=DATASETS,
    )
    root: str | None = option(
        None,
        "dataset folder (not for toy), or the s3:// or gs:// URI it was pushed to with `mmap-ray data push` "
        "(each node then stages it to its local disk on first use)",
    )
    domains: tuple[str, ...] | None = option(
        None, "comma-separated domains to use as tasks (default: all)", parse=comma_list
    )
    shots: int | None = option(None, "k-shot: at most k training images per class (default: all)")
    data_seed: int = option(0, "seed of the toy render and of the train/val/test split")
    skip_bad_images: bool = option(False, "drop unreadable images instead of failing")
    max_image_pixels: int = option(
        MAX_IMAGE_PIXELS,
        "refuse, naming it, an image larger than this (width x height) before decoding it; whatever "
        "skip_bad_images says (dropping it would change the data without the trial's identity saying so)",
    )

    def __post_init__(self) -> None:
        check_types(self)
        if self.max_image_pixels < 1:
            raise ValueError(f"DataConfig.max_image_pixels={self.max_image_pixels!r} must be an integer >= 1")
        if self.shots is not None and self.shots < 1:
            raise ValueError(f"DataConfig.shots={self.shots!r} must be None (all images) or an integer >= 1")
        if self.domains is not None and not self.domains:
            raise ValueError("DataConfig.domains=() names no domain; give at least one, or None for all")
        if self.dataset in TOY_DATASETS and self.domains:
            from .data.toy import DOMAINS

            unknown = [d for d in self.domains if d not in DOMAINS]
            if unknown:
                raise ValueError(
                    f"DataConfig.domains={list(self.domains)} has {unknown}, which the toy benchmark does not "
                    f"have; its domains are {list(DOMAINS)}"
                )
        if self.dataset in TOY_DATASETS and self.root:
            raise ValueError(
                f"DataConfig.root={self.root!r} is not used with dataset {self.dataset!r} (it is rendered)"
            )
        if self.dataset not in TOY_DATASETS and not self.root:
            raise ValueError(f"DataConfig.root is required with dataset {self.dataset!r}: the folder that holds it")
        if self.root and is_uri(self.root):  # object storage: staged per node when loaded (data/remote.py)
            object.__setattr__(self, "root", location(self.root, "DataConfig.root").uri)
        elif self.root:  # absolute, so Ray workers (other working directories) read the same folder
            object.__setattr__(self, "root", os.path.abspath(os.path.expanduser(self.root)))


@dataclass(frozen=True)
class ModelConfig:
    """The open_clip backbone and its weights."""

    model: str = option(TINY_MODEL, "open_clip model name")
    pretrained: str | None = option(
        "toy",
        "open_clip pretrained tag (needs the model hub or its cache), a local checkpoint file, 'toy' (our tiny "
        "CLIP pretrained on the toy benchmark, built and cached on first use) or 'none' for random weights",
    )

    def __post_init__(self) -> None:
        check_types(self)
        if self.pretrained in NO_WEIGHTS:
            object.__setattr__(self, "pretrained", None)
        if self.pretrained == "toy" and self.model != TINY_MODEL:
            raise ValueError(f"ModelConfig.pretrained='toy' is only for model {TINY_MODEL!r}, not {self.model!r}")


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run depends on."""

    data: DataConfig = field(default_factory=DataConfig)
    backbone: ModelConfig = field(default_factory=ModelConfig)
    prompts: MmAPConfig = field(default_factory=MmAPConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    partition: tuple[tuple[str, ...], ...] | None = option(
        None,
        "task groups, e.g. 'Art+Clipart|Product+RealWorld', or the JSON file `mmap-ray group` wrote "
        "(default: one group)",
        parse=partition_arg,
    )

    def __post_init__(self) -> None:
        check_types(self)
        if self.partition is not None and not all(self.partition):
            shown = format_groups(self.partition)
            raise ValueError(f"RunConfig.partition={shown!r} has an empty group; write it as e.g. 'A+B|C'")
        if self.data.domains and self.partition:
            unknown = sorted({t for g in self.partition for t in g} - set(self.data.domains))
            if unknown:
                raise ValueError(
                    f"RunConfig.partition={format_groups(self.partition)!r} names {unknown}, which are not among "
                    f"data.domains {list(self.data.domains)}"
                )

    @property
    def seed(self) -> int:
        """The run's seed: initial prompts, random weights, batch order."""
        return self.train.seed


def read_run_config(path: str | Path) -> RunConfig:
    """The RunConfig in a run folder's config.json (`{"run": to_dict(cfg)}`), checked; ValueError naming the file."""
    p = Path(path)
    try:
        saved = parse_json(p.read_text(), p)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p} is not valid JSON ({e}); it is not a run folder's config.json") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("run"), dict):
        raise ValueError(f"{p} has no 'run' table: it is not the config.json `mmap-ray train` writes")
    try:
        return from_dict(RunConfig, saved["run"], "run")
    except ValueError as e:
        raise ValueError(f"{p}: {e} (a run folder from an earlier mmap-ray, or another tool's)") from None


def parse_variant(text: str) -> dict[str, object]:
    """'projection=kron; kron_order=AS' -> {'prompts.projection': 'kron', 'prompts.kron_order': 'AS'}: run
    settings by their field names (unique across the RunConfig tree), values in their text form."""
    from .fields import leaf_paths, parse_text

    paths, out = leaf_paths(RunConfig), {}
    for item in (i.strip() for i in text.split(";") if i.strip()):
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or name not in paths:
            valid = "a setting name" if eq else "name=value"
            raise ValueError(
                f"variant {text!r}: {item!r} is not {valid}; use run settings such as 'projection=kron; n_tokens=4'"
            )
        if name in ("partition", "seed"):
            raise ValueError(f"variant {text!r} sets {name}, which a study sets per trial (schemes, seeds)")
        out[paths[name]] = parse_text(RunConfig, paths[name], value.strip())
    return out
