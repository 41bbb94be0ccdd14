"""Running a study on Ray Tune: one driver, a fresh Tuner per run; a trial trains in its own process
with one worker (`in_trial`) and as a Ray Train run with several.

`run_study` checks everything it can before it claims any resource (storage reachable, the folder's
ownership rules, the lock, the cluster's size), plans the partitions and the trials, and hands Tune
only the trials without a finished row. Every trial's run lives in `train/<config_id>-s<seed>/`,
so a trial run again continues from its last checkpoint. Tune's own state files are written but never
read back: resuming never unpickles anything from the study folder.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time

import pandas as pd

from .. import checkpoint
from ..config import RunConfig
from ..distributed import RUN_NAME, WorkerSpec
from ..fields import to_dict
from ..lock import acquire
from ..results import row_key
from ..storage import Location, StorageError, check_reachable, location, move_aside
from .callback import parquet_writer
from .config import METRIC, StudyConfig
from .in_trial import fit_in_trial, trial_resources
from .ownership import check_start, stored_rows
from .partitions import check_tasks, plan_partitions, record_partition, saved_partitions
from .race import RACE, RaceFailed, race_partition
from .sigterm import stop_on_sigterm
from .tracking import check_tracking, tracking_callbacks, tracking_lines
from .trials import Plan, Trial, grid_trials, searcher, trial_of

TRIAL_DRIVER_CPU = 0.01  # a Ray Train trial's own reservation; its Train workers reserve theirs
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")


class Interrupted(Exception):
    """The study stopped before every trial had a result (Ctrl-C, or the driver was told to stop)."""

    def __init__(self, done: int, total: int):
        super().__init__(f"interrupted: {done} of {total} trials have results; continue with --resume")
        self.done, self.total = done, total


class Interrupt:
    """Ctrl-C during a study: the first one stops the trials cleanly (a Tune stopper ends the experiment
    and unfinished trials get no row); a second one stops at once. Tune's own SIGINT handler is off:
    it would end the run as if it had finished. While it is active, Tune also uses its console table
    that takes chosen columns (`status_table`)."""

    def __init__(self) -> None:
        self.requested = False

    # Tune's own SIGINT handler off; its legacy console output on, the one that takes our status columns; its
    # traceback for each failed trial off (the study says one line per failure: callback.parquet_writer)
    ENV = {"TUNE_DISABLE_SIGINT_HANDLER": "1", "RAY_AIR_NEW_OUTPUT": "0", "TUNE_PRINT_ALL_TRIAL_ERRORS": "0"}

    def __enter__(self) -> Interrupt:
        self._saved = signal.signal(signal.SIGINT, self._handle)
        self._env = {k: os.environ.get(k) for k in self.ENV}
        os.environ.update(self.ENV)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._saved)
        for k, v in self._env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: KeyboardInterrupt
        print("stopping the study's trials (Ctrl-C again to quit at once)", file=sys.stderr, flush=True)

    def stopper(self, failures: list[StorageError] | None = None):
        """Tune's stopper: every trial stops once the study is interrupted or a result could not be stored."""
        from ray import tune

        interrupt = self

        class StopOnInterrupt(tune.Stopper):
            def __call__(self, trial_id: str, result: dict) -> bool:
                return False

            def stop_all(self) -> bool:
                return interrupt.requested or bool(failures)

        return StopOnInterrupt()


def trial_driver(config: dict, plan: Plan) -> None:
    """One Tune trial: with one worker, the run trains in this process (`in_trial`); with more, it is a
    Ray Train run whose per-epoch reports reach Tune through TuneReportCallback."""
    trial = trial_of(config, plan)
    fit_trial(trial.run, location(plan.study.study_dir) / "train" / trial.key, plan.study.resources)


def fit_trial(run: RunConfig, folder: Location, spec: WorkerSpec) -> None:
    """Train a Tune trial's run in `folder`: in this process with one worker, with Ray Train with more."""
    if spec.workers == 1:
        fit_in_trial(run, folder, spec)
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    from ..distributed import fit_distributed

    fit_distributed(run, folder, spec, callbacks=[TuneReportCallback()])


def driver_cpu(spec: WorkerSpec) -> float:
    """CPUs a trial reserves beyond its workers': none when it trains in process (it is the worker)."""
    return TRIAL_DRIVER_CPU if spec.workers > 1 else 0.0


