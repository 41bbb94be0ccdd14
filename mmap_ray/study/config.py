"""A study's settings: `StudyConfig`, checked once, and the TOML study files it is read from.

A study is a base `RunConfig` (`run`: data, backbone, prompts, training) plus the axes it varies
(grouping schemes, seeds, prompt lengths, depths, projections, combine modes; in search mode also the
learning-rate range), how partitions are measured (`affinity`), what each trial's Ray Train run
reserves (`resources`) and where the study lives. A study file is `fields.to_dict`'s form in TOML:
top-level keys, `[run.data]`, `[run.backbone]`, `[run.prompts]`, `[run.train]`, `[affinity]`,
`[resources]` tables. The settings that define the trials are compared with the stored `study.json` on
--resume; `RESUME_MAY_CHANGE` lists those that may differ (where and how fast trials run).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..config import AffinityConfig, RunConfig, WorkerSpec, parse_variant
from ..fields import check_keys, check_types, option, replace
from ..grouping import SCHEMES, format_groups, is_partition_text, parse_groups
from ..parse import parse_toml
from ..prompt_config import Combine, Projection
from ..storage import location, resolve_storage, safe_name

MODES = ("compare", "search")
OBJECTIVES = ("accuracy", "pareto")
METRIC = "val/mean"
# How a run executes, not what it computes: not part of a trial's identity, and free to change on --resume.
# precision goes with device (its default follows the device): bf16 is checked to match fp32 (studies/gpu_check.py)
HOW_IT_RUNS = tuple(
    f"train.{k}" for k in ("loader_workers", "eval_batch_size", "checkpoint_every", "device", "precision", "pin_memory")
)
# Run settings that do not change a trial's result (not part of its identity)
# (the image cap only decides whether the data loads at all: an image over it is never dropped, see images.py)
NOT_IN_RESULT = ("train.seed", "data.max_image_pixels", *HOW_IT_RUNS)
# Study settings that may change on --resume: where and how fast trials run, not what they compute
TRACKERS = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}  # tracker -> module it needs
RESUME_MAY_CHANGE = (
    "storage",
    "max_concurrent_trials",
    "resources",
    "tracking",
    "run.data.max_image_pixels",
    *(f"run.{k}" for k in HOW_IT_RUNS),
)


# run settings every trial of a study shares: the tasks and the backbone its partitions are planned on
STUDY_WIDE = ("data.dataset", "data.root", "data.domains", "backbone.model", "backbone.pretrained")


def _check_scheme(scheme: str) -> str:
    if scheme in SCHEMES:
        return scheme
    if is_partition_text(scheme) and all(parse_groups(scheme)):
        return format_groups(parse_groups(scheme))
    raise ValueError(f"StudyConfig.schemes has {scheme!r}; valid: {SCHEMES} or explicit partitions like 'A+B|C+D'")


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study needs; every field can come from a TOML study file or a flag."""

    name: str = option("grouping", "study name (its folder under storage)")
    mode: str = option("compare", "compare: a grid over the axes; search: Optuna TPE (+ ASHA)", choices=MODES)
    schemes: tuple[str, ...] = option(SCHEMES, "grouping schemes, or explicit partitions such as 'A+B|C+D'")
    k: int = option(2, "groups for the gradient, lookahead and random schemes")
    seeds: tuple[int, ...] = option((0, 1, 2), "training seeds (search mode: the first is the search seed)")
    data_per_seed: bool = option(
        True,
        "each seed also draws its own data: data_seed = run.data.data_seed + seed (toy renders, folder "
        "splits), so seeds vary the test set too; false: every seed uses run.data.data_seed",
    )
    prompt_lengths: tuple[int, ...] = option((), "prompt lengths to compare (default: run.prompts.n_tokens)")
    depths: tuple[int, ...] = option((), "alignment depths d (layers 0..d-1) to compare (default: run.prompts)")
    projections: tuple[Projection, ...] = option((), "projections to compare (default: run.prompts.projection)")
    combines: tuple[Combine, ...] = option((), "combine modes to compare (default: run.prompts.combine)")
    variants: tuple[str, ...] = option(
        (), "run settings that vary together, one set of trials each, e.g. 'projection=kron; kron_order=AS'"
    )
    # search mode
    num_samples: int = option(16, "search mode: trials")
    objective: str = option("accuracy", "search mode: accuracy, or pareto (accuracy vs parameters)", choices=OBJECTIVES)
    lr_range: tuple[float, float] = option((5e-4, 5e-3), "search mode: learning-rate range, sampled log-uniformly")
    asha: bool = option(True, "search mode: stop weak trials early (ASHA)")
    grace_period: int = option(2, "search mode: epochs before ASHA may stop a trial")
    max_concurrent_trials: int | None = option(None, "trials at once (default: as many as the cluster holds)")
    tracking: tuple[str, ...] = option(
        (), "experiment trackers fed each trial's rows through Ray Tune's logger callbacks: tensorboard, mlflow, wandb"
    )
    storage: str | None = option(
        None,
        "where studies live (default: $MMAP_RAY_STORAGE, else ~/mmap-ray/studies): a local folder, a filesystem "
        "shared by the cluster's nodes, or s3://BUCKET/PREFIX, gs://BUCKET/PREFIX (an S3-compatible server: add "
        "?endpoint_override=HOST:PORT&scheme=http)",
    )
    run: RunConfig = field(default_factory=RunConfig)
    affinity: AffinityConfig = field(default_factory=AffinityConfig)
    resources: WorkerSpec = field(default_factory=WorkerSpec)

    def __post_init__(self) -> None:
        # ~70 lines: one check per field, in field order, so that every refusal of a study's settings is here
        check_types(self)
        object.__setattr__(self, "schemes", tuple(_check_scheme(s) for s in self.schemes))
        object.__setattr__(self, "projections", tuple(Projection(p) for p in self.projections))
        object.__setattr__(self, "combines", tuple(Combine(c) for c in self.combines))
        empty = [n for n in ("schemes", "seeds") if not getattr(self, n)]
        if empty:
            raise ValueError(f"StudyConfig fields {empty} are empty: a study needs at least one value each")
        for name in ("num_samples", "k", "grace_period"):
            if getattr(self, name) < 1:
                raise ValueError(f"StudyConfig.{name}={getattr(self, name)} must be >= 1")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ValueError(
                f"StudyConfig.max_concurrent_trials={self.max_concurrent_trials} must be >= 1, or unset for as many "
                f"trials at once as the cluster holds"
            )
        for name in ("prompt_lengths", "depths"):
            bad = [v for v in getattr(self, name) if v < 1]
            if bad:
                raise ValueError(f"StudyConfig.{name} has {bad}: every value must be an integer >= 1")
        if self.run.train.epochs < 1:
            raise ValueError(f"StudyConfig.run.train.epochs={self.run.train.epochs} must be >= 1: a study trains")
        if not 0 < self.lr_range[0] <= self.lr_range[1]:
            raise ValueError(f"StudyConfig.lr_range={list(self.lr_range)} must be 0 < low <= high")
        unknown = [t for t in self.tracking if t not in TRACKERS]
        if unknown:
            raise ValueError(f"StudyConfig.tracking has {unknown}; valid: {sorted(TRACKERS)}")
        if self.run.train.device == "cuda" and not self.resources.gpus_per_worker:
            raise ValueError(
                "StudyConfig.run.train.device='cuda' but resources.gpus_per_worker=0: trials reserve no GPU; "
                "set --gpus-per-worker (e.g. 1 or 0.5), or use device 'auto' (CUDA where a trial has a GPU)"
            )
        if self.mode == "search" and self.asha and self.grace_period > self.run.train.epochs:
            raise ValueError(
                f"StudyConfig: grace_period={self.grace_period} exceeds run.train.epochs={self.run.train.epochs}; "
                f"ASHA needs grace_period <= epochs (lower grace_period, raise epochs, or set asha = false)"
            )
        if self.run.partition is not None or self.run.train.seed != 0:
            raise ValueError(
                "StudyConfig.run sets partition or train.seed, which a study sets per trial: give partitions "
                "through `schemes` and seeds through `seeds`"
            )
        if not self.name or safe_name(self.name) != self.name or self.name.startswith("."):
            raise ValueError(
                f"StudyConfig.name={self.name!r}: use letters, digits, '-', '_' or '.', not starting "
                f"with '.' (it names one folder)"
            )
        for name in ("schemes", "seeds", "prompt_lengths", "depths", "projections", "combines", "variants"):
            values = getattr(self, name)
            repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
            if repeated:
                raise ValueError(
                    f"StudyConfig.{name}={[getattr(v, 'value', v) for v in values]} repeats "
                    f"{[getattr(v, 'value', v) for v in repeated]}: give each value once (a repeated seed would "
                    f"train the same trial twice)"
                )
        for variant in self.variants:
            try:
                changes = parse_variant(variant)
                replace(self.run, **changes)
            except ValueError as e:
                raise ValueError(f"StudyConfig.variants has {variant!r}: {e}") from None
            shared = [k.split(".")[-1] for k in changes if k in STUDY_WIDE]
            if shared:
                raise ValueError(
                    f"StudyConfig.variants has {variant!r}, which sets {shared}: every trial of a study shares "
                    f"its tasks and backbone (the partitions are planned on them); run one study per value"
                )
        object.__setattr__(self, "storage", resolve_storage(self.storage, "StudyConfig.storage (--storage)"))
        location(self.storage, "StudyConfig.storage")  # a bad path or URI fails here

    @property
    def study_dir(self) -> str:
        """The study's folder: a local path or an object-storage URI."""
        return (location(self.storage) / self.name).uri

    # the axes, with the base run's value where the study gives none
    @property
    def n_tokens_axis(self) -> tuple[int, ...]:
        return self.prompt_lengths or (self.run.prompts.n_tokens,)

    @property
    def projection_axis(self) -> tuple[str, ...]:
        return tuple(p.value for p in self.projections or (self.run.prompts.projection,))

    @property
    def combine_axis(self) -> tuple[str, ...]:
        return tuple(c.value for c in self.combines or (self.run.prompts.combine,))


def read_study_file(path: str | Path) -> dict:
    """The settings of a TOML study file (StudyConfig's `to_dict` form), checked for unknown keys."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"study file {p} does not exist")
    try:
        data = parse_toml(p.read_text(), p)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"study file {p} is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"study file {p} is not a UTF-8 text file") from None
    try:
        check_keys(StudyConfig, data)
    except ValueError as e:
        raise ValueError(f"study file {p}: {e}") from None
    return data
