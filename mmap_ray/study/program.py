"""The main study as a program: `mmap-ray study` (and `python studies/grouping.py`, its launcher for
`ray job submit`). Which task grouping (and prompt design) works best for multi-task MmAP?

Runs on the Ray cluster it is submitted to (`ray job submit --working-dir . -- python studies/grouping.py`)
or, with no cluster, on a local Ray instance. With no arguments: every grouping scheme x 3 seeds on the toy
benchmark toy2 with its tiny pretrained CLIP. Results land in a Parquet dataset
(`<storage>/<name>/results/`); the leaderboard is printed and the report written next to it.

Settings come in layers, each laid over the one before: a preset (a TOML file in `presets/`, read by the
same `read_study_file` as a user's `--study` file), `--smoke`, the `--study` file, the other flags.
`--print` writes the resolved settings as a study file instead of running them.

    mmap-ray study                                        # compare schemes on the toy benchmark
    mmap-ray study --smoke                                # seconds-scale check of the pipeline
    mmap-ray study --preset oracle-k2 --print > k2.toml   # a preset as a file to edit, then --study k2.toml
    mmap-ray study --preset office-home --root /data/OfficeHomeDataset \\
        --model ViT-B-16 --pretrained openai --gpus-per-worker 1 --storage s3://my-bucket/studies
    mmap-ray study --mode search --num-samples 32         # Optuna TPE + ASHA
    mmap-ray study --resume                               # continue an interrupted study
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tomli_w

from ..config import DATASETS, TOY_DATASETS
from ..fields import add_arguments, from_dict, merge, parsed_values, to_dict
from ..storage import StorageError, is_uri, location, resolve_storage
from .config import StudyConfig, read_study_file

PRESET_DIR = Path(__file__).parent / "presets"
PRESETS = sorted(p.stem for p in PRESET_DIR.glob("*.toml"))
SMOKE = Path(__file__).parent / "smoke.toml"  # the --smoke layer: random weights, 2 shots, 2 epochs
# run settings a study sets per trial (from `schemes` and `seeds`): no flags for them here
PER_TRIAL = ("partition", "seed")


def preset_settings(name: str) -> dict:
    """A shipped preset's settings (StudyConfig's `to_dict` form); ValueError naming the valid ones."""
    if name not in PRESETS:
        raise ValueError(f"--preset {name!r} is not valid; choose one of {PRESETS}")
    return read_study_file(PRESET_DIR / f"{name}.toml")


def build_study(args: argparse.Namespace) -> StudyConfig:
    """The study from, in rising precedence: the preset, --smoke, the --study file, the other flags."""
    settings: dict = {}
    smoke = read_study_file(SMOKE) if args.smoke else {}
    for layer in (preset_settings(args.preset), smoke, read_study_file(args.study) if args.study else {}):
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


def describe_results(results: str) -> str:
    """Where a finished study's tables are, each one Parquet dataset that pandas, pyarrow, duckdb and polars
    read as is from the printed path, and what their accuracies mean."""
    from ..results import EPOCHS, PREDICTIONS, TRIALS  # pyarrow and pandas: after a run only (see `run`)

    root = location(results)
    return "\n".join(
        [
            f"results: {results} (tables and figures: mmap-ray report {results})",
            f"  trials, one row per (config_id, seed), accuracies in percent: {(root / TRIALS).uri}",
            f"  epochs, one row per (config_id, seed, epoch, task), the epoch's mean over tasks in val_mean: "
            f"{(root / EPOCHS).uri}",
            f"  predictions, one row per test image (its task, label, prediction): {(root / PREDICTIONS).uri}",
        ]
    )


def study_toml(study: StudyConfig) -> str:
    """The study's settings as a study file (`--study`): every field, unset ones (None) left out, and the
    storage left out where it is the default (so the file means the same on another machine)."""

    def drop_none(d: dict) -> dict:
        return {k: drop_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}

    settings = drop_none(to_dict(study))
    if study.storage == resolve_storage(None):
        settings.pop("storage", None)
    return tomli_w.dumps(settings)


def build_parser(prog: str = "mmap-ray study") -> argparse.ArgumentParser:
    """The study's flags: its own, then one per StudyConfig field (the same names as `mmap-ray train`'s)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="toy", help=f"one of {PRESETS} (default: toy)")
    p.add_argument("--study", default=None, help="a TOML study file (StudyConfig's fields and tables)")
    p.add_argument("--smoke", action="store_true", help="a seconds-scale run of the whole pipeline")
    p.add_argument("--print", action="store_true", help="print the resolved settings as a study file; run nothing")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study with the same settings")
    p.add_argument("--overwrite", action="store_true", help="move an existing study of this name aside (NAME.old-TIME)")
    p.add_argument(
        "--break-lock", action="store_true", help="take over the lock of a driver that crashed on another machine"
    )
    add_arguments(p, StudyConfig, unset=True, skip=PER_TRIAL)
    return p