def status_table(study: StudyConfig):
    """Tune's console table with the columns a researcher scans, not the whole base configuration."""
    from ray.tune import CLIReporter

    if study.mode == "compare":  # the planned trial travels whole in the config
        keys = ("scheme", "partition", "run/prompts/n_tokens", "depth", "seed")
        params = {f"trial/{k}": k.rsplit("/", 1)[-1] for k in keys}
    else:
        params = {k: k for k in ("scheme", "n_tokens", "depth", "projection", "lr")}
    metrics = {"epoch": "epoch", "train_loss": "loss", "val/mean": "val acc"}
    # print_intermediate_tables explicitly: Tune's default reads its global verbosity, which the first Tuner in a
    # process lowers, so a study's later Tuners (the trials after a race, a second study) printed no table
    return CLIReporter(
        parameter_columns=params,
        metric_columns=metrics,
        max_column_length=40,
        max_report_frequency=30,
        print_intermediate_tables=True,
    )


def max_concurrent(study: StudyConfig) -> int:
    """Trials that fit the cluster at once: each trial's workers reserve their own resources."""
    import ray

    res = study.resources
    if res.autoscale:  # the cluster grows while trials wait: let Tune queue them all (0 = no limit)
        return study.max_concurrent_trials or 0
    total = ray.cluster_resources()
    per_trial_cpu = res.workers * res.cpus_per_worker + driver_cpu(study.resources)
    fits = math.floor(total.get("CPU", 0) / per_trial_cpu)
    if res.gpus_per_worker:
        fits = min(fits, math.floor(total.get("GPU", 0) / (res.workers * res.gpus_per_worker)))
    return max(1, min(fits, study.max_concurrent_trials or fits))


def keep_secrets_out_of_trials() -> None:
    """Tune copies the driver's AWS_* variables into every trial actor's runtime environment, which Ray's
    session logs print in plain text. Stop that: a local Ray's workers inherit the driver's environment
    anyway, and cluster nodes take credentials from their own environment (instance roles, node env)."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE.difference_update(SECRET_ENV)


def run_study(
    study: StudyConfig,
    resume: bool = False,
    overwrite: bool = False,
    break_lock: bool = False,
    log=print,
    exit_on_sigterm: bool = False,
) -> str:
    """Run (or resume) the study; returns its results folder (a local path or a URI).

    Raises `Interrupted` when the study ended before every trial had a result. With `exit_on_sigterm` (the
    command-line driver), SIGTERM ends the process at once in one line (`study/sigterm.py`); a library caller
    keeps its own SIGTERM handling.
    """
    from ..distributed import check_resources, ensure_ray, warn_unshared_storage

    folder = location(study.study_dir)
    check_reachable(location(study.storage), "StudyConfig.storage")
    check_start(study, folder, resume, overwrite)
    if resume:
        saved_partitions(folder / "partitions.json")  # a damaged one is named now, not after the lock and Ray
    check_tasks(study)  # everything that can be checked is, before the lock, Ray or study.json
    check_tracking(study.tracking, folder)
    if overwrite and folder.exists():
        acquire(folder, break_lock).release()  # the old study must not be in use while it is moved
        moved = move_aside(folder, "old-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
        log(f"moved the earlier study {study.name!r} aside to {moved}")
    with acquire(folder, break_lock) as lock, stop_on_sigterm(study, lock, exit_on_sigterm) as on_sigterm:
        log(f"study {study.name!r}: {folder}")
        for line in tracking_lines(study.tracking, study.name, folder):
            log(line)
        keep_secrets_out_of_trials()
        ensure_ray()
        if on_sigterm is not None:
            signal.signal(signal.SIGTERM, on_sigterm)  # ray.init installed its own (sys.exit, then an abort)
        check_resources(study.resources, extra_cpus=driver_cpu(study.resources))  # fail now, not hang later
        warn_unshared_storage(folder, log)
        if not resume:
            (folder / "study.json").write_text(json.dumps(to_dict(study), indent=2) + "\n")
        check_writable(folder / "results")
        partitions, info, tasks = plan_partitions(study, folder)
        plan = Plan(study, partitions, info)
        if resume:
            set_aside_unreadable_checkpoints(folder, log)
        _race(plan, tasks, folder, log)
        total, interrupted = _run_trials(plan, tasks, resume, log)
        done = len(stored_rows(folder))
        if interrupted or done < total:
            raise Interrupted(done, total)
    return (folder / "results").uri


def check_writable(results: Location) -> None:
    """Write and delete a small file in the results folder: one that takes no rows (read-only, a full disk, a
    bucket without write access) fails the study now, naming it, not after its first trial has trained."""
    probe = results / ".write-check"
    probe.write_bytes(b"")
    try:
        probe.filesystem().delete_file(probe.path)
    except OSError as e:
        raise StorageError(f"cannot delete {probe.uri}: {e.strerror or e}") from e


def finished_rows(folder: Location) -> pd.DataFrame:
    """The study's rows of trials that finished (status TERMINATED): what a resume does not run again."""
    rows = stored_rows(folder)
    return rows[rows["status"] == "TERMINATED"] if len(rows) else rows


