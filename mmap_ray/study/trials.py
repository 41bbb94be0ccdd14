"""The trials a study owes, as plain data, and the search space they are sampled from.

A trial is identified by what it trains: `config_id`, the hash of its canonical configuration (the
`RunConfig` with the partition resolved and the alignment layers as block indices; not the training
seed, nor where or how fast it runs), plus its seed. Compare mode plans every trial up front
(`grid_trials`); search mode lets Optuna sample the choices in `search_space`, and a resumed search tells
Optuna the finished trials from their Parquet rows (`searcher`), never from a pickle.

`base` is what every trial of a study shares (the StudyConfig, the partitions, the backbone's
geometry); it reaches the trials through `tune.with_parameters`. A trial's run travels as
`fields.to_dict` of its RunConfig.
"""

from __future__ import annotations

import itertools

import pandas as pd

from ..backbone import BackboneInfo
from ..config import RunConfig, parse_variant
from ..fields import replace, to_dict
from ..grouping import format_groups, parse_groups
from ..prompts import ResolvedLayers
from ..results import canonical_json, config_id, row_key
from .config import METRIC, NOT_IN_RESULT, StudyConfig


def canonical(run: RunConfig, info: BackboneInfo) -> tuple[dict, ResolvedLayers]:
    """Everything that changes a trial's result but its seed, with defaults resolved (layers as indices)."""
    layers = run.prompts.resolve(info)
    prompts = run.prompts.effective()  # settings the design does not read are not part of its identity
    resolved = {"layers": None, "text_layers": layers.text, "vision_layers": layers.vision}
    if prompts.projection in ("kron", "phm"):  # the only designs with a source width
        resolved["source_dim"] = layers.source_dim
    config = to_dict(replace(run, prompts=replace(prompts, **resolved)))
    for path in NOT_IN_RESULT:
        table, name = path.split(".")
        config[table].pop(name)
    return config, layers


def trial_data_seed(study: StudyConfig, seed: int) -> int:
    """The data_seed of a trial with this seed (and of the affinity measured for it)."""
    return study.run.data.data_seed + seed if study.data_per_seed else study.run.data.data_seed


def make_trial(
    base: dict,
    scheme: str,
    seed: int,
    n_tokens: int,
    depth: int | None,
    projection: str,
    combine: str,
    lr: float,
    variant: str = "",
) -> dict:
    """One trial as plain data: its run (to_dict), config_id and row key. The variant's settings are
    laid over the axes' values."""
    study: StudyConfig = base["study"]
    changes = {
        "partition": parse_groups(base["partitions"][f"{scheme}/{seed}"]),
        "prompts.n_tokens": n_tokens,
        "prompts.projection": projection,
        "prompts.combine": combine,
        "train.lr": lr,
        "train.seed": seed,
    }
    if depth:
        changes["prompts.layers"] = tuple(range(depth))
    if study.data_per_seed:
        changes["data.data_seed"] = trial_data_seed(study, seed)
    changes.update(parse_variant(variant))
    run = replace(study.run, **changes)
    config, layers = canonical(run, base["info"])
    if study.data_per_seed:  # the data follows the seed: identify the configuration by the study's rule
        config["data"]["data_seed"] = study.run.data.data_seed
        config["data"]["data_per_seed"] = True
    cid = config_id(config)
    return {
        "key": row_key(cid, seed),
        "config_id": cid,
        "seed": seed,
        "scheme": scheme,
        "partition": format_groups(changes["partition"]),  # for the console; the run holds the same
        "variant": variant,
        "run": to_dict(run),
        "config": canonical_json(config),
        "layers": list(layers.union),
        "depth": len(layers.union),
    }


def grid_trials(study: StudyConfig, base: dict) -> list[dict]:
    """Compare mode: every scheme x prompt length x depth x seed, one trial per (config_id, seed).

    Schemes that chose the same partition for a seed (gradient and lookahead often do) are the same
    configuration: it is trained once, and its row names both schemes.
    """
    trials: dict[str, dict] = {}
    projection, combine, lr = study.projection_axis[0], study.combine_axis[0], study.run.train.lr
    axes = (study.variants or ("",), study.schemes, study.n_tokens_axis, study.depths or (None,), study.seeds)
    for variant, scheme, n_tokens, depth, seed in itertools.product(*axes):
        t = make_trial(base, scheme, seed, n_tokens, depth, projection, combine, lr, variant)
        same = trials.get(t["key"])
        if same is None:
            trials[t["key"]] = t
        elif scheme not in same["scheme"].split(", "):  # e.g. a prompt length a design without prompts ignores
            same["scheme"] += f", {scheme}"
    return list(trials.values())


def trial_of(config: dict, base: dict) -> dict:
    """The trial a Tune config stands for: given whole in compare mode, made from the sampled choices in search."""
    if "trial" in config:
        return config["trial"]
    study: StudyConfig = base["study"]
    return make_trial(
        base,
        config["scheme"],
        study.seeds[0],
        config["n_tokens"],
        config.get("depth"),
        config.get("projection", study.projection_axis[0]),
        config.get("combine", study.combine_axis[0]),
        config["lr"],
        config.get("variant", ""),
    )


def search_space(cfg: StudyConfig) -> dict:
    """Optuna distributions over the study's choices (a fixed space, so finished trials can be told back)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    space = {
        "scheme": CategoricalDistribution(list(cfg.schemes)),
        "n_tokens": CategoricalDistribution(list(cfg.n_tokens_axis)),
    }
    if cfg.depths:
        space["depth"] = CategoricalDistribution(list(cfg.depths))
    space["projection"] = CategoricalDistribution(list(cfg.projection_axis))
    if len(cfg.combine_axis) > 1:
        space["combine"] = CategoricalDistribution(list(cfg.combine_axis))
    if cfg.variants:
        space["variant"] = CategoricalDistribution(list(cfg.variants))
    space["lr"] = FloatDistribution(cfg.lr_range[0], cfg.lr_range[1], log=True)
    return space


def searcher(study: StudyConfig, done: pd.DataFrame):
    """OptunaSearch (TPE) whose Optuna study already holds the finished trials' results (a resumed search)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    space = search_space(study)
    pareto = study.objective == "pareto"
    metrics, modes = ([METRIC, "trainable_params"], ["max", "min"]) if pareto else (METRIC, "max")
    storage = optuna.storages.InMemoryStorage()
    directions = ["maximize", "minimize"] if pareto else ["maximize"]
    ot = optuna.create_study(storage=storage, study_name=study.name, directions=directions)
    for row in done.to_dict("records"):
        params = {k: row[k] for k in space}
        values = [row["val_mean_final"]] + ([row["trainable_params"]] if pareto else [])
        if all(v is not None and v == v for v in values):  # failed trials: nothing to tell
            ot.add_trial(optuna.trial.create_trial(params=params, distributions=space, values=values))
    sampler = optuna.samplers.TPESampler(seed=study.seeds[0] + len(done))
    return OptunaSearch(
        space=space, metric=metrics, mode=modes, storage=storage, study_name=study.name, sampler=sampler
    )
