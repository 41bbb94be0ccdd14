"""`python -m mmap_ray.report RESULTS [--out DIR] [--baselines DIR]`: the same as `mmap-ray report`."""

import sys

from .cli import main

sys.exit(main())
