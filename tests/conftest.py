"""Shared fixtures: real open_clip backbones (a tiny one for speed, ViT-B-16 where the issue asks for it)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmap_ray.backbone import TINY_MODEL, Backbone, BackboneConfig, load_backbone
from mmap_ray.config import DataConfig, ModelConfig, RunConfig
from mmap_ray.engine import TrainConfig
from mmap_ray.prompts import MmAPConfig

TASKS = {
    "Art": ["alarm clock", "backpack", "bike"],
    "Clipart": ["alarm clock", "backpack", "bike", "calculator"],
    "Product": ["candles", "chair"],
    "RealWorld": ["alarm clock", "bike", "chair", "desk lamp", "bucket"],
}


REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# A seconds-scale run on random weights: two toy tasks in two groups, 4 images per class
TWO_TASK_RUN = RunConfig(
    data=DataConfig(domains=("Art", "Product"), shots=4),
    backbone=ModelConfig(pretrained=None),
    prompts=MmAPConfig(n_tokens=2),
    partition=(("Art",), ("Product",)),
)
# 2 epochs at the global batch 16: 2 Ray Train workers x 8, or one process x 16 (`two_worker_run`)
DDP_TRAIN = TrainConfig(epochs=2, batch_size=16, lr=5e-3, warmup_steps=2)
STUDY = [sys.executable, str(REPO / "studies" / "grouping.py")]  # the main study, as a user runs it


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def study_env(**extra) -> dict:
    """The environment of a study or `ray` CLI subprocess: this venv first, token auth on, no inherited cluster."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="session")
def auth_token() -> Path:
    """The Ray token a user makes before starting a cluster with token authentication (cluster/README.md:
    `ray get-auth-token --generate`, which keeps an existing ~/.ray/auth_token). `ray start --head` with
    RAY_AUTH_MODE=token refuses to start without one; on a machine where Ray never ran there is none."""
    from filelock import FileLock  # torch's dependency

    (Path.home() / ".ray").mkdir(exist_ok=True)
    with FileLock(Path.home() / ".ray" / "auth_token.test-lock"):  # test workers side by side: one generates
        made = subprocess.run(
            [str(VENV_BIN / "ray"), "get-auth-token", "--generate"], env=study_env(), capture_output=True, text=True
        )
    assert made.returncode == 0, made.stderr
    return Path.home() / ".ray" / "auth_token"


def terminal_signals() -> None:
    """`preexec_fn` for a command a test interrupts as Ctrl-C would: SIGINT at its default, as a terminal's
    shell starts a foreground job. A test run started in the background without job control (`make test &`
    in a script, nohup) ignores SIGINT, and every process it starts would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cmdlines() -> dict[int, str]:
    out = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            out[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone, or not ours to read
            pass
    return out


def stop_ray(driver_pid: int | None = None, gcs_port: int | None = None, timeout: float = 60) -> None:
    """Stop the local Ray that a test's own driver process (`driver_pid`, which called ray.init) or
    `ray start --head --port=gcs_port` started, and only that one: its session's processes are killed.

    `ray stop --force` would kill every Ray process on the machine, including a user's study running beside
    the tests. A session is named `session_<time>_<pid of the process that started it>`, and its raylet's
    command line holds the GCS address; every process of the session names it on its command line (the
    workers exit with their raylet)."""
    cmdlines = _cmdlines()
    sessions = set()
    for cmd in cmdlines.values():
        for match in re.finditer(r"session_\d{4}-\d\d-\d\d_[\d-]+_\d+_(\d+)", cmd):
            by_pid = driver_pid is not None and int(match.group(1)) == driver_pid
            by_port = gcs_port is not None and re.search(rf"gcs-address=[\w.:-]+:{gcs_port}\b", cmd)
            if by_pid or by_port:
                sessions.add(match.group(0))
    if not sessions:
        return
    own = [pid for pid, cmd in cmdlines.items() if pid != os.getpid() and any(s in cmd for s in sessions)]
    addresses = {a for pid in own for a in re.findall(r"gcs-address=([\w.:-]+)", cmdlines[pid])}
    for pid in own:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.time() + timeout
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in own):
        time.sleep(0.5)
    # `ray start` names its cluster in this file, where a later ray.init() would look for it (and wait)
    current = Path("/tmp/ray/ray_current_cluster")
    if current.is_file() and current.read_text().strip() in addresses:
        current.unlink(missing_ok=True)


@pytest.fixture(scope="session", autouse=True)
def _study_storage(tmp_path_factory):
    """Studies that name no --storage land in a temporary folder, never in the user's ~/mmap-ray."""
    os.environ["MMAP_RAY_STORAGE"] = str(tmp_path_factory.mktemp("default-storage"))


def _load(name: str) -> Backbone:
    torch.manual_seed(0)
    return load_backbone(BackboneConfig(name))


@pytest.fixture(scope="session")
def tiny() -> Backbone:
    """The tiny toy ViT CLIP with random weights (frozen). Do not unfreeze: it is shared."""
    return _load(TINY_MODEL)


@pytest.fixture(scope="session")
def vitb16() -> Backbone:
    """ViT-B-16 with random weights (frozen). Do not unfreeze: it is shared."""
    return _load("ViT-B-16")


