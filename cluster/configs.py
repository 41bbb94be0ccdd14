"""Offline checks and rendering for the cluster configs in this folder (no cloud account, no cluster).

    python cluster/configs.py check                        # every config here; exit 1 on any problem
    python cluster/configs.py check cluster/aws.yaml
    MMAP_RAY_COMMIT=$(git rev-parse HEAD) MMAP_RAY_IMAGE=... MMAP_RAY_AMI=ami-... MMAP_RAY_DATA=s3://bucket/datasets \\
        python cluster/configs.py render cluster/aws.yaml -o aws.rendered.yaml

GPU images: `images.toml` records the torch CUDA build that `Dockerfile` installs, the oldest NVIDIA driver
each CUDA major runs on, and the host image (AWS AMI, GCP image family, Kubernetes node pool) of every
config with its driver; `check` fails when a host's driver is too old for the torch build, when the
Makefile, the Dockerfile and the table pin different torch builds, or when a config uses another host
image or a container image that would reinstall torch at boot.

Launcher configs (aws.yaml, gcp.yaml) go through Ray's own validator, exactly as `ray up` does before it
touches the cloud (`prepare_config` merges the provider defaults, `validate_config` applies the schema
shipped in the wheel), and then through this project's rules: a GPU-free head with a few CPUs for the
trial drivers, GPU worker types that scale from zero with explicit CPU/GPU/memory, spot variants, token
authentication, no public dashboard, a pinned commit, no credentials. The KubeRay manifest is checked
against the fields the operator needs (its CRD schema is not in the wheel) and the same rules.

`node_types` gives what each worker node type offers Ray; `fitting_node_types` says which of them can hold
a whole trial (its driver and its Train worker group), which is how tests/test_cluster.py ties the
study's resource requests to these files.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import re
import sys
import tomllib
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
LAUNCHER_CONFIGS = ("aws.yaml", "gcp.yaml")
KUBERAY_CONFIGS = ("kuberay.yaml",)
IMAGES = HERE / "images.toml"
CONTAINER_IMAGE = "${MMAP_RAY_IMAGE}"  # built from Dockerfile at one commit (cluster/README.md)
AMI = re.compile(r"ami-[0-9a-f]{8,17}")
PLACEHOLDER = re.compile(r"\$\{(MMAP_RAY_[A-Z0-9_]+)\}")
# Ray ports that must never face the internet: GCS, dashboard (jobs API), Ray client.
PRIVATE_PORTS = (6379, 8265, 10001)
SECRETS = {  # pattern -> what it looks like
    r"\b(AKIA|ASIA)[0-9A-Z]{16}\b": "an AWS access key id",
    r"(?i)aws_secret_access_key|aws_session_token": "an AWS secret",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----": "a private key",
    r"(?i)\"type\"\s*:\s*\"service_account\"": "a GCP service-account key",
    r"RAY_AUTH_TOKEN=\S": "a Ray token value",
}
TRIAL_DRIVER_CPU = 0.01  # each Tune trial's own reservation (mmap_ray.study.run_study)
HEAD_CPU_WHY = (
    "the first trial's driver must fit on the head, because Ray Train pins its detached AutoscalingCoordinator "
    "actor to that node, and a GPU node holding it never goes idle"
)


# ---- loading and rendering ----------------------------------------------------------------------------


def load(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def render(text: str, values: dict[str, str]) -> str:
    """Fill in every ${MMAP_RAY_*}; raise ValueError naming what is missing or malformed."""
    missing = sorted(placeholders(text) - {k for k, v in values.items() if v})
    if missing:
        raise ValueError(f"set {missing} (environment variables) to render this config")
    commit = values.get("MMAP_RAY_COMMIT")
    if "MMAP_RAY_COMMIT" in placeholders(text) and not re.fullmatch(r"[0-9a-f]{40}", commit or ""):
        raise ValueError(f"MMAP_RAY_COMMIT={commit!r} must be a full 40-character commit hash (git rev-parse HEAD)")
    ami = values.get("MMAP_RAY_AMI")
    if "MMAP_RAY_AMI" in placeholders(text) and not AMI.fullmatch(ami or ""):
        raise ValueError(
            f"MMAP_RAY_AMI={ami!r} must be an AMI id (ami-...): the id of {load_images()['hosts']['aws']['name']} "
            "in your region (cluster/README.md, GPU images)"
        )
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


# ---- what the nodes offer -----------------------------------------------------------------------------


def _quantity(q) -> float:
    """A Kubernetes quantity ("8", "500m", "32Gi") as a number."""
    s = str(q)
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix in sorted(units, key=len, reverse=True):
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * units[suffix]
    return float(s)


def is_kuberay(config: dict) -> bool:
    return config.get("kind") == "RayCluster"


def node_types(config: dict, include_head: bool = False) -> dict[str, dict[str, float]]:
    """{node type or worker group: {"CPU", "GPU", "memory"}} as Ray will see them."""
    if is_kuberay(config):
        spec = config["spec"]
        groups = [("head", spec["headGroupSpec"])] if include_head else []
        groups += [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
        out = {}
        for name, group in groups:
            limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
            params = group.get("rayStartParams", {})
            out[name] = {
                "CPU": float(params.get("num-cpus", _quantity(limits.get("cpu", 0)))),
                "GPU": float(params.get("num-gpus", _quantity(limits.get("nvidia.com/gpu", 0)))),
                "memory": _quantity(limits.get("memory", 0)),
            }
        return out
    head = config.get("head_node_type")
    return {
        name: {k: float(t.get("resources", {}).get(k, 0)) for k in ("CPU", "GPU", "memory")}
        for name, t in config["available_node_types"].items()
        if include_head or name != head
    }


def trial_request(workers: int, worker_resources: dict[str, float]) -> dict[str, float]:
    """Everything one trial reserves: its driver plus `workers` Train workers of `worker_resources`."""
    total = {"CPU": TRIAL_DRIVER_CPU}
    for key, value in worker_resources.items():
        total[key] = total.get(key, 0.0) + workers * value
    return total


def fits(request: dict[str, float], offer: dict[str, float]) -> bool:
    return all(v <= offer.get(k, 0.0) + 1e-9 for k, v in request.items() if v)


def fitting_node_types(config: dict, request: dict[str, float]) -> list[str]:
    """Worker node types (or groups) that can hold the whole request on one node."""
    return [name for name, offer in node_types(config).items() if fits(request, offer)]


# ---- checks -------------------------------------------------------------------------------------------


def secret_problems(text: str) -> list[str]:
    return [
        f"the file contains what looks like {what}" for pattern, what in SECRETS.items() if re.search(pattern, text)
    ]


def _ray_version_of(image: str) -> str | None:
    m = re.match(r"rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)", image or "")
    return m.group(1) if m else None


def _start_problems(commands: list[str], which: str) -> list[str]:
    problems = []
    starts = [c for c in commands if "ray start" in c]
    if not starts:
        problems.append(f"{which} has no `ray start` command")
    for c in starts:
        if "RAY_AUTH_MODE=token" not in c:
            problems.append(f"{which}: `ray start` runs without RAY_AUTH_MODE=token (token authentication off)")
        if re.search(r"--dashboard-host[= ](0\.0\.0\.0|::)", c):
            problems.append(f"{which}: the dashboard listens on every interface; use --dashboard-host=127.0.0.1")
    return problems


def _opens_private_port(rule: dict) -> bool:
    public = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", [])) or any(
        r.get("CidrIpv6") == "::/0" for r in rule.get("Ipv6Ranges", [])
    )
    lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
    everything = rule.get("IpProtocol") == "-1" or lo == -1
    return public and (everything or any(lo <= p <= hi for p in PRIVATE_PORTS))


def _is_spot(node_config: dict) -> bool:
    if node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot":  # AWS
        return True
    scheduling = node_config.get("scheduling", {})  # GCP: a dict (API) or Ray's legacy list form
    items = scheduling if isinstance(scheduling, list) else [scheduling]
    return any(i.get("provisioningModel") == "SPOT" or i.get("preemptible") is True for i in items)


def launcher_problems(config: dict, text: str = "") -> list[str]:
    """Problems with a cluster-launcher config: Ray's validator first, then this project's rules."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
    except Exception as e:  # jsonschema.ValidationError, ValueError, KeyError, ...
        return [f"Ray's validator rejects the config: {type(e).__name__}: {str(e).splitlines()[0]}"]

    problems = secret_problems(text)
    types = prepared["available_node_types"]
    head = prepared["head_node_type"]
    for name, t in types.items():
        missing = [k for k in ("CPU", "GPU", "memory") if k not in t["resources"]]
        if missing:
            problems.append(f"node type {name} does not declare {missing} (the autoscaler cannot plan offline)")
    if types[head]["resources"].get("GPU", 0) != 0:
        problems.append(f"head node type {head} has GPUs: the head runs the driver only")
    if types[head]["resources"].get("CPU", 0) < 1:
        problems.append(f"head node type {head} advertises no CPU: {HEAD_CPU_WHY}")
    declared = re.search(r"--num-cpus[= ](\d+)", " ".join(prepared["head_start_ray_commands"]))
    if declared and int(declared.group(1)) != types[head]["resources"].get("CPU"):
        problems.append(f"head `ray start --num-cpus={declared.group(1)}` disagrees with the head's declared CPU")
    workers = {n: t for n, t in types.items() if n != head}
    gpu_counts = set()
    for name, t in workers.items():
        if t["min_workers"] != 0:
            problems.append(f"node type {name}: min_workers={t['min_workers']}, must be 0 (scale from zero)")
        if not 1 <= t["max_workers"] <= prepared["max_workers"]:
            problems.append(f"node type {name}: max_workers={t['max_workers']} must be in 1..{prepared['max_workers']}")
        gpus = t["resources"].get("GPU", 0)
        if gpus < 1:
            problems.append(f"worker node type {name} has no GPU")
        gpu_counts.add(gpus)
    if 1 not in gpu_counts or not any(g > 1 for g in gpu_counts):
        problems.append(f"worker GPU counts {sorted(gpu_counts)}: need a single-GPU type and a multi-GPU type")
    for gpus in gpu_counts:
        if not any(_is_spot(t["node_config"]) for t in workers.values() if t["resources"].get("GPU") == gpus):
            problems.append(f"no spot / preemptible node type with {gpus} GPU(s)")
    if not prepared.get("idle_timeout_minutes"):
        problems.append("idle_timeout_minutes must be > 0, or idle GPU nodes are never removed")
    problems += _start_problems(prepared["head_start_ray_commands"], "head_start_ray_commands")
    problems += _start_problems(prepared["worker_start_ray_commands"], "worker_start_ray_commands")
    provider = prepared["provider"]
    if any(_opens_private_port(r) for r in provider.get("security_group", {}).get("IpPermissions", [])):
        problems.append(f"the security group opens a Ray port {PRIVATE_PORTS} to the internet")
    if "gcp_credentials" in provider:
        problems.append("provider.gcp_credentials embeds a credential; use the VM's or your gcloud login instead")
    return problems + _launcher_image_problems(prepared)


