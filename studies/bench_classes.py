"""Step cost against tasks x classes: the MmAP training step at the Office-Home shape (4 tasks x 65 classes,
260 class prompts per step) and at the DomainNet shape (6 tasks x 345 classes, 2,070), and the text tower's
share of the DomainNet step.

Every step encodes the class prompts of every task in the batch (`PromptedCLIP.text_features`), so the text
tower's work grows with tasks x classes, 7.96x from Office-Home to DomainNet, while the image tower's stays
with the batch. Goals (BENCHMARKS.md): the DomainNet step costs at most 7.96x the Office-Home step, and the
text tower is not most of it. Class names are placeholders ("class 17"): the cost depends on their count and
token length, not their meaning.

`studies/benchmark.py` runs it on the tiny CLIP (and ViT-B-16 on CUDA); alone, for one backbone:

    .venv/bin/python studies/bench_classes.py --model ViT-B-16 --batch-size 4 --repeats 1
"""

from __future__ import annotations

import argparse
import sys

import bench
import torch
from bench_table import row

from mmap_ray.model import PromptedCLIP
from mmap_ray.prompts import MmAPConfig

SHAPES = {"Office-Home": (4, 65), "DomainNet": (6, 345)}  # name -> (tasks, classes per task)
STEP = "MmAP step, DomainNet 6x345 / Office-Home 4x65"
TEXT_SHARE = "text tower / MmAP step, DomainNet 6x345"


def shaped_model(backbone, setup: bench.Setup, tasks: int, classes: int) -> PromptedCLIP:
    """MmAP on `backbone` for `tasks` tasks of `classes` classes each, the tasks in pairs (group + task prompts)."""
    names = [f"domain{t}" for t in range(tasks)]
    partition = "|".join("+".join(names[i : i + 2]) for i in range(0, tasks, 2))
    torch.manual_seed(setup.seed)
    model = PromptedCLIP(
        backbone,
        {n: [f"class {c}" for c in range(classes)] for n in names},
        MmAPConfig(layers=setup.layers),
        partition=partition,
        truncate_context=setup.truncate_context,
    )
    return model.to(setup.device)


def class_scaling(backbone, setup: bench.Setup, repeats: int) -> list[dict]:
    """The two shapes' training steps on the same batch size, and the DomainNet text tower alone."""
    most = max(tasks for tasks, _ in SHAPES.values())
    if setup.batch_size < most:  # a step encodes the prompts of the tasks in its batch only
        raise ValueError(f"batch_size={setup.batch_size}: use at least {most}, so that every task is in each step")
    models = {name: shaped_model(backbone, setup, *shape) for name, shape in SHAPES.items()}
    batches = {name: bench.make_batch(m, setup.batch_size, setup.seed) for name, m in models.items()}
    opts = {name: bench.optimizer([p for p in m.parameters() if p.requires_grad]) for name, m in models.items()}

    def step(name: str):
        return lambda: bench.train_step(models[name], opts[name], batches[name])

    t = bench.measure(
        {
            "oh": step("Office-Home"),
            "dn": step("DomainNet"),
            "dn_text": lambda: bench.text_tower_step(models["DomainNet"]),
        },
        repeats,
        device=setup.device,
    )
    prompts = {name: tasks * classes for name, (tasks, classes) in SHAPES.items()}
    ratio = prompts["DomainNet"] / prompts["Office-Home"]
    return [
        row(
            "classes",
            setup,
            STEP,
            **bench.ratio_stats(t["dn"], t["oh"]),
            note=f"class prompts per step {prompts['DomainNet']:,} / {prompts['Office-Home']:,} = {ratio:.2f}",
        ),
        row(
            "classes",
            setup,
            TEXT_SHARE,
            **bench.ratio_stats(t["dn_text"], t["dn"]),
            note="every task's class prompts forward, then backward to the prompts",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="MmAP step at DomainNet's shape / Office-Home's, and the text tower's share"
    )
    p.add_argument("--model", default=bench.TINY_MODEL, help="an open_clip model name (random weights)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    setup = bench.Setup(model=args.model, batch_size=args.batch_size)
    torch.set_flush_denormal(True)  # as studies/benchmark.py: random weights must not cost denormal arithmetic
    for r in class_scaling(bench.load(setup), setup, args.repeats):
        print(
            f"{r['model']} batch {r['batch_size']}: {r['figure']}: {r['ratio_median']:.2f} "
            f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}; {r['numerator_s']:.3f} s / {r['denominator_s']:.3f} s; "
            f"goal {r['goal']}: {'met' if r['goal_met'] else 'missed'}); {r['note']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
