"""Storage faults: the results folder turns read-only, or the disk fills, while results are written.

Each must give a clear error naming the file, leave no corrupt or temporary file, and keep earlier rows.
Root ignores file permissions, so the read-only cases drop CAP_DAC_OVERRIDE with `setpriv`; the full
disk is a file-size limit (RLIMIT_FSIZE), which fails writes the same way (EFBIG instead of ENOSPC).
"""

import shutil
import subprocess
import sys

import pytest
from conftest import STUDY, study_env

from mmap_ray.results import load, write_table
from mmap_ray.study import program as grouping

pytestmark = pytest.mark.faults

ROW = {"trial_id": "t0", "status": "TERMINATED", "val_mean_final": 0.5, "schema_version": 1}
NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-dac_override,-dac_read_search"]
needs_setpriv = pytest.mark.skipif(
    shutil.which("setpriv") is None, reason="needs util-linux setpriv to drop root's override"
)

WRITER = """
import os, resource, signal, sys
from mmap_ray.results import write_table
from mmap_ray.storage import StorageError
if len(sys.argv) > 2:  # a full disk: files may not grow past this many bytes
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
blob = os.urandom(100_000).hex()
rows = [{"trial_id": "t1", "status": "TERMINATED", "val_mean_final": 0.7, "schema_version": 1, "blob": blob}]
try:
    write_table(sys.argv[1], "trials", "t0", rows)  # rewrite the earlier file
except StorageError as e:
    print(e, file=sys.stderr)
    sys.exit(3)
"""


def _write(root, *prefix, limit=None):
    argv = [*prefix, sys.executable, "-c", WRITER, str(root), *([str(limit)] if limit else [])]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def _intact(root):
    df = load(root)
    assert list(df["trial_id"]) == ["t0"] and df["val_mean_final"].tolist() == [0.5]  # the earlier row, unchanged
    assert [p.name for p in root.rglob("*") if p.is_file()] == ["t0.parquet"]  # no temp file, nothing half-written


@needs_setpriv
def test_read_only_results_folder(tmp_path):
    write_table(tmp_path, "trials", "t0", [ROW])
    folder = tmp_path / "trials"
    folder.chmod(0o555)
    out = _write(tmp_path, *NO_DAC)
    folder.chmod(0o755)
    assert out.returncode == 3, out.stderr[-2000:]
    assert f"cannot write {folder / 't0.parquet'}: Permission denied; any earlier version of it is intact" in out.stderr
    _intact(tmp_path)


def test_disk_full_during_a_write(tmp_path):
    write_table(tmp_path, "trials", "t0", [ROW])
    out = _write(tmp_path, limit=50_000)  # the new file would be about 200 KB
    assert out.returncode == 3, out.stderr[-2000:]
    assert "cannot write" in out.stderr and "File too large; any earlier version of it is intact" in out.stderr
    _intact(tmp_path)


@needs_setpriv
@pytest.mark.slow
def test_study_stops_clearly_when_results_cannot_be_written_and_resumes(tmp_path, ray_local, capsys):
    """A real smoke study whose results folder is read-only: exit 1 naming the file; --resume then completes.
    (The first run is a process without root's override of file permissions; the resume runs in this one.)"""
    results = tmp_path / "ro" / "results"
    results.mkdir(parents=True)
    results.chmod(0o555)
    argv = [*STUDY, "--smoke", "--storage", str(tmp_path), "--name", "ro"]
    env = study_env(RAY_AUTH_MODE="disabled")
    out = subprocess.run([*NO_DAC, *argv], env=env, capture_output=True, text=True, timeout=900)
    results.chmod(0o755)
    assert out.returncode == 1, out.stderr[-3000:]
    assert f"grouping.py: error: cannot write {results}/" in out.stderr, out.stderr[-3000:]
    assert "Permission denied" in out.stderr and "rerun with --resume" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout  # Tune's own log of the failed write included
    assert not list(results.rglob("*.parquet"))
    code = grouping.main([*argv[len(STUDY) :], "--resume"], prog="grouping.py")
    assert code == 0, capsys.readouterr().err[-3000:]
    df = load(results)
    assert sorted(df["scheme"].astype(str)) == ["gradient", "single"] and (df["status"] == "TERMINATED").all()
