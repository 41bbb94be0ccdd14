"""Shared fixtures: real open_clip backbones (a tiny one for speed, ViT-B-16 where the issue asks for it)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from mmap_ray.backbone import TINY_MODEL, Backbone, BackboneConfig, load_backbone
from mmap_ray.config import DataConfig, ModelConfig, RunConfig
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


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray instance with 2 CPUs for the module's tests."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


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
