"""The study report's figures: matplotlib on the Agg canvas, one function per figure, readable in grayscale.

Every function takes tidy pandas frames (chosen by `figures`) and returns a `Figure`; nothing here
touches `pyplot`, so importing it never changes a notebook's backend and figures never leak between calls.
Series differ by marker and line style as well as colour, and heatmap cells carry their values as text,
so a figure printed in grayscale still reads correctly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import cycle

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

# Okabe-Ito colours (colour-blind safe, varied lightness), each paired with its own marker and line style
COLORS = ("#000000", "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442")
# 7 markers against 8 colours: the first 56 series all differ in colour or marker
MARKERS = ("o", "s", "D", "^", "v", "P", "X")
BASELINE_MARKERS = ("o", "s", "^", "D", "v", "<", ">", "p")  # drawn hollow
OFFSETS = ((7, 5), (7, -13), (-15, 5), (-15, -13))  # number labels, alternating around their points
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 2)), (0, (8, 3)))
STYLE = {"figure.dpi": 110, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": 8}


def pareto_front(params: Sequence[float], accuracy: Sequence[float]) -> np.ndarray:
    """True where no other point has fewer-or-equal parameters and higher-or-equal accuracy (one strictly)."""
    p, a = np.asarray(params, dtype=float), np.asarray(accuracy, dtype=float)
    no_worse = (p[None, :] <= p[:, None]) & (a[None, :] >= a[:, None])  # [i, j]: j is no worse than i
    better = (p[None, :] < p[:, None]) | (a[None, :] > a[:, None])
    return ~(no_worse & better).any(axis=1) & ~np.isnan(p) & ~np.isnan(a)


def series_styles(n: int) -> Iterator[dict]:
    """Colour, marker and line style for n series, all three varying together."""
    for _, color, marker, ls in zip(range(n), cycle(COLORS), cycle(MARKERS), cycle(LINESTYLES)):
        yield {"color": color, "marker": marker, "linestyle": ls}


@contextmanager
def _figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (6.4, 4.2), **kw) -> Iterator[tuple]:
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
        yield fig, axes


def merge_coincident(points: pd.DataFrame) -> pd.DataFrame:
    """One point per distinct (params, accuracy to 0.01): 'gradient / lookahead' rather than a hidden marker."""
    key = [points["params"].rename("at_params"), points["acc"].round(2).rename("at_acc")]
    merged = points.groupby(key, sort=False, dropna=False).agg(
        {"label": " / ".join, "params": "first", "acc": "first", "acc_std": "first", "kind": "first"}
    )
    return merged.reset_index(drop=True)


def _numbered_points(ax, points: pd.DataFrame) -> None:
    """Each point with its std bar and its number (on the plot and in its legend label); baselines hollow."""
    styles = {kind: series_styles(len(points)) for kind in ("study", "baseline")}
    seen = {"study": 0, "baseline": 0}
    for i, row in points.iterrows():
        style = next(styles[row["kind"]])
        hollow = row["kind"] == "baseline"
        marker = BASELINE_MARKERS[seen[row["kind"]] % len(BASELINE_MARKERS)] if hollow else style["marker"]
        seen[row["kind"]] += 1
        ax.errorbar(
            row["params"],
            row["acc"],
            yerr=row["acc_std"] if pd.notna(row["acc_std"]) else None,
            color=style["color"],
            marker=marker,
            markersize=8,
            capsize=3,
            linestyle="none",
            markeredgecolor=style["color"] if hollow else "black",
            markeredgewidth=1.8 if hollow else 1,
            markerfacecolor="white" if hollow else style["color"],
            label=f"{i + 1}  {row['label']}",
        )
        xytext = OFFSETS[i % len(OFFSETS)]
        ax.annotate(str(i + 1), (row["params"], row["acc"]), xytext=xytext, textcoords="offset points", fontsize=8)


def _pareto_overlay(ax, on: pd.DataFrame) -> tuple[list, list]:
    """Draw the Pareto front (`on`: its points) dashed and circled; the legend's handles and labels with it."""
    on = on.sort_values("params")
    ax.step(on["params"], on["acc"], where="post", color="black", linewidth=1.2, linestyle="--", zorder=0)
    ax.scatter(on["params"], on["acc"], s=240, facecolors="none", edgecolors="black", linewidths=1.5, zorder=3)
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color="black", linestyle="--", marker="o", markersize=12, markerfacecolor="none"))
    return handles, [*labels, "Pareto front (circled)"]


