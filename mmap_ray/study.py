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
train and a resumed study reuses them.

Identity and resume. A trial is identified by what it trains: `config_id` (a hash of its canonical
configuration, partition resolved) and its seed (`mmap_ray.results`). The Tune driver writes one Parquet
file per (config_id, seed), and each trial's Ray Train run lives in `train/<config_id>-s<seed>/`. A study
owns its folder: starting one that exists is refused without --resume (or --overwrite, which moves it
aside); --resume checks that the stored settings (`study.json`) still hold, then builds a fresh Tuner for
the trials that have no finished row, and each continues from its own last checkpoint. Nothing is ever
unpickled from the study folder: Tune's own state files are written but never read back, checkpoints
are read with `weights_only=True`, and a resumed search tells Optuna the finished trials from their rows.
One driver at a time: a lock file in the study folder (`mmap_ray.lock`).
"""

from __future__ import annotations

import io
import itertools
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from .backbone import BackboneInfo
from .engine import TrainConfig
from .grouping import AFFINITY_SCHEMES, FIXED_SCHEMES
from .prompts import ResolvedLayers
from .results import _safe, canonical_json, config_id, row_key
from .runspec import did_you_mean, mmap_config, spec
from .storage import Location, StorageError, check_reachable, location, move_aside, resolve_storage

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


# ---- identity: the trials a study owes, and what each one is -----------------------------------------


def canonical(run: dict, train: dict, info: BackboneInfo) -> tuple[dict, ResolvedLayers]:
    """Everything that changes a trial's result but its seed, with defaults resolved (layers as indices)."""
    layers = mmap_config(run).resolve(info)
    run = {k: v for k, v in run.items() if k != "seed"}
    run.update(layers=None, text_layers=list(layers.text), vision_layers=list(layers.vision), source_dim=layers.source_dim)
    train = {k: v for k, v in train.items() if k not in NOT_IN_RESULT}
    return {"run": run, "train": train}, layers


def make_trial(base: dict, scheme: str, seed: int, n_tokens: int, depth: int | None, projection: str, combine: str,
               lr: float) -> dict:  # fmt: skip
    """One trial as plain data: its run spec, training settings, config_id and row key."""
    run = spec(
        base["run"], partition=base["partitions"][f"{scheme}/{seed}"], n_tokens=n_tokens, projection=projection,
        combine=combine, layers=f"0-{depth - 1}" if depth else base["run"]["layers"], seed=seed,
    )  # fmt: skip
    train = {**base["train"], "lr": lr, "seed": seed}
    config, layers = canonical(run, train, BackboneInfo(**base["info"]))
    cid = config_id(config)
    return {"key": row_key(cid, seed), "config_id": cid, "seed": seed, "scheme": scheme, "run": run, "train": train,
            "config": canonical_json(config), "layers": list(layers.union), "depth": len(layers.union)}  # fmt: skip


def grid_trials(study: StudyConfig, base: dict) -> list[dict]:
    """Compare mode: every scheme x prompt length x depth x seed, one trial per (config_id, seed).

    Schemes that chose the same partition for a seed (gradient and lookahead often do) are the same
    configuration: it is trained once, and its row names both schemes.
    """
    trials: dict[str, dict] = {}
    for scheme, n_tokens, depth, seed in itertools.product(study.schemes, study.n_tokens, study.depths or (None,), study.seeds):
        t = make_trial(base, scheme, seed, n_tokens, depth, study.projections[0], study.combines[0], study.lr)
        if t["key"] in trials:
            trials[t["key"]]["scheme"] += f", {scheme}"
        else:
            trials[t["key"]] = t
    return list(trials.values())


def trial_of(config: dict) -> dict:
    """The trial a Tune config stands for: given whole in compare mode, made from the sampled choices in search."""
    if "trial" in config:
        return config["trial"]
    base = config["base"]
    return make_trial(
        base, config["scheme"], base["search_seed"], config["n_tokens"], config.get("depth"),
        config.get("projection", base["projections"][0]), config.get("combine", base["combines"][0]), config["lr"],
    )  # fmt: skip


