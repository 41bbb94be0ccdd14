"""The `mmap-ray` command: one entry point, a subcommand per job.

    mmap-ray params --model ViT-B-16 --tasks Art,Clipart,Product,RealWorld \\
        --partition "Art+Clipart|Product+RealWorld"

Every subcommand validates its whole configuration before doing any work, and reports a bad value as
one line naming the option, the value and what would be valid (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .prompts import Combine, MmAPConfig, Projection, parse_layers


def add_backbone_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backbone")
    g.add_argument("--model", default="ViT-B-16", help="open_clip model name (default: %(default)s)")
    g.add_argument(
        "--pretrained",
        default=None,
        help="open_clip pretrained tag (needs the model hub or its cache) or a local checkpoint file; "
        "omit for random weights",
    )


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
    return MmAPConfig(
        n_tokens=args.n_tokens,
        layers=parse_layers(args.layers),
        text_layers=parse_layers(args.text_layers),
        vision_layers=parse_layers(args.vision_layers),
        source_dim=args.source_dim,
        projection=args.projection,
        combine=args.combine,
        task_prompts=not args.no_task_prompts,
    )


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"mmap-ray {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
