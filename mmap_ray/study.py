"""The study: Ray Tune trials, each a driver that launches a Ray Train `TorchTrainer`, results in Parquet.

Two modes:
- compare (default): a grid, one trial per grouping scheme x prompt length x alignment depth x seed,
  everything else fixed: the side-by-side answer to "which grouping works best", with a seed spread.
  The paper's ablations (prompt length, alignment layers) are compare studies over one axis.
- search: Optuna (TPE; or multi-objective accuracy vs trainable parameters, giving a Pareto front) over
  the grouping scheme, prompt length, alignment depth, projection, combine mode and learning rate, with
  ASHA stopping weak trials on per-epoch validation accuracy.

Affinity-based partitions (gradient, lookahead) are computed once per (scheme, seed) before any trial
starts, with a shared default MmAP, and saved in the study folder (`partitions.json`), so trials only
train and a resumed study reuses them. Each trial's Train run is named after its trial id, so a resumed
trial continues from its last checkpoint. The Tune driver writes one Parquet row per finished trial.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .engine import TrainConfig
from .grouping import AFFINITY_SCHEMES, FIXED_SCHEMES
from .results import _safe
from .runspec import did_you_mean, mmap_config, spec
from .storage import Location, StorageError, check_reachable, location

SCHEMES = ("single", "independent", "gradient", "lookahead", "random")
MODES = ("compare", "search")
OBJECTIVES = ("accuracy", "pareto")
METRIC = "val/mean"


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
    storage_path: str = "runs/studies"
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
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0 or not self.lr > 0:
            raise ValueError(
                f"StudyConfig: cpus_per_worker={self.cpus_per_worker} and lr={self.lr} must be > 0, "
                f"gpus_per_worker={self.gpus_per_worker} >= 0"
            )
        try:
            mmap_config(self.run)  # prompt settings (n_tokens, layers, projection, combine) fail now, not in a trial
        except ValueError as e:
            raise ValueError(f"StudyConfig.run: {e}") from None
        if not self.name or _safe(self.name) != self.name:
            raise ValueError(f"StudyConfig.name={self.name!r}: use letters, digits, '-', '_' or '.' (it names a folder)")
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


# ---- search space (module level: OptunaSearch pickles it with its state) ------------------------------


class SearchSpace:
    """Define-by-run Optuna space over the study's choices; returns the constants of the trial."""

    def __init__(self, cfg: StudyConfig):
        self.schemes, self.n_tokens, self.depths = list(cfg.schemes), list(cfg.n_tokens), list(cfg.depths)
        self.projections, self.combines, self.lr_range = list(cfg.projections), list(cfg.combines), cfg.lr_range
        self.seed = cfg.seeds[0]

    def __call__(self, trial) -> dict:
        trial.suggest_categorical("scheme", self.schemes)
        trial.suggest_categorical("n_tokens", self.n_tokens)
        if self.depths:
            trial.suggest_categorical("depth", self.depths)
        trial.suggest_categorical("projection", self.projections)
        if len(self.combines) > 1:
            trial.suggest_categorical("combine", self.combines)
        trial.suggest_float("lr", self.lr_range[0], self.lr_range[1], log=True)
        return {"seed": self.seed}


# ---- partitions ---------------------------------------------------------------------------------------


def plan_partitions(cfg: StudyConfig, folder: Location) -> dict[str, str]:
    """The partition of every (scheme, seed), computed once and kept in folder/partitions.json."""
    from .affinity import AffinityConfig, task_affinity
    from .grouping import best_partition, fixed_partition
    from .runspec import load_run_backbone, load_run_tasks

    path = folder / "partitions.json"
    saved = json.loads(path.read_text()) if path.exists() else {"partitions": {}, "affinity": {}}
    needed = [(s, seed) for s in cfg.schemes for seed in cfg.seeds if f"{s}/{seed}" not in saved["partitions"]]
    if needed:
        backbone = load_run_backbone(cfg.run)
        tasks = load_run_tasks(cfg.run, backbone)
        names = [t.name for t in tasks]
        for scheme, seed in needed:
            if scheme in AFFINITY_SCHEMES:
                acfg = AffinityConfig(scheme, cfg.affinity_warmup_steps, cfg.affinity_steps, cfg.batch_size, seed=seed)
                affinity = task_affinity(backbone, tasks, acfg)
                saved["affinity"][f"{scheme}/{seed}"] = {"tasks": names, "matrix": affinity.tolist()}
                partition = best_partition(affinity, names, cfg.k)
            else:
                partition = fixed_partition(scheme, names, cfg.k, seed)
            saved["partitions"][f"{scheme}/{seed}"] = str(partition)
        path.write_text(json.dumps(saved, indent=2) + "\n")
    return saved["partitions"]


def check_schemes(cfg: StudyConfig) -> None:
    bad = [s for s in cfg.schemes if s not in FIXED_SCHEMES + AFFINITY_SCHEMES and "|" not in s and "+" not in s]
    if bad:
        raise ValueError(f"StudyConfig.schemes has unknown {bad}; valid: {SCHEMES} or explicit partitions like 'A+B|C+D'")


