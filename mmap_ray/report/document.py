"""The report as files: report.md, a self-contained report.html and figures/*.png, in a folder it owns.

Why: the sections (`sections`) say what a report contains; this module decides how it is written and where,
so that a report can be rebuilt in place without touching anything else in its folder.

Ownership. The report folder is ours only if we wrote it: `.mmap-ray-report.json` lists the files we wrote,
a rewrite removes only the figures listed there that are no longer produced, and a non-empty folder without
it is refused.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..parse import parse_json
from ..storage import Location
from .load import Study, load_study
from .sections import Section, sections

MANIFEST = ".mmap-ray-report.json"  # in a report folder: the files `write_report` wrote there
FIGURE_NAME = r"figures/[A-Za-z0-9_.-]+\.png"  # the only files a rewrite ever removes
CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#111}
table{border-collapse:collapse;margin:1em 0;font-size:90%}th,td{border:1px solid #999;padding:3px 8px;text-align:right}
th{background:#eee}.note{border-left:4px solid #888;background:#f6f6f6;padding:4px 10px}img{max-width:100%}
.wide{overflow-x:auto;max-width:100%}"""  # a table wider than the page scrolls inside it, not the page


@dataclass
class ReportPaths:
    """The files a report wrote: its Markdown, its self-contained HTML and its figures, in section order."""

    markdown: Path
    html: Path
    figures: list[Path]


# ---- rendering ----------------------------------------------------------------------------------------


def markdown_table(df: pd.DataFrame) -> str:
    """GitHub Markdown via pandas (needs `tabulate`); without it, pandas' plain text in a code block.

    A '|' in a cell (a partition) is escaped, so it does not split the cell.
    """

    def escape(v):
        return v.replace("|", r"\|") if isinstance(v, str) else v

    try:
        return df.apply(lambda col: col.map(escape)).rename(columns=escape).to_markdown(index=False)
    except ImportError:
        return "```\n" + df.to_string(index=False) + "\n```"


def render_markdown(title: str, parts: list[Section]) -> str:
    """The report as Markdown; figures are linked as figures/<name>.png."""
    lines = [f"# {title}", ""]
    for s in parts:
        lines += [f"## {s.title}", ""]
        lines += [s.text, ""] if s.text else []
        for table in s.tables:
            lines += [markdown_table(table), ""]
        lines += [f"![{s.title}](figures/{s.figure})", ""] if s.figure else []
        lines += [f"> Note: {n}" + "\n" for n in s.notes]
    return "\n".join(lines)


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def render_html(title: str, parts: list[Section], figures_dir: Path) -> str:
    """The report as one HTML page, its figures (read from `figures_dir`) embedded as data URIs."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for s in parts:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        body += [f"<p>{_inline(s.text)}</p>"] if s.text else []
        body += [f'<div class="wide">{t.to_html(index=False, border=0, na_rep="–")}</div>' for t in s.tables]
        if s.figure:
            data = base64.b64encode((figures_dir / s.figure).read_bytes()).decode("ascii")
            body.append(f'<p><img alt="{html.escape(s.title)}" src="data:image/png;base64,{data}"></p>')
        body += [f'<p class="note">Note: {_inline(n)}</p>' for n in s.notes]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _title(study: Study) -> str:
    name = ", ".join(sorted(map(str, study.trials["study"].dropna().unique()))) if "study" in study.trials else ""
    return f"Study report: {name or study.results.parent.name}"


def _save_figures(parts: list[Section], figures_dir: Path) -> list[Path]:
    """Each section's drawn figure as figures_dir/<its file name>, in section order."""
    figures = []
    for s in parts:
        if s.drawn is not None:
            figures_dir.mkdir(parents=True, exist_ok=True)
            _write_whole(
                figures_dir / s.figure, lambda tmp, fig=s.drawn: fig.savefig(tmp, dpi=110, bbox_inches="tight")
            )
            figures.append(figures_dir / s.figure)
    return figures


# ---- writing a folder we own --------------------------------------------------------------------------


def default_out(results: Location) -> Path:
    """RESULTS/../report for local results; for object storage, `<study>-report` in the current folder."""
    if results.is_local:
        return Path(results.parent.path) / "report"
    return Path.cwd() / f"{results.parent.name}-report"


def build_report(
    results: str | Path | Location, out: str | Path | None = None, baselines: str | Path | Location | None = None
) -> ReportPaths:
    """Write report.md, report.html (self-contained) and figures/*.png for a study; default out: <study>/report."""
    return write_report(load_study(results, baselines), out)


def write_report(study: Study, out: str | Path | None = None) -> ReportPaths:
    """`build_report` for a study already loaded (`load_study`).

    Writes only files it owns: a new or empty folder, or one whose manifest says a report was written there.
    """
    folder = Path(out) if out is not None else default_out(study.results)
    previous = claim_folder(folder)
    own = ["report.md", "report.html"]
    folder.mkdir(parents=True, exist_ok=True)
    # claimed before anything is written: an interrupted report leaves a folder we may rewrite
    _write_manifest(folder, sorted({*previous, *own}))
    figures_dir = folder / "figures"
    parts = sections(study)
    title = _title(study)
    paths = ReportPaths(folder / own[0], folder / own[1], _save_figures(parts, figures_dir))
    _write_whole(paths.markdown, render_markdown(title, parts))
    _write_whole(paths.html, render_html(title, parts, figures_dir))
    written = [*own, *(f"figures/{f.name}" for f in paths.figures)]
    for stale in set(previous) - set(written):
        if re.fullmatch(FIGURE_NAME, stale):  # a figure of the last report that this one no longer draws
            (folder / stale).unlink(missing_ok=True)
    _write_manifest(folder, written)
    return paths


def claim_folder(folder: Path) -> list[str]:
    """The files the last report wrote in `folder` (its manifest), [] for a new or empty folder.

    ValueError, one line naming the folder, for a file, a non-empty folder without a manifest (not ours: its
    files are left alone) or a manifest that is not one.
    """
    choose = "choose an empty or new folder (--out)"
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"report folder {folder} is a file, not a folder: {choose}")
    manifest = folder / MANIFEST
    if not manifest.is_file():
        if folder.is_dir() and any(folder.iterdir()):
            raise ValueError(
                f"report folder {folder} is not empty and has no {MANIFEST} (mmap-ray report did not write it, "
                f"so it will not overwrite or delete anything there): {choose}"
            )
        return []
    try:
        files = parse_json(manifest.read_text(), manifest)["files"]
    except (ValueError, KeyError, TypeError):
        files = None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise ValueError(f"{manifest} is not a report manifest (a JSON object with a 'files' list): {choose}")
    return files


def _write_manifest(folder: Path, files: list[str]) -> None:
    """`folder/.mmap-ray-report.json`, written whole."""
    _write_whole(folder / MANIFEST, json.dumps({"written_by": "mmap-ray report", "files": files}, indent=1) + "\n")


def _write_whole(path: Path, content: str | Callable[[Path], object]) -> None:
    """`content` (text, or a function that writes a file) to `path` through a temporary file renamed into
    place: a reader (or a full disk) never sees part of it. OSError naming `path` when it cannot be written;
    the temporary file is removed."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")  # the suffix: savefig's format
    try:
        tmp.write_text(content) if isinstance(content, str) else content(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from None
