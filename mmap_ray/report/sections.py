"""What a study's report says, one small function per section, in the order `SECTIONS` lists them.

Why: each section pairs a table or figure with the text that says how to read it and the notes that say
what is missing (a smoke study has one seed, a search has no affinity, a failed trial no accuracy). Keeping
one builder per section makes a section easy to find, change or add, and keeps files out of it: a builder
returns a `Section` whose figure is drawn but not saved; `document` renders the sections and saves the
figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import pandas as pd
from matplotlib.figure import Figure

from .family import family_instances, family_regret_points, family_scores, is_family
from .figures import (
    ABLATIONS,
    MAX_AFFINITY_PANELS,
    Made,
    ablation_figure,
    affinity_figure,
    budget_figure,
    curves_figure,
    oracle_regret_points,
    regret_cost_figure,
    tradeoff_figure,
)
from .load import METRIC_LABELS, Study, accuracy_columns, completed, scheme_names
from .oracle import method_scores, oracle_ranking, partition_spread
from .paired import affinity_stability, scheme_comparisons
from .tables import COMPARISONS, comparisons, failures, leaderboard, mean_std, overview, shown, status_table

READING = {  # a figure's file name -> the text above it, which says how to read it
    "tradeoff": (
        "Each point is a configuration (mean over seeds; bars: std). Circled points are on the Pareto front: "
        "no other point is as accurate with as few trainable parameters."
    ),
    "budget": (
        "Each line is one prompt design (or study variant) through its trainable-parameter budgets (prompt "
        "length, source width, adapter width); mean over seeds, bars: std. Circled: the Pareto front."
    ),
    "affinity": (
        "Affinity between tasks, measured during joint training of one shared MmAP (tag: TAG over the study's "
        "own schedule; the gradient and lookahead probes: a short run; the proxies: from the frozen backbone); "
        "the tasks are ordered by the chosen partition and its groups boxed."
    ),
    "regret-cost": (
        "The figure: each grouping method's regret (bars: its 95% interval where there is one) against what its "
        "choice cost as a fraction of training every partition; free schemes (random, fixed) sit at 0. Lower "
        "left is better; a method above random's regret is no better than chance."
    ),
    "curves": (
        "Validation accuracy per task of each scheme's best trial (by best validation mean); gray: the "
        "scheme's other trials, ending in X where ASHA stopped them early."
    ),
}


@dataclass
class Section:
    """A heading, its text, tables and figure, and notes on what the study lacked for it."""

    title: str
    text: str = ""
    tables: list[pd.DataFrame] = field(default_factory=list)
    figure: str | None = None  # file name under figures/
    notes: list[str] = field(default_factory=list)
    drawn: Figure | None = field(default=None, repr=False)  # the figure, until `document` saves it as `figure`


def _what(study: Study) -> str:
    """The accuracy the tables rank by, as the text names it ('test accuracy')."""
    return METRIC_LABELS.get(accuracy_columns(study.trials)[0], "accuracy")


def _figure_section(title: str, made: Made, name: str, text: str | None = None) -> Section:
    """A section around a figure saved as `figures/<name>.png` (text: `READING[name]` unless given), or around
    the note that says why there is none."""
    fig, reason = made
    if fig is None:
        return Section(title, notes=[reason])
    return Section(title, READING[name] if text is None else text, figure=f"{name}.png", drawn=fig)


def study_section(study: Study) -> Section:
    return Section("Study", tables=[overview(study).reset_index(names="")], notes=list(study.notes))


def trials_section(study: Study) -> Section:
    t = study.trials
    s = Section(
        "Trials",
        "Trials per grouping scheme and outcome. Stopped early: ASHA ended the trial before its "
        "last epoch; its accuracy is left out of the tables below.",
        [status_table(t).reset_index()],
    )
    if (t["outcome"] == "failed").any():
        s.text += " The failed trials follow, with their error files."
        s.tables.append(failures(t))
    return s


def leaderboard_section(study: Study) -> Section:
    metric, what = accuracy_columns(study.trials)[0], _what(study)
    board = leaderboard(study.trials)
    s = Section(
        "Leaderboard",
        f"Completed trials by configuration (`config_id`: the settings without the training seed), best first: "
        f"{what} in %, mean ± std over seeds (std left out for one seed), trainable parameters and their share "
        "of the model, device-hours per trial. A configuration that two schemes chose is one row naming both.",
    )
    if board.empty:
        s.notes.append("No completed trial with an accuracy: no leaderboard.")
    else:
        s.tables.append(shown(mean_std(board)))
        if board[("trials", "n")].max() == 1:
            s.notes.append(
                "One seed per configuration: no spread to judge a difference by; run more seeds (`--seeds 0 1 2`)."
            )
    if metric and metric != "test_mean":
        s.notes.append(f"The rows have no test accuracy: the tables use the {what}.")
    return s


def comparisons_section(study: Study) -> Section:
    s = Section(
        "Comparisons",
        f"The paper's comparisons, {_what(study)} in %, mean ± std over seeds. Study rows: the best "
        "completed configuration of each prompt kind (text → text-only, visual → visual-only, linear → "
        "MaPLe-style, independent → IVLP, kron → MmAP).",
    )
    table = comparisons(study)
    if not table.empty:
        s.tables.append(mean_std(table).reset_index())
    present = set(table.index)
    missing = [label for _, label, _ in COMPARISONS if label not in present]
    if missing:
        s.notes.append(
            f"Not in these results: {', '.join(missing)}. `studies/toy_baselines.py` measures them; pass its "
            "output with `--baselines runs/toy-baselines`."
        )
    return s


def paired_section(study: Study) -> Section:
    s = Section(
        "Paired comparisons",
        "Each grouping scheme against one group for all tasks (`single`), in points of mean test accuracy: paired "
        "by seed (per-seed differences, 95% t interval; p Holm-adjusted over this table's comparisons), and by "
        "seeds + images (a two-stage bootstrap: seeds resampled, then each seed's paired test images within "
        "each task). A difference is called only when the adjusted p is below 0.05 and both intervals exclude 0. "
        "'Detectable (80% power)' is the smallest difference, in points, these seeds could detect at their "
        "observed paired spread: a smaller true difference would mostly read as no detectable difference.",
    )
    if "single" not in scheme_names(completed(study.trials)["scheme"]):
        s.notes.append("No `single` scheme in these results: nothing to compare against.")
        return s
    table = scheme_comparisons(study.trials, study.predictions)
    if table.empty:
        s.notes.append("No scheme shares a seed with `single`: no paired comparison.")
    else:
        s.tables.append(table)
    if study.predictions.empty:
        s.notes.append("No predictions table (results before schema v4): paired by seed only.")
    return s


def tradeoff_section(study: Study) -> Section:
    return _figure_section("Accuracy vs trainable parameters", tradeoff_figure(study), "tradeoff")


def affinity_section(study: Study) -> Section:
    s = _figure_section("Task affinity", affinity_figure(study), "affinity")
    stability = affinity_stability(study.affinity) if study.affinity else pd.DataFrame()
    if not stability.empty and (stability["seeds"] > 1).any():
        s.tables.append(stability)
        s.notes.append(
            "Stability: the Pearson correlation of each scheme's off-diagonal affinities between every two seeds "
            "(each seed also draws its own data)."
        )
    if len(study.affinity) > MAX_AFFINITY_PANELS:
        s.notes.append(f"Showing {MAX_AFFINITY_PANELS} of {len(study.affinity)} matrices; all are in partitions.json.")
    return s


def curves_section(study: Study) -> Section:
    return _figure_section("Learning curves", curves_figure(study), "curves")


def ablation_section(setting: str, name: str, study: Study) -> Section:
    text = f"{_what(study).capitalize()} (mean ± std over completed trials) per grouping scheme."
    return _figure_section(ABLATIONS[setting][1], ablation_figure(study, setting), name, text)


COST_COLUMNS = {
    "cost_s": "choosing (s per seed)",
    "oracle_s": "oracle training (s per seed)",
    "cost / oracle": "choosing / oracle",
}


def family_section(study: Study) -> Section:
    s = Section("Grouping methods on the benchmark family")
    s.text = (
        f"Each instance of the family (its factors and planted partition drawn from its seed, data/family.py) "
        f"trained once per two-group partition; partitions ranked within an instance by {_what(study)} (%). Then "
        "each grouping method: its regret against the planted partition (instances with one; fixed before "
        "training, so free of the winner's curse), against the instance's best trained partition (in sample: "
        "biased upwards), and how often it chose each, with 95% t intervals over instances and the minimum "
        "detectable effect."
    )
    s.tables.append(family_instances(study.trials, study.partitions))
    if study.partitions:
        s.tables.append(family_scores(study.trials, study.partitions, study.seconds))
        points = family_regret_points(study.trials, study.partitions, study.seconds)
        _add_figure(s, regret_cost_figure(points, "regret vs planted partition (points)", "Regret against cost"))
    return s


def _add_figure(s: Section, made: Made) -> None:
    """The regret-against-cost figure under a section's tables, or the note on why there is none."""
    fig, reason = made
    if fig is None:
        s.notes.append(reason)
    else:
        s.figure, s.drawn = "regret-cost.png", fig
        s.notes.append(READING["regret-cost"])


