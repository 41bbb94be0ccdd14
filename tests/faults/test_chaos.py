"""The chaos study: a 12-trial study under a storm of faults at random moments loses nothing.

A fault injector does the faults of `FAULTS`, in an order and at moments drawn from a seeded schedule, while
the study runs: SIGKILL a trial's process (Tune retries it from its checkpoint), SIGKILL or SIGTERM the
driver (then `--resume`, as a user would), make the results folder unwritable for a few seconds (the driver
stops with one line; `--resume`), and, where a driver was killed, tear the newest checkpoint of an unfinished
trial and leave a cut-short temporary results file behind, as a crash mid-write on a store without atomic
renames would. At the end: exactly 12 rows, one per (config_id, seed), each with the same accuracies and
test predictions as the same study run undisturbed, no traceback on any driver's stderr, and no file
outside the two study folders.

The driver runs without CAP_DAC_OVERRIDE (`setpriv`), so a read-only folder stops root's writes too.
Seeds: `make test` runs schedule seed 0, `make chaos` seeds 0, 1 and 2 (`--chaos-seeds 0,1,2`; about 4 minutes
each alone). A failure prints its seed to replay.
"""

import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import STUDY, stop_ray
from conftest import study_env as _env

from mmap_ray.results import load

pytestmark = [pytest.mark.slow(minutes=4), pytest.mark.faults]
# every kind at least twice in every schedule (a fault that finds nothing to hit, such as no trial process
# yet, is tried again later); `make chaos` runs three schedules
FAULTS = {"kill-trial": 3, "kill-driver": 3, "term-driver": 2, "storage": 2}
NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-dac_override,-dac_read_search"]
SEEDS = ["0", "1", "2", "3", "4", "5"]  # x 2 schemes: 12 trials


def _argv(storage: Path, name: str) -> list[str]:
    return [*STUDY, "--smoke", "--schemes", "single", "random", "--seeds", *SEEDS, "--epochs", "4"] + [
        "--storage",
        str(storage),
        "--name",
        name,
    ]


