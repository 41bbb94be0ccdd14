"""The trials a study owes, typed, and the search space they are sampled from.

A `Trial` is one run as planned: its `RunConfig`, the scheme that chose its partition, and its identity,
`config_id` (the hash of its canonical configuration: the `RunConfig` with the partition resolved and the
alignment layers as block indices; not the training seed, nor where or how fast it runs) plus its seed.
Compare mode plans every trial up front (`grid_trials`, the product of the study's axes); search mode lets
Optuna sample the choices in `search_space`, and a resumed search tells Optuna the finished trials from
their Parquet rows (`searcher`), never from a pickle.

A study's axes are declared once, in `AXES`: each is a choice a trial makes (its name in Tune's search
space and in the trials table) and the run settings it sets. `Plan` is what every trial of a study shares
(the StudyConfig, the partitions, the backbone's geometry); it reaches the trials through
`tune.with_parameters`. A trial crosses Tune's boundary once as plain data (`Trial.to_tune`) and is typed
again on the other side (`Trial.from_tune`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..backbone import BackboneInfo
from ..config import RunConfig, parse_variant
from ..fields import from_dict, replace, to_dict
from ..grouping import format_groups, parse_groups
from ..prompts import ResolvedLayers
from ..results import canonical_json, config_id, row_key
from .config import METRIC, NOT_IN_RESULT, StudyConfig

# A study's axes: name -> the run settings (field path: value) its value sets, laid over the study's run in
# this order (a variant last, so its settings win). Scheme and seed are not axes: they set the partition,
# the seed and the data.
AXES: dict[str, Callable[[Any], dict[str, Any]]] = {
    "n_tokens": lambda v: {"prompts.n_tokens": v},
    "depth": lambda v: {"prompts.layers": tuple(range(v))} if v else {},  # None: the run's own layers
    "projection": lambda v: {"prompts.projection": v},
    "combine": lambda v: {"prompts.combine": v},
    "lr": lambda v: {"train.lr": v},
    "variant": parse_variant,
}


def grid_axes(study: StudyConfig) -> dict[str, tuple]:
    """The values compare mode crosses, per axis (the learning rate is the run's: search mode samples it)."""
    return {
        "n_tokens": study.n_tokens_axis,
        "depth": study.depths or (None,),
        "projection": study.projection_axis,
        "combine": study.combine_axis,
        "variant": study.variants or ("",),
    }


@dataclass(frozen=True)
class Plan:
    """What every trial of a study shares."""

    study: StudyConfig
    partitions: dict[str, str]  # "<scheme>/<seed>" -> the partition that scheme chose for that seed ("A+B|C")
    info: BackboneInfo  # the backbone's geometry, which resolves the alignment layers


@dataclass(frozen=True)
class Trial:
    """One trial as planned: what it trains and what identifies its row."""

    run: RunConfig  # partition, seed and data seed set; the axes' values laid over the study's run
    scheme: str  # the scheme(s) that chose its partition ("gradient, lookahead" when two chose the same)
    variant: str  # the study variant it belongs to ("" for none)
    config_id: str  # the hash of `config`
    config: str  # the canonical configuration, as JSON
    layers: tuple[int, ...]  # the alignment layers, resolved on the backbone

    @property
    def seed(self) -> int:
        return self.run.train.seed

    @property
    def key(self) -> str:
        """`<config_id>-s<seed>`: the name of its row files and of its train folder."""
        return row_key(self.config_id, self.seed)

    @property
    def partition(self) -> str:
        return format_groups(self.run.partition)

    @property
    def depth(self) -> int:
        return len(self.layers)

    def to_tune(self) -> dict:
        """Plain data for Tune's config (its console table shows scheme, partition, n_tokens, depth, seed)."""
        return {
            "key": self.key,
            "config_id": self.config_id,
            "seed": self.seed,
            "scheme": self.scheme,
            "partition": self.partition,
            "variant": self.variant,
            "run": to_dict(self.run),
            "config": self.config,
            "layers": list(self.layers),
            "depth": self.depth,
        }

    @classmethod
    def from_tune(cls, data: dict) -> Trial:
        run = from_dict(RunConfig, data["run"])
        return cls(run, data["scheme"], data["variant"], data["config_id"], data["config"], tuple(data["layers"]))


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


def make_trial(plan: Plan, scheme: str, seed: int, **choices: Any) -> Trial:
    """The trial of `scheme`'s partition for `seed`, with each axis in `choices` (names from `AXES`) set to
    its value; axes not given keep the study's run settings."""
    unknown = set(choices) - set(AXES)
    if unknown:
        raise ValueError(f"make_trial: {sorted(unknown)} are not study axes; valid: {sorted(AXES)}")
    study = plan.study
    changes: dict[str, Any] = {"partition": parse_groups(plan.partitions[f"{scheme}/{seed}"]), "train.seed": seed}
    if study.data_per_seed:
        changes["data.data_seed"] = trial_data_seed(study, seed)
    for axis, settings in AXES.items():
        if axis in choices:
            changes.update(settings(choices[axis]))
    run = replace(study.run, **changes)
    config, layers = canonical(run, plan.info)
    if study.data_per_seed:  # the data follows the seed: identify the configuration by the study's rule
        config["data"]["data_seed"] = study.run.data.data_seed
        config["data"]["data_per_seed"] = True
    variant = choices.get("variant", "")
    return Trial(run, scheme, variant, config_id(config), canonical_json(config), tuple(layers.union))


def grid_trials(study: StudyConfig, plan: Plan) -> list[Trial]:
    """Compare mode: every scheme x seed x value of every axis (`grid_axes`), one trial per (config_id, seed).

    Schemes that chose the same partition for a seed (gradient and lookahead often do) are the same
    configuration: it is trained once, and its row names both schemes.
    """
    trials: dict[str, Trial] = {}
    axes = grid_axes(study)
    for values in itertools.product(study.schemes, *axes.values(), study.seeds):
        scheme, chosen, seed = values[0], dict(zip(axes, values[1:-1])), values[-1]
        t = make_trial(plan, scheme, seed, **chosen)
        same = trials.get(t.key)
        if same is None:
            trials[t.key] = t
        elif scheme not in same.scheme.split(", "):  # e.g. a prompt length a design without prompts ignores
            trials[t.key] = dataclasses.replace(same, scheme=f"{same.scheme}, {scheme}")
    return list(trials.values())


def trial_of(config: dict, plan: Plan) -> Trial:
    """The trial a Tune config stands for: given whole in compare mode, made from the sampled choices in search."""
    if "trial" in config:
        return Trial.from_tune(config["trial"])
    study = plan.study
    fixed = {axis: values[0] for axis, values in grid_axes(study).items() if len(values) == 1}  # not sampled
    sampled = {k: v for k, v in config.items() if k in AXES}
    return make_trial(plan, config["scheme"], study.seeds[0], **{**fixed, **sampled})


def search_space(cfg: StudyConfig) -> dict:
    """Optuna distributions over the study's choices (a fixed space, so finished trials can be told back)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    space = {  # the axes' names (AXES), and the scheme
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