def oracle_section(study: Study) -> Section:
    if is_family(study.trials):
        return family_section(study)
    s = Section("Grouping methods against the oracle")
    ranking = oracle_ranking(study.trials)
    if ranking is None:
        s.notes.append("Not an oracle study (`--preset oracle`): no ranking of every partition.")
        return s
    s.text = (
        f"Every partition trained over the same seeds, ranked by mean {_what(study)} (%, ± std over seeds); then "
        "each grouping method: the partition it chose per seed, that partition's rank, its regret in sample (the "
        "best partition's accuracy minus the chosen one's on the same seeds, paired by seed with a 95% t interval "
        "and a Holm-adjusted p over the methods, and by seeds + images), its regret cross-fitted (the best "
        "partition chosen on half of the seeds and the regret scored on the other half, then swapped: the "
        "figure to quote, free of the winner's curse) and as a share of the oracle's spread, how often it "
        "chose a top-2 partition and the same partition, and what its choice cost against training every "
        "partition."
    )
    shown_ranking = ranking.assign(
        accuracy=[
            f"{m:.1f} ± {sd:.1f}" if sd == sd else f"{m:.1f}"  # one seed: no std
            for m, sd in zip(ranking["mean"], ranking["std"])
        ]
    )[["rank", "partition", "accuracy", "seeds"]]
    s.tables.append(shown_ranking)
    spread = partition_spread(study.trials, study.predictions)
    if spread:
        by_image = f", by seeds + images {spread['by_image']}" if spread["by_image"] else ""
        s.notes.append(
            f"Two-group partitions: the best ({spread['best']}) minus the worst ({spread['worst']}) is "
            f"{spread['gap']:.1f} points (paired by seed {spread['by_seed'] or '–'}{by_image}), "
            f"{spread['gap_in_stds']:.1f} times the larger of their seed standard deviations."
        )
    if study.partitions:
        scores = method_scores(
            study.trials, study.partitions, study.seconds, predictions=study.predictions, affinity=study.affinity
        )
        s.tables.append(scores.rename(columns=COST_COLUMNS))
        title = "Regret (cross-fitted) against cost"
        _add_figure(s, regret_cost_figure(oracle_regret_points(scores), "regret / oracle spread", title))
    return s


def budget_section(study: Study) -> Section:
    return _figure_section("Designs at matched budgets", budget_figure(study), "budget")


SECTIONS: tuple[Callable[[Study], Section], ...] = (
    study_section,
    trials_section,
    leaderboard_section,
    comparisons_section,
    paired_section,
    tradeoff_section,
    budget_section,
    oracle_section,
    affinity_section,
    curves_section,
    partial(ablation_section, "n_tokens", "ablation-prompt-length"),
    partial(ablation_section, "depth", "ablation-depth"),
)


def sections(study: Study) -> list[Section]:
    """The report's sections for `study`, in order; figures drawn, not yet saved."""
    return [build(study) for build in SECTIONS]