def _launcher_image_problems(prepared: dict) -> list[str]:
    """The container image is the one built from Dockerfile, installed as is; the host image is the table's."""
    problems = []
    image = prepared.get("docker", {}).get("image", "")
    if image.startswith("rayproject/") or not image:
        problems.append(
            f"docker.image={image!r}: use {CONTAINER_IMAGE}, built from cluster/Dockerfile (torch and this project "
            "at one commit), so that nodes do not install torch at boot"
        )
    setup = " ".join(prepared["setup_commands"])
    if re.search(r"pip install[^&;]*\btorch", setup):
        problems.append("setup_commands install torch at boot: it belongs in the image (cluster/Dockerfile)")
    if not re.search(r"(\$\{MMAP_RAY_COMMIT\}|\b[0-9a-f]{40}\b)", setup):
        problems.append("setup_commands must check that the image holds the pinned commit (${MMAP_RAY_COMMIT})")
    cloud = prepared["provider"]["type"]
    host = load_images()["hosts"].get(cloud, {})
    for name, t in prepared["available_node_types"].items():
        used = _host_image(cloud, t["node_config"])
        allowed = ("${MMAP_RAY_AMI}",) if cloud == "aws" else (host.get("image"),)
        if used not in allowed and not (cloud == "aws" and AMI.fullmatch(used or "")):
            problems.append(
                f"node type {name}: host image {used!r} is not the one cluster/images.toml records for {cloud} "
                f"({allowed[0]!r}), whose NVIDIA driver is checked against the torch CUDA build"
            )
    return problems


