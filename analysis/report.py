"""Write a study's report: Markdown, self-contained HTML and PNG figures from its Parquet results.

    python analysis/report.py runs/studies/grouping/results                  # -> runs/studies/grouping/report/
    python analysis/report.py RESULTS --out /tmp/report --baselines runs/toy-baselines

The same as `mmap-ray report` and `python -m mmap_ray.report`; the work is done by the `mmap_ray.report`
package (pandas + matplotlib, no Ray). The report folder must be new, empty or written by an earlier report (its
`.mmap-ray-report.json` lists the files it owns; nothing else there is overwritten or deleted).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from mmap_ray.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
