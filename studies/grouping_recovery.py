"""How often does each affinity scheme recover the toy benchmark's planted pairs?

For each scheme and seed, runs `mmap-ray group --k 2` (warm-up and measurement seeded) and checks whether
the chosen partition is the planted "Art+Clipart|Product+RealWorld". Prints a Markdown table:

    .venv/bin/python studies/grouping_recovery.py --seeds 0 1 2 3 4 --out runs/grouping-recovery
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmap_ray.cli import main as mmap_ray
from mmap_ray.data.toy import PAIRS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--schemes", nargs="+", default=["gradient", "lookahead"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", default="runs/grouping-recovery")
    args = p.parse_args(argv)
    out = Path(args.out)
    lines = ["| scheme | planted pairs recovered | partitions chosen |", "|---|---|---|"]
    for scheme in args.schemes:
        chosen = []
        for seed in args.seeds:
            path = out / f"{scheme}-seed{seed}.json"
            if not path.is_file() and mmap_ray(
                ["group", "--scheme", scheme, "--k", "2", "--seed", str(seed), "--out", str(path)]
            ):
                return 1
            chosen.append(json.loads(path.read_text())["partition"])
        hits = sum(c == PAIRS for c in chosen)
        lines.append(f"| {scheme} | {hits}/{len(chosen)} | {'; '.join(chosen)} |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
