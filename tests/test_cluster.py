"""Cluster configs: Ray's own validator, the KubeRay fields, trial-to-node fit, and a local autoscaling run.

The offline tests need no cloud and no Ray processes. The slow test starts a Ray cluster on this machine
with Ray's fake multi-node provider (the autoscaler launches "nodes" as extra raylets) and checks that a
smoke study asking for a fake GPU, on a dataset pushed to a real S3-protocol server (moto), makes the
autoscaler add nodes, stages the data, completes, and lets the nodes be removed.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import free_port
from ray.cluster_utils import AutoscalingCluster

from mmap_ray.study import program as grouping

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
VENV_BIN = Path(sys.executable).parent


def _import(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


configs = _import("mmap_ray_cluster_configs", CLUSTER / "configs.py")
LAUNCHER = ["aws.yaml", "gcp.yaml"]
ALL = LAUNCHER + ["kuberay.yaml"]


def _load(name: str) -> tuple[dict, str]:
    text = (CLUSTER / name).read_text()
    return yaml.safe_load(text), text


# ---- launcher configs: Ray's validator, then our rules ------------------------------------------------


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_config_passes_rays_validator_and_our_rules(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config, text = _load(name)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)  # raises on any schema error, as `ray up` would
    assert configs.launcher_problems(config, text) == []
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"]["GPU"] == 0 and head["max_workers"] == 0
    workers = configs.node_types(config)
    assert {t["GPU"] for t in workers.values()} == {1, 4}  # a single-GPU and a multi-GPU type
    for t in prepared["available_node_types"].values():
        assert set(t["resources"]) >= {"CPU", "GPU", "memory"}
        assert all(isinstance(v, int) for v in t["resources"].values())


def _set(path: str | tuple, value):
    """A mutation that sets (or deletes) a dotted path, or a tuple of keys, in the loaded config."""

    def mutate(cfg: dict) -> None:
        keys = path.split(".") if isinstance(path, str) else path
        *parents, last = [int(k) if isinstance(k, str) and k.isdigit() else k for k in keys]
        node = cfg
        for p in parents:
            node = node[p]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return mutate


_DELETE = object()


def _replace(key: str, old: str, new: str):
    """A mutation that edits the text of every command in the list `key`."""

    def mutate(cfg: dict) -> None:
        cfg[key] = [c.replace(old, new) for c in cfg[key]]

    return mutate


def _add_setup(command: str):
    def mutate(cfg: dict) -> None:
        cfg["setup_commands"] = [*cfg["setup_commands"], command]

    return mutate


def _host_image(image: str):
    """A mutation that gives one GPU node type another host image (AMI or boot disk image)."""

    def mutate(cfg: dict) -> None:
        node_config = cfg["available_node_types"]["gpu_1x_spot"]["node_config"]
        if "ImageId" in node_config:
            node_config["ImageId"] = image
        else:
            node_config["disks"] = copy.deepcopy(node_config["disks"])
            node_config["disks"][0]["initializeParams"]["sourceImage"] = image

    return mutate


def _no_spot(cfg: dict) -> None:
    for t in cfg["available_node_types"].values():
        t["node_config"].pop("InstanceMarketOptions", None)
        t["node_config"].pop("scheduling", None)


BROKEN_LAUNCHER = {
    # Ray's own validator
    "fractional CPU": (_set("available_node_types.gpu_1x_spot.resources.CPU", 3.5), "Ray's validator rejects"),
    "typo in a node type": (_set("available_node_types.gpu_1x_spot.min_worker", 0), "Ray's validator rejects"),
    "unknown head type": (_set("head_node_type", "ray_head_gpu"), "Ray's validator rejects"),
    "min_workers over the cap": (_set("available_node_types.gpu_1x_spot.min_workers", 20), "Ray's validator rejects"),
    "no provider type": (_set("provider.type", _DELETE), "Ray's validator rejects"),
    # this project's rules
    "GPU on the head": (
        _set("available_node_types.ray_head_cpu.resources.GPU", 1),
        "head node type ray_head_cpu has GPUs",
    ),
    "no CPU on the head": (_set("available_node_types.ray_head_cpu.resources.CPU", 0), "AutoscalingCoordinator"),
    "warm GPU node": (_set("available_node_types.gpu_1x_ondemand.min_workers", 1), "min_workers=1, must be 0"),
    "undeclared memory": (
        _set("available_node_types.gpu_4x_spot.resources.memory", _DELETE),
        "does not declare ['memory']",
    ),
    "no idle timeout": (_set("idle_timeout_minutes", 0), "idle_timeout_minutes must be > 0"),
    "no spot": (_no_spot, "no spot / preemptible node type"),
    "token auth off": (
        _replace("worker_start_ray_commands", "RAY_AUTH_MODE=token ", ""),
        "without RAY_AUTH_MODE=token",
    ),
    "public dashboard": (
        _replace("head_start_ray_commands", "127.0.0.1", "0.0.0.0"),
        "dashboard listens on every interface",
    ),
    "unpinned image": (_replace("setup_commands", "${MMAP_RAY_COMMIT}", "main"), "holds the pinned commit"),
    "plain Ray image": (_set("docker.image", "rayproject/ray:2.60.0-py311-gpu"), "nodes do not install torch"),
    "torch at boot": (_add_setup("pip install --quiet torch==2.14.1"), "install torch at boot"),
    "another host image": (_host_image("ubuntu-2204-lts"), "is not the one cluster/images.toml records"),
}


@pytest.mark.parametrize("name", LAUNCHER)
@pytest.mark.parametrize("case", sorted(BROKEN_LAUNCHER))
def test_broken_launcher_config_fails(name, case):
    mutate, needle = BROKEN_LAUNCHER[case]
    config, text = _load(name)
    assert configs.launcher_problems(config, text) == []
    mutate(config)
    problems = configs.launcher_problems(config, text)
    assert any(needle in p for p in problems), problems


def test_aws_security_group_and_secrets_are_checked():
    config, text = _load("aws.yaml")
    opened = copy.deepcopy(config)
    opened["provider"]["security_group"]["IpPermissions"] = [
        {"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 9000, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    ]
    assert any("opens a Ray port" in p for p in configs.launcher_problems(opened, text))
    office_only = copy.deepcopy(opened)  # the same ports for one office network only: fine
    office_only["provider"]["security_group"]["IpPermissions"][0]["IpRanges"] = [{"CidrIp": "203.0.113.0/24"}]
    assert configs.launcher_problems(office_only, text) == []
    leaked = text + "\n# aws_secret_access_key = abc\n"
    assert any("AWS secret" in p for p in configs.launcher_problems(config, leaked))
    gcp, gcp_text = _load("gcp.yaml")
    gcp["provider"]["gcp_credentials"] = {"type": "service_account", "credentials": "{}"}
    assert any("gcp_credentials" in p for p in configs.launcher_problems(gcp, gcp_text))


# ---- KubeRay manifest ---------------------------------------------------------------------------------


def test_kuberay_manifest_has_what_the_operator_needs():
    manifest, text = _load("kuberay.yaml")
    assert configs.kuberay_problems(manifest, text) == []
    spec = manifest["spec"]
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayCluster"
    assert spec["enableInTreeAutoscaling"] is True and spec["authOptions"]["mode"] == "token"
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert int(spec["headGroupSpec"]["rayStartParams"]["num-cpus"]) >= 1  # room for trial drivers, no GPUs
    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups) >= 1
    for g in groups:
        assert g["minReplicas"] == 0 <= g["replicas"] <= g["maxReplicas"] and g["maxReplicas"] >= 1
        assert int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert any(t["key"] == "nvidia.com/gpu" for t in g["template"]["spec"]["tolerations"])


def _group(i: int, path: str, value):
    return _set(f"spec.workerGroupSpecs.{i}.{path}", value)


def _gpu_limit(i: int, value):
    keys = ("spec", "workerGroupSpecs", i, "template", "spec", "containers", 0, "resources", "limits", "nvidia.com/gpu")
    return _set(keys, value)


BROKEN_KUBERAY = {
    "no groupName": (_group(0, "groupName", _DELETE), "groupName is required"),
    "repeated groupName": (_group(1, "groupName", "gpu-1x"), "groupName repeats"),
    "bad groupName": (_group(0, "groupName", "GPU_1x"), "groupName is required"),
    "min above max": (_group(0, "minReplicas", 9), "minReplicas <= replicas <= maxReplicas"),
    "replicas above max": (_group(1, "replicas", 3), "minReplicas <= replicas <= maxReplicas"),
    "string replicas": (_group(0, "maxReplicas", "8"), "minReplicas <= replicas <= maxReplicas"),
    "warm GPU pod": (
        lambda m: (_group(0, "minReplicas", 1)(m), _group(0, "replicas", 1)(m)),
        "minReplicas=1, must be 0",
    ),
    "no GPU limit": (_gpu_limit(0, _DELETE), "nvidia.com/gpu limit"),
    "fractional GPU": (_gpu_limit(1, "0.5"), "nvidia.com/gpu limit"),
    "no toleration": (_group(0, "template.spec.tolerations", []), "no toleration"),
    "no worker groups": (_set("spec.workerGroupSpecs", []), "at least one GPU worker group"),
    "autoscaling off": (_set("spec.enableInTreeAutoscaling", False), "enableInTreeAutoscaling must be true"),
    "plain Ray image": (
        _set("spec.workerGroupSpecs.0.template.spec.containers.0.image", "rayproject/ray:2.60.0-py311-gpu"),
        "use ${MMAP_RAY_IMAGE}",
    ),
    "autoscaling as a string": (_set("spec.enableInTreeAutoscaling", "true"), "enableInTreeAutoscaling must be true"),
    "no idle timeout": (_set("spec.autoscalerOptions.idleTimeoutSeconds", _DELETE), "idleTimeoutSeconds"),
    "no token auth": (_set("spec.authOptions", _DELETE), "authOptions.mode must be token"),
    "Ray too old for tokens": (_set("spec.rayVersion", "2.46.0"), "needs Ray 2.52"),
    "no CPU for trial drivers": (_set("spec.headGroupSpec.rayStartParams.num-cpus", "0"), "AutoscalingCoordinator"),
    "GPUs on the head": (_set("spec.headGroupSpec.rayStartParams.num-gpus", "1"), "gives the head GPUs"),
    "integer start param": (_set("spec.headGroupSpec.rayStartParams.num-cpus", 2), "must be strings"),
    "public head service": (_set("spec.headGroupSpec.serviceType", "LoadBalancer"), "use ClusterIP"),
    "wrong kind": (_set("kind", "RayJob"), "not a ray.io/v1 RayCluster"),
    "literal token": (
        _group(0, "template.spec.containers.0.env", [{"name": "RAY_AUTH_TOKEN", "value": "x"}]),
        "literal",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_KUBERAY))
def test_broken_kuberay_manifest_fails(case):
    mutate, needle = BROKEN_KUBERAY[case]
    manifest, text = _load("kuberay.yaml")
    mutate(manifest)
    problems = configs.kuberay_problems(manifest, text)
    assert any(needle in p for p in problems), problems


# ---- rendering the placeholders -----------------------------------------------------------------------

VALUES = {
    "MMAP_RAY_COMMIT": "0123456789abcdef0123456789abcdef01234567",
    "MMAP_RAY_DATA": "s3://example-bucket/datasets",
    "MMAP_RAY_GCP_PROJECT": "example-project",
    "MMAP_RAY_IMAGE": "registry.example.com/mmap-ray:0123456789abcdef0123456789abcdef01234567",
    "MMAP_RAY_AMI": "ami-0123456789abcdef0",
}


@pytest.mark.parametrize("name", ALL)
def test_render_fills_every_placeholder_and_the_result_still_checks(name, tmp_path, monkeypatch):
    text = (CLUSTER / name).read_text()
    needed = configs.placeholders(text)
    assert needed  # the committed files carry placeholders, never real values
    for key, value in VALUES.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / name
    assert configs.main(["render", str(CLUSTER / name), "-o", str(out)]) == 0
    rendered = out.read_text()
    assert not configs.placeholders(rendered)
    assert configs.problems_in(out) == []
    if "MMAP_RAY_AMI" in needed:
        assert f"ImageId: {VALUES['MMAP_RAY_AMI']}" in rendered
        with pytest.raises(ValueError, match="MMAP_RAY_AMI='ubuntu' must be an AMI id"):
            configs.render(text, {**VALUES, "MMAP_RAY_AMI": "ubuntu"})
    if "MMAP_RAY_COMMIT" in needed:
        assert f'= "{VALUES["MMAP_RAY_COMMIT"]}"' in rendered  # the image's commit is checked at boot
        assert "$RAY_HEAD_IP" in rendered  # the remote shell's own variables are left alone
        with pytest.raises(ValueError, match="must be a full 40-character commit"):
            configs.render(text, {**VALUES, "MMAP_RAY_COMMIT": "main"})
    with pytest.raises(ValueError, match=r"set \['MMAP_RAY_DATA'\]"):
        configs.render(text, {k: v for k, v in VALUES.items() if k != "MMAP_RAY_DATA"})


def test_check_command_passes_on_the_committed_configs(capsys):
    assert configs.main(["check"]) == 0
    assert capsys.readouterr().out.count(": ok") == len(ALL) + 1  # and images.toml


def test_pins_match_the_project():
    """The clusters run the Ray of this venv, and the torch of the Makefile from the image, not from boot."""
    import ray
    import torch

    torch_pin = re.search(r"TORCH_PIN := (.+)", (REPO / "Makefile").read_text()).group(1).strip()
    for name in LAUNCHER:
        config, _ = _load(name)
        assert config["docker"]["image"] == configs.CONTAINER_IMAGE
        assert "torch" not in " ".join(config["setup_commands"])
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-" in dockerfile and torch_pin in dockerfile
    assert _load("kuberay.yaml")[0]["spec"]["rayVersion"] == ray.__version__
    # the table's CUDA build is the one this machine's PyPI torch wheel (the Dockerfile's, too) carries
    table = configs.load_images()
    assert torch.__version__.split("+")[0] == table["torch"]["version"] and not table["torch"]["index_url"]
    assert torch.version.cuda == table["torch"]["cuda"]


def _image_inputs() -> tuple[dict, str, str]:
    return configs.load_images(), (CLUSTER / "Dockerfile").read_text(), (REPO / "Makefile").read_text()


def test_image_table_passes_and_an_old_driver_fails():
    table, dockerfile, makefile = _image_inputs()
    assert configs.image_problems(table, dockerfile, makefile) == []
    old = copy.deepcopy(table)
    old["hosts"]["gcp"]["driver"] = "570.172.08"  # a CUDA 12.8 driver under a CUDA 13.0 torch
    (problem,) = configs.image_problems(old, dockerfile, makefile)
    assert problem.startswith("gcp: the host image's NVIDIA driver 570.172.08 is older than 580.65.06")
    cu128 = copy.deepcopy(old)  # the way out the message names: a torch built for CUDA 12.8 runs on 570
    cu128["torch"].update(cuda="12.8", index_url="https://download.pytorch.org/whl/cu128")
    assert configs.image_problems(cu128, dockerfile, makefile) == [
        "cluster/Dockerfile does not install from images.toml's index_url 'https://download.pytorch.org/whl/cu128'",
        "cluster/Dockerfile does not check torch.version.cuda == '12.8' at build time",
    ]
    fixed = dockerfile.replace('TORCH_INDEX_URL=""', 'TORCH_INDEX_URL="https://download.pytorch.org/whl/cu128"')
    assert configs.image_problems(cu128, fixed.replace('CUDA="13.0"', 'CUDA="12.8"'), makefile) == []


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda t, d, m: (t, d, m.replace("torch==2.14.1", "torch==2.13.0")), "the Makefile pins"),
        (lambda t, d, m: (t, d.replace("torch==2.14.1", "torch"), m), "does not install 'torch==2.14.1"),
        (lambda t, d, m: (t, d.replace("rayproject/ray:2.60.0", "rayproject/ray:2.9.0"), m), "has Ray 2.9.0"),
        (lambda t, d, m: ({**t, "min_driver": {"12": "525"}}, d, m), "no entry for CUDA 13"),
    ],
)
def test_image_table_disagreements_fail(edit, needle):
    problems = configs.image_problems(*edit(*_image_inputs()))
    assert any(needle in p for p in problems), problems


# ---- trial resource requests vs node types ------------------------------------------------------------


def _study(argv: list[str]):
    """The StudyConfig that `studies/grouping.py ARGV` would run (its own parser, presets and checks), unrun."""
    return grouping.build_study(grouping.build_parser().parse_args(argv))


def _trial_request(study) -> dict[str, float]:
    return configs.trial_request(study.resources.workers, study.resources.resources_per_worker)


@pytest.mark.parametrize("name", ALL)
def test_trial_requests_fit_the_node_types(name, tmp_path):
    config, _ = _load(name)
    data = str(tmp_path)  # the real-data presets check that --root exists
    single = _study(["--preset", "office-home", "--root", data, "--gpus-per-worker", "1"])
    request = _trial_request(single)
    assert request == {"CPU": 1.01, "GPU": 1.0}
    fitting = configs.fitting_node_types(config, request)
    types = configs.node_types(config)
    assert fitting and {types[t]["GPU"] for t in fitting} >= {1.0}  # the single-GPU type holds it
    cheapest = min(fitting, key=lambda t: (types[t]["GPU"], types[t]["CPU"]))
    assert types[cheapest]["GPU"] == 1

    multi = _study(["--preset", "office-home", "--root", data, "--gpus-per-worker", "1", "--workers", "4"])
    request = _trial_request(multi)
    fitting = configs.fitting_node_types(config, request)
    assert fitting and all(types[t]["GPU"] == 4 for t in fitting)  # only the multi-GPU type holds 4 workers

    too_big = configs.trial_request(8, {"CPU": 1, "GPU": 1})
    assert configs.fitting_node_types(config, too_big) == []  # the check can fail

    head = configs.node_types(config, include_head=True)
    (head_name,) = set(head) - set(types)
    assert head[head_name]["GPU"] == 0 and head[head_name]["CPU"] >= 1  # trial drivers yes, GPU trials no
    assert not configs.fits(_trial_request(single), head[head_name])


# ---- a local autoscaling run --------------------------------------------------------------------------


def _descendants(root: int) -> list[int]:
    """Every live process below `root` (from /proc), children first in no particular order."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
            ppid = int(rest.rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(pid))
    out, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class LocalAutoscalingCluster(AutoscalingCluster):
    """Ray's AutoscalingCluster (fake multi-node provider) made safe to run next to other Ray work.

    Differences from the parent: the autoscaling config is given inline (the pip wheel lacks the
    example.yaml the parent reads); the head gets its own GCS port and temp dir, so it neither sees nor
    replaces another cluster on this machine (`ray.init()` elsewhere keeps finding its own); and instead
    of `ray stop --force` (which kills every Ray process on the machine) start and shutdown touch only
    the processes this cluster started: the blocking `ray start` and everything below it.
    """

    def __init__(self, head_resources: dict, worker_node_types: dict, idle_timeout_minutes: float):
        import ray._private.services

        self.port = free_port()
        self.address = f"{ray._private.services.get_node_ip_address()}:{self.port}"
        self.temp_dir = tempfile.mkdtemp(prefix="mmr", dir="/tmp")  # short: Ray's socket paths are limited
        super().__init__(head_resources, worker_node_types, idle_timeout_minutes=idle_timeout_minutes)
        self._proc: subprocess.Popen | None = None

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
        nodes = copy.deepcopy(worker_node_types)
        nodes["ray.head.default"] = {"resources": dict(head_resources), "node_config": {}, "max_workers": 0}
        config = {
            "cluster_name": "mmap-ray-fake",
            "max_workers": sum(t.get("max_workers", 0) for t in worker_node_types.values()),
            "upscaling_speed": 1.0,
            "provider": {
                "type": "fake_multinode",
                "use_node_id_as_ip": True,  # the provider's node ids double as ips
                "disable_node_updaters": True,  # nothing to ssh into: nodes are local raylets
                "disable_launch_config_check": True,
                "gcs_address": self.address,  # this cluster's GCS, not the default port 6379
            },
            "auth": {"ssh_user": "ubuntu"},
            "available_node_types": nodes,
            "head_node_type": "ray.head.default",
            "docker": {},
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
            "initialization_commands": [],
            "setup_commands": [],
            "head_setup_commands": [],
            "worker_setup_commands": [],
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
        }
        config.update(config_kwargs)
        return config

    def env(self, **extra) -> dict:
        env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token", **extra}
        env["RAY_ADDRESS"] = self.address
        return env

    @property
    def monitor_log(self) -> Path:
        return Path(self.temp_dir) / "session_latest" / "logs" / "monitor.log"

    def start(self, timeout: float = 120) -> None:
        from ray.autoscaler._private.util import validate_config

        # The autoscaler loads this file as it is (no provider defaults merged) and validates it so.
        validate_config(copy.deepcopy(self._config))
        config_path = Path(self.temp_dir) / "autoscaling.json"
        config_path.write_text(json.dumps(self._config))
        head = dict(self._head_resources)
        cmd = [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={self.port}",
            f"--temp-dir={self.temp_dir}",
            f"--autoscaling-config={config_path}",
            f"--num-cpus={head.pop('CPU', 0)}",
            f"--object-store-memory={head.pop('object_store_memory', 150 * 2**20)}",
            # every listening port its own, so a Ray started elsewhere on this machine is never in the way
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--min-worker-port=0",
            "--max-worker-port=0",
            "--dashboard-host=127.0.0.1",
            "--disable-usage-stats",
        ]
        if head:
            cmd.append(f"--resources={json.dumps(head)}")
        env = self.env(AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_FAKE_CLUSTER="1")
        env.pop("RAY_ADDRESS")
        self._log = open(Path(self.temp_dir) / "ray-start.log", "w")
        self._proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {(Path(self.temp_dir) / 'ray-start.log').read_text()[-3000:]}")
            if self.monitor_log.is_file():
                try:
                    if self.nodes():
                        return
                except RuntimeError:
                    pass
            time.sleep(2)
        raise RuntimeError(f"the head at {self.address} did not come up in {timeout} s")

    def nodes(self) -> list[dict]:
        """Every node the GCS has seen, dead ones included: alive flag and resources."""
        code = (
            "import json, ray; ray.init(log_to_driver=False); "
            "print(json.dumps([{'id': n['NodeID'], 'alive': n['Alive'], 'resources': n['Resources']} "
            "for n in ray.nodes()]))"
        )
        out = subprocess.run([sys.executable, "-c", code], env=self.env(), capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        return json.loads(out.stdout.strip().splitlines()[-1])

    def shutdown(self) -> None:
        if self._proc is None:
            return
        tree = _descendants(self._proc.pid)
        self._proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its own processes on SIGTERM
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        time.sleep(2)
        leftovers = set(tree) | set(_descendants(self._proc.pid))
        for pid in leftovers:  # fake worker nodes' raylets live under the autoscaler, which may be gone
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()
        self._proc = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()


FAKE_GPU_NODE = {  # one fake GPU per node, like the gpu_1x_* types of the cloud configs
    "resources": {"CPU": 1, "fake_gpu": 1, "object_store_memory": 150 * 2**20},
    "node_config": {},
    "min_workers": 0,
    "max_workers": 2,
}


def _gpu_nodes(nodes: list[dict]) -> list[dict]:
    return [n for n in nodes if n["resources"].get("fake_gpu")]


@pytest.mark.slow
def test_autoscaler_adds_gpu_nodes_for_a_smoke_study_and_removes_them_when_idle(tmp_path, s3, monkeypatch, auth_token):
    from test_data_folders import make_tree

    from mmap_ray.data.remote import CACHE_ENV, cache_folder, push
    from mmap_ray.results import load
    from mmap_ray.storage import location

    # The dataset as on a cloud cluster: pushed to object storage (a real S3-protocol server here), staged by
    # the nodes on first use. All fake nodes share this machine's disk, so they share one cache folder.
    office = make_tree(tmp_path / "OfficeHomeDataset", classes=("Alarm_Clock", "Desk_Lamp"), n=6)
    uri = s3[0].format(prefix="datasets/autoscaling/OfficeHomeDataset")
    push(office, uri, log=lambda _: None)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "node-cache"))  # the cluster's processes inherit it
    # The head mirrors the cloud configs: no GPU, one CPU for the trial drivers. Every trial's Train
    # worker needs a fake GPU, so the study can only run on nodes the autoscaler adds.
    cluster = LocalAutoscalingCluster({"CPU": 1}, {"gpu_1x": FAKE_GPU_NODE}, idle_timeout_minutes=0.1)
    with cluster:
        (head,) = cluster.nodes()  # min_workers 0: the head alone before any demand
        assert head["alive"] and not head["resources"].get("fake_gpu")
        storage = tmp_path / "studies"
        started = time.time()
        study = subprocess.run(
            [
                sys.executable,
                str(REPO / "studies" / "grouping.py"),
                "--smoke",
                "--dataset",
                "office-home",
                "--root",
                uri,
                "--storage",
                str(storage),
                "--worker-resources",
                json.dumps({"fake_gpu": 1}),
                "--autoscale",
            ],
            env=cluster.env(),
            capture_output=True,
            text=True,
            timeout=900,
        )
        study_s = time.time() - started
        assert study.returncode == 0, study.stdout[-3000:] + study.stderr[-3000:]
        df = load(storage / "smoke" / "results")
        assert sorted(df["scheme"].astype(str)) == ["gradient", "single"] and (df["status"] == "TERMINATED").all()
        assert (cache_folder(location(uri)) / "complete.json").is_file()  # staged from the bucket, checked

        added = [n for n in cluster.nodes() if n["id"] != head["id"]]  # every other node came from the autoscaler
        assert added, "the autoscaler added no node"
        assert all(n["resources"].get("fake_gpu") == 1 for n in added if n["resources"]), added  # of the GPU type
        deadline = time.time() + 180
        while time.time() < deadline and any(n["alive"] for n in cluster.nodes() if n["id"] != head["id"]):
            time.sleep(1)
        nodes = cluster.nodes()
        assert [n["id"] for n in nodes if n["alive"]] == [head["id"]], nodes  # only the head is left
        log = cluster.monitor_log.read_text()
        idle = set(re.findall(r"Terminating the node with id (\w+) and ip \w+\. \(idle\)", log))
        assert {n["id"] for n in added} <= idle, (added, log[-3000:])  # each removed by the autoscaler as idle
        print(
            f"smoke study on the autoscaling cluster: {study_s:.0f} s; {len(added)} GPU node(s) added, "
            "removed when idle"
        )