# ---- the trial ----------------------------------------------------------------------------------------


def trial_run(config: dict) -> tuple[dict, TrainConfig]:
    """The run spec and train config of one trial, from its Tune config."""
    base = config["base"]
    seed = config["seed"]
    depth = config.get("depth")
    run = spec(
        base["run"],
        partition=base["partitions"][f"{config['scheme']}/{seed}"],
        n_tokens=config["n_tokens"],
        projection=config.get("projection", base["run"]["projection"]),
        combine=config.get("combine", base["run"]["combine"]),
        layers=f"0-{depth - 1}" if depth else base["run"]["layers"],
        seed=seed,
    )
    cfg = TrainConfig(**{**base["train"], "lr": config["lr"], "seed": seed})
    return run, cfg


def trial_driver(config: dict) -> None:
    """One Tune trial: a Ray Train run whose per-epoch reports reach Tune through TuneReportCallback."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from .distributed import WorkerSpec, fit_distributed

    run, cfg = trial_run(config)
    w = config["base"]["workers"]
    folder = location(config["base"]["study_dir"]) / "train" / tune.get_context().get_trial_id()
    fit_distributed(run, cfg, folder, WorkerSpec(**w), callbacks=[TuneReportCallback()])


# ---- results ------------------------------------------------------------------------------------------


def _history(study_dir: str, trial_id: str) -> list[dict]:
    """The metrics history in the trial's newest Ray Train checkpoint ([] before its first epoch)."""
    import io

    import torch

    from .distributed import RUN_NAME

    ckpts = (location(study_dir) / "train" / trial_id / RUN_NAME).dirs("checkpoint_*")
    if not ckpts:
        return []
    state = torch.load(io.BytesIO((ckpts[-1] / "state.pt").read_bytes()), map_location="cpu", weights_only=True)
    return state["history"]


def trial_rows(study: StudyConfig, trial, status: str, error: str = "") -> tuple[dict, list[dict]]:
    """The trial's Parquet row and its long per-epoch, per-task rows."""
    from .results import provenance

    run, cfg = trial_run(trial.config)
    history = _history(study.study_dir, trial.trial_id)
    last = history[-1] if history else {}
    tasks = [k.removeprefix("val/") for k in last if k.startswith("val/") and k != "val/mean"]
    wall = float((trial.last_result or {}).get("time_total_s", 0.0))
    w = trial.config["base"]["workers"]
    row = {
        "study": study.name,
        "trial_id": trial.trial_id,
        "status": status,
        "error": error,
        "early_stopped": status == "TERMINATED" and len(history) < cfg.epochs,
        "scheme": trial.config["scheme"],
        "partition": run["partition"],
        "k": study.k,
        "seed": run["seed"],
        "n_tokens": run["n_tokens"],
        "layers": str(run["layers"]),
        "projection": run["projection"],
        "combine": run["combine"],
        "lr": cfg.lr,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "dataset": run["dataset"],
        "model": run["model"],
        "pretrained": str(run["pretrained"]),
        "epochs_run": len(history),
        "trainable_params": last.get("trainable_params"),
        "total_params": last.get("total_params"),
        "val_mean_final": last.get("val/mean"),
        "val_mean_best": max((h["val/mean"] for h in history), default=None),
        "test_mean": last.get("test/mean"),
        "wall_s": wall,
        "device_hours": wall * w["workers"] * (w["gpus_per_worker"] or w["cpus_per_worker"]) / 3600,
        "device_kind": "gpu" if w["gpus_per_worker"] else "cpu",
        **{f"val_{t}_final": last.get(f"val/{t}") for t in tasks},
        **{f"val_{t}_best": max(h[f"val/{t}"] for h in history) for t in tasks},
        **{f"test_{t}": last.get(f"test/{t}") for t in tasks},
        **provenance(),
    }
    epochs = [
        {"trial_id": trial.trial_id, "epoch": h["epoch"], "task": t, "val_acc": h[f"val/{t}"], "train_loss": h["train_loss"],
         "test_acc": h.get(f"test/{t}")}  # fmt: skip
        for h in history
        for t in tasks + ["mean"]
    ]
    return row, epochs


def error_message(trial) -> str:
    """The causes in a failed trial's trace, innermost last ("TrainingFailedError: ... <- FloatingPointError: ...")."""
    import re

    path = Path(trial.error_file) if trial.error_file else None  # the driver's copy: written before the callback
    text = path.read_text(errors="replace") if path and path.is_file() else str(trial.get_error() or "")
    causes = list(dict.fromkeys(m.strip() for m in re.findall(r"^\s*(?:[\w.]+\.)?\w*(?:Error|Exception): .+$", text, re.M)))
    return " <- ".join(causes)[-2000:] or text[-2000:] or "unknown error (see the trial's error file)"


WRITE_FAILURES: list[StorageError] = []  # results the Tune driver could not write (this process)


