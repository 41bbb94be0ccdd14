"""The `mmap-ray` command: one entry point, a subcommand per job.

    mmap-ray train                      # MmAP on the toy benchmark with the tiny pretrained CLIP
    mmap-ray eval                       # zero-shot on the same benchmark
    mmap-ray eval --run runs/NAME       # a trained run's test accuracy
    mmap-ray params --model ViT-B-16 --tasks Art,Clipart,Product,RealWorld \\
        --partition "Art+Clipart|Product+RealWorld"
    mmap-ray study --smoke              # a grouping study on Ray (mmap-ray study --help: its flags)
    mmap-ray report ~/mmap-ray/studies/grouping/results   # tables and figures of a study
    mmap-ray data push ~/data/OfficeHomeDataset s3://my-bucket/datasets/OfficeHomeDataset
    mmap-ray train --dataset office-home --root s3://my-bucket/datasets/OfficeHomeDataset  # staged per node

Every subcommand validates its whole configuration before doing any work, and reports a bad value as
one line naming the option, the value and what would be valid (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Collection, Sequence
from pathlib import Path

from . import __version__
from .storage import StorageError


def add_run_args(p: argparse.ArgumentParser, parts: Sequence[str], **defaults) -> None:
    """Flags for the named parts of a RunConfig ('data', 'backbone', 'prompts', 'train', 'partition'),
    generated from the configs' fields; `defaults` replaces some fields' defaults."""
    from .config import RunConfig
    from .fields import add_arguments

    skip = {"data", "backbone", "prompts", "train", "partition"} - set(parts)
    add_arguments(p, RunConfig, skip=skip, defaults=defaults)


def run_config(args: argparse.Namespace):
    """The RunConfig the command-line flags describe (parts without flags keep their defaults)."""
    from .config import RunConfig
    from .fields import from_dict, parsed_values

    return from_dict(RunConfig, parsed_values(RunConfig, args))


def cmd_params(args: argparse.Namespace) -> int:
    from .config import ModelConfig, comma_list, partition_arg
    from .fields import from_dict, parsed_values
    from .grouping import Partition
    from .prompt_config import MmAPConfig

    tasks = list(comma_list(args.tasks))
    if not tasks or len(set(tasks)) < len(tasks):
        raise ValueError(f"--tasks {args.tasks!r} must name distinct tasks, comma-separated, e.g. Art,Clipart,Product")
    groups = partition_arg(args.partition) if args.partition else None
    partition = Partition(tuple(tasks), groups) if groups else Partition.single(tasks)
    cfg = from_dict(MmAPConfig, parsed_values(MmAPConfig, args))
    model_cfg = from_dict(ModelConfig, parsed_values(ModelConfig, args))
    # torch and open_clip load only once the settings are known to be valid (see cmd_train)
    from .build import load_run_backbone
    from .model import bias_parameters
    from .prompts import PromptBank

    backbone = load_run_backbone(model_cfg)
    bank = PromptBank(cfg, backbone.info, partition)
    added = sum(p.numel() for p in bank.parameters())  # prompts (and adapters): not in the backbone
    biases = sum(p.numel() for p in bias_parameters(backbone.model)) if cfg.projection == "bitfit" else 0
    trainable, total = added + biases, backbone.info.num_params + added
    layers = bank.layers
    report = {
        "model": args.model,
        "tasks": tasks,
        "partition": str(partition),
        "projection": cfg.projection.value,
        "combine": cfg.combine.value,
        "n_tokens": cfg.n_tokens,
        "tokens_per_task": cfg.tokens_per_task,
        "source_dim": layers.source_dim if cfg.projection in ("kron", "phm") else None,
        "text_layers": list(layers.text),
        "vision_layers": list(layers.vision),
        "trainable_params": trainable,
        "backbone_params": backbone.info.num_params,
        "total_params": total,
        "trainable_percent": 100.0 * trainable / total,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        width = max(len(k) for k in report)
        for k, v in report.items():
            if isinstance(v, list):
                v = ",".join(map(str, v)) or "none"
            elif isinstance(v, float):
                v = f"{v:.4f}%"
            elif isinstance(v, int) and not isinstance(v, bool):
                v = f"{v:,}"
            print(f"{k:<{width}}  {v}")
    return 0


def _print_accuracy(title: str, acc: dict[str, float]) -> None:
    print(title + "  " + "  ".join(f"{k} {v:.1f}" for k, v in acc.items()))


def cmd_train(args: argparse.Namespace) -> int:
    # ~70 lines: the train command's steps in the order a user sees them (settings, checks, run folder, resume,
    # training, summary); each is a few lines, and splitting them would hide that order
    from .config import WorkerSpec, read_run_config
    from .fields import from_dict, parsed_values, to_dict

    cfg = run_config(args)
    spec = None
    if args.workers < 1:  # as in a study: 1 trains in this process, more are Ray Train DDP workers
        raise ValueError(
            f"--workers {args.workers} is not valid; give 1 (train in this process, the default) or more (Ray "
            f"Train DDP workers)"
        )
    if args.workers > 1:
        spec = from_dict(WorkerSpec, parsed_values(WorkerSpec, args))
        if cfg.train.device == "cuda" and not spec.gpus_per_worker:
            raise ValueError("--device cuda with --workers needs --gpus-per-worker > 0: the workers reserve no GPU")
    name = "full" if cfg.train.full_finetune else cfg.prompts.projection.value
    out = Path(args.out or f"runs/{cfg.data.dataset}-{name}-seed{cfg.seed}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a run folder (new, or one this command wrote)")
    saved = out / "config.json"
    if saved.is_file() and read_run_config(saved) != cfg:
        raise ValueError(
            f"--out {out} holds a run with a different configuration ({saved}); resume it with the same "
            f"options, or give another --out"
        )
    # torch, open_clip and the data stack load only now, once the settings are known to be valid: a refused
    # setting answers in about a second
    from .build import build_run
    from .engine import resolve_device, train, without_predictions, write_json
    from .evaluation import evaluate, in_percent
    from .model import count_parameters

    resolve_device(cfg.train.device)  # a GPU asked for and absent: refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    model, tasks = build_run(cfg, splits_dir=out / "splits")
    write_json(saved, {"run": to_dict(cfg)})
    trainable = sum(p.numel() for p in model.set_trainable(cfg.train.full_finetune))  # what the loop trains
    start = time.time()
    if spec is not None:  # the same loop in Ray Train workers; their final state becomes this run folder's
        from .checkpoint import load_trainable, save_run
        from .distributed import fit_distributed

        state = fit_distributed(cfg, out, spec)
        save_run(out, state)
        load_trainable(model, state["trainable"], state.get("prompts"))
        history = state["history"]
    else:
        history = train(model, tasks, cfg.train, out, resume=True, progress=not args.no_progress)
    test = {k.removeprefix("test/"): v for k, v in (history[-1] if history else {}).items() if k.startswith("test/")}
    if not test:  # no epoch ran (epochs 0): evaluate the model as it is
        test = evaluate(model, tasks, "test", cfg.train.eval_batch_size)
    test = {k: 100 * v for k, v in test.items()}  # percent, as in metrics.jsonl and every table
    _, total = count_parameters(model)
    summary = {
        "epochs": len(history),
        "final": in_percent(without_predictions(history[-1])) if history else {},
        "test": test,
        "trainable_params": trainable,
        "total_params": total,
        "partition": str(model.partition),
        "wall_s": time.time() - start,
        "out": str(out),
    }
    write_json(out / "summary.json", summary)
    _print_accuracy(f"test accuracy (%) after {len(history)} epochs:", test)
    print(f"run folder: {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .config import read_run_config

    cfg = None
    if args.run:
        run = Path(args.run)
        given = _run_flags_given(args)
        if given:
            raise ValueError(
                f"--run {run} is evaluated as it was trained (its config.json), so {', '.join(given)} would be "
                f"ignored; drop {'it' if len(given) == 1 else 'them'}, or evaluate without --run"
            )
        if not (run / "config.json").is_file() or not (run / "checkpoint.pt").is_file():
            raise ValueError(f"--run {run} is not a finished run folder: it needs config.json and checkpoint.pt")
    else:
        cfg = run_config(args)
    # torch, open_clip and the data stack load only once the settings are known to be valid (see cmd_train)
    import pandas as pd

    from .build import build_run
    from .checkpoint import load, load_trainable
    from .engine import resolve_device, write_json
    from .evaluation import evaluate

    resolve_device(args.device)  # before anything is built
    if args.run:
        model, tasks = build_run(read_run_config(run / "config.json"), splits_dir=run / "splits")
        state = load(run / "checkpoint.pt")
        try:
            load_trainable(model, state["trainable"], state.get("prompts"))
        except ValueError as e:  # e.g. config.json edited after training: never evaluate untrained prompts
            raise ValueError(
                f"--run {run}: {run / 'checkpoint.pt'} does not fit {run / 'config.json'} ({e}); restore the "
                f"config.json the run was trained with"
            ) from None
    else:
        model, tasks = build_run(cfg)
    model.to(resolve_device(args.device))
    if args.predictions:
        from .data.base import split_digest
        from .evaluation import predictions
        from .predictions import write_predictions

        cols = predictions(model, tasks, args.split)
        write_predictions(args.predictions, cols, {"split": args.split, "images": split_digest(tasks, args.split)})
        correct = pd.DataFrame(cols).groupby("task", sort=False)["correct"].mean()
        acc = {**correct.to_dict(), "mean": float(correct.mean())}
        print(f"predictions ({len(cols['task']):,} images): {args.predictions}")
    else:
        acc = evaluate(model, tasks, args.split)
    acc = {k: 100 * v for k, v in acc.items()}  # percent, as in summary.json and every table
    _print_accuracy(f"{args.split} accuracy (%):", acc)
    if args.out:
        write_json(Path(args.out), acc)
    return 0


def _run_flags_given(args: argparse.Namespace) -> list[str]:
    """The run-setting flags of `args` whose values differ from the command's defaults ('--n-tokens')."""
    from .config import RunConfig
    from .fields import leaf_paths
    from .study.config import HOW_IT_RUNS

    fresh = vars(build_parser({args.command}).parse_args([args.command]))
    how = {p.rsplit(".", 1)[-1] for p in HOW_IT_RUNS}  # where and how fast it runs: honoured with --run too
    names = [k for k in leaf_paths(RunConfig) if k in fresh and k not in how]
    return [f"--{k.replace('_', '-')}" for k in names if getattr(args, k) != fresh[k]]