def main(argv: list[str] | None = None, prog: str = "mmap-ray study") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        study = build_study(args)
    except (ValueError, OSError) as e:  # a bad setting, or a file we could not read (it names the path)
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted before the study started", file=sys.stderr)
        return 130
    if args.print:
        print(study_toml(study), end="")
        return 0
    return run(study, args, prog)


def run(study: StudyConfig, args: argparse.Namespace, prog: str = "mmap-ray study") -> int:
    """Run the checked study, print its leaderboard and write its report: the exit status."""
    # Imported here, not at the top: Ray, torch and the report stack load only for a study that runs,
    # so that --print and a refused setting answer in about a second.
    from .race import RaceFailed
    from .run import Interrupted, run_study
    from .tracking import tracking_lines

    try:
        results = run_study(
            study, resume=args.resume, overwrite=args.overwrite, break_lock=args.break_lock, exit_on_sigterm=True
        )
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except StorageError as e:  # results could not be written: nothing finished is lost, --resume goes on
        print(f"{prog}: error: {e}; fix it and rerun with --resume", file=sys.stderr)
        return 1
    except OSError as e:  # a file or folder we could not read or create (it names the path)
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except RaceFailed as e:  # like a study whose every trial failed: the errors are in the trials' folders
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:  # Ctrl-C reached Tune, which stopped the trials: no partial leaderboard
        print(f"{prog}: {e} (study folder: {study.study_dir})", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(
            f"{prog}: interrupted before every trial had a result; continue with --resume "
            f"(study folder: {study.study_dir})",
            file=sys.stderr,
        )
        return 130
    print(describe_results(results))
    for line in tracking_lines(study.tracking, study.name, location(study.study_dir)):
        print(line)
    try:
        return summarise(results, prog)
    except KeyboardInterrupt:  # every trial has its row: only the summary and the report are missing
        print(
            f"{prog}: interrupted after every trial had a result (in {results}); "
            f"`mmap-ray report {results}` writes the report",
            file=sys.stderr,
        )
        return 130


def summarise(results: str | Path, prog: str = "mmap-ray study") -> int:
    """Print a finished study's failures and leaderboard and write its report: 1 if no trial produced an
    accuracy, else 0, even where no report could be written."""
    import pandas as pd  # here, with the report: not needed to check or print a study (see `run`)

    from ..report import failures, leaderboard, load_study, mean_std, write_report

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
            f"{prog}: error: none of the {len(done.trials)} trials produced an accuracy; their errors are in the "
            f"`error` column of {results} (listed above)",
            file=sys.stderr,
        )
        return 1
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(mean_std(leaderboard(done.trials)).to_string())
    try:
        report = write_report(done)
    except (ValueError, OSError) as e:  # e.g. a full disk: the results stand, `mmap-ray report` writes it later
        print(f"report: not written: {e}; `mmap-ray report {results}` writes it", file=sys.stderr)
        return 1
    print(f"report: {report.html} (Markdown: {report.markdown})")
    return 0