def finished_keys(finished: pd.DataFrame) -> set[str]:
    """The `<config_id>-s<seed>` names of finished rows (their files' and train folders' names)."""
    return {row_key(c, s) for c, s in zip(finished.get("config_id", []), finished.get("seed", []))}


def set_aside_unreadable_checkpoints(folder: Location, log) -> None:
    """On --resume: the unfinished trials' newest checkpoints that do not load (the reason their trial
    failed) move aside, so each trial continues from its newest good checkpoint or from scratch."""
    done = finished_keys(finished_rows(folder))
    for run in (folder / "train").dirs() if (folder / "train").is_dir() else []:
        if run.name in done:
            continue
        for moved, why in checkpoint.set_aside_unreadable(run / RUN_NAME):
            log(f"note: {why}; moved it aside to {moved}, the trial continues from an earlier checkpoint or afresh")


def _race(plan: Plan, tasks: list[str], folder: Location, log) -> None:
    """Decide the `race` scheme's partition of every seed that has none yet (study/race.py), under the same
    Ctrl-C handling as the trials: an interrupted race records nothing, and --resume races again."""
    study = plan.study
    for seed in study.seeds if RACE in study.schemes else ():
        if f"{RACE}/{seed}" in plan.partitions:
            continue
        resources = trial_resources(study.resources, driver_cpu(study.resources))
        with Interrupt() as interrupt:
            args = (trial_driver, resources, max_concurrent(study), status_table(study), interrupt.stopper(), log)
            try:
                won, seconds = race_partition(study, plan, tasks, seed, folder, *args)
            except RaceFailed:
                if not interrupt.requested:
                    raise
        if interrupt.requested:
            raise KeyboardInterrupt
        plan.partitions[f"{RACE}/{seed}"] = won
        record_partition(folder, f"{RACE}/{seed}", won, seconds)


def _run_trials(plan: Plan, tasks: list[str], resume: bool, log) -> tuple[int, bool]:
    """Fit a fresh Tuner over the trials without a finished row; returns (trials owed, interrupted?)."""
    from ray import tune
    from ray.tune.error import TuneError

    study = plan.study
    folder = location(study.study_dir)
    finished = finished_rows(folder)
    if study.mode == "compare":
        planned = grid_trials(study, plan)
        have = finished_keys(finished)
        todo = [t for t in planned if t.key not in have]
        total, n, args = len(planned), len(todo), _compare_args(study, todo)
    else:
        total, n = study.num_samples, study.num_samples - len(finished)
        args = _search_args(study, n, finished)
    if resume:
        log(f"resuming: {total - n} of {total} trials have results; running {n}")
    if n <= 0:
        return total, False
    failures: list[StorageError] = []
    resources = trial_resources(study.resources, driver_cpu(study.resources))
    trainable = tune.with_resources(tune.with_parameters(trial_driver, plan=plan), resources)
    # in process, Tune retries a failed trial (from its newest checkpoint); Ray Train retries its own workers
    retries = study.resources.max_failures if study.resources.workers == 1 else 0
    with Interrupt() as interrupt:
        tuner = tune.Tuner(
            trainable,
            **args,
            run_config=tune.RunConfig(
                name=time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
                **(folder / "tune").ray_storage(),
                callbacks=[
                    parquet_writer(study, plan, tasks, failures, interrupt, log),
                    *tracking_callbacks(study.tracking, study.name, folder, plan),
                ],
                stop=interrupt.stopper(failures),
                progress_reporter=status_table(study),
                failure_config=tune.FailureConfig(max_failures=retries),
                verbose=1,
            ),
        )
        try:
            tuner.fit()
        except TuneError:
            if not failures:
                raise
        if failures:  # results could not be stored: the writer's stopper ended the study; say that, plainly
            raise failures[0]
    return total, interrupt.requested


def _compare_args(study: StudyConfig, todo: list[Trial]) -> dict:
    from ray import tune

    concurrency = max_concurrent(study)
    return {
        "param_space": {"trial": tune.grid_search([t.to_tune() for t in todo])},  # plain data across Tune
        # reuse_actors: a trial's process (torch imported, the toy CLIP read) serves the next trial
        "tune_config": tune.TuneConfig(num_samples=1, max_concurrent_trials=concurrency, reuse_actors=True),
    }


def _search_args(study: StudyConfig, remaining: int, finished: pd.DataFrame) -> dict:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    scheduler = None
    if study.asha:
        scheduler = ASHAScheduler(
            metric=METRIC,
            mode="max",
            time_attr="training_iteration",
            max_t=study.run.train.epochs,
            grace_period=study.grace_period,
        )
    return {
        "tune_config": tune.TuneConfig(
            search_alg=searcher(study, finished),
            scheduler=scheduler,
            num_samples=remaining,
            max_concurrent_trials=max_concurrent(study),
            reuse_actors=True,
        )
    }
