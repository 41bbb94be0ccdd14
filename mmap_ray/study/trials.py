"""The trials a study owes, as plain data, and the search space they are sampled from.

A trial is identified by what it trains: `config_id`, the hash of its canonical configuration (run spec
with the partition resolved and the alignment layers as block indices, training settings, data seed; not
the training seed, nor where or how fast it runs), plus its seed. Compare mode plans every trial up front
(`grid_trials`); search mode lets Optuna sample the choices in `search_space`, and a resumed search tells
Optuna the finished trials from their Parquet rows (`searcher`), never from a pickle.

`base` is what every trial of a study shares (run spec, training settings, partitions, the backbone's
geometry); it reaches the trials through `tune.with_parameters`.
"""

from __future__ import annotations

import itertools

import pandas as pd

from ..backbone import BackboneInfo
from ..prompts import ResolvedLayers
from ..results import canonical_json, config_id, row_key
from ..runspec import mmap_config, spec
from .config import METRIC, NOT_IN_RESULT, StudyConfig


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


def trial_of(config: dict, base: dict) -> dict:
    """The trial a Tune config stands for: given whole in compare mode, made from the sampled choices in search."""
    if "trial" in config:
        return config["trial"]
    return make_trial(
        base, config["scheme"], base["search_seed"], config["n_tokens"], config.get("depth"),
        config.get("projection", base["projections"][0]), config.get("combine", base["combines"][0]), config["lr"],
    )  # fmt: skip


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
        params = {k: row[k] for k in space}
        values = [row["val_mean_final"]] + ([row["trainable_params"]] if study.objective == "pareto" else [])
        if all(v is not None and v == v for v in values):  # failed trials: nothing to tell
            ot.add_trial(optuna.trial.create_trial(params=params, distributions=space, values=values))
    return OptunaSearch(space=space, metric=metrics, mode=modes, storage=storage, study_name=study.name,
                        sampler=optuna.samplers.TPESampler(seed=study.seeds[0] + len(done)))  # fmt: skip
