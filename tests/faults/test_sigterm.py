"""SIGTERM (`ray job stop`, SIGKILL 3 s later) stops a study's driver in time whatever its main thread does.

The study tests send SIGTERM to a running study; this one reaches the moments they cannot aim at: Ray's
start-up, which replaces the Python handler with a slow one of its own, and a main thread busy in C code.
"""

import signal
import subprocess
import sys
import textwrap
import time

import pytest

DRIVER = textwrap.dedent(
    """
    import signal, sys, time
    from mmap_ray.lock import acquire
    from mmap_ray.storage import location
    from mmap_ray.study.config import StudyConfig
    from mmap_ray.study.sigterm import stop_on_sigterm

    import torch

    torch.set_num_threads(1)
    a = torch.randn(8000, 8000)
    study = StudyConfig(name="term", storage=sys.argv[1])
    folder = location(study.study_dir)
    with acquire(folder, False) as lock, stop_on_sigterm(study, lock):
        if sys.argv[2] == "replaced":  # as ray.init does: a handler that unwinds for seconds
            signal.signal(signal.SIGTERM, lambda *a: time.sleep(20))
        print("ready", flush=True)
        if sys.argv[2] == "busy":  # the main thread in one long C call (no bytecode runs until it returns)
            a @ a  # about 1 TFLOP, one call: seconds
        else:
            time.sleep(60)
    """
)


@pytest.mark.parametrize("main_thread", ["replaced", "busy"])
def test_sigterm_stops_the_driver_within_3_s_in_one_line_with_the_lock_released(tmp_path, main_thread):
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path), main_thread],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)  # into the sleep or the matrix products
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode == 143 and took < 3, (proc.returncode, took, err)
    assert err.count("\n") == 1 and "study 'term' stopped by SIGTERM" in err and "--resume" in err, err
    assert not (tmp_path / "term" / ".lock").exists()
