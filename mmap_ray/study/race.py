"""The `race` scheme: choose a grouping by racing every candidate partition as a real trial.

For each seed, every partition of the tasks (with `k` groups when the study sets k) starts as a Tune trial of
the study's own run, and Tune's ASHA scheduler (successive halving, reduction factor 2) stops the weaker half
on validation accuracy at each rung until the last rung; the partition with the best validation accuracy among
the trials that got furthest wins. ASHA is asynchronous, so with several trials at once more than one may reach
the last epoch; the winner is still one partition, chosen on validation data only.

The race trains the same runs the study trains (`trial_driver`, the same `train/<config_id>-s<seed>/` folders):
the winner's trial then resumes from its finished checkpoint in the study's grid instead of training again, and
in an oracle study every stopped partition continues from where the race left it. The race writes no result
row. Its cost, in `partitions.json`'s seconds, is the race trials' summed training seconds: the same unit as
the oracle's training seconds, so the report's "choosing / oracle" compares like with like.
"""

from __future__ import annotations

import dataclasses
import math
import time

from ..grouping import set_partitions
from ..storage import Location
from .config import METRIC, StudyConfig
from .trials import Plan, make_trial

RACE = "race"


class RaceFailed(RuntimeError):
    """No race trial produced a validation accuracy (every one failed, or the race was interrupted first)."""


def race_grace(epochs: int, candidates: int) -> int:
    """The first rung: halving `candidates` down to one takes ceil(log2(candidates)) rungs, each doubling the
    epochs, so the first is at epochs / 2^rungs (at least 1)."""
    rungs = math.ceil(math.log2(max(candidates, 2)))
    return max(1, epochs // 2**rungs)


def race_partition(
    study: StudyConfig,
    plan: Plan,
    tasks: list[str],
    seed: int,
    folder: Location,
    trial_driver,
    resources: dict[str, float],
    concurrency: int,
    reporter,
    stop,
    log=print,
) -> tuple[str, float]:
    """Race the candidate partitions of `tasks` for `seed` as Tune trials of `trial_driver` (the study's own,
    with `resources` per trial, `concurrency` at once, `reporter` on the console, `stop` the study's Ctrl-C
    stopper); returns the winner and the race's trial-seconds."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    candidates = [str(p) for p in set_partitions(tasks, study.k)]
    race_plan = dataclasses.replace(plan, partitions={**plan.partitions, **{f"{p}/{seed}": p for p in candidates}})
    trials = [make_trial(race_plan, p, seed).to_tune() for p in candidates]  # the study's run, each partition
    epochs = study.run.train.epochs
    grace = race_grace(epochs, len(candidates))
    log(f"race (seed {seed}): {len(candidates)} partitions, halved by ASHA from epoch {grace} to {epochs}")
    start = time.perf_counter()
    scheduler = ASHAScheduler(
        metric=METRIC, mode="max", time_attr="training_iteration", max_t=epochs, grace_period=grace, reduction_factor=2
    )
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trial_driver, plan=race_plan), resources),
        param_space={"trial": tune.grid_search(trials)},
        tune_config=tune.TuneConfig(
            scheduler=scheduler, num_samples=1, max_concurrent_trials=concurrency, reuse_actors=True
        ),
        run_config=tune.RunConfig(
            name=f"race-s{seed}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}",
            **(folder / "tune").ray_storage(),
            progress_reporter=reporter,
            stop=stop,
            verbose=1,
        ),
    )
    results = [r for r in tuner.fit() if r.metrics and METRIC in r.metrics]
    if not results:
        raise RaceFailed(
            f"the race for seed {seed} produced no validation accuracy: see the trials' errors in {folder / 'tune'}"
        )
    furthest = max(r.metrics["training_iteration"] for r in results)
    winner = max(
        (r for r in results if r.metrics["training_iteration"] == furthest),
        key=lambda r: (r.metrics[METRIC], r.config["trial"]["partition"]),
    )
    seconds = sum(float(r.metrics.get("time_total_s", 0.0)) for r in results)
    won = winner.config["trial"]["partition"]
    log(f"race (seed {seed}): {won} won after {time.perf_counter() - start:.0f} s ({seconds:.0f} trial-seconds)")
    return won, seconds