def _parquet_callback(study: StudyConfig):
    from ray.tune import Callback

    from .results import EPOCHS, TRIALS, write_table

    class ParquetWriter(Callback):
        """Writes each finished trial's rows from the Tune driver (one file per trial, atomic)."""

        def _write(self, trial, status: str, error: str = "") -> None:
            row, epochs = trial_rows(study, trial, status, error)
            root = location(study.study_dir) / "results"
            try:
                write_table(root, TRIALS, row["scheme"], trial.trial_id, [row])
                if epochs:
                    write_table(root, EPOCHS, row["scheme"], trial.trial_id, epochs)
            except StorageError as e:  # Tune wraps it in a TuneError trace; run_study re-raises this one
                WRITE_FAILURES.append(e)
                raise

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._write(trial, "TERMINATED")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._write(trial, "ERROR", error_message(trial))

    return ParquetWriter()


# ---- running it ---------------------------------------------------------------------------------------


def max_concurrent(study: StudyConfig) -> int:
    """Trials that fit the cluster at once: each trial's workers reserve their own resources."""
    import ray

    if study.autoscale:  # the cluster grows while trials wait: let Tune queue them all (0 = no limit)
        return study.max_concurrent_trials or 0
    total = ray.cluster_resources()
    per_trial_cpu = study.workers_per_trial * study.cpus_per_worker + 0.01
    fits = math.floor(total.get("CPU", 0) / per_trial_cpu)
    if study.gpus_per_worker:
        fits = min(fits, math.floor(total.get("GPU", 0) / (study.workers_per_trial * study.gpus_per_worker)))
    return max(1, min(fits, study.max_concurrent_trials or fits))


def run_study(study: StudyConfig, resume: bool = False) -> str:
    """Run (or resume) the study; returns its results folder (a local path or a URI)."""
    from ray import tune
    from ray.tune.error import TuneError

    from .distributed import WorkerSpec, check_resources, ensure_ray

    check_schemes(study)
    worker = WorkerSpec(
        study.workers_per_trial, study.cpus_per_worker, study.gpus_per_worker, max_failures=1,
        extra_resources=dict(study.worker_resources), autoscale=study.autoscale,
    )  # fmt: skip
    folder = location(study.study_dir)
    check_reachable(folder, "StudyConfig.storage_path")
    ensure_ray()
    check_resources(worker, extra_cpus=0.01)  # fail now, not hang later
    (folder / "study.json").write_text(json.dumps(asdict(study), indent=2) + "\n")
    partitions = plan_partitions(study, folder)
    base = {
        "run": study.run,
        "train": asdict(TrainConfig(epochs=study.epochs, batch_size=study.batch_size, lr=study.lr)),
        "workers": asdict(worker),
        "partitions": partitions,
        "study_dir": study.study_dir,
    }
    trainable = tune.with_resources(trial_driver, {"cpu": 0.01})
    tune_dir = folder / "tune"
    if resume and (tune_dir / "tuner.pkl").exists():
        fs = tune_dir.ray_storage().get("storage_filesystem")
        tuner = tune.Tuner.restore(tune_dir.path, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs)
    else:
        tuner = tune.Tuner(trainable, **_tuner_args(study, base), run_config=tune.RunConfig(
            name="tune", **folder.ray_storage(), callbacks=[_parquet_callback(study)],
            failure_config=tune.FailureConfig(max_failures=0), verbose=1,
        ))  # fmt: skip
    WRITE_FAILURES.clear()
    try:
        tuner.fit()
    except TuneError:
        if WRITE_FAILURES:  # the study stopped because results could not be stored: say that, plainly
            raise WRITE_FAILURES[0] from None
        raise
    return (folder / "results").uri


def _tuner_args(study: StudyConfig, base: dict) -> dict:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    concurrency = max_concurrent(study)
    if study.mode == "compare":
        space = {
            "base": base,
            "scheme": tune.grid_search(list(study.schemes)),
            "seed": tune.grid_search(list(study.seeds)),
            "n_tokens": tune.grid_search(list(study.n_tokens)),
            "lr": study.lr,
        }
        if study.depths:
            space["depth"] = tune.grid_search(list(study.depths))
        return {"param_space": space, "tune_config": tune.TuneConfig(num_samples=1, max_concurrent_trials=concurrency)}

    import optuna
    from ray.tune.search.optuna import OptunaSearch

    if study.objective == "pareto":
        searcher = OptunaSearch(
            space=SearchSpace(study), metric=[METRIC, "trainable_params"], mode=["max", "min"],
            sampler=optuna.samplers.TPESampler(seed=study.seeds[0]),
        )  # fmt: skip
    else:
        searcher = OptunaSearch(
            space=SearchSpace(study), metric=METRIC, mode="max", sampler=optuna.samplers.TPESampler(seed=study.seeds[0])
        )
    scheduler = (
        ASHAScheduler(metric=METRIC, mode="max", time_attr="training_iteration", max_t=study.epochs, grace_period=study.grace_period)
        if study.asha
        else None
    )
    return {
        "param_space": {"base": base},
        "tune_config": tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=study.num_samples, max_concurrent_trials=concurrency
        ),
    }


def read_study_file(path: str | Path) -> dict:
    """The settings of a TOML study file (top-level keys are StudyConfig fields, [run] the run spec), checked."""
    import tomllib

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

