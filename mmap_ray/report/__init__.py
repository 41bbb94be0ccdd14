"""A study's report: pandas tables and matplotlib figures from its Parquet results, as Markdown and HTML.

Why: a study's rows (`mmap_ray.results`) answer "which grouping and prompt design works best, and at what
cost" only once they are aggregated over seeds and drawn. This package does it with pandas (`groupby`,
`pivot_table`) and matplotlib, without Ray, so `mmap-ray report`, `analysis/report.py`, the main study and
the notebooks share one implementation. Every section degrades to a note when the files or columns it needs
are missing (a smoke study has one seed, a search has no affinity, a failed trial no accuracy), never to a
crash. One job per module, each depending only on those above it:

    load.py      the study's tables and side files (`Study`, `load_study`, `prepare`), notes on what is missing
    tables.py    the tables, pandas only (`leaderboard`, `mean_std`, `status_table`, `comparisons`, ...)
    plots.py     matplotlib figures drawn from tidy frames (Agg canvas, grayscale-readable)
    figures.py   what each figure shows, chosen from a `Study`, or the reason it is left out
    sections.py  the report's sections in order: text, tables, figure and notes each
    document.py  report.md, self-contained report.html and figures/, in a folder the report owns (manifest)
    cli.py       `mmap-ray report`, `python -m mmap_ray.report` and `analysis/report.py`

    from mmap_ray.report import build_report
    paths = build_report("runs/studies/grouping/results")   # runs/studies/grouping/report/report.{md,html}
"""

from .cli import add_report_args, main, run_report
from .document import MANIFEST, ReportPaths, build_report, claim_folder, default_out, markdown_table, write_report
from .figures import ablation_figure, affinity_panels, curve_panels, tradeoff_figure
from .load import (
    BASELINES,
    CONFIG_ID,
    METRIC_LABELS,
    Study,
    accuracy_columns,
    completed,
    load_baselines,
    load_study,
    numeric,
    prepare,
    results_folder,
    scheme_names,
)
from .plots import pareto_front
from .sections import Section, sections
from .tables import (
    COMPARISONS,
    METHOD_SLUGS,
    PROJECTION_METHODS,
    ablation_table,
    baseline_comparisons,
    comparisons,
    config_labels,
    configurations,
    describe,
    failures,
    format_layers,
    leaderboard,
    mean_std,
    overview,
    shown,
    status_table,
    study_comparisons,
)

__all__ = [
    "BASELINES",
    "COMPARISONS",
    "CONFIG_ID",
    "MANIFEST",
    "METHOD_SLUGS",
    "METRIC_LABELS",
    "PROJECTION_METHODS",
    "ReportPaths",
    "Section",
    "Study",
    "ablation_figure",
    "ablation_table",
    "accuracy_columns",
    "add_report_args",
    "affinity_panels",
    "baseline_comparisons",
    "build_report",
    "claim_folder",
    "comparisons",
    "completed",
    "config_labels",
    "configurations",
    "curve_panels",
    "default_out",
    "describe",
    "failures",
    "format_layers",
    "leaderboard",
    "load_baselines",
    "load_study",
    "main",
    "markdown_table",
    "mean_std",
    "numeric",
    "overview",
    "pareto_front",
    "prepare",
    "results_folder",
    "run_report",
    "scheme_names",
    "sections",
    "shown",
    "status_table",
    "study_comparisons",
    "tradeoff_figure",
    "write_report",
]