# ---- search space --------------------------------------------------------------------------------------


def search_space(cfg: StudyConfig) -> dict:
    """Optuna distributions over the study's choices (a fixed space, so finished trials can be told back)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    space = {"scheme": CategoricalDistribution(list(cfg.schemes)), "n_tokens": CategoricalDistribution(list(cfg.n_tokens))}
    if cfg.depths:
        space["depth"] = CategoricalDistribution(list(cfg.depths))
    space["projection"] = CategoricalDistribution(list(cfg.projections))
    if len(cfg.combines) > 1:
        space["combine"] = CategoricalDistribution(list(cfg.combines))
    space["lr"] = FloatDistribution(cfg.lr_range[0], cfg.lr_range[1], log=True)
    return space


def searcher(study: StudyConfig, done: pd.DataFrame):
    """OptunaSearch (TPE) whose Optuna study already holds the finished trials' results (a resumed search)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    space = search_space(study)
    metrics, modes = ([METRIC, "trainable_params"], ["max", "min"]) if study.objective == "pareto" else (METRIC, "max")
    storage = optuna.storages.InMemoryStorage()
    ot = optuna.create_study(storage=storage, study_name=study.name, directions=["maximize", "minimize"]
                             if study.objective == "pareto" else ["maximize"])  # fmt: skip
    for row in done.to_dict("records"):
        params = {k: row[k] for k in space if k != "depth" or row.get("depth") is not None}
        values = [row["val_mean_final"]] + ([row["trainable_params"]] if study.objective == "pareto" else [])
        if all(v is not None and v == v for v in values):  # failed trials: nothing to tell
            ot.add_trial(optuna.trial.create_trial(params=params, distributions=space, values=values))
    return OptunaSearch(space=space, metric=metrics, mode=modes, storage=storage, study_name=study.name,
                        sampler=optuna.samplers.TPESampler(seed=study.seeds[0] + len(done)))  # fmt: skip


# ---- partitions ---------------------------------------------------------------------------------------


def plan_partitions(cfg: StudyConfig, folder: Location) -> tuple[dict[str, str], BackboneInfo, list[str]]:
    """The partition of every (scheme, seed), computed once and kept in folder/partitions.json; the
    backbone's geometry and the task names."""
    from .affinity import AffinityConfig, task_affinity
    from .grouping import best_partition, fixed_partition
    from .runspec import load_run_backbone, load_run_tasks

    path = folder / "partitions.json"
    saved = json.loads(path.read_text()) if path.exists() else {"partitions": {}, "affinity": {}}
    backbone = load_run_backbone(cfg.run)
    tasks = load_run_tasks(cfg.run, backbone)
    names = [t.name for t in tasks]
    seeds = cfg.seeds if cfg.mode == "compare" else cfg.seeds[:1]
    needed = [(s, seed) for s in cfg.schemes for seed in seeds if f"{s}/{seed}" not in saved["partitions"]]
    for scheme, seed in needed:
        if scheme in AFFINITY_SCHEMES:
            acfg = AffinityConfig(scheme, cfg.affinity_warmup_steps, cfg.affinity_steps, cfg.batch_size, seed=seed)
            affinity = task_affinity(backbone, tasks, acfg)
            saved["affinity"][f"{scheme}/{seed}"] = {"tasks": names, "matrix": affinity.tolist()}
            partition = best_partition(affinity, names, cfg.k)
        else:
            partition = fixed_partition(scheme, names, cfg.k, seed)
        saved["partitions"][f"{scheme}/{seed}"] = str(partition)
    if needed:
        path.write_text(json.dumps(saved, indent=2) + "\n")
    return saved["partitions"], backbone.info, names


def check_schemes(cfg: StudyConfig) -> None:
    bad = [s for s in cfg.schemes if s not in FIXED_SCHEMES + AFFINITY_SCHEMES and "|" not in s and "+" not in s]
    if bad:
        raise ValueError(f"StudyConfig.schemes has unknown {bad}; valid: {SCHEMES} or explicit partitions like 'A+B|C+D'")


# ---- the trial ----------------------------------------------------------------------------------------


