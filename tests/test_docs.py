"""The docs name what exists: every module path in docs/architecture.md, every `module.name` it points to,
and every relative link in the README and docs/."""

import importlib
import re
from pathlib import Path

import pytest
from conftest import REPO

ARCH = (REPO / "docs" / "architecture.md").read_text()
PACKAGE = REPO / "mmap_ray"


def _tree_paths() -> list[Path]:
    """The paths the "What is here" tree names: an indented entry lies in the folder above it."""
    block = ARCH.split("## What is here", 1)[1].split("```")[1]
    paths, parents = [], {}
    for line in block.splitlines():
        m = re.match(r"^( *)(\S+)(.*)$", line)
        if not m or len(m.group(1)) > 4:  # a description's continuation line
            if m and parents.get("top"):  # a top-level folder's continuation lists its files
                paths += [parents["top"] / name for name in re.findall(r"\b[\w]+\.py\b", line)]
            continue
        indent, name, rest = len(m.group(1)), m.group(2), m.group(3)
        if indent == 0:
            parents = {"top": REPO / name} if name.endswith("/") else {}
            paths.append(REPO / name)
            paths += [REPO / name / f for f in re.findall(r"\b[\w]+\.py\b", rest)]
        elif indent == 2:
            paths.append(PACKAGE / name)
            parents[4] = PACKAGE / name
        else:
            paths.append(parents[4] / name)
    return paths


def test_every_path_in_the_module_tree_exists():
    paths = _tree_paths()
    assert len(paths) > 50  # the parser found the tree
    missing = [str(p.relative_to(REPO)) for p in paths if not p.exists()]
    assert not missing, missing
    named = {p.resolve() for p in paths}
    unnamed = [str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py") if p.resolve() not in named]
    unnamed = [p for p in unnamed if not p.endswith("__init__.py")]
    assert not unnamed, f"modules the tree does not describe: {unnamed}"


def test_every_module_and_name_in_the_diagram_and_table_exists():
    text = ARCH.split("## What is here", 1)[0]
    for path in re.findall(r"\b((?:[a-z_]+/)*[a-z_]+\.py)\b", text):
        assert (PACKAGE / path).is_file() or (REPO / path).is_file(), path
    for module, name in re.findall(r"\b((?:[a-z_]+/)*[a-z_]+)\.([A-Za-z_]\w*)\b(?![/.])", text):
        if (PACKAGE / f"{module}.py").is_file() and name != "py":
            assert hasattr(importlib.import_module("mmap_ray." + module.replace("/", ".")), name), f"{module}.{name}"


@pytest.mark.parametrize(
    "doc", ["README.md", *[f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")], "cluster/README.md"]
)
def test_relative_links_point_to_files(doc):
    path = REPO / doc
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" not in target:
            assert (path.parent / target).exists(), f"{doc} links to {target}"
