"""Shared fixtures: real open_clip backbones (a tiny one for speed, ViT-B-16 where the issue asks for it)."""

from __future__ import annotations

import pytest
import torch

from mmap_ray.backbone import TINY_MODEL, Backbone, BackboneConfig, load_backbone

TASKS = {
    "Art": ["alarm clock", "backpack", "bike"],
    "Clipart": ["alarm clock", "backpack", "bike", "calculator"],
    "Product": ["candles", "chair"],
    "RealWorld": ["alarm clock", "bike", "chair", "desk lamp", "bucket"],
}


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