def trial_driver(config: dict) -> None:
    """One Tune trial: a Ray Train run whose per-epoch reports reach Tune through TuneReportCallback.

    The Train run's folder is named after the trial's identity (config_id and seed), so a trial that is
    run again (a resumed study, a retried failure) continues from its last checkpoint.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    from .distributed import WorkerSpec, fit_distributed

    trial = trial_of(config)
    base = config["base"]
    folder = location(base["study_dir"]) / "train" / trial["key"]
    fit_distributed(trial["run"], TrainConfig(**trial["train"]), folder, WorkerSpec(**base["workers"]),
                    callbacks=[TuneReportCallback()])  # fmt: skip


# ---- results ------------------------------------------------------------------------------------------


def _history(study_dir: str, key: str) -> list[dict]:
    """The metrics history in the trial's newest Ray Train checkpoint ([] before its first epoch)."""
    from . import checkpoint
    from .distributed import RUN_NAME

    ckpts = (location(study_dir) / "train" / key / RUN_NAME).dirs("checkpoint_*")
    if not ckpts:
        return []
    return checkpoint.load(ckpts[-1] / checkpoint.STATE_FILE)["history"]  # local or object storage; validated


def trial_rows(study: StudyConfig, tasks: list[str], config: dict, trial_id: str, wall: float, status: str,
               error: str = "") -> tuple[dict, list[dict]]:  # fmt: skip
    """The trial's Parquet row and its long per-epoch, per-task rows."""
    from .results import provenance

    t = trial_of(config)
    run, train = t["run"], t["train"]
    history = _history(study.study_dir, t["key"])
    last = history[-1] if history else {}
    w = config["base"]["workers"]
    ident = {"study": study.name, "config_id": t["config_id"], "seed": t["seed"], "trial_id": trial_id}
    row = {
        **ident, "status": status, "error": error,
        "early_stopped": status == "TERMINATED" and len(history) < train["epochs"],
        "scheme": t["scheme"], "partition": run["partition"], "k": study.k, "n_tokens": run["n_tokens"],
        "depth": t["depth"], "layers": t["layers"], "projection": run["projection"], "combine": run["combine"],
        "lr": train["lr"], "epochs": train["epochs"], "batch_size": train["batch_size"], "dataset": run["dataset"],
        "model": run["model"], "pretrained": str(run["pretrained"]), "data_seed": run["data_seed"],
        "epochs_run": len(history), "trainable_params": last.get("trainable_params"),
        "total_params": last.get("total_params"), "val_mean_final": last.get("val/mean"),
        "val_mean_best": max((h["val/mean"] for h in history), default=None), "test_mean": last.get("test/mean"),
        "wall_s": wall, "device_hours": wall * w["workers"] * (w["gpus_per_worker"] or w["cpus_per_worker"]) / 3600,
        "device_kind": "gpu" if w["gpus_per_worker"] else "cpu",
        **{f"val_{n}_final": last.get(f"val/{n}") for n in tasks},
        **{f"val_{n}_best": max((h[f"val/{n}"] for h in history), default=None) for n in tasks},
        **{f"test_{n}": last.get(f"test/{n}") for n in tasks},
        **provenance(), "config": t["config"],
    }  # fmt: skip
    epochs = [
        {**ident, "epoch": h["epoch"], "task": n, "val_acc": h[f"val/{n}"], "train_loss": h["train_loss"],
         "test_acc": h.get(f"test/{n}")}  # fmt: skip
        for h in history
        for n in tasks + ["mean"]
    ]
    return row, epochs


def error_message(trial) -> str:
    """The causes in a failed trial's trace, innermost last ("TrainingFailedError: ... <- FloatingPointError: ...")."""
    import re

    path = Path(trial.error_file) if trial.error_file else None  # the driver's copy: written before the callback
    text = path.read_text(errors="replace") if path and path.is_file() else str(trial.get_error() or "")
    causes = list(dict.fromkeys(m.strip() for m in re.findall(r"^\s*(?:[\w.]+\.)?\w*(?:Error|Exception): .+$", text, re.M)))
    return " <- ".join(causes)[-2000:] or text[-2000:] or "unknown error (see the trial's error file)"


