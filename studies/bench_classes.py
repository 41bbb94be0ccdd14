"""Step cost against tasks x classes: the MmAP training step at the Office-Home shape (4 tasks x 65 classes,
260 class prompts per step) and at the DomainNet shape (6 tasks x 345 classes, 2,070), and the text tower's
share of the DomainNet step.

Every step encodes the class prompts of every task in the batch (`PromptedCLIP.text_features`), so the text
tower's work grows with tasks x classes, 7.96x from Office-Home to DomainNet, while the image tower's stays
with the batch. Goals (BENCHMARKS.md): the DomainNet step costs at most 7.96x the Office-Home step, and the
text tower is not most of it. Class names are placeholders ("class 17"): the cost depends on their count and
token length, not their meaning.
"""

from __future__ import annotations

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