def cmd_group(args: argparse.Namespace) -> int:
    from .config import AffinityConfig
    from .fields import from_dict, parsed_values, to_dict
    from .grouping import AFFINITY_SCHEMES, partition_score, tag_score

    if args.k is not None and args.scheme not in (*AFFINITY_SCHEMES, "random"):
        raise ValueError(
            f"--k {args.k} has no effect with --scheme {args.scheme}: only {', '.join(AFFINITY_SCHEMES)} and random "
            f"choose a number of groups; drop --k"
        )
    method = args.scheme if args.scheme in AFFINITY_SCHEMES else "gradient"
    acfg = from_dict(AffinityConfig, {**parsed_values(AffinityConfig, args), "method": method, "seed": args.seed})
    cfg = run_config(args)
    # torch, open_clip and the data stack load only once the settings are known to be valid (see cmd_train)
    import pandas as pd
    import torch

    from .affinity import plan_partition
    from .build import load_run_backbone, load_run_tasks
    from .engine import resolve_device, write_json

    device = resolve_device(args.device)  # before the backbone is built
    torch.manual_seed(args.seed)
    backbone = load_run_backbone(cfg.backbone, cfg.data.dataset)
    backbone.model.to(device)
    tasks = load_run_tasks(cfg.data, backbone)
    names = [t.name for t in tasks]
    if args.k is not None and not 1 <= args.k <= len(names):
        raise ValueError(f"--k {args.k} is not valid for {len(names)} tasks {names}; choose 1 <= k <= {len(names)}")
    progress = not getattr(args, "no_progress", False)
    partition, affinity = plan_partition(args.scheme, backbone, tasks, acfg, cfg.prompts, cfg.train, args.k, progress)
    if affinity is not None:
        table = pd.DataFrame(affinity.numpy(), index=names, columns=names)
        entry = "cos(g_i, g_j)" if args.scheme == "gradient" else "Z[i->j]"
        print(f"task affinity ({args.scheme}; row i, column j: {entry})")
        print(table.round(3).to_string())
    print(f"partition: {partition}")
    out = Path(args.out or f"runs/group-{args.dataset}-{args.scheme}-seed{args.seed}.json")
    write_json(
        out,
        {
            "scheme": args.scheme,
            "k": args.k,
            "tasks": names,
            "partition": str(partition),
            "affinity": affinity.tolist() if affinity is not None else None,
            "score": (tag_score if args.scheme == "tag" else partition_score)(affinity, partition)
            if affinity is not None
            else None,
            "affinity_config": to_dict(acfg),
            "run": to_dict(cfg),
        },
    )
    print(f'written: {out}  (use: mmap-ray train --partition "{partition}")')
    return 0