def _parquet_callback(study: StudyConfig, tasks: list[str], failures: list[StorageError]):
    from ray.tune import Callback

    from .results import EPOCH_SCHEMA, EPOCHS, TRIALS, trial_schema, write_table

    class ParquetWriter(Callback):
        """Writes each finished trial's rows from the Tune driver: one file per (config_id, seed), atomic."""

        def _write(self, trial, status: str, error: str = "") -> None:
            wall = float((trial.last_result or {}).get("time_total_s", 0.0))
            row, epochs = trial_rows(study, tasks, trial.config, trial.trial_id, wall, status, error)
            root = location(study.study_dir) / "results"
            key = row_key(row["config_id"], row["seed"])
            try:
                if epochs:
                    write_table(root, EPOCHS, key, epochs, EPOCH_SCHEMA)
                write_table(root, TRIALS, key, [row], trial_schema(tasks))  # last: a row means its curves exist
            except StorageError as e:  # Tune wraps it in a TuneError trace; run_study re-raises this one
                failures.append(e)
                raise

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._write(trial, "TERMINATED")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._write(trial, "ERROR", error_message(trial))

    return ParquetWriter()


# ---- running it ---------------------------------------------------------------------------------------


class Interrupted(Exception):
    """The study stopped before every trial had a result (Ctrl-C, or the driver was told to stop)."""

    def __init__(self, done: int, total: int):
        super().__init__(f"interrupted: {done} of {total} trials have results; continue with --resume")
        self.done, self.total = done, total


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


def stored_rows(folder: Location) -> pd.DataFrame:
    """The study's trial rows so far (empty when there are none)."""
    from .results import TRIALS, load

    try:
        return load(folder / "results", TRIALS)
    except ValueError:
        if (folder / "results" / TRIALS).glob("*.parquet"):
            raise  # rows exist but cannot be read (a newer schema): say so
        return pd.DataFrame()


def settings_diff(stored: dict, study: StudyConfig) -> list[str]:
    """The trial-defining settings that differ between a stored study.json and `study`."""
    now = json.loads(json.dumps(asdict(study)))  # tuples as lists, as they were stored
    keys = sorted((set(stored) | set(now)) - set(RESUME_MAY_CHANGE))
    return [f"{k}: stored {stored.get(k)!r}, now {now.get(k)!r}" for k in keys if stored.get(k) != now.get(k)]


def check_start(study: StudyConfig, folder: Location, resume: bool, overwrite: bool) -> None:
    """Refuse a start that would mix two studies in one folder, before anything is written."""
    meta = folder / "study.json"
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: choose one")
    if not meta.exists():
        if resume:
            raise ValueError(f"--resume: there is no study {study.name!r} in {folder.parent} to resume (no {meta}); "
                             f"start it without --resume")  # fmt: skip
        return
    if resume:
        try:
            stored = json.loads(meta.read_text())
        except ValueError:
            raise ValueError(f"--resume: {meta} is not valid JSON; it is not a study this version can resume") from None
        diff = settings_diff(stored, study)
        if diff:
            raise ValueError(
                f"--resume: these settings differ from the stored study ({meta}): {'; '.join(diff)}. Rerun with "
                f"the original settings, or start a new study with another --name"
            )
    elif not overwrite:
        n = len(stored_rows(folder))
        raise ValueError(
            f"study {study.name!r} already exists in {folder.parent} with {n} trial result{'s' * (n != 1)}; continue "
            f"it with --resume, choose another --name, or pass --overwrite to move it aside (nothing is deleted)"
        )


SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")