def images_for(backbone: Backbone, batch: int, seed: int = 0) -> torch.Tensor:
    size = backbone.model.visual.image_size
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *size, generator=g)


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory) -> tuple[Path, str]:
    """`python studies/grouping.py --smoke --tracking tensorboard mlflow`, run once per test session as a
    user runs it: (its results folder, its stdout). The report, notebook and tracking tests read it."""
    import subprocess

    storage = tmp_path_factory.mktemp("studies")
    out = subprocess.run(
        [*STUDY, "--smoke", "--storage", str(storage), "--tracking", "tensorboard", "mlflow"],
        env=study_env(RAY_AUTH_MODE="disabled"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return storage / "smoke" / "results", out.stdout + out.stderr


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory) -> Path:
    """One real local Ray instance with 2 CPUs for every test that runs Ray in this process (Ray Train runs,
    in-process studies); in one process the tests that use it run last (`pytest_collection_modifyitems`), so
    it is up only while they run (under pytest-xdist a worker's may start with its first group). Its workers
    load the test fault plugin (tests/plugins), which does nothing until a test writes the plan file returned
    here (`fault_plan`)."""
    import ray
    from plugins.mmap_ray_faults import PLAN_ENV, with_plugins

    plan = tmp_path_factory.mktemp("faults") / "plan.json"
    with pytest.MonkeyPatch.context() as mp:  # the environment Ray's workers inherit; this process's is restored
        for k, v in with_plugins({"PYTHONPATH": os.environ.get("PYTHONPATH", ""), PLAN_ENV: str(plan)}).items():
            mp.setenv(k, v)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield plan
    ray.shutdown()


@pytest.fixture
def ray_local(ray_session):
    """The session's local Ray instance (2 CPUs)."""
    import ray

    return ray


@pytest.fixture
def fault_plan(ray_session) -> Path:
    """The fault plan file the session Ray's workers read (tests/plugins/mmap_ray_faults.py): absent, no fault.
    A test that writes it removes it again before it ends."""
    return ray_session


@pytest.fixture(scope="session")
def two_worker_run(ray_session, tmp_path_factory) -> tuple[list[dict], dict, dict, Path]:
    """`TWO_TASK_RUN` for 2 epochs with the global batch 16, trained once in this process and once as 2 Ray Train
    workers x 8 (in the returned folder): (in-process history, in-process trainable tensors, the workers' final
    state, folder). The DDP equivalence and worker-death tests compare against it."""
    sys.path.insert(0, str(REPO / "studies"))
    from gpu_checks import train_both_ways  # the GPU acceptance check runs the same comparison

    from mmap_ray.distributed import WorkerSpec
    from mmap_ray.fields import replace

    folder = tmp_path_factory.mktemp("ddp")
    return *train_both_ways(replace(TWO_TASK_RUN, train=DDP_TRAIN), folder, WorkerSpec(workers=2)), folder


# Session fixtures that take tens of seconds to build, and the xdist group of the tests that use each
SHARED = {"smoke_study": "smoke", "two_worker_run": "ddp"}


def pytest_configure(config):
    """Under pytest-xdist (`make test`: 3 workers on 2 cores, measured faster than 2), each worker and what it
    starts computes on one thread: processes of two OpenMP threads each on 2 cores spin against each other
    (a 26 s test took 233 s). Ray's workers already run with one thread per CPU they hold."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"  # the study and CLI processes a test starts


def _start_order(item) -> tuple[float, bool]:
    """The longest tests first (`slow(minutes=N)`, a slow test without it counts 1 minute), so that under
    pytest-xdist they do not start last and set the suite's end; then the tests on the session's local Ray last."""
    slow = item.get_closest_marker("slow")
    return -(slow.kwargs.get("minutes", 1) if slow else 0), "ray_session" in item.fixturenames


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's, which reads the groups into the test ids
def pytest_collection_modifyitems(config, items):
    """The longest tests first, the tests on the session's local Ray last (`_start_order`). Under pytest-xdist
    (`--dist loadgroup`) each worker has its own local Ray, and the tests that share the finished smoke study,
    or the undisturbed two-worker run, are a group, so one worker builds each once (xdist starts the groups
    first, then the other tests in this order)."""
    items.sort(key=_start_order)  # stable: each group keeps its order
    for item in items:
        group = next((g for name, g in SHARED.items() if name in item.fixturenames), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_collection_finish(session):
    """Under `--dist loadgroup`, stop if pytest-xdist did not mark the groups into the test ids (it cannot on
    pytest 9.2, pytest-dev/pytest-xdist#1386): each worker would build the shared fixtures again, silently."""
    if not session.config.getoption("loadgroup", default=False):  # set in pytest-xdist's workers
        return
    lost = [i.nodeid for i in session.items if any(i.iter_markers("xdist_group")) and "@" not in i.nodeid]
    if lost:
        raise pytest.UsageError(f"pytest-xdist ignored the xdist_group of {lost[0]} (pytest {pytest.__version__})")


@pytest.fixture(scope="module")
def s3():
    """A real S3-protocol server (moto, server mode) on loopback with one bucket.

    Yields (base URI of the bucket, environment with its dummy credentials); the credentials are also
    set in this process, so pyarrow and boto3 here reach it too.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="mmap-test")
        yield f"s3://mmap-test/{{prefix}}?endpoint_override=127.0.0.1:{port}&scheme=http", env
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def pytest_addoption(parser):
    parser.addoption(
        "--chaos-seeds",
        default="0",
        help="the chaos study's (tests/faults/test_chaos.py) schedule seeds, e.g. 0,1,2 (default 0; none: skip it)",
    )


def pytest_generate_tests(metafunc):
    if "chaos_seed" in metafunc.fixturenames:
        seeds = [int(s) for s in metafunc.config.getoption("--chaos-seeds").split(",") if s.strip()]
        skip = pytest.mark.skip(reason="--chaos-seeds is empty")
        metafunc.parametrize("chaos_seed", seeds or [pytest.param(0, marks=skip)])
