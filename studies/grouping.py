"""The main study, as a file for `ray job submit --working-dir . -- python studies/grouping.py [flags]`.

The program is `mmap_ray.study.program` (installed as `mmap-ray study`, the same flags and presets); this
launcher imports it from the checkout it sits in, so a submitted job runs the code it was submitted with.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, or the job's copy of it

from mmap_ray.study.program import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="grouping.py"))