def keep_secrets_out_of_trials() -> None:
    """Tune copies the driver's AWS_* variables into every trial actor's runtime environment, which Ray's
    session logs print in plain text. Stop that: a local Ray's workers inherit the driver's environment
    anyway, and cluster nodes take credentials from their own environment (instance roles, node env)."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE.difference_update(SECRET_ENV)


def run_study(study: StudyConfig, resume: bool = False, overwrite: bool = False, break_lock: bool = False,
              log=print) -> str:  # fmt: skip
    """Run (or resume) the study; returns its results folder (a local path or a URI).

    Raises `Interrupted` when the study ended before every trial had a result.
    """
    from ray import tune
    from ray.tune.error import TuneError

    from .distributed import WorkerSpec, check_resources, ensure_ray, warn_unshared_storage
    from .lock import acquire

    check_schemes(study)
    worker = WorkerSpec(
        study.workers_per_trial, study.cpus_per_worker, study.gpus_per_worker, max_failures=1,
        extra_resources=dict(study.worker_resources), autoscale=study.autoscale,
    )  # fmt: skip
    folder = location(study.study_dir)
    check_reachable(folder, "StudyConfig.storage_path")
    check_start(study, folder, resume, overwrite)
    if overwrite and folder.exists():
        acquire(folder, break_lock).release()  # the old study must not be in use while it is moved
        moved = move_aside(folder, "old-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
        log(f"moved the earlier study {study.name!r} aside to {moved}")
    with acquire(folder, break_lock):
        log(f"study {study.name!r}: {folder}")
        keep_secrets_out_of_trials()
        ensure_ray()
        check_resources(worker, extra_cpus=0.01)  # fail now, not hang later
        warn_unshared_storage(folder, log)
        if not resume:
            (folder / "study.json").write_text(json.dumps(asdict(study), indent=2) + "\n")
        partitions, info, tasks = plan_partitions(study, folder)
        base = {
            "run": study.run, "train": asdict(TrainConfig(epochs=study.epochs, batch_size=study.batch_size, lr=study.lr)),
            "workers": asdict(worker), "partitions": partitions, "study_dir": study.study_dir, "info": asdict(info),
            "search_seed": study.seeds[0], "projections": list(study.projections), "combines": list(study.combines),
        }  # fmt: skip
        rows = stored_rows(folder)
        finished = rows[rows["status"] == "TERMINATED"] if len(rows) else rows
        if study.mode == "compare":
            planned = grid_trials(study, base)
            have = {row_key(c, s) for c, s in zip(finished.get("config_id", []), finished.get("seed", []))}
            todo = [t for t in planned if t["key"] not in have]
            total, args = len(planned), _compare_args(study, base, todo)
        else:
            total, todo = study.num_samples, range(study.num_samples - len(finished))
            args = _search_args(study, base, len(todo), finished)
        if resume:
            log(f"resuming: {total - len(todo)} of {total} trials have results; running {len(todo)}")
        failures: list[StorageError] = []
        if todo:
            tuner = tune.Tuner(
                tune.with_resources(trial_driver, {"cpu": 0.01}), **args,
                run_config=tune.RunConfig(
                    name=time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), **(folder / "tune").ray_storage(),
                    callbacks=[_parquet_callback(study, tasks, failures)],
                    failure_config=tune.FailureConfig(max_failures=0), verbose=1,
                ),
            )  # fmt: skip
            try:
                tuner.fit()
            except TuneError:
                if failures:  # the study stopped because results could not be stored: say that, plainly
                    raise failures[0] from None
                raise
        done = len(stored_rows(folder))
        if done < total:
            raise Interrupted(done, total)
    return (folder / "results").uri


def _compare_args(study: StudyConfig, base: dict, todo: list[dict]) -> dict:
    from ray import tune

    space = {"base": base, "trial": tune.grid_search(todo)}
    return {"param_space": space, "tune_config": tune.TuneConfig(num_samples=1, max_concurrent_trials=max_concurrent(study))}


def _search_args(study: StudyConfig, base: dict, remaining: int, finished: pd.DataFrame) -> dict:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    scheduler = (
        ASHAScheduler(metric=METRIC, mode="max", time_attr="training_iteration", max_t=study.epochs, grace_period=study.grace_period)
        if study.asha
        else None
    )
    return {
        "param_space": {"base": base},
        "tune_config": tune.TuneConfig(search_alg=searcher(study, finished), scheduler=scheduler,
                                       num_samples=remaining, max_concurrent_trials=max_concurrent(study)),
    }  # fmt: skip


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