def _trial_processes(driver: int) -> list[int]:
    """Pids of the Tune trial processes of the Ray that `driver` started (their raylet names its session)."""
    session = re.compile(rf"session_[\d_-]+_{driver}\b")
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not cmd.startswith("ray::ImplicitFunc"):
                continue
            parent = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
            raylet = Path(f"/proc/{parent}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if session.search(raylet):
            found.append(int(proc.name))
    return found


class Storm:
    """One study driven to completion through the faults of one seeded schedule."""

    def __init__(self, seed: int, storage: Path):
        self.rng, self.storage, self.seed = random.Random(seed), storage, seed
        self.study = storage / "chaos"
        self.faults: list[str] = []
        self.plan = [kind for kind, n in FAULTS.items() for _ in range(n)]
        self.rng.shuffle(self.plan)
        self.errs: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    def start(self) -> None:
        started = (self.study / "study.json").exists()  # a driver killed before it wrote study.json: start anew
        argv = [*NO_DAC, *_argv(self.storage, "chaos"), *(["--resume"] if started else [])]
        self.log = self.storage.parent / f"driver-{self.runs}.err"
        self.proc = subprocess.Popen(
            argv,
            env=_env(RAY_AUTH_MODE="disabled"),
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
            start_new_session=True,
        )
        self.runs += 1

    def ended(self) -> None:
        """After a driver ended (by itself or killed): stop its Ray, keep its stderr."""
        self.proc.wait(timeout=120)
        stop_ray(driver_pid=self.proc.pid)
        self.errs.append(self.log.read_text(errors="replace"))

    def done(self) -> bool:
        if not (self.study / "results" / "trials").is_dir():
            return False
        rows = load(self.study / "results")
        return len(rows) == 12 and (rows["status"] == "TERMINATED").all()

    def tear(self) -> None:
        """What a crash mid-write leaves on a store without atomic renames: a torn newest checkpoint of an
        unfinished trial, and a cut-short temporary results file."""
        finished = {p.stem for p in (self.study / "results" / "trials").glob("*.parquet")}
        runs = sorted(r for r in (self.study / "train").glob("*") if r.name not in finished)
        states = [max(found) for r in runs if (found := sorted(r.glob("ray-train/checkpoint_*/state.pt")))]
        if states:
            state = self.rng.choice(states)
            torn = state.parent.with_name("checkpoint_9999-12-31_23-59-59.999999") / "state.pt"
            torn.parent.mkdir(exist_ok=True)
            data = state.read_bytes()
            torn.write_bytes(data[: self.rng.randrange(1, len(data))])
            self.faults.append(f"tore {torn.relative_to(self.study)}")
        trials = self.study / "results" / "trials"
        if trials.is_dir():
            (trials / f".{'0' * 16}-s0.parquet.tmp{self.rng.randrange(10**6)}").write_bytes(os.urandom(300))

    def fault(self) -> None:
        """The schedule's next fault; one with nothing to hit goes to the back of the schedule."""
        kind = self.plan.pop(0)
        if kind == "kill-trial":
            pids = _trial_processes(self.proc.pid)
            if not pids:
                self.plan.append(kind)
                return
            os.kill(self.rng.choice(pids), signal.SIGKILL)
        elif kind in ("kill-driver", "term-driver"):
            if kind == "kill-driver":
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                sent = time.monotonic()
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=30)
                assert time.monotonic() - sent < 3, f"seed {self.seed}: SIGTERM took over 3 s"
            self.ended()
            if kind == "kill-driver":
                self.tear()
            self.start()
        elif kind == "storage":
            folders = [self.study / "results" / t for t in ("trials", "epochs", "predictions")]
            folders = [f for f in folders if f.is_dir()]
            if not folders:
                self.plan.append(kind)
                return
            for f in folders:
                f.chmod(0o555)
            time.sleep(self.rng.uniform(2, 5))
            for f in folders:
                f.chmod(0o755)
        self.faults.append(kind)

    def run(self, limit_s: float = 1500) -> None:
        self.start()
        deadline = time.time() + limit_s
        while time.time() < deadline:
            time.sleep(self.rng.uniform(0.5, 4.0))
            if self.proc.poll() is not None:
                self.ended()
                if self.proc.returncode == 0 and self.done():
                    return
                self.start()  # stopped by a fault (exit 1 on unwritable results, 143, ...): resume
            elif self.plan:
                self.fault()
        raise AssertionError(f"seed {self.seed}: the study did not finish in {limit_s} s; faults {self.faults}")


def test_chaos_study_loses_nothing(tmp_path, chaos_seed):
    if shutil.which("setpriv") is None:
        pytest.skip("needs util-linux setpriv to drop root's override")
    print(f"chaos schedule seed {chaos_seed} (replay: pytest tests/faults/test_chaos.py --chaos-seeds {chaos_seed})")
    storage = tmp_path / "studies"
    calm = subprocess.run(_argv(storage, "calm"), env=_env(RAY_AUTH_MODE="disabled"), capture_output=True, text=True)
    assert calm.returncode == 0, calm.stderr[-3000:]
    storm = Storm(chaos_seed, storage)
    storm.run()
    where = f"seed {chaos_seed}, faults {storm.faults}"
    done = [f.split()[0] for f in storm.faults if not f.startswith("tore ")]
    assert sorted(done) == sorted(k for k, n in FAULTS.items() for _ in range(n)), where
    assert not [e for e in storm.errs if "Traceback" in e], (where, [e[-2000:] for e in storm.errs if "Traceback" in e])

    calm_rows, rows = (
        load(storage / n / "results").set_index(["config_id", "seed"]).sort_index() for n in ("calm", "chaos")
    )
    assert len(rows) == 12 and rows.index.is_unique and list(rows.index) == list(calm_rows.index), where
    accuracy = [c for c in calm_rows.columns if re.fullmatch(r"(val|test)_.+|epochs_run", c)]
    assert rows[accuracy].equals(calm_rows[accuracy]), where  # to the bit: resumes continue from checkpoints
    preds = [
        load(storage / n / "results", "predictions").sort_values(["config_id", "seed", "task", "image"])
        for n in ("calm", "chaos")
    ]
    assert preds[0]["prediction"].tolist() == preds[1]["prediction"].tolist(), where
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(storage)]
    assert all(p.name.startswith("driver-") for p in outside), outside  # only this test's own logs
