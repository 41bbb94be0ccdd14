"""Run by every Python process that starts with tests/plugins on PYTHONPATH (`site` imports it): installs
the test faults its environment asks for (`mmap_ray_faults`), and nothing when it asks for none."""

import mmap_ray_faults

if mmap_ray_faults.wanted():
    mmap_ray_faults.install()