def _host_image(cloud: str, node_config: dict) -> str | None:
    if cloud == "aws":
        return node_config.get("ImageId")
    disks = node_config.get("disks", [])
    return next((d.get("initializeParams", {}).get("sourceImage") for d in disks if d.get("boot")), None)


# ---- GPU images: torch CUDA build against host drivers --------------------------------------------------


def load_images(path: str | Path = IMAGES) -> dict:
    return tomllib.loads(Path(path).read_text())


def _branch(version: str) -> int:
    """A driver version's branch: "595.91.07" -> 595."""
    return int(str(version).split(".")[0])


def image_problems(table: dict, dockerfile: str, makefile: str) -> list[str]:
    """The table, the Dockerfile and the Makefile agree on torch, and every host driver runs its CUDA build."""
    problems = []
    torch = table["torch"]
    pin = f"torch=={torch['version']} torchvision=={torch['torchvision']}"
    make_pin = re.search(r"TORCH_PIN := (.+)", makefile)
    if not make_pin or make_pin.group(1).strip() != pin:
        problems.append(f"the Makefile pins {make_pin and make_pin.group(1).strip()!r}, images.toml {pin!r}")
    if pin not in dockerfile:
        problems.append(f"cluster/Dockerfile does not install {pin!r} (images.toml [torch])")
    if torch["index_url"] and torch["index_url"] not in dockerfile:
        problems.append(f"cluster/Dockerfile does not install from images.toml's index_url {torch['index_url']!r}")
    if f'CUDA="{torch["cuda"]}"' not in dockerfile:
        problems.append(f"cluster/Dockerfile does not check torch.version.cuda == {torch['cuda']!r} at build time")
    base = re.search(r"^FROM (\S+)", dockerfile, re.M)
    problems += _version_problems(base.group(1) if base else "")
    major = torch["cuda"].split(".")[0]
    needed = table["min_driver"].get(major)
    if needed is None:
        return problems + [f"images.toml [min_driver] has no entry for CUDA {major} (torch {torch['cuda']})"]
    for cloud, host in table["hosts"].items():
        if _branch(host["driver"]) < _branch(needed):
            problems.append(
                f"{cloud}: the host image's NVIDIA driver {host['driver']} is older than {needed}, which torch "
                f"{torch['version']} (CUDA {torch['cuda']}) needs: pick a newer host image, or a torch built for an "
                "older CUDA (images.toml [torch] index_url)"
            )
    return problems