def tradeoff(
    points: pd.DataFrame, ylabel: str, zero_shot: float | None = None, frozen_params: float | None = None
) -> Figure:
    """Accuracy vs trainable parameters (log x), mean ± std over seeds, the Pareto front marked.

    `points`: one row per configuration or method with columns label, params, acc, acc_std (accuracy in %) and
    kind ('study': filled markers, 'baseline': hollow ones). Points are numbered on the plot and in the legend.
    `frozen_params`: the backbone's size, for a top axis in % of all parameters (trainable / (frozen + trainable)).
    """
    points = merge_coincident(points.reset_index(drop=True))
    front = pareto_front(points["params"], points["acc"])
    with _figure(size=(7.6, 4.8)) as (fig, axes):
        ax = axes[0, 0]
        _numbered_points(ax, points)
        handles, labels = _pareto_overlay(ax, points[front])
        if zero_shot is not None:
            ax.axhline(zero_shot, color="gray", linestyle=":", linewidth=1.5)
            handles.append(Line2D([], [], color="gray", linestyle=":"))
            labels.append(f"zero-shot, 0 params ({zero_shot:.1f}%)")
        ax.set_xscale("log")
        ax.margins(x=0.1, y=0.08)  # room for the point numbers
        ax.set_xlabel("trainable parameters (count, log scale)")
        ax.set_ylabel(ylabel)
        ax.set_title("Accuracy vs trainable parameters")
        if frozen_params:
            f = frozen_params
            top = ax.secondary_xaxis(
                "top", functions=(lambda x: 100 * x / (f + x), lambda q: q * f / np.maximum(100 - q, 1e-9))
            )
            top.set_xlabel("trainable parameters (% of the model's total)")
        ax.legend(handles, labels, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return fig


def _heatmap(ax, panel: dict, norm) -> object:
    m = panel["matrix"].to_numpy(dtype=float)
    image = ax.imshow(m, cmap="cividis", norm=norm)
    n = len(panel["tasks"])
    ax.set_xticks(range(n), panel["tasks"], rotation=35, ha="right")
    ax.set_yticks(range(n), panel["tasks"])
    ax.grid(False)
    for (i, j), v in np.ndenumerate(m):  # values as text: the figure reads without colour
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="black" if norm(v) > 0.55 else "white")
    start = 0
    for group in panel["groups"]:  # each group's block: a white line under a black dashed one, seen on any cell
        for color, width, ls in (("white", 4.5, "-"), ("black", 2.0, "--")):
            box = Rectangle((start - 0.5, start - 0.5), len(group), len(group), fill=False, edgecolor=color)
            box.set(linewidth=width, linestyle=ls)
            ax.add_patch(box)
        start += len(group)
    ax.set_title(panel["title"], fontsize=9)
    ax.set_xlabel("task j")
    ax.set_ylabel("task i")
    return image


def affinity_heatmaps(panels: list[dict], label: dict[str, str]) -> Figure:
    """Task-affinity matrices, a row per scheme with its own colour scale, tasks ordered by the chosen
    partition and its groups boxed.

    `panels`: dicts with title, scheme, tasks (in partition order), matrix (DataFrame), groups (lists of tasks).
    """
    rows = {}
    for panel in panels:
        rows.setdefault(panel["scheme"], []).append(panel)
    ncols = max(len(r) for r in rows.values())
    with _figure(ncols, len(rows), size=(3.9, 3.6)) as (fig, axes):
        for row_axes, (scheme, row) in zip(axes, rows.items()):
            values = np.concatenate([p["matrix"].to_numpy(dtype=float).ravel() for p in row])
            norm = mpl.colors.Normalize(float(np.nanmin(values)), float(np.nanmax(values)))
            for ax, panel in zip(row_axes, row):
                image = _heatmap(ax, panel, norm)
            for ax in row_axes[len(row) :]:
                ax.set_visible(False)
            bar = fig.colorbar(image, ax=list(row_axes[: len(row)]), shrink=0.85)
            bar.set_label(label.get(scheme, f"{scheme} affinity") + " (unitless)")
        fig.suptitle("Task affinity; boxes: the groups of the chosen partition")
    return fig


