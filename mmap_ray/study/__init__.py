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

Modules: `config` (StudyConfig, study files), `trials` (the typed Trial and Plan, the axes, identity, the
grid, the search space), `partitions` (planned once per study), `ownership` (start / rerun / resume
rules), `run` (the Tuner and the trial driver), `callback` (the Parquet rows, written by the Tune driver).
"""

from importlib import import_module

# Each public name and the module of this package that defines it (SCHEMES: mmap_ray.grouping), imported
# on first use (PEP 562): `mmap-ray study --print` and a refused flag read `config` only, without Ray,
# torch or the report stack.
_EXPORTS = {
    "SCHEMES": "..grouping",
    **dict.fromkeys(
        ("METRIC", "MODES", "OBJECTIVES", "RESUME_MAY_CHANGE", "StudyConfig", "read_study_file"), ".config"
    ),
    **dict.fromkeys(("check_start", "settings_diff", "stored_rows"), ".ownership"),
    "plan_partitions": ".partitions",
    **dict.fromkeys(("Interrupted", "max_concurrent", "run_study", "trial_driver"), ".run"),
    **dict.fromkeys(
        ("AXES", "Plan", "Trial", "canonical", "grid_trials", "make_trial", "search_space", "searcher", "trial_of"),
        ".trials",
    ),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