def _version_problems(image: str) -> list[str]:
    import ray

    version = _ray_version_of(image)
    if version and version != ray.__version__:
        return [f"image {image} has Ray {version} but this project runs Ray {ray.__version__}: keep them equal"]
    return []


def _strings(params: dict) -> bool:
    return all(isinstance(v, str) for v in params.values())


def kuberay_problems(manifest: dict, text: str = "") -> list[str]:
    """Problems with a KubeRay RayCluster: the fields the operator needs, then this project's rules."""
    problems = secret_problems(text)
    if manifest.get("apiVersion") != "ray.io/v1" or manifest.get("kind") != "RayCluster":
        return problems + [f"not a ray.io/v1 RayCluster: {manifest.get('apiVersion')}/{manifest.get('kind')}"]
    if not manifest.get("metadata", {}).get("name"):
        problems.append("metadata.name is required")
    spec = manifest.get("spec", {})
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append("spec.enableInTreeAutoscaling must be true (a boolean)")
    opts = spec.get("autoscalerOptions", {})
    if not isinstance(opts.get("idleTimeoutSeconds"), int) or opts["idleTimeoutSeconds"] <= 0:
        problems.append("spec.autoscalerOptions.idleTimeoutSeconds must be a positive integer")
    if opts.get("upscalingMode", "Default") not in ("Default", "Aggressive", "Conservative"):
        problems.append(
            f"autoscalerOptions.upscalingMode={opts.get('upscalingMode')!r} is not Default/Aggressive/Conservative"
        )
    if opts.get("version", "v1") not in ("v1", "v2"):
        problems.append(f"autoscalerOptions.version={opts.get('version')!r} is not v1 or v2")
    if spec.get("authOptions", {}).get("mode") != "token":
        problems.append("spec.authOptions.mode must be token (token authentication)")
    ray_version = str(spec.get("rayVersion", ""))
    if tuple(int(x) for x in re.findall(r"\d+", ray_version)[:2] or (0, 0)) < (2, 52):
        problems.append(f"spec.rayVersion={ray_version!r}: token authentication needs Ray 2.52 or newer")

    head = spec.get("headGroupSpec")
    if not head or not head.get("template", {}).get("spec", {}).get("containers"):
        return problems + ["spec.headGroupSpec.template.spec.containers is required"]
    pods = [g["template"]["spec"] for g in [head, *(spec.get("workerGroupSpecs") or [])]]
    for c in (c for pod in pods for key in ("containers", "initContainers") for c in pod.get(key, [])):
        if str(c.get("image", "")).startswith("rayproject/"):
            problems.append(f"container {c.get('name')}: image {c['image']!r}; use {CONTAINER_IMAGE} (Dockerfile)")
    return problems + _kuberay_head_problems(head) + _kuberay_worker_problems(spec.get("workerGroupSpecs") or [])


