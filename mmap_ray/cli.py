"""The `mmap-ray` command: one entry point, a subcommand per job.

    mmap-ray train                      # MmAP on the toy benchmark with the tiny pretrained CLIP
    mmap-ray eval                       # zero-shot on the same benchmark
    mmap-ray eval --run runs/NAME       # a trained run's test accuracy
    mmap-ray params --model ViT-B-16 --tasks Art,Clipart,Product,RealWorld \\
        --partition "Art+Clipart|Product+RealWorld"
    mmap-ray report ~/mmap-ray/studies/grouping/results   # tables and figures of a study

Every subcommand validates its whole configuration before doing any work, and reports a bad value as
one line naming the option, the value and what would be valid (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from .prompts import Combine, MmAPConfig, Projection
from .storage import StorageError


DATASETS = ("toy", "office-home", "minidomainnet", "domainnet", "folders")


def add_backbone_args(p: argparse.ArgumentParser, model: str = "ViT-B-16", pretrained: str | None = None) -> None:
    g = p.add_argument_group("backbone")
    g.add_argument("--model", default=model, help="open_clip model name (default: %(default)s)")
    g.add_argument(
        "--pretrained",
        default=pretrained,
        help="open_clip pretrained tag (needs the model hub or its cache), a local checkpoint file, 'toy' "
        "(our tiny CLIP pretrained on the toy benchmark, built and cached on first use) or 'none' for "
        "random weights (default: %(default)s)",
    )


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="toy", choices=DATASETS, help="benchmark (default: %(default)s)")
    g.add_argument("--root", default=None, help="dataset folder (not for toy)")
    g.add_argument("--domains", default=None, help="comma-separated domains to use as tasks (default: all)")
    g.add_argument("--shots", type=int, default=None, help="k-shot: at most k training images per class")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the toy render / the train-val-test split")
    g.add_argument("--skip-bad-images", action="store_true", help="drop unreadable images instead of failing")


def add_mmap_args(p: argparse.ArgumentParser) -> None:
    d = MmAPConfig()
    g = p.add_argument_group("prompts (MmAP)")
    g.add_argument("--n-tokens", type=int, default=d.n_tokens, help="prompt tokens per layer (default: %(default)s)")
    g.add_argument(
        "--layers",
        default=None,
        help="alignment layers shared by both towers: '0-10', '0,2,4', 'none' "
        "(default: every block but the last of the shallower tower)",
    )
    g.add_argument("--text-layers", default=None, help="text-tower alignment layers (overrides --layers)")
    g.add_argument("--vision-layers", default=None, help="vision-tower alignment layers (overrides --layers)")
    g.add_argument("--source-dim", type=int, default=None, help="kron source width d_s (default: gcd of widths)")
    g.add_argument("--projection", default=d.projection.value, choices=[e.value for e in Projection])
    g.add_argument("--combine", default=d.combine.value, choices=[e.value for e in Combine])
    g.add_argument("--no-task-prompts", action="store_true", help="group-shared prompts only")


def mmap_config_from_args(args: argparse.Namespace) -> MmAPConfig:
    from .runspec import mmap_config, spec

    return mmap_config(spec({k: getattr(args, k) for k in ("n_tokens", "layers", "text_layers", "vision_layers",
                                                          "source_dim", "projection", "combine", "no_task_prompts")}))


def cmd_params(args: argparse.Namespace) -> int:
    from .backbone import BackboneConfig, load_backbone
    from .grouping import Partition
    from .prompts import PromptBank

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    partition = Partition.parse(args.partition, tasks) if args.partition else Partition.single(tasks)
    cfg = mmap_config_from_args(args)
    backbone = load_backbone(BackboneConfig(args.model, args.pretrained))
    bank = PromptBank(cfg, backbone.info, partition)
    trainable = sum(p.numel() for p in bank.parameters())
    total = backbone.info.num_params + trainable
    layers = bank.layers
    report = {
        "model": args.model,
        "tasks": tasks,
        "partition": str(partition),
        "projection": cfg.projection.value,
        "combine": cfg.combine.value,
        "n_tokens": cfg.n_tokens,
        "tokens_per_task": cfg.tokens_per_task,
        "source_dim": layers.source_dim if cfg.projection == Projection.KRON else None,
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
    print(title + "  " + "  ".join(f"{k} {100 * v:.1f}" for k, v in acc.items()))


def _run_config(args: argparse.Namespace) -> dict:
    """The run spec (see `runspec`) named by the command-line options."""
    from .runspec import DEFAULTS

    return {k: getattr(args, k) for k in DEFAULTS if hasattr(args, k)}


def _build(args: argparse.Namespace, splits_dir: Path | None = None):
    from .runspec import build_run

    return build_run(_run_config(args), splits_dir)


def cmd_train(args: argparse.Namespace) -> int:

    from .engine import TrainConfig, evaluate, train, write_json
    from .model import count_parameters

    tcfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        weight_decay=args.weight_decay, seed=args.seed, full_finetune=args.full_finetune,
        sampling=args.sampling, num_workers=args.loader_workers,
    )  # fmt: skip
    if args.workers < 0:
        raise ValueError(f"--workers {args.workers} is not valid; give 0 (train in this process) or >= 1 Ray workers")
    mmap_config_from_args(args)  # validate the prompt options before anything is written
    out = Path(args.out or f"runs/{args.dataset}-{'full' if args.full_finetune else args.projection}-seed{args.seed}")
    config = {"run": _run_config(args), "train": asdict(tcfg)}
    saved = out / "config.json"
    if saved.is_file() and json.loads(saved.read_text()) != json.loads(json.dumps(config)):
        raise ValueError(
            f"--out {out} holds a run with a different configuration ({saved}); resume it with the same "
            f"options, or give another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    model, tasks = _build(args, splits_dir=out / "splits")
    write_json(saved, config)
    trainable_before = count_parameters(model)  # prompts only, before full fine-tuning unfreezes
    start = time.time()
    if args.workers > 0:  # the same loop in Ray Train workers; their final state becomes this run folder's
        from .checkpoint import load_trainable, save_run
        from .distributed import WorkerSpec, fit_distributed

        spec = WorkerSpec(args.workers, args.cpus_per_worker, args.gpus_per_worker, args.max_failures)
        state = fit_distributed(config["run"], tcfg, out, spec)
        save_run(out, state)
        load_trainable(model, state["trainable"])
        history = state["history"]
    else:
        history = train(model, tasks, tcfg, out, resume=True, progress=not args.no_progress)
    test = {k.removeprefix("test/"): v for k, v in (history[-1] if history else {}).items() if k.startswith("test/")}
    if not test:  # no epoch ran (epochs 0), or a run folder from before test rows: evaluate the model as it is
        test = evaluate(model, tasks, "test", tcfg.eval_batch_size)
    trainable, total = count_parameters(model)
    summary = {
        "epochs": len(history),
        "final": history[-1] if history else {},
        "test": test,
        "trainable_params": trainable if tcfg.full_finetune else trainable_before[0],
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
    from .checkpoint import load, load_trainable
    from .engine import evaluate, write_json

    if args.run:
        run = Path(args.run)
        if not (run / "config.json").is_file() or not (run / "checkpoint.pt").is_file():
            raise ValueError(f"--run {run} is not a finished run folder: it needs config.json and checkpoint.pt")
        for k, v in json.loads((run / "config.json").read_text())["run"].items():
            setattr(args, k, v)
        model, tasks = _build(args, splits_dir=run / "splits")
        load_trainable(model, load(run / "checkpoint.pt")["trainable"])
    else:
        model, tasks = _build(args)
    acc = evaluate(model, tasks, args.split)
    _print_accuracy(f"{args.split} accuracy (%):", acc)
    if args.out:
        write_json(Path(args.out), acc)
    return 0


def cmd_group(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch

    from .affinity import AffinityConfig, task_affinity
    from .engine import write_json
    from .grouping import AFFINITY_SCHEMES, best_partition, fixed_partition, partition_score

    acfg = AffinityConfig(
        method=args.scheme if args.scheme in AFFINITY_SCHEMES else "gradient",
        warmup_steps=args.warmup_steps, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
    )  # fmt: skip
    from .runspec import load_run_backbone, load_run_tasks, spec

    mmap = mmap_config_from_args(args)
    run = spec(_run_config(args))
    torch.manual_seed(args.seed)
    backbone = load_run_backbone(run)
    tasks = load_run_tasks(run, backbone)
    names = [t.name for t in tasks]
    if args.k is not None and not 1 <= args.k <= len(names):
        raise ValueError(f"--k {args.k} is not valid for {len(names)} tasks {names}; choose 1 <= k <= {len(names)}")
    affinity = None
    if args.scheme in AFFINITY_SCHEMES:
        affinity = task_affinity(backbone, tasks, acfg, mmap)
        partition = best_partition(affinity, names, args.k)
        table = pd.DataFrame(affinity.numpy(), index=names, columns=names)
        print(f"task affinity ({args.scheme}; row i, column j: {'cos(g_i, g_j)' if args.scheme == 'gradient' else 'Z[i->j]'})")
        print(table.round(3).to_string())
    else:
        partition = fixed_partition(args.scheme, names, args.k, args.seed)
    print(f"partition: {partition}")
    out = Path(args.out or f"runs/group-{args.dataset}-{args.scheme}-seed{args.seed}.json")
    write_json(out, {
        "scheme": args.scheme, "k": args.k, "tasks": names, "partition": str(partition),
        "affinity": affinity.tolist() if affinity is not None else None,
        "score": partition_score(affinity, partition) if affinity is not None else None,
        "affinity_config": asdict(acfg), "run": _run_config(args),
    })  # fmt: skip
    print(f"written: {out}  (use: mmap-ray train --partition \"{partition}\")")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmap-ray", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "params",
        help="trainable / total parameter counts for a backbone, task list, partition and MmAP config",
        description="Print the trainable and total parameter counts and the trainable percentage. "
        "Builds the backbone with the given weights (random by default: counts do not depend on them).",
    )
    p.add_argument("--tasks", required=True, help="comma-separated task names, e.g. Art,Clipart,Product,RealWorld")
    p.add_argument("--partition", default=None, help="task groups, e.g. 'Art+Clipart|Product+RealWorld' (default: one group)")
    add_backbone_args(p)
    add_mmap_args(p)
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.set_defaults(func=cmd_params)

    from .backbone import TINY_MODEL
    from .engine import TrainConfig

    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train MmAP (or a baseline) on a benchmark; writes metrics, checkpoints and a summary",
        description="Train prompts on a multi-task benchmark. With no options: MmAP (kron) on the toy "
        "benchmark with the tiny CLIP pretrained on it (built and cached on first use, ~2 min). Per-epoch "
        "metrics go to OUT/metrics.jsonl, the final summary to OUT/summary.json; re-running the same "
        "command resumes from OUT/checkpoint.pt.",
    )
    add_data_args(p)
    add_backbone_args(p, model=TINY_MODEL, pretrained="toy")
    add_mmap_args(p)
    p.add_argument(
        "--partition",
        default=None,
        help="task groups, e.g. 'Art+Clipart|Product+RealWorld', or the JSON file `mmap-ray group` wrote "
        "(default: one group)",
    )
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=d.epochs, help="(default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch, shared by tasks (default: %(default)s)")
    g.add_argument("--lr", type=float, default=d.lr, help="(default: %(default)s)")
    g.add_argument("--optimizer", default=d.optimizer, choices=["adamw", "sgd"])
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--sampling", default=d.sampling, choices=["equal", "proportional"], help="task share of a batch")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--full-finetune", action="store_true", help="baseline: train the whole backbone (use --layers none)")
    g.add_argument("--loader-workers", type=int, default=0, help="data-loading processes per trainer (default: %(default)s)")
    g = p.add_argument_group("distributed (Ray Train)")
    g.add_argument("--workers", type=int, default=0, help="Ray Train DDP workers; 0 trains in this process (default: %(default)s)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each worker reserves; fractions allowed")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each worker reserves (NCCL when > 0)")
    g.add_argument("--max-failures", type=int, default=2, help="worker-group restarts from the last checkpoint")
    g.add_argument("--out", default=None, help="run folder (default: runs/DATASET-PROJECTION-seedSEED)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "group",
        help="task affinity and the chosen partition (gradient, lookahead, or a fixed scheme)",
        description="Warm up one MmAP shared by all tasks, measure task affinity (gradient: cosine of "
        "per-task gradients; lookahead: TAG's Z[i->j]), print it as a table and choose the partition with "
        "the highest mean within-group affinity. Fixed schemes (single, independent, random, or an explicit "
        "partition) need no training. The partition is written to --out as JSON and printed in the form "
        "`mmap-ray train --partition` takes.",
    )
    p.add_argument("--scheme", default="gradient", help="gradient | lookahead | single | independent | random | A+B|C+D")
    p.add_argument("--k", type=int, default=None, help="number of groups (default: chosen by within-minus-between affinity)")
    p.add_argument("--warmup-steps", type=int, default=40, help="shared-MmAP training steps before measuring")
    p.add_argument("--steps", type=int, default=20, help="batches the affinity is averaged over")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON file (default: runs/group-DATASET-SCHEME-seedSEED.json)")
    add_data_args(p)
    add_backbone_args(p, model=TINY_MODEL, pretrained="toy")
    add_mmap_args(p)
    p.set_defaults(func=cmd_group)

    p = sub.add_parser(
        "eval",
        help="accuracy of a trained run, or zero-shot accuracy of a backbone",
        description="With --run: rebuild the run's model, load its checkpoint and evaluate. Without: "
        "zero-shot CLIP (no prompts unless MmAP options are given) on the chosen benchmark.",
    )
    p.add_argument("--run", default=None, help="a run folder written by `mmap-ray train`")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--out", default=None, help="also write the accuracies to this JSON file")
    add_data_args(p)
    add_backbone_args(p, model=TINY_MODEL, pretrained="toy")
    add_mmap_args(p)
    p.set_defaults(layers="none", partition=None, seed=0)
    p.set_defaults(func=cmd_eval)

    from .report import add_report_args, run_report

    p = sub.add_parser(
        "report",
        help="a study's Markdown and self-contained HTML report with figures, from its Parquet results",
        description="Read a study's results (trials, epochs, partitions.json) and write report.md, report.html "
        "and figures/*.png: the leaderboard (mean ± std over seeds), the paper's comparisons, accuracy vs "
        "trainable parameters with the Pareto front, task affinity, learning curves and ablations.",
    )
    add_report_args(p)
    p.set_defaults(func=run_report)
    return parser


# Bad input: a wrong value, a missing or unreadable file, a run folder that cannot be written. One line.
INPUT_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, StorageError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except INPUT_ERRORS as e:
        print(f"mmap-ray {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