# Every subcommand and its line in `mmap-ray --help`. A parser is built in full only for the subcommand that
# runs: each one's flags come from its configs, whose imports (torch, open_clip, Ray) take seconds, which
# `mmap-ray --help`, `--version` and `report` should not pay for.
COMMANDS = {
    "study": "run a grouping study on Ray (mmap-ray study --help)",
    "params": "trainable / total parameter counts for a backbone, task list, partition and MmAP config",
    "train": "train MmAP (or a baseline) on a benchmark; writes metrics, checkpoints and a summary",
    "group": "task affinity and the chosen partition (tag, the gradient / lookahead probes, or a fixed scheme)",
    "eval": "accuracy of a trained run, or zero-shot accuracy of a backbone",
    "compare": "two runs' predictions on the same images: paired bootstrap CI and McNemar's test",
    "report": "a study's Markdown and self-contained HTML report with figures, from its Parquet results",
    "data": "put a dataset folder in object storage, or stage one from there to this node",
}


def _adder(command: str):
    """The function that adds `command`'s full parser to the subparsers (called with them and its help)."""
    if command == "compare":
        from .cli_compare import add_compare

        return add_compare
    if command == "data":
        from .cli_data import add_data

        return add_data
    adders = {"params": _add_params, "train": _add_train, "group": _add_group, "eval": _add_eval}
    return adders.get(command, _add_report)


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The `mmap-ray` parser; the subcommands in `commands` (default: all) get their flags, the others only
    their name and help line."""
    parser = argparse.ArgumentParser(prog="mmap-ray", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"mmap-ray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command, help in COMMANDS.items():
        # `study` has its own parser (mmap_ray.study.program, shared with studies/grouping.py): main hands it on
        if command != "study" and (commands is None or command in commands):
            _adder(command)(sub, help)
        else:
            sub.add_parser(command, add_help=command != "study", help=help)
    return parser


def _add_params(sub, help: str) -> None:
    p = sub.add_parser(
        "params",
        help=help,
        description="Print the trainable and total parameter counts and the trainable percentage. "
        "Builds the backbone with the given weights (random by default: counts do not depend on them).",
    )
    p.add_argument("--tasks", required=True, help="comma-separated task names, e.g. Art,Clipart,Product,RealWorld")
    add_run_args(p, ("backbone", "prompts", "partition"), model="ViT-B-16", pretrained=None)
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.set_defaults(func=cmd_params)


def _add_train(sub, help: str) -> None:
    from .config import WorkerSpec
    from .fields import add_arguments

    p = sub.add_parser(
        "train",
        help=help,
        description="Train prompts on a multi-task benchmark. With no options: MmAP (kron) on the toy "
        "benchmark with the tiny CLIP pretrained on it (built and cached on first use, ~2 min). Per-epoch "
        "metrics go to OUT/metrics.jsonl, the final summary to OUT/summary.json (accuracies in percent, as "
        "printed and as in a study's tables); re-running the same "
        "command resumes from OUT/checkpoint.pt.",
    )
    add_run_args(p, ("data", "backbone", "prompts", "train", "partition"))
    g = p.add_argument_group("distributed (Ray Train with --workers 2 or more; 1, the default, trains in this process)")
    add_arguments(g, WorkerSpec)
    g.add_argument("--out", default=None, help="run folder (default: runs/DATASET-PROJECTION-seedSEED)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)


def _add_group(sub, help: str) -> None:
    from .config import AffinityConfig
    from .fields import add_arguments

    p = sub.add_parser(
        "group",
        help=help,
        description="Train one MmAP shared by all tasks and measure task affinity: tag (TAG: the look-ahead "
        "Z[i->j] every --tag-every steps of a joint run with the training flags' schedule, then TAG's grouping "
        "score), or a short probe (gradient: cosine of per-task gradients; lookahead: Z[i->j] through AdamW's "
        "step; partition by the highest mean within-group affinity). Print it as a table and the chosen "
        "partition. Fixed schemes (single, independent, random, or an explicit partition) need no training. "
        "The partition is written to --out as JSON and printed in the form `mmap-ray train --partition` takes.",
    )
    p.add_argument(
        "--scheme", default="gradient", help="tag, gradient, lookahead, single, independent, random or A+B|C+D"
    )
    p.add_argument("--k", type=int, default=None, help="number of groups (default: chosen by within-minus-between)")
    p.add_argument("--out", default=None, help="JSON file (default: runs/group-DATASET-SCHEME-seedSEED.json)")
    add_run_args(p, ("data", "backbone", "prompts", "train"))  # --seed also seeds the random scheme
    add_arguments(p.add_argument_group("affinity"), AffinityConfig)
    p.set_defaults(func=cmd_group)


def _add_device(p: argparse.ArgumentParser) -> None:
    """--device for the commands without the training options (train has it from TrainConfig)."""
    from .config import DEVICES

    p.add_argument("--device", default="auto", choices=DEVICES, help="auto (CUDA when present), cpu or cuda")


def _add_eval(sub, help: str) -> None:
    p = sub.add_parser(
        "eval",
        help=help,
        description="With --run: rebuild the run's model, load its checkpoint and evaluate. Without: "
        "zero-shot CLIP (no prompts unless MmAP options are given) on the chosen benchmark.",
    )
    p.add_argument("--run", default=None, help="a run folder written by `mmap-ray train`")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--out", default=None, help="also write the accuracies to this JSON file")
    p.add_argument(
        "--predictions",
        default=None,
        help="also write every image's outcome to this Parquet file (task, image, label, prediction, correct), "
        "for `mmap-ray compare`",
    )
    add_run_args(p, ("data", "backbone", "prompts"), layers=())
    _add_device(p)
    p.set_defaults(func=cmd_eval)


def _add_report(sub, help: str) -> None:
    from .report import add_report_args, run_report

    p = sub.add_parser(
        "report",
        help=help,
        description="Read a study's results (trials, epochs, partitions.json) and write report.md, report.html "
        "and figures/*.png: the leaderboard (mean ± std over seeds), the paper's comparisons, accuracy vs "
        "trainable parameters with the Pareto front, task affinity, learning curves and ablations.",
    )
    add_report_args(p)
    p.set_defaults(func=run_report)


# Bad input: a wrong value, a missing or unreadable file (any OSError: it names the path), a run folder that
# cannot be written. One line.
INPUT_ERRORS = (ValueError, OSError, StorageError)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["study"]:
        from .study.program import main as study  # imported here: Ray and the report stack, for a study only

        return study(argv[1:])
    args = build_parser(argv[:1]).parse_args(argv)
    try:
        return args.func(args)
    except INPUT_ERRORS as e:
        print(f"mmap-ray {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # a run whose loss stopped being finite: its settings, in one line
        print(f"mmap-ray {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: a train run keeps its last checkpoint, and the same command resumes it
        hint = "; the same command continues from the last checkpoint" if args.command == "train" else ""
        print(f"mmap-ray {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