def _kuberay_head_problems(head: dict) -> list[str]:
    """The head group: string start parameters, a few CPUs for the drivers, no GPUs, not exposed."""
    problems = []
    params = head.get("rayStartParams", {})
    if not _strings(params):
        problems.append("headGroupSpec.rayStartParams values must be strings (the CRD is a string map)")
    if not re.fullmatch(r"[1-9]\d*", str(params.get("num-cpus"))):
        problems.append(
            f"headGroupSpec.rayStartParams num-cpus={params.get('num-cpus')!r}: set it to a small "
            f"integer >= 1; {HEAD_CPU_WHY}"
        )
    if "num-gpus" in params and params["num-gpus"] != "0":
        problems.append("headGroupSpec.rayStartParams gives the head GPUs: the head runs the driver only")
    if head.get("serviceType", "ClusterIP") in ("LoadBalancer", "NodePort"):
        problems.append(f"headGroupSpec.serviceType={head['serviceType']} exposes the dashboard and GCS; use ClusterIP")
    for c in head["template"]["spec"]["containers"]:
        if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {}):
            problems.append("the head container requests GPUs: the head runs the driver only")
    return problems


def _kuberay_worker_problems(groups: list[dict]) -> list[str]:
    """The worker groups: named, scaling from zero, one integer GPU limit and the GPU taint's toleration."""
    problems = []
    if not groups:
        problems.append("spec.workerGroupSpecs needs at least one GPU worker group")
    names = [g.get("groupName") for g in groups]
    for i, g in enumerate(groups):
        name = g.get("groupName")
        where = f"workerGroupSpecs[{i}] ({name})"
        if not name or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", str(name)):
            problems.append(f"{where}: groupName is required, lowercase letters, digits and '-'")
        elif names.count(name) > 1:
            problems.append(f"{where}: groupName repeats")
        lo, hi, n = g.get("minReplicas"), g.get("maxReplicas"), g.get("replicas", g.get("minReplicas"))
        if not all(isinstance(v, int) for v in (lo, hi, n)) or not 0 <= lo <= n <= hi or hi < 1:
            problems.append(
                f"{where}: need integers 0 <= minReplicas <= replicas <= maxReplicas, maxReplicas >= 1; "
                f"got {lo}, {n}, {hi}"
            )
        elif lo != 0:
            problems.append(f"{where}: minReplicas={lo}, must be 0 (scale from zero)")
        if not _strings(g.get("rayStartParams", {})):
            problems.append(f"{where}: rayStartParams values must be strings")
        pod = g.get("template", {}).get("spec", {})
        if not pod.get("containers"):
            problems.append(f"{where}: template.spec.containers is required")
            continue
        gpus = pod["containers"][0].get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        if not re.fullmatch(r"[1-9]\d*", str(gpus)):
            problems.append(f"{where}: the Ray container needs an integer nvidia.com/gpu limit >= 1, got {gpus!r}")
        if not any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])):
            problems.append(f"{where}: no toleration for the nvidia.com/gpu taint of GPU nodes")
        for c in pod["containers"] + pod.get("initContainers", []):
            if any(e.get("name") == "RAY_AUTH_TOKEN" and "value" in e for e in c.get("env", [])):
                problems.append(f"{where}: RAY_AUTH_TOKEN given as a literal value; the operator manages the token")
    return problems


def problems_in(path: str | Path) -> list[str]:
    text = Path(path).read_text()
    config = yaml.safe_load(text)
    return kuberay_problems(config, text) if is_kuberay(config) else launcher_problems(config, text)


# ---- command line -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="check configs offline (default: every config in cluster/)")
    c.add_argument("paths", nargs="*", default=[str(HERE / n) for n in LAUNCHER_CONFIGS + KUBERAY_CONFIGS])
    r = sub.add_parser("render", help="fill ${MMAP_RAY_*} from the environment, check, write")
    r.add_argument("path")
    r.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)
    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)  # prepare_config's INFO chatter

    if args.cmd == "render":
        try:
            text = render(Path(args.path).read_text(), dict(os.environ))
        except ValueError as e:
            print(f"{args.path}: {e}", file=sys.stderr)
            return 2
        Path(args.output).write_text(text)
        args.paths = [args.output]
    failed = False
    if args.cmd == "check":
        dockerfile, makefile = (HERE / "Dockerfile").read_text(), (HERE.parent / "Makefile").read_text()
        problems = image_problems(load_images(), dockerfile, makefile)
        failed |= bool(problems)
        print(f"{IMAGES}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for problem in problems:
            print(f"  - {problem}")
    for path in args.paths:
        problems = problems_in(path)
        failed |= bool(problems)
        print(f"{path}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for problem in problems:
            print(f"  - {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
