"""The typed configuration: one wire format that round-trips, and every field settable from the command line.

Configurations are generated (Hypothesis) over every field of RunConfig and StudyConfig; each must come
back equal from JSON (`to_dict` -> json -> `from_dict`), from the flags of `mmap-ray train` /
`studies/grouping.py` that `to_argv` writes for it, and must keep its `config_id` across the trip.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmap_ray.affinity import AffinityConfig
from mmap_ray.cli import build_parser, run_config
from mmap_ray.config import DataConfig, ModelConfig, RunConfig, read_run_config
from mmap_ray.data.toy import DOMAINS as TOY_DOMAINS
from mmap_ray.distributed import WorkerSpec
from mmap_ray.engine import TrainConfig
from mmap_ray.fields import from_dict, hints, leaf_paths, to_dict
from mmap_ray.grouping import format_groups
from mmap_ray.prompts import Combine, MmAPConfig, Projection, parse_layers
from mmap_ray.results import config_id
from mmap_ray.study import StudyConfig
from mmap_ray.study import program as grouping

ROOT = Path(__file__).resolve().parent.parent

names = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
layer_sets = st.none() | st.lists(st.integers(0, 11), unique=True, max_size=5).map(lambda x: tuple(sorted(x)))
small_float = st.floats(1e-5, 10, allow_nan=False, allow_subnormal=False)


@st.composite
def data_configs(draw) -> DataConfig:
    dataset = draw(st.sampled_from(("toy", "office-home", "folders")))
    # a folder that exists (the study checks), or a pushed dataset's URI (staged per node, read by run_study)
    remote = "s3://bucket/datasets/x?endpoint_override=127.0.0.1:9000&scheme=http"
    root = None if dataset == "toy" else draw(st.sampled_from((tempfile.gettempdir(), remote)))
    domain = st.sampled_from(TOY_DOMAINS) if dataset == "toy" else names  # the toy has its four
    domains = draw(st.none() | st.lists(domain, min_size=1, max_size=4, unique=True).map(tuple))
    return DataConfig(
        dataset, root, domains, draw(st.none() | st.integers(1, 50)), draw(st.integers(0, 99)), draw(st.booleans())
    )


prompt_configs = st.builds(
    MmAPConfig,
    n_tokens=st.integers(1, 32),
    layers=layer_sets,
    text_layers=layer_sets,
    vision_layers=layer_sets,
    source_dim=st.none() | st.integers(1, 512),
    projection=st.sampled_from(list(Projection)),
    combine=st.sampled_from(list(Combine)),
    task_prompts=st.booleans(),
    init_std=small_float,
    template=names.map(lambda n: n + " {}."),
)
train_configs = st.builds(
    TrainConfig,
    epochs=st.integers(0, 50),
    batch_size=st.integers(1, 512),
    lr=small_float,
    optimizer=st.sampled_from(("adamw", "sgd")),
    weight_decay=st.floats(0, 1, allow_subnormal=False),
    warmup_steps=st.integers(0, 100),
    grad_clip=st.none() | small_float,
    sampling=st.sampled_from(("equal", "proportional")),
    seed=st.integers(0, 10**6),
    full_finetune=st.booleans(),
    eval_batch_size=st.integers(1, 1024),
    loader_workers=st.integers(0, 8),
)


@st.composite
def run_configs(draw) -> RunConfig:
    data = draw(data_configs())
    tasks = list(data.domains or ("Art", "Clipart", "Product"))
    partition = None
    if draw(st.booleans()):
        cut = draw(st.integers(1, len(tasks)))
        partition = tuple(g for g in (tuple(tasks[:cut]), tuple(tasks[cut:])) if g)
    model = draw(st.sampled_from((ModelConfig(), ModelConfig("ViT-B-16", None), ModelConfig("ViT-B-16", "openai"))))
    return RunConfig(data, model, draw(prompt_configs), draw(train_configs), partition)


@st.composite
def study_configs(draw) -> StudyConfig:
    run = draw(run_configs())
    train = dataclasses.replace(run.train, seed=0, epochs=max(1, run.train.epochs))  # a study trains
    run = dataclasses.replace(run, partition=None, train=train)
    low = draw(small_float)
    return StudyConfig(
        name=draw(names),
        mode=draw(st.sampled_from(("compare", "search"))),
        schemes=tuple(
            draw(st.lists(st.sampled_from(("single", "gradient", "random", "A+B|C")), min_size=1, unique=True))
        ),
        k=draw(st.integers(1, 4)),
        seeds=tuple(draw(st.lists(st.integers(0, 99), min_size=1, max_size=4, unique=True))),
        prompt_lengths=tuple(draw(st.lists(st.integers(1, 16), max_size=3, unique=True))),
        depths=tuple(draw(st.lists(st.integers(1, 12), max_size=3, unique=True))),
        projections=tuple(draw(st.lists(st.sampled_from(list(Projection)), max_size=3, unique=True))),
        num_samples=draw(st.integers(1, 64)),
        lr_range=(low, low * draw(st.floats(1, 100, allow_subnormal=False))),
        asha=False,
        run=run,
        affinity=AffinityConfig(affinity_warmup_steps=draw(st.integers(0, 100)), affinity_lr=draw(small_float)),
        resources=WorkerSpec(
            workers=draw(st.integers(1, 4)),
            cpus_per_worker=draw(st.floats(0.1, 8, allow_subnormal=False)),
            worker_resources=draw(st.dictionaries(names, st.floats(0.5, 4, allow_subnormal=False), max_size=2)),
        ),
        storage="/tmp/studies",
    )


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(run_configs())
def test_run_config_round_trips_through_json_with_the_same_id(cfg):
    wire = json.loads(json.dumps(to_dict(cfg)))
    back = from_dict(RunConfig, wire)
    assert back == cfg
    assert config_id(to_dict(back)) == config_id(to_dict(cfg))


@FAST
@given(study_configs())
def test_study_config_round_trips_through_json(cfg):
    assert from_dict(StudyConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg


def to_argv(cfg, skip=()) -> list[str]:
    """The flags that set every leaf field of `cfg` to its value."""
    argv = []
    for f in dataclasses.fields(cfg):
        value, tp = getattr(cfg, f.name), hints(type(cfg))[f.name]
        if f.name in skip:
            continue
        if dataclasses.is_dataclass(value):
            argv += to_argv(value, skip)
            continue
        if "help" not in f.metadata:
            continue
        flag = "--" + f.name.replace("_", "-")
        if tp is bool:
            argv.append(flag if value else "--no-" + flag[2:])
        elif value is None:
            if f.default is not None:  # only grad_clip: None is written 'none'
                argv += [flag, "none"]
        elif f.name in ("layers", "text_layers", "vision_layers"):
            argv += [flag, ",".join(map(str, value)) or "none"]
        elif f.name == "partition":
            argv += [flag, format_groups(value)]
        elif f.name == "domains":
            argv += [flag, ",".join(value)]
        elif f.name == "worker_resources":
            argv += [flag, json.dumps(value)]
        elif isinstance(value, tuple):
            if value:
                argv += [flag, *(str(getattr(v, "value", v)) for v in value)]
        else:
            argv += [flag, str(value.value if isinstance(value, enum.Enum) else value)]
    return argv


@FAST
@given(run_configs())
def test_every_run_field_is_set_by_a_flag_of_mmap_ray_train(cfg):
    args = build_parser().parse_args(["train", *to_argv(cfg)])
    assert run_config(args) == cfg


@FAST
@given(study_configs())
def test_every_study_field_is_set_by_a_flag_of_the_grouping_study(cfg):
    argv = to_argv(cfg, skip=grouping.PER_TRIAL + ("storage",))
    study = grouping.build_study(_study_args(["--storage", cfg.storage, *argv]))
    assert study == cfg


def _study_args(argv: list[str]):
    parser = grouping.build_parser()
    return parser.parse_args(argv)


def test_flag_names_are_the_field_names_and_unique():
    """One name per setting everywhere: flags, study-file keys and to_dict keys are the field names."""

    def settable(cls) -> list[str]:  # every leaf with a flag, duplicates kept
        out = []
        for f in dataclasses.fields(cls):
            tp = hints(cls)[f.name]
            out += settable(tp) if dataclasses.is_dataclass(tp) else [f.name] * ("help" in f.metadata)
        return out

    leaves = settable(StudyConfig)
    assert len(leaves) > 50 and len(leaves) == len(set(leaves)), sorted(n for n in leaves if leaves.count(n) > 1)
    train_flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    run_leaves = set(leaf_paths(RunConfig))
    assert run_leaves <= train_flags, run_leaves - train_flags
    assert "root" in run_leaves and "data_root" not in train_flags


def test_a_key_in_the_wrong_table_is_pointed_to_its_table(tmp_path):
    study = tmp_path / "s.toml"
    study.write_text("epochs = 3\n")
    with pytest.raises(ValueError, match=r"'epochs' belongs in \[run.train\]"):
        grouping.build_study(_study_args(["--study", str(study)]))
    study.write_text('[run.train]\nepochs = "3"\n')
    with pytest.raises(ValueError, match=r"StudyConfig.run.train.epochs='3' is not valid: it must be an integer"):
        grouping.build_study(_study_args(["--study", str(study)]))


def test_string_forms_are_parsed_once_at_the_edge(tmp_path):
    """Layers, domains and partitions written as text (TOML, flags) become the typed values."""
    study = tmp_path / "s.toml"
    study.write_text('[run.prompts]\nlayers = "0-2,5"\n[run.data]\ndomains = "Art, Product"\n')
    cfg = grouping.build_study(_study_args(["--study", str(study), "--storage", str(tmp_path)]))
    assert cfg.run.prompts.layers == parse_layers("0-2,5") == (0, 1, 2, 5)
    assert cfg.run.data.domains == ("Art", "Product")
    assert RunConfig(partition="Art + Clipart | Product").partition == (("Art", "Clipart"), ("Product",))


def test_run_folder_config_is_read_back_or_named(tmp_path):
    cfg = RunConfig(prompts=MmAPConfig(n_tokens=3, layers=(0, 1)))
    (tmp_path / "config.json").write_text(json.dumps({"run": to_dict(cfg)}))
    assert read_run_config(tmp_path / "config.json") == cfg
    (tmp_path / "config.json").write_text(json.dumps({"other": 1}))
    with pytest.raises(ValueError, match=r"config.json has no 'run' table"):
        read_run_config(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        read_run_config(tmp_path / "config.json")


@pytest.mark.parametrize("cls", [RunConfig, StudyConfig])
def test_a_nested_table_defaults_as_its_class_does(cls):
    """A partial table in a file or on the command line fills the rest from the class's defaults, so the
    parent's default for a nested config must be that class's default (or files and flags would differ)."""
    for f in dataclasses.fields(cls):
        tp = hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            assert f.default_factory() == tp(), f.name
