"""The main study: which task grouping (and prompt design) works best for multi-task MmAP?

Runs on the Ray cluster it is submitted to (`ray job submit --working-dir . -- python studies/grouping.py`)
or, with no cluster, on a local Ray instance. With no arguments: every grouping scheme x 3 seeds on the toy
benchmark with the tiny pretrained CLIP (about 15 minutes on a 2-core machine). Results land in a Parquet
dataset (`<storage>/<name>/results/`); the leaderboard is printed and the report written next to it.

    python studies/grouping.py                                   # compare schemes on the toy benchmark
    python studies/grouping.py --smoke                           # seconds-scale check of the pipeline
    python studies/grouping.py --preset office-home --data-root /data/OfficeHomeDataset \\
        --model ViT-B-16 --pretrained openai --gpus-per-worker 1 --storage s3://my-bucket/studies
    python studies/grouping.py --mode search --num-samples 32    # Optuna TPE + ASHA
    python studies/grouping.py --study my-study.toml             # every setting from one file
    python studies/grouping.py --resume                          # continue an interrupted study
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout or a job working dir

import pandas as pd  # noqa: E402

from mmap_ray.report import failures, leaderboard, load_study, mean_std, write_report  # noqa: E402
from mmap_ray.storage import StorageError  # noqa: E402
from mmap_ray.study import MODES, OBJECTIVES, Interrupted, StudyConfig, read_study_file, run_study  # noqa: E402

PRESETS = {
    # 0.99 CPU per worker + 0.01 per trial driver: two trials fit a 2-CPU laptop side by side
    "toy": {"cpus_per_worker": 0.99},
    "office-home": {"run": {"dataset": "office-home", "model": "ViT-B-16", "pretrained": "openai"}, "epochs": 10,
                    "batch_size": 32, "lr": 3.5e-3},
    "mini-domainnet": {"run": {"dataset": "minidomainnet", "model": "ViT-B-16", "pretrained": "openai"}, "epochs": 10,
                       "batch_size": 32, "lr": 3.5e-3},
    # the paper's ablations: a grid over one axis (x seeds), grouping fixed to the gradient scheme, all else fixed
    "ablation-prompt-length": {"schemes": ("gradient",), "n_tokens": (1, 2, 4, 8, 16), "cpus_per_worker": 0.99},
    "ablation-layers": {"schemes": ("gradient",), "depths": (1, 2, 3, 4), "cpus_per_worker": 0.99},
}  # fmt: skip
SMOKE = {
    "name": "smoke", "schemes": ("single", "gradient"), "seeds": (0,), "epochs": 2, "batch_size": 16,
    "n_tokens": (2,), "affinity_warmup_steps": 2, "affinity_steps": 2, "cpus_per_worker": 0.5,
    "run": {"pretrained": "none", "shots": 2},
}  # fmt: skip


def _json_arg(flag: str, value: str | None) -> dict | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise ValueError(f"{flag} {value!r} is not JSON ({e}); use e.g. '{{\"A100\": 1}}'") from None
    if not isinstance(parsed, dict) or not all(isinstance(v, (int, float)) for v in parsed.values()):
        raise ValueError(f"{flag} {value!r} must be a JSON object of resource name -> amount")
    return parsed


def _merge(settings: dict, layer: dict) -> None:
    """Lay `layer` over `settings`; the run spec merges key by key."""
    settings.update({k: v for k, v in layer.items() if k != "run"})
    settings.setdefault("run", {}).update(layer.get("run", {}))


def build_study(args: argparse.Namespace) -> StudyConfig:
    """The study from, in rising precedence: the preset, --smoke, the --study file, the other flags."""
    if args.preset not in PRESETS:
        raise ValueError(f"--preset {args.preset!r} is not valid; choose one of {sorted(PRESETS)}")
    settings: dict = {}
    for layer in (PRESETS[args.preset], SMOKE if args.smoke else {}, read_study_file(args.study) if args.study else {}):
        _merge(settings, layer)
    if args.data_root:
        root = Path(args.data_root).resolve()
        if not root.is_dir():
            raise ValueError(f"--data-root {root} does not exist or is not a folder")
        settings["run"]["root"] = str(root)
    if settings["run"].get("dataset", "toy") != "toy" and "root" not in settings["run"]:
        raise ValueError(f"--preset {args.preset} needs --data-root: the folder holding the dataset")
    for key in ("model", "pretrained"):
        if getattr(args, key):
            settings["run"][key] = getattr(args, key)
    flat = {
        "name": args.name, "mode": args.mode, "objective": args.objective, "num_samples": args.num_samples,
        "workers_per_trial": args.workers, "gpus_per_worker": args.gpus_per_worker, "storage_path": args.storage,
        "epochs": args.epochs, "seeds": tuple(args.seeds) if args.seeds else None,
        "cpus_per_worker": args.cpus_per_worker, "autoscale": args.autoscale,
        "worker_resources": _json_arg("--worker-resources", args.worker_resources),
    }  # fmt: skip
    settings.update({k: v for k, v in flat.items() if v is not None})
    try:
        return StudyConfig(**settings)
    except ValueError as e:
        raise ValueError(f"study file {args.study}: {e}" if args.study else str(e)) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="toy", help=f"one of {sorted(PRESETS)} (default: toy)")
    p.add_argument("--study", default=None, help="a TOML study file (StudyConfig fields; [run] for the run spec)")
    p.add_argument("--smoke", action="store_true", help="a seconds-scale run of the whole pipeline")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study with the same name and settings")
    p.add_argument("--overwrite", action="store_true", help="move an existing study of this name aside (NAME.old-TIME) and start afresh")
    p.add_argument("--break-lock", action="store_true", help="take over the study's lock from a driver that crashed on another machine")
    p.add_argument("--name", default=None, help="study name (its folder under --storage)")
    p.add_argument("--mode", default=None, choices=MODES)
    p.add_argument("--objective", default=None, choices=OBJECTIVES, help="search mode: accuracy, or pareto (accuracy vs parameters)")
    p.add_argument("--num-samples", type=int, default=None, help="search mode: trials")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--data-root", default=None, help="dataset folder for the real-data presets")
    p.add_argument("--model", default=None, help="open_clip model name")
    p.add_argument("--pretrained", default=None, help="open_clip tag, local weights file, 'toy' or 'none'")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers per trial")
    p.add_argument("--gpus-per-worker", type=float, default=None)
    p.add_argument("--cpus-per-worker", type=float, default=None)
    p.add_argument("--worker-resources", default=None, help='custom resources per worker as JSON, e.g. \'{"A100": 1}\'')
    p.add_argument("--autoscale", action="store_true", default=None, help="the cluster autoscales: skip the size check")
    p.add_argument("--storage", default=None, help="where studies live (default: $MMAP_RAY_STORAGE, else ~/mmap-ray/studies): a local folder, a shared filesystem on a cluster, "
                   "or s3://BUCKET/PREFIX, gs://BUCKET/PREFIX (an S3-compatible server: add ?endpoint_override=HOST:PORT&scheme=http)")
    args = p.parse_args(argv)
    study = None
    try:
        study = build_study(args)
        results = run_study(study, resume=args.resume, overwrite=args.overwrite, break_lock=args.break_lock)
    except ValueError as e:
        print(f"grouping study: error: {e}", file=sys.stderr)
        return 2
    except StorageError as e:  # results could not be written: nothing finished is lost, --resume goes on
        print(f"grouping study: error: {e}; fix it and rerun with --resume", file=sys.stderr)
        return 1
    except Interrupted as e:  # Ctrl-C reached Tune, which stopped the trials: no partial leaderboard
        print(f"grouping study: {e} (study folder: {study.study_dir})", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        where = f" (study folder: {study.study_dir})" if study else ""
        print(f"grouping study: interrupted before every trial had a result; continue with --resume{where}", file=sys.stderr)
        return 130
    print(f"results (Parquet): {results}")
    try:
        done = load_study(results)  # read once: the summary, the failures and the report all come from it
    except ValueError as e:  # the study ran; a report that cannot be built is not its failure
        print(f"report: not written: {e}", file=sys.stderr)
        return 0
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(mean_std(leaderboard(done.trials)).to_string())
    failed = failures(done.trials)
    if len(failed):
        print(f"{len(failed)} trials errored (their rows have status ERROR and the reason in `error`):")
        print(failed.to_string(index=False, max_colwidth=160))
    try:
        report = write_report(done)
    except (ValueError, OSError) as e:  # e.g. a report folder we did not write: the study's results stand
        print(f"report: not written: {e}", file=sys.stderr)
        return 0
    print(f"report: {report.html} (Markdown: {report.markdown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
