"""A study's settings: `StudyConfig`, checked once, and the TOML study files it is read from.

Every field can come from a study file (top-level keys, `[run]` for the run spec), a preset or a flag of
`studies/grouping.py`; types are checked here because files and flags arrive untyped. The settings that
define a study's trials are compared with the stored `study.json` on --resume; `RESUME_MAY_CHANGE` lists
the ones that may differ (where and how fast trials run, not what they compute).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..results import _safe
from ..runspec import did_you_mean, mmap_config, spec
from ..storage import location, resolve_storage

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

SCHEMES = ("single", "independent", "gradient", "lookahead", "random")
MODES = ("compare", "search")
OBJECTIVES = ("accuracy", "pareto")
METRIC = "val/mean"
# TrainConfig fields that do not change a trial's result (not part of its identity)
NOT_IN_RESULT = ("seed", "num_workers", "eval_batch_size")
# Study settings that may change on --resume: where and how fast trials run, not what they compute
RESUME_MAY_CHANGE = ("storage_path", "max_concurrent_trials", "autoscale", "worker_resources", "cpus_per_worker")


@dataclass
class StudyConfig:
    """Everything a study needs; every field can come from a TOML study file."""

    name: str = "grouping"
    mode: str = "compare"
    schemes: tuple[str, ...] = SCHEMES  # also explicit partitions such as "Art+Clipart|Product+RealWorld"
    k: int = 2  # groups for gradient / lookahead / random
    seeds: tuple[int, ...] = (0, 1, 2)
    # search mode
    num_samples: int = 16
    objective: str = "accuracy"
    n_tokens: tuple[int, ...] = (8,)  # prompt lengths (a grid axis in compare mode)
    depths: tuple[int, ...] = ()  # alignment depths (layers 0..d-1; a grid axis in compare mode); () = default layers
    projections: tuple[str, ...] = ("kron",)
    combines: tuple[str, ...] = ("concat",)
    lr_range: tuple[float, float] = (5e-4, 5e-3)
    asha: bool = True
    grace_period: int = 2
    # training
    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3  # compare mode
    affinity_warmup_steps: int = 40
    affinity_steps: int = 20
    # resources
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    worker_resources: dict = field(default_factory=dict)  # custom resources per worker, e.g. {"A100": 1}
    autoscale: bool = False  # the cluster grows on demand: skip the up-front size check
    max_concurrent_trials: int | None = None  # None: as many as the cluster can hold
    storage_path: str | None = None  # None: $MMAP_RAY_STORAGE, else ~/mmap-ray/studies
    # the base run spec (dataset, root, model, pretrained, ...); see mmap_ray.runspec.DEFAULTS
    run: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_types(self)
        for name, value, valid in (("mode", self.mode, MODES), ("objective", self.objective, OBJECTIVES)):
            if value not in valid:
                raise ValueError(f"StudyConfig.{name}={value!r} is not valid; choose one of {valid}")
        self.schemes, self.seeds = tuple(self.schemes), tuple(self.seeds)
        self.n_tokens, self.depths = tuple(self.n_tokens), tuple(self.depths)
        self.projections, self.combines = tuple(self.projections), tuple(self.combines)
        self.lr_range = tuple(self.lr_range)
        empty = [n for n in ("schemes", "seeds", "n_tokens", "projections", "combines") if not getattr(self, n)]
        if empty:
            raise ValueError(f"StudyConfig fields {empty} are empty: the search space needs at least one value each")
        for name in ("epochs", "batch_size", "num_samples", "workers_per_trial"):
            if getattr(self, name) < 1:
                raise ValueError(f"StudyConfig.{name}={getattr(self, name)} must be >= 1")
        for name in ("n_tokens", "depths"):
            bad = [v for v in getattr(self, name) if not isinstance(v, int) or v < 1]
            if bad:
                raise ValueError(f"StudyConfig.{name} has {bad}: every value must be an integer >= 1")
        if not 0 < self.lr_range[0] <= self.lr_range[1]:
            raise ValueError(f"StudyConfig.lr_range={self.lr_range} must be 0 < low <= high")
        self.run = spec(self.run)  # unknown run settings fail here
        if self.k < 1 or self.grace_period < 1 or self.affinity_steps < 1 or self.affinity_warmup_steps < 0:
            raise ValueError(
                f"StudyConfig: k={self.k}, grace_period={self.grace_period} and affinity_steps={self.affinity_steps} "
                f"must be >= 1, affinity_warmup_steps={self.affinity_warmup_steps} >= 0"
            )
        if self.mode == "search" and self.asha and self.grace_period > self.epochs:
            raise ValueError(
                f"StudyConfig: grace_period={self.grace_period} exceeds epochs={self.epochs}; ASHA needs "
                f"grace_period <= epochs (lower grace_period, raise epochs, or set asha = false)"
            )
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0 or not self.lr > 0:
            raise ValueError(
                f"StudyConfig: cpus_per_worker={self.cpus_per_worker} and lr={self.lr} must be > 0, "
                f"gpus_per_worker={self.gpus_per_worker} >= 0"
            )
        try:
            mmap_config(self.run)  # prompt settings (n_tokens, layers, projection, combine) fail now, not in a trial
        except ValueError as e:
            raise ValueError(f"StudyConfig.run: {e}") from None
        if not self.name or _safe(self.name) != self.name or self.name.startswith("."):
            raise ValueError(f"StudyConfig.name={self.name!r}: use letters, digits, '-', '_' or '.', not starting "
                             f"with '.' (it names one folder)")  # fmt: skip
        for name in ("schemes", "seeds", "n_tokens", "depths", "projections", "combines"):
            values = getattr(self, name)
            repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
            if repeated:
                raise ValueError(f"StudyConfig.{name}={list(values)} repeats {repeated}: give each value once "
                                 f"(a repeated seed would train the same trial twice)")  # fmt: skip
        self.storage_path = resolve_storage(self.storage_path)
        location(self.storage_path, "StudyConfig.storage_path")  # a bad path or URI fails here

    @property
    def study_dir(self) -> str:
        """The study's folder: a local path or an object-storage URI."""
        return (location(self.storage_path) / self.name).uri


_TYPES = {  # annotation -> (check, what a valid value looks like)
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "dict": (lambda v: isinstance(v, dict), "a table"),
    "int | None": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "an integer"),
    "str | None": (lambda v: v is None or isinstance(v, str), "a string"),
    "tuple[str, ...]": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v), "a list of strings"),
    "tuple[int, ...]": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in v),
                        "a list of integers"),
    "tuple[float, float]": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v),
                            "a list of two numbers [low, high]"),
}  # fmt: skip


def _check_types(cfg: StudyConfig) -> None:
    """Every field has the type its annotation says (study files and CLI flags arrive untyped)."""
    for name, f in cfg.__dataclass_fields__.items():
        check, valid = _TYPES[f.type]
        value = getattr(cfg, name)
        if not check(value):
            raise ValueError(f"StudyConfig.{name}={value!r} is not valid: it must be {valid}")


def read_study_file(path: str | Path) -> dict:
    """The settings of a TOML study file (top-level keys are StudyConfig fields, [run] the run spec), checked."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"study file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"study file {p} is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"study file {p} is not a UTF-8 text file") from None
    fields = StudyConfig.__dataclass_fields__
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"study file {p} has unknown settings {unknown}{did_you_mean(unknown, fields)}; valid: {sorted(fields)}")
    if not isinstance(data.get("run", {}), dict):
        raise ValueError(f"study file {p}: `run` must be a [run] table of run settings")
    return data

