"""The benchmark's affinity figure: what the gradient and look-ahead grouping steps (warm-up + measurement)
cost against training one trial of the default study (toy2, `--preset toy`), both in this process."""

from __future__ import annotations

import time

from bench_table import single

from mmap_ray.backbone import TINY_MODEL


def affinity_cost(seed: int = 0) -> list[dict]:
    """(affinity step of each method) / (one default trial's training, build to test), for one seed."""
    import torch
    from grouping import PRESETS

    from mmap_ray.affinity import task_affinity
    from mmap_ray.build import build_run, load_run_backbone, load_run_tasks
    from mmap_ray.engine import Context, fit
    from mmap_ray.fields import from_dict, replace
    from mmap_ray.study import StudyConfig
    from mmap_ray.study.trials import trial_data_seed

    study = from_dict(StudyConfig, PRESETS["toy"], "StudyConfig")
    run = replace(study.run, **{"train.seed": seed, "data.data_seed": trial_data_seed(study, seed)})
    load_run_backbone(run.backbone, run.data.dataset)  # the cached tiny CLIP: built outside every timing
    t0 = time.perf_counter()
    model, tasks = build_run(run)
    fit(model, tasks, run.train, Context(torch.device("cpu")))
    trial_s = time.perf_counter() - t0
    rows = []
    for method in ("gradient", "lookahead"):
        t0 = time.perf_counter()
        backbone = load_run_backbone(run.backbone, run.data.dataset)
        task_affinity(backbone, load_run_tasks(run.data, backbone), replace(study.affinity, method=method, seed=seed))
        spent = time.perf_counter() - t0
        cfg = study.affinity
        rows.append(
            single(
                "affinity",
                None,
                f"{method} affinity step / one default trial",
                spent,
                trial_s,
                numerator_s=spent,
                denominator_s=trial_s,
                model=TINY_MODEL,
                device="cpu",
                batch_size=cfg.affinity_batch_size,
                note=(
                    f"toy2, seed {seed}: {cfg.affinity_warmup_steps} warm-up steps + {cfg.affinity_steps} steps "
                    f"measured every {cfg.affinity_every}; the trial: {run.train.epochs} epochs, build to test"
                ),
            )
        )
    return rows
