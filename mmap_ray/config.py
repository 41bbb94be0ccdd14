"""The typed configurations: a run (`RunConfig`), the workers that run it (`WorkerSpec`) and how task
affinity is measured (`AffinityConfig`). `RunConfig` = data + backbone + prompts + training + partition.

Every way of starting a run (the `mmap-ray` commands, a study's trials, Ray Train workers, the
benchmark) builds a `RunConfig`; nothing else describes a run. Each part is a frozen dataclass checked
once, in its `__post_init__`, with messages that name the field, the value and what is valid:

    RunConfig
      data      DataConfig     which benchmark, where, which domains, k-shot, data seed
      backbone  ModelConfig    open_clip model name and weights
      prompts   MmAPConfig     prompt length, alignment layers, projection, combine (prompt_config.py)
      train     TrainConfig    epochs, batch, optimizer, schedule, seed (run by engine.py)
      partition                task groups, e.g. (("Art", "Clipart"), ("Product", "RealWorld")); None: one group

`fields.to_dict` / `fields.from_dict` are its only wire format (config.json, Ray, Parquet rows, study
files); the string forms of layers ("0-2") and partitions ("A+B|C") are parsed at the edges only.
No torch, open_clip or Ray import here (nor in what this imports): a config, a study file or a bad flag
is checked in about a second, before any of them loads.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .data.images import MAX_IMAGE_PIXELS
from .fields import check_types, from_dict, json_resources, option, optional_float
from .grouping import AFFINITY_SCHEMES, format_groups, parse_groups
from .parse import parse_json
from .prompt_config import MmAPConfig
from .storage import is_uri, location

TOY_DATASETS = ("toy", "toy2", "toy3", "family")  # rendered, no folder (data/toy.py, data/family.py)
DATASETS = (*TOY_DATASETS, "office-home", "minidomainnet", "domainnet", "folders")
TINY_MODEL = "mmap-ViT-Tiny-8"  # our tiny CLIP (model_configs/), pretrained on the toy benchmark (toyclip.py)
NO_WEIGHTS = ("", "none", "None")  # what `pretrained` may say for random weights, besides None
OPTIMIZERS = ("adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")  # auto: bf16 autocast on CUDA, fp32 elsewhere
SAMPLING_MODES = ("equal", "proportional")  # a task's share of a batch (data/sampler.py)


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
        "benchmark; toy, toy2, toy3 (the grouping benchmark) and family (toy3-like instances drawn from factors by "
        "data_seed, data/family.py) are rendered, the others read a dataset folder",
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
class TrainConfig:
    """How to train. Defaults suit prompt tuning of the tiny toy CLIP on the toy benchmark."""

    epochs: int = option(10, "training epochs")
    batch_size: int = option(64, "global batch, shared among tasks (see sampling)")
    lr: float = option(2e-3, "peak learning rate")
    optimizer: str = option("adamw", "optimizer of the trainable parameters", choices=OPTIMIZERS)
    weight_decay: float = option(0.0, "weight decay")
    warmup_steps: int = option(10, "linear warm-up steps before the cosine decay")
    grad_clip: float | None = option(
        1.0, "clip the gradient norm to this value ('none': no clipping)", parse=optional_float
    )
    sampling: str = option("equal", "per-task share of a batch", choices=SAMPLING_MODES)
    seed: int = option(0, "seed of the initial prompts, random weights and batch order")
    full_finetune: bool = option(False, "baseline: train the whole backbone too (use with layers 'none')")
    eval_batch_size: int = option(256, "batch size of evaluation")
    loader_workers: int = option(0, "data-loading processes per trainer")
    pin_memory: bool = option(True, "pin the batches' host memory for faster copies to a GPU (CUDA only)")
    device: str = option("auto", "where to train and evaluate: auto (CUDA when present), cpu or cuda", choices=DEVICES)
    precision: str = option(
        "auto", "forward arithmetic: auto (bf16 autocast on CUDA, fp32 on a CPU), bf16 or fp32", choices=PRECISIONS
    )
    checkpoint_every: int = option(
        0, "save a checkpoint every k epochs, and always after the last; 0: every ceil(epochs / 10)"
    )

    def __post_init__(self) -> None:
        check_types(self)
        checks = [
            ("epochs", self.epochs >= 0, ">= 0"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", 0 < self.lr < math.inf, "> 0 and finite"),
            ("weight_decay", 0 <= self.weight_decay < math.inf, ">= 0 and finite"),
            ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
            ("grad_clip", self.grad_clip is None or 0 < self.grad_clip < math.inf, "> 0 and finite, or None"),
            ("eval_batch_size", self.eval_batch_size >= 1, ">= 1"),
            ("loader_workers", self.loader_workers >= 0, ">= 0"),
            ("checkpoint_every", self.checkpoint_every >= 0, ">= 0 (0: every ceil(epochs / 10) epochs)"),
        ]
        for name, ok, valid in checks:
            if not ok:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} must be {valid}")


@dataclass(frozen=True)
class WorkerSpec:
    """How many Ray Train workers a run uses and what each one reserves."""

    workers: int = option(1, "workers per run: 1 trains in the run's own process, more are Ray Train DDP workers")
    cpus_per_worker: float = option(1.0, "CPUs each worker reserves; fractions allowed")
    gpus_per_worker: float = option(0.0, "GPUs each worker reserves (NCCL from 1; gloo for fractions such as 0.5)")
    max_failures: int = option(2, "worker-group restarts from the last checkpoint")
    worker_resources: dict[str, float] = option(
        {}, "custom resources each worker also reserves, as JSON, e.g. '{\"A100\": 1}'", parse=json_resources
    )
    autoscale: bool = option(False, "an autoscaler adds nodes: skip the 'cluster too small' check")

    def __post_init__(self) -> None:
        check_types(self)
        if self.workers < 1:
            raise ValueError(
                f"WorkerSpec.workers={self.workers} must be >= 1 (1: the run trains in its own process; more: Ray "
                f"Train DDP workers)"
            )
        if self.cpus_per_worker <= 0:
            raise ValueError(
                f"WorkerSpec.cpus_per_worker={self.cpus_per_worker} must be > 0 (fractions such as 0.5 are fine)"
            )
        if self.gpus_per_worker < 0:
            raise ValueError(f"WorkerSpec.gpus_per_worker={self.gpus_per_worker} must be >= 0")
        if self.max_failures < 0:
            raise ValueError(f"WorkerSpec.max_failures={self.max_failures} must be >= 0")

    @property
    def resources_per_worker(self) -> dict[str, float]:
        res = {"CPU": self.cpus_per_worker, **self.worker_resources}
        if self.gpus_per_worker:
            res["GPU"] = self.gpus_per_worker
        return res


@dataclass(frozen=True)
class AffinityConfig:
    """How task affinity is measured."""

    method: str = "gradient"  # set by the grouping scheme (gradient or lookahead)
    affinity_warmup_steps: int = option(40, "steps of joint training of one shared MmAP before measuring")
    affinity_steps: int = option(20, "joint training steps the probes' affinity is measured over")
    affinity_every: int = option(1, "measure on every N-th of those steps")
    affinity_batch_size: int = option(64, "batch size of the affinity's joint training")
    affinity_lr: float = option(2e-3, "learning rate of the probes' joint training (AdamW)")
    tag_every: int = option(10, "tag: measure the look-ahead on every N-th step of the joint run (TAG: 10)")
    affinity_balance: bool = option(
        False,
        "draw each task's images class-balanced in the affinity's joint training (scarce classes repeated), "
        "so that how often a task sees each class (its label prior) does not drive its gradient",
    )
    seed: int = 0  # set per grouping seed

    def __post_init__(self) -> None:
        check_types(self)
        if self.method not in AFFINITY_SCHEMES:
            raise ValueError(f"AffinityConfig.method={self.method!r} is not valid; choose one of {AFFINITY_SCHEMES}")
        for name in ("affinity_steps", "affinity_batch_size", "affinity_every", "tag_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"AffinityConfig.{name}={getattr(self, name)} must be >= 1")
        if self.affinity_warmup_steps < 0:
            raise ValueError(f"AffinityConfig.affinity_warmup_steps={self.affinity_warmup_steps} must be >= 0")
        if not 0 < self.affinity_lr < float("inf"):
            raise ValueError(f"AffinityConfig.affinity_lr={self.affinity_lr} must be > 0 and finite")

    @property
    def measured_steps(self) -> int:
        """How many steps the affinity is averaged over."""
        return len(range(0, self.affinity_steps, self.affinity_every))


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
