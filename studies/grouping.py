"""The main study: which task grouping (and prompt design) works best for multi-task MmAP?

Runs on the Ray cluster it is submitted to (`ray job submit --working-dir . -- python studies/grouping.py`)
or, with no cluster, on a local Ray instance. With no arguments: every grouping scheme x 3 seeds on the toy
benchmark toy2 with its tiny pretrained CLIP (about 7 minutes on a 2-core machine). Results land in a Parquet
dataset (`<storage>/<name>/results/`); the leaderboard is printed and the report written next to it.

    python studies/grouping.py                                   # compare schemes on the toy benchmark
    python studies/grouping.py --smoke                           # seconds-scale check of the pipeline
    python studies/grouping.py --preset office-home --root /data/OfficeHomeDataset \\
        --model ViT-B-16 --pretrained openai --gpus-per-worker 1 --storage s3://my-bucket/studies
    python studies/grouping.py --preset office-home --root s3://my-bucket/datasets/OfficeHomeDataset \\
        --gpus-per-worker 1 --storage s3://my-bucket/studies      # pushed with `mmap-ray data push`
    python studies/grouping.py --mode search --num-samples 32    # Optuna TPE + ASHA
    python studies/grouping.py --study my-study.toml             # every setting from one file
    python studies/grouping.py --resume                          # continue an interrupted study
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout or a job working dir

import pandas as pd  # noqa: E402

from mmap_ray.config import DATASETS, TOY_DATASETS  # noqa: E402
from mmap_ray.data.toy import DOMAINS as TOY_DOMAINS  # noqa: E402
from mmap_ray.fields import add_arguments, from_dict, merge, parsed_values  # noqa: E402
from mmap_ray.grouping import set_partitions  # noqa: E402
from mmap_ray.report import failures, leaderboard, load_study, mean_std, write_report  # noqa: E402
from mmap_ray.storage import StorageError, is_uri  # noqa: E402
from mmap_ray.study import Interrupted, StudyConfig, read_study_file, run_study  # noqa: E402

# Layers of settings in StudyConfig's to_dict form; each is laid over the one before.
ON_TOY = {"resources": {"cpus_per_worker": 1.0}}  # one core per trial (it trains in its own process): 2 at once on 2
REAL = {
    "backbone": {"model": "ViT-B-16", "pretrained": "openai"},
    "train": {"epochs": 10, "batch_size": 32, "lr": 3.5e-3},
}
# The Kronecker readings (DESIGN.md's open choice): S ⊗ A with A (1, d/d_s) [the default], the product in the
# other order, a token factor A (2, d/d_s), and the PHM / Compacter reading S · sum_i A_i ⊗ B_i
KRON_READINGS = [
    "projection=kron",
    "projection=kron; kron_order=AS",
    "projection=kron; kron_tokens=2",
    "projection=phm",
]
# toy2, the grouping benchmark (two labelling conventions, 16 images per class): 32 epochs of 12 steps
ON_TOY2 = {**ON_TOY, "run": {"data": {"dataset": "toy2"}, "train": {"epochs": 32}}}
PRESETS = {
    # the default: the five schemes (the proxies are in the oracle presets), about 7 minutes on 2 cores
    "toy": {**ON_TOY2, "schemes": ["single", "independent", "gradient", "lookahead", "random"]},
    "toy-v1": {**ON_TOY, "run": {"train": {"epochs": 8}}},  # the first toy benchmark (the default until issue 17)
    "office-home": {"run": {"data": {"dataset": "office-home"}, **REAL}, "affinity": {"affinity_batch_size": 32}},
    "mini-domainnet": {"run": {"data": {"dataset": "minidomainnet"}, **REAL}, "affinity": {"affinity_batch_size": 32}},
    # the paper's ablations: a grid over one axis (x seeds), grouping fixed to the gradient scheme, all else fixed
    "ablation-prompt-length": {
        **ON_TOY,
        "schemes": ["gradient"],
        "prompt_lengths": [1, 2, 4, 8, 16],
        "run": {"train": {"epochs": 8}},
    },
    "ablation-layers": {**ON_TOY, "schemes": ["gradient"], "depths": [1, 2, 3, 4], "run": {"train": {"epochs": 8}}},
    # every prompt design and baseline at 3 budgets where it has them (prompt length; adapter width), one
    # group for all tasks so that only the design differs (issue 16: designs at matched budgets)
    "designs-budget": {
        **ON_TOY,
        "schemes": ["single"],
        "prompt_lengths": [2, 4, 8],
        "variants": [
            *KRON_READINGS,
            "projection=linear",
            "projection=independent",
            "projection=text-deep",
            "projection=visual-deep",
            "projection=coop",
            "projection=clip-adapter; adapter_reduction=16",
            "projection=clip-adapter; adapter_reduction=4",
            "projection=clip-adapter; adapter_reduction=1",
            "projection=bitfit",
            "projection=kron; layers=none; full_finetune=true; lr=1e-4",
        ],
        "run": {"train": {"epochs": 8}},
    },
    # the Kronecker readings alone, at the same budgets
    "ablation-kron": {
        **ON_TOY,
        "schemes": ["single"],
        "prompt_lengths": [2, 4, 8],
        "variants": KRON_READINGS,
        "run": {"train": {"epochs": 8}},
    },
}
# the oracle: every partition of the 4 tasks (15; `-k2`: the 7 with two groups) trained over 3 seeds, with the
# grouping methods and the training-free proxies in the same study: a partition a method picks is the
# oracle's trial, trained once. On toy3 with group-shared prompts only (`oracle`, `oracle-k2`: where grouping
# has stakes; add --task-prompts for MmAP's task prompts) and on toy2 with task prompts (`oracle-toy2`, ...).
ALL = [str(p) for p in set_partitions(TOY_DOMAINS)]
TWO = [str(p) for p in set_partitions(TOY_DOMAINS, 2)]
METHODS = ["gradient", "lookahead", "random", "zeroshot", "features"]
# toy3 (complementary halves of the classes per convention): 54 epochs of 7 steps at lr 5e-3, one prompt per group
ON_TOY3 = {
    **ON_TOY,
    "run": {"data": {"dataset": "toy3"}, "train": {"epochs": 54, "lr": 5e-3}, "prompts": {"task_prompts": False}},
}
PRESETS["oracle"] = {**ON_TOY3, "name": "oracle", "schemes": [*ALL, *METHODS]}
PRESETS["oracle-k2"] = {**ON_TOY3, "name": "oracle-k2", "schemes": [*TWO, *METHODS]}
PRESETS["oracle-toy2"] = {**ON_TOY2, "name": "oracle-toy2", "schemes": [*ALL, *METHODS]}
PRESETS["oracle-k2-toy2"] = {**ON_TOY2, "name": "oracle-k2-toy2", "schemes": [*TWO, *METHODS]}
SMOKE = {
    "name": "smoke",
    "schemes": ["single", "gradient"],
    "seeds": [0],
    "run": {
        "backbone": {"pretrained": "none"},
        "data": {"shots": 2},
        "prompts": {"n_tokens": 2},
        "train": {"epochs": 2, "batch_size": 16},
    },
    "affinity": {"affinity_warmup_steps": 2, "affinity_steps": 2, "affinity_batch_size": 16},
    "resources": {"cpus_per_worker": 0.5},
}
PROG = "grouping.py"  # how errors start: "grouping.py: error: ...", from argparse and from the checks alike
# run settings a study sets per trial (from `schemes` and `seeds`): no flags for them here
PER_TRIAL = ("partition", "seed")


def build_study(args: argparse.Namespace) -> StudyConfig:
    """The study from, in rising precedence: the preset, --smoke, the --study file, the other flags."""
    if args.preset not in PRESETS:
        raise ValueError(f"--preset {args.preset!r} is not valid; choose one of {sorted(PRESETS)}")
    settings: dict = {}
    for layer in (PRESETS[args.preset], SMOKE if args.smoke else {}, read_study_file(args.study) if args.study else {}):
        settings = merge(settings, layer)
    settings = merge(settings, parsed_values(StudyConfig, args, skip=PER_TRIAL))
    data = settings.get("run", {}).get("data", {})
    on_disk = [d for d in DATASETS if d not in TOY_DATASETS]  # an unknown dataset is named by the config's own check
    if isinstance(data, dict) and data.get("dataset", "toy") in on_disk and not data.get("root"):
        raise ValueError(f"--preset {args.preset} needs --root: the folder holding the dataset")
    try:
        study = from_dict(StudyConfig, settings, "StudyConfig")
    except ValueError as e:
        raise ValueError(f"study file {args.study}: {e}" if args.study else str(e)) from None
    root = study.run.data.root
    try:  # a URI's manifest is read by run_study, before it claims anything (data/remote.py)
        is_dir = root is None or is_uri(root) or Path(root).is_dir()
    except OSError as e:  # a name too long, a folder we may not enter
        raise ValueError(f"run.data.root (--root) {root}: {e.strerror or e}") from None
    if not is_dir:
        raise ValueError(f"run.data.root (--root) {root} does not exist or is not a folder")
    return study


def build_parser() -> argparse.ArgumentParser:
    """The study's flags: its own, then one per StudyConfig field (the same names as `mmap-ray train`'s)."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="toy", help=f"one of {sorted(PRESETS)} (default: toy)")
    p.add_argument("--study", default=None, help="a TOML study file (StudyConfig's fields and tables)")
    p.add_argument("--smoke", action="store_true", help="a seconds-scale run of the whole pipeline")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study with the same settings")
    p.add_argument("--overwrite", action="store_true", help="move an existing study of this name aside (NAME.old-TIME)")
    p.add_argument(
        "--break-lock", action="store_true", help="take over the lock of a driver that crashed on another machine"
    )
    add_arguments(p, StudyConfig, unset=True, skip=PER_TRIAL)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    study = None
    try:
        study = build_study(args)
        results = run_study(study, resume=args.resume, overwrite=args.overwrite, break_lock=args.break_lock)
    except ValueError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except StorageError as e:  # results could not be written: nothing finished is lost, --resume goes on
        print(f"{PROG}: error: {e}; fix it and rerun with --resume", file=sys.stderr)
        return 1
    except OSError as e:  # a file or folder we could not read or create (it names the path)
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:  # Ctrl-C reached Tune, which stopped the trials: no partial leaderboard
        print(f"{PROG}: {e} (study folder: {study.study_dir})", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        where = f" (study folder: {study.study_dir})" if study else ""
        print(
            f"{PROG}: interrupted before every trial had a result; continue with --resume{where}",
            file=sys.stderr,
        )
        return 130
    print(f"results (Parquet): {results}")
    try:
        return summarise(results)
    except KeyboardInterrupt:  # every trial has its row: only the summary and the report are missing
        print(
            f"{PROG}: interrupted after every trial had a result (in {results}); "
            f"`mmap-ray report {results}` writes the report",
            file=sys.stderr,
        )
        return 130


def summarise(results: str | Path) -> int:
    """Print a finished study's failures and leaderboard and write its report: 1 if no trial produced an
    accuracy, else 0, even where no report could be written."""
    try:
        done = load_study(results)  # read once: the summary, the failures and the report all come from it
    except ValueError as e:  # the study ran; a report that cannot be built is not its failure
        print(f"report: not written: {e}", file=sys.stderr)
        return 0
    failed = failures(done.trials)
    if len(failed):
        print(f"{len(failed)} trials errored (their rows have status ERROR and the reason in `error`):")
        print(failed.to_string(index=False, max_colwidth=160))
    if done.trials.get("test_mean", pd.Series(dtype=float)).notna().sum() == 0:  # a study that measured nothing
        print(
            f"{PROG}: error: none of the {len(done.trials)} trials produced an accuracy; their errors are in the "
            f"`error` column of {results} (listed above)",
            file=sys.stderr,
        )
        return 1
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(mean_std(leaderboard(done.trials)).to_string())
    try:
        report = write_report(done)
    except (ValueError, OSError) as e:  # e.g. a report folder we did not write: the study's results stand
        print(f"report: not written: {e}", file=sys.stderr)
        return 0
    print(f"report: {report.html} (Markdown: {report.markdown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
