"""The benchmark's table: one flat row per figure, judged against its goal, as Parquet rows and Markdown.

`row` builds a row (the goal of its figure, if any, decides `goal_met`); `markdown` renders the rows with
where they ran (`machine`); `write_markdown` puts the table between BENCHMARKS.md's markers, keeping the
hand-written text around it.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

BEGIN, END = "<!-- benchmark:begin -->", "<!-- benchmark:end -->"
# figure -> (comparison, threshold): the goals of the issue the table is judged against.
GOALS = {
    "MmAP step / frozen forward": ("<=", 2.2),
    "MmAP peak memory / full FT peak memory": ("<=", 0.6),
    "all-reduced bytes per step, MmAP / full FT": ("<=", 0.001),
    "text tower step, 77 tokens / truncated": (">=", 3.0),
    "text logits max |truncated - 77 tokens|": ("<=", 1e-5),
    "Tune trial (1 worker, in the trial's process) / in-process": ("<=", 1.15),
    "Tune trial (2 workers, Ray Train) / in-process": ("<=", 1.25),
    # issue 32: the step grows no faster than the class prompts it encodes (2,070 / 260), and the text tower
    # is not most of the DomainNet step
    "MmAP step, DomainNet 6x345 / Office-Home 4x65": ("<=", 7.96),
    "text tower / MmAP step, DomainNet 6x345": ("<=", 0.5),
}
COLUMNS = {
    "group": "",
    "model": "",
    "device": "",
    "batch_size": 0,
    "layers": "",
    "figure": "",
    "ratio_min": None,
    "ratio_median": None,
    "ratio_max": None,
    "repeats": 0,
    "numerator_s": None,
    "denominator_s": None,
    "flop_ratio": None,
    "max_abs_diff": None,
    "numerator_bytes": None,
    "denominator_bytes": None,
    "goal": "",
    "goal_met": None,
    "note": "",
}


def row(group: str, setup: object | None, figure: str, **values) -> dict:
    """One flat result row; the goal (if any) is judged on ratio_median, or max_abs_diff for a check."""
    r = dict(COLUMNS, group=group, figure=figure, **values)
    if setup is not None:
        r.update(
            model=setup.model, device=setup.device, batch_size=setup.batch_size, layers=str(setup.layers or "default")
        )
    if figure in GOALS:
        op, limit = GOALS[figure]
        value = r["max_abs_diff"] if r["ratio_median"] is None else r["ratio_median"]
        r["goal"] = f"{op} {limit:g}"
        r["goal_met"] = bool(value <= limit if op == "<=" else value >= limit)
    return r


def single(group: str, setup: object | None, figure: str, numerator: float, denominator: float, **values) -> dict:
    """A row for a figure measured once: its ratio is numerator / denominator (seconds or bytes, per `values`)."""
    ratio = numerator / denominator
    return row(group, setup, figure, ratio_min=ratio, ratio_median=ratio, ratio_max=ratio, repeats=1, **values)


def machine() -> dict:
    """Where the benchmark ran: CPU model, cores, GPU, library versions, load."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "torch_version": torch.__version__,
        "platform": platform.platform(),
    }


def _fmt(r: dict) -> str:
    if r["ratio_median"] is None:
        return "-"
    if r["repeats"] > 1:
        return f"**{r['ratio_median']:.3g}** ({r['ratio_min']:.3g}-{r['ratio_max']:.3g})"
    return f"**{r['ratio_median']:.3g}**"


def _detail(r: dict) -> str:
    parts = []
    if r["numerator_s"] is not None:
        parts.append(f"{r['numerator_s']:.3g} s / {r['denominator_s']:.3g} s")
    if r["numerator_bytes"] is not None:
        parts.append(f"{r['numerator_bytes']:,} B / {r['denominator_bytes']:,} B")
    if r["flop_ratio"] is not None:
        parts.append(f"FLOP ratio {r['flop_ratio']:.3f}")
    if r["max_abs_diff"] is not None:
        parts.append(f"max abs diff {r['max_abs_diff']:.2g}")
    if r["note"]:
        parts.append(r["note"])
    return "; ".join(parts)


def markdown(rows: list[dict], info: dict, command: str) -> str:
    """The generated section of BENCHMARKS.md: how to reproduce, where it ran, the table."""
    met = {True: "met", False: "**missed**", None: ""}
    lines = [
        f"Command: `{command}` ({info['finished']}, {info['wall_s']:.0f} s).",
        "",
        (
            f"Machine: {info['cpu_model']}, {info['cores']} cores ({info['torch_threads']} torch threads), "
            f"GPU {info['gpu']}; torch {info['torch_version']}, {info['platform']}. Load average (1, 5, 15 min) before "
            f"{info['load_before']}, after {info['load_after']}."
        ),
        "",
        "| group | model (batch) | figure | ratio: median (min-max) | n | detail | goal | |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        model = f"{r['model']} ({r['batch_size']})" if r["model"] else ""
        if r["layers"] not in ("", "default"):
            model += f", layers {r['layers']}"
        lines.append(
            f"| {r['group']} | {model} | {r['figure']} | {_fmt(r)} | {r['repeats'] or ''} | {_detail(r)} | "
            f"{r['goal']} | {met[r['goal_met']]} |"
        )
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, section: str) -> None:
    """Put `section` between the markers of `path`, keeping the hand-written text around it."""
    text = path.read_text() if path.is_file() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{head}{BEGIN}\n{section}{END}{tail}")


def load_average(avg: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in avg)
