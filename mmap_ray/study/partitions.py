"""Partition planning: the task groups of every (scheme, seed), computed once per study, before any trial.

Affinity schemes (tag over a joint run of the study's own schedule; the gradient and lookahead probes; the
training-free proxies) measure task affinity on one shared MmAP of the study's prompt design, through
`affinity.plan_partition`, the same function as `mmap-ray group`; fixed schemes (single, independent,
random, an explicit partition) need no training. The result, with the affinity
matrices, is kept in the study folder (`partitions.json`, plain JSON), so trials only train and a
resumed study reuses the same partitions.
"""

from __future__ import annotations

import json
import time

from ..backbone import BackboneInfo
from ..grouping import AFFINITY_SCHEMES
from ..parse import parse_partitions
from ..storage import Location
from .config import StudyConfig


def check_tasks(cfg: StudyConfig) -> list[str]:
    """The study's task names, with every scheme checked against them (k <= tasks, an explicit partition
    names exactly these tasks), from folder names alone: run before the study writes or starts anything."""
    from ..build import run_task_names, run_train_sizes
    from ..data.sampler import task_quotas
    from ..grouping import EXHAUSTIVE_MAX_TASKS, check_k, fixed_partition

    try:
        names = run_task_names(cfg.run.data)
    except (ValueError, OSError) as e:
        raise ValueError(f"StudyConfig.run.data: {e}") from None
    sizes = run_train_sizes(cfg.run.data)
    if sizes is not None:  # the batch every trial would draw, checked before Ray (a dataset folder: by the trial)
        try:
            task_quotas(sizes, cfg.run.train.batch_size, cfg.run.train.sampling)
        except ValueError as e:
            raise ValueError(f"StudyConfig.run.train: {e}") from None
    for scheme in cfg.schemes:
        try:
            if scheme == "race":
                check_k(len(names), cfg.k)
                if cfg.mode != "compare" or len(names) > EXHAUSTIVE_MAX_TASKS:
                    raise ValueError(
                        f"race trains every partition: it needs mode 'compare' and at most {EXHAUSTIVE_MAX_TASKS} tasks"
                    )
            elif scheme in AFFINITY_SCHEMES:
                check_k(len(names), cfg.k)
                if scheme == "tag" and len(names) > EXHAUSTIVE_MAX_TASKS:
                    raise ValueError(f"tag's selection enumerates partitions of at most {EXHAUSTIVE_MAX_TASKS} tasks")
            else:
                fixed_partition(scheme, names, cfg.k)
        except ValueError as e:
            raise ValueError(f"StudyConfig.schemes has {scheme!r} (tasks {names}, k={cfg.k}): {e}") from None
    return names


def plan_partitions(cfg: StudyConfig, folder: Location) -> tuple[dict[str, str], BackboneInfo, list[str]]:
    """The partition of every (scheme, seed), computed once and kept in folder/partitions.json; the
    backbone's geometry and the task names."""
    from ..affinity import plan_partition
    from ..build import load_run_backbone, load_run_tasks
    from ..engine import resolve_device
    from ..fields import replace
    from .trials import trial_data_seed

    path = folder / "partitions.json"
    saved = saved_partitions(path)
    backbone = load_run_backbone(cfg.run.backbone, cfg.run.data.dataset)
    backbone.model.to(resolve_device(cfg.run.train.device))  # the affinity trains on the driver's device
    first_seed = trial_data_seed(cfg, cfg.seeds[0])
    first = load_run_tasks(replace(cfg.run.data, data_seed=first_seed), backbone)
    names = [t.name for t in first]
    held = {first_seed: first}  # data_seed -> tasks: one seed's at a time, not one per seed

    def tasks_of(scheme: str, seed: int) -> list:
        """The tasks `scheme` decides on for `seed`: a fixed scheme reads only their names (the first seed's
        serve); an affinity is measured on that seed's own data."""
        if scheme not in AFFINITY_SCHEMES:
            return first
        data_seed = trial_data_seed(cfg, seed)
        if data_seed not in held:
            held.clear()
            held[data_seed] = load_run_tasks(replace(cfg.run.data, data_seed=data_seed), backbone)
        return held[data_seed]

    seeds = cfg.seeds if cfg.mode == "compare" else cfg.seeds[:1]
    needed = [  # race is decided by racing trials, after this (study/race.py)
        (s, seed) for s in cfg.schemes for seed in seeds if f"{s}/{seed}" not in saved["partitions"] and s != "race"
    ]
    for scheme, seed in needed:
        start = time.perf_counter()
        partition, affinity = plan_partition(  # a progress bar on the driver's console
            scheme,
            backbone,
            tasks_of(scheme, seed),
            replace(cfg.affinity, seed=seed),
            cfg.run.prompts,
            cfg.run.train,
            cfg.k,
            True,
        )
        if affinity is not None:
            saved["affinity"][f"{scheme}/{seed}"] = {"tasks": names, "matrix": affinity.tolist()}
        saved["partitions"][f"{scheme}/{seed}"] = str(partition)
        saved["seconds"][f"{scheme}/{seed}"] = round(time.perf_counter() - start, 3)
    if needed:
        path.write_text(json.dumps(saved, indent=2) + "\n")
    return saved["partitions"], backbone.info, names


def record_partition(folder: Location, key: str, partition: str, seconds: float) -> None:
    """Add one decided partition ("scheme/seed" -> partition, and what deciding it cost) to partitions.json."""
    path = folder / "partitions.json"
    saved = saved_partitions(path)
    saved["partitions"][key] = partition
    saved["seconds"][key] = round(seconds, 3)
    path.write_text(json.dumps(saved, indent=2) + "\n")


def saved_partitions(path: Location) -> dict:
    """partitions.json's content, or an empty one: partitions, affinity matrices and what each choice cost
    in seconds (an oracle study compares it with training every partition)."""
    return (
        parse_partitions(path.read_bytes(), path)
        if path.exists()
        else {"partitions": {}, "affinity": {}, "seconds": {}}
    )
