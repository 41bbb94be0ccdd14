"""The report's command line: `mmap-ray report RESULTS`, `python -m mmap_ray.report RESULTS` and
`analysis/report.py` all parse the same arguments here and report a bad input as one line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import pandas as pd

from .document import write_report
from .load import load_study


def add_report_args(p: argparse.ArgumentParser) -> None:
    """The report's arguments, added to `p` (the `mmap-ray report` subcommand or `main`'s own parser)."""
    p.add_argument("results", help="a study's results folder or URI (or the study folder holding results/)")
    p.add_argument(
        "--out",
        default=None,
        help="local report folder, new, empty or written by an earlier report (default: RESULTS/../report; for "
        "s3:// or gs:// results, ./STUDY-report)",
    )
    p.add_argument(
        "--baselines", default=None, help="the output folder of studies/toy_baselines.py, for the comparisons"
    )


def run_report(args: argparse.Namespace) -> int:
    """Write the report that `args` describe and print where it went; ValueError for a bad input."""
    study = load_study(args.results, args.baselines)
    if study.running:
        print(f"report: note: the study is still running ({study.running}); reporting the trials done so far")
    paths = write_report(study, args.out)
    print(f"report (Markdown): {paths.markdown}")
    print(f"report (HTML, self-contained): {paths.html}")
    print(f"figures: {len(paths.figures)} in {paths.markdown.parent / 'figures'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The report as a program; 0 when written, 2 (and one line on stderr) for a bad input."""
    p = argparse.ArgumentParser(prog="report", description="Write a study's Markdown and HTML report with figures.")
    add_report_args(p)
    args = p.parse_args(argv)
    try:
        return run_report(args)
    except (ValueError, OSError) as e:  # an OSError names its path: e.g. --out below a file
        print(f"report: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the report folder is rewritten whole by the next run
        print("report: interrupted; the same command writes the report again", file=sys.stderr)
        return 130


def print_table(
    prog: str,
    parser: argparse.ArgumentParser,
    build: Callable[[argparse.Namespace], pd.DataFrame],
    argv: Sequence[str] | None = None,
) -> int:
    """An analysis script's whole program: parse, build the table, print it as Markdown; 0, or 2 with one line
    naming the bad input (a results folder that is missing or not a study's), 130 on Ctrl-C."""
    args = parser.parse_args(argv)
    try:
        print(build(args).to_markdown(index=False))
    except (ValueError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0
