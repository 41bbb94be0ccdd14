"""A trial's rows for the results tables, built from the trial as planned and the metrics its training wrote:
the trial row (its configuration columns, outcome, costs, provenance), its per-epoch rows and its per-image
test outcomes. Built here, in the study, so that `results` stays the schema, the writer and the reader.
"""

from __future__ import annotations

from ..provenance import provenance
from .trials import Trial


def config_columns(trial: Trial) -> dict:
    """The configuration columns of a planned trial: what the trial table, the trackers' params and the
    console name a trial by, in one place."""
    run = trial.run
    return {
        "config_id": trial.config_id,
        "seed": trial.seed,
        "scheme": trial.scheme,
        "variant": trial.variant,
        "partition": trial.partition,
        "n_tokens": run.prompts.n_tokens,
        "depth": trial.depth,
        "layers": list(trial.layers),
        "projection": run.prompts.projection.value,
        "combine": run.prompts.combine.value,
        "lr": run.train.lr,
        "epochs": run.train.epochs,
        "batch_size": run.train.batch_size,
        "dataset": run.data.dataset,
        "model": run.backbone.model,
        "pretrained": str(run.backbone.pretrained),
        "data_seed": run.data.data_seed,
    }


def trial_rows(
    study: str,
    k: int,
    tasks: list[str],
    trial: Trial,
    history: list[dict],
    *,
    trial_id: str,
    status: str,
    error: str,
    wall_s: float,
    workers: int,
    device_per_worker: float,
    device_kind: str,
) -> tuple[dict, list[dict]]:
    """A trial's row (`trial_schema(tasks)`) and its per-epoch, per-task rows (`EPOCH_SCHEMA`).

    Built from the trial as planned (its RunConfig, identity, resolved layers) and the metrics history its
    training wrote, whatever ran it. Cost: `workers` x `device_per_worker` (GPUs, or CPUs on a CPU run) for
    `wall_s`.
    """
    config = config_columns(trial)
    last = history[-1] if history else {}
    best = {n: max((h[f"val/{n}"] for h in history), default=None) for n in ["mean", *tasks]}
    ident = {"study": study, "config_id": trial.config_id, "seed": trial.seed, "trial_id": trial_id}
    row = {
        **ident,
        "status": status,
        "error": error,
        "early_stopped": status == "TERMINATED" and len(history) < config["epochs"],
        **config,
        "k": k,
        "epochs_run": len(history),
        "trainable_params": last.get("trainable_params"),
        "total_params": last.get("total_params"),
        "val_mean_final": percent(last.get("val/mean")),
        "val_mean_best": percent(best["mean"]),
        "test_mean": percent(last.get("test/mean")),
        "zeroshot_mean": percent(last.get("zeroshot/mean")),
        "wall_s": wall_s,
        "device_hours": wall_s * workers * device_per_worker / 3600,
        "device_kind": device_kind,
        **{f"val_{n}_final": percent(last.get(f"val/{n}")) for n in tasks},
        **{f"val_{n}_best": percent(best[n]) for n in tasks},
        **{f"test_{n}": percent(last.get(f"test/{n}")) for n in tasks},
        **{f"zeroshot_{n}": percent(last.get(f"zeroshot/{n}")) for n in tasks},
        **provenance(),
        "config": trial.config,
    }
    return row, epoch_rows(ident, tasks, history)


def prediction_rows(ident: dict, history: list[dict]) -> list[dict]:
    """`TRIAL_PREDICTION_SCHEMA` rows of a run's last epoch ([] if it has no test outcomes)."""
    cols = history[-1].get("predictions") if history else None
    if not cols:
        return []
    keep = {k: ident[k] for k in ("study", "config_id", "seed")}
    return [{**keep, **dict(zip(cols, values))} for values in zip(*cols.values())]


def percent(fraction: float | None) -> float | None:
    """A history's accuracy (a fraction, as training computes it) in the tables' unit, percent."""
    return None if fraction is None else 100 * fraction


def epoch_rows(ident: dict, tasks: list[str], history: list[dict]) -> list[dict]:
    """One `EPOCH_SCHEMA` row per (epoch, task) of a run's history, each with the epoch's mean over tasks;
    `ident` names the run."""
    return [
        {
            **ident,
            "epoch": h["epoch"],
            "task": n,
            "val_acc": percent(h[f"val/{n}"]),
            "train_loss": h["train_loss"],
            "test_acc": percent(h.get(f"test/{n}")),
            "val_mean": percent(h["val/mean"]),
            "test_mean": percent(h.get("test/mean")),
        }
        for h in history
        for n in tasks
    ]