def learning_curves(panels: list[dict]) -> Figure:
    """Per-task validation accuracy per epoch of each scheme's best trial, over its other trials' mean curves.

    `panels`: dicts with title, best (DataFrame epoch x task, %), others (list of dicts: curve (Series epoch ->
    %), outcome 'completed' | 'stopped early' | 'failed').
    """
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    ends = {  # outcome -> (marker at the curve's end, legend text)
        "stopped early": ("X", "stopped early (ASHA): curve ends at X"),
        "failed": ("v", "failed: curve ends at ▼"),
    }
    with _figure(ncols, nrows, size=(4.3, 3.4), sharey=True) as (fig, axes):
        for ax, panel in zip(axes.flat, panels):
            for other in panel["others"]:
                curve = other["curve"]
                ax.plot(curve.index, curve.values, color="0.65", linewidth=1, linestyle="-", zorder=1)
                if other["outcome"] in ends and len(curve):
                    ax.plot(
                        curve.index[-1],
                        curve.values[-1],
                        ends[other["outcome"]][0],
                        color="0.25",
                        markersize=9,
                        zorder=2,
                    )
            best = panel["best"]
            tasks = [t for t in best.columns if t != "mean"]
            for task, style in zip(tasks, series_styles(len(tasks))):
                ax.plot(best.index, best[task], label=task, markersize=5, linewidth=1.4, zorder=3, **style)
            if "mean" in best:
                ax.plot(best.index, best["mean"], color="black", linewidth=3, label="mean", zorder=4)
            ax.set_title(panel["title"], fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_ylabel("validation accuracy (%)")
            ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        handles, labels = axes[0, 0].get_legend_handles_labels()
        present = {o["outcome"] for p in panels for o in p["others"]}
        if present:
            handles.append(Line2D([], [], color="0.65"))
            labels.append("other trials of the scheme (mean over tasks)")
        for marker, text in (ends[k] for k in ends if k in present):
            handles.append(Line2D([], [], marker=marker, color="0.25", linestyle="none", markersize=8))
            labels.append(text)
        fig.legend(handles, labels, loc="outside lower center", ncols=4, frameon=False)
        fig.suptitle("Learning curves of each scheme's best trial (per task)")
    return fig


def budget_lines(points: pd.DataFrame, ylabel: str) -> Figure:
    """Accuracy vs trainable parameters (log x), one line per design through its budgets (mean ± std over
    seeds), the Pareto front over every point dashed and circled.

    `points`: one row per (design, budget) with columns design, params, acc, acc_std (accuracy in %).
    """
    front = pareto_front(points["params"], points["acc"])
    designs = list(dict.fromkeys(points["design"]))
    with _figure(size=(7.6, 4.8)) as (fig, axes):
        ax = axes[0, 0]
        for design, style in zip(designs, series_styles(len(designs))):
            d = points[points["design"] == design].sort_values("params")
            ax.errorbar(d["params"], d["acc"], yerr=d["acc_std"], capsize=3, markersize=6, label=design, **style)
        handles, labels = _pareto_overlay(ax, points[front])
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (count, log scale)")
        ax.set_ylabel(ylabel)
        ax.set_title("Designs at matched trainable-parameter budgets")
        ax.legend(handles, labels, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return fig


def ablation(table: pd.DataFrame, xlabel: str, ylabel: str, title: str, log2: bool = False) -> Figure:
    """One line per scheme: accuracy (mean ± std over trials) against an ablated setting.

    `table`: index = the setting's values, columns = MultiIndex (stat in mean/std, scheme).
    """
    with _figure(size=(6.0, 4.0)) as (fig, axes):
        ax = axes[0, 0]
        schemes = list(table["mean"].columns)
        for scheme, style in zip(schemes, series_styles(len(schemes))):
            ax.errorbar(
                table.index,
                table["mean"][scheme],
                yerr=table["std"][scheme],
                capsize=3,
                markersize=7,
                label=str(scheme),
                **style,
            )
        if log2:  # prompt lengths 1, 2, 4, 8, 16 spread evenly
            ax.set_xscale("log", base=2)
        ax.set_xticks(list(table.index), [f"{v:g}" for v in table.index])
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(title="grouping scheme", frameon=False)
    return fig


def regret_cost(points: pd.DataFrame, ylabel: str, title: str) -> Figure:
    """One marker per grouping method: its regret (points; bars: its 95% interval where it has one) against
    what choosing cost as a fraction of training every partition (symmetric log x: free methods at 0).

    `points`: columns method, cost (fraction), regret, low, high (NaN where there is no interval).
    """
    with _figure(size=(6.4, 4.2)) as (fig, axes):
        ax = axes[0, 0]
        for (_, row), style in zip(points.iterrows(), series_styles(len(points))):
            has_interval = row["low"] == row["low"]
            yerr = [[row["regret"] - row["low"]], [row["high"] - row["regret"]]] if has_interval else None
            style = {**style, "linestyle": "none"}
            ax.errorbar(
                [row["cost"]], [row["regret"]], yerr=yerr, capsize=3, markersize=7, label=row["method"], **style
            )
        ax.axhline(0.0, color="0.6", linewidth=0.8)
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlabel("cost of choosing / cost of training every partition (symlog)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(title="method", loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return fig
