"""The data interface every benchmark produces: per-task class names and train/val/test datasets.

A *task* is one domain (Office-Home's Art, Clipart, ...). Each task's datasets yield `(image, label)`
with `image` a float tensor (3, H, W) already preprocessed for the backbone and `label` an index into
that task's `class_names`. `MultiTaskDataset` joins the tasks of one split and adds the task id, which is
what `PromptedCLIP.forward(images, task_ids)` consumes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

SPLITS = ("train", "val", "test")
HEAD_BYTES = 16384  # how much of each image file `split_digest` reads


@dataclass
class TaskData:
    """One task: natural-language class names and a dataset per split."""

    name: str
    class_names: list[str]
    train: Dataset
    val: Dataset
    test: Dataset

    def split(self, name: str) -> Dataset:
        if name not in SPLITS:
            raise ValueError(f"split={name!r} is not valid; choose one of {SPLITS}")
        return getattr(self, name)


class ImageListDataset(Dataset):
    """Images listed as (path, label) pairs, decoded with PIL and passed through `transform`."""

    def __init__(self, items: Sequence[tuple[Path, int]], transform: Callable | None = None):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        from .images import rgb

        path, label = self.items[i]
        try:
            with Image.open(path) as im:
                image = rgb(im)
        except (OSError, SyntaxError, ValueError) as e:  # what PIL raises for a non-image or truncated file
            raise ValueError(
                f"image {path} cannot be decoded ({type(e).__name__}: {e}); repair or remove it "
                f"(folder datasets check every image at load time: skip_bad_images drops bad ones)"
            ) from e
        return (self.transform(image) if self.transform else image), label

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.items]


class MultiTaskDataset(Dataset):
    """The tasks of one split joined end to end; yields (image, label, task_id)."""

    def __init__(self, datasets: Sequence[Dataset]):
        self.datasets = list(datasets)
        sizes = torch.tensor([len(d) for d in self.datasets])
        self.offsets = torch.cumsum(sizes, 0) - sizes
        self.task_of = torch.repeat_interleave(torch.arange(len(sizes)), sizes)  # (N,) task id per index

    def __len__(self) -> int:
        return len(self.task_of)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        t = int(self.task_of[i])
        image, label = self.datasets[t][i - int(self.offsets[t])]
        return image, label, t


def class_balanced(dataset: Dataset) -> Dataset:
    """`dataset` with every class's images repeated (in order, cycling) up to the largest class's count, so
    that a uniform draw sees each class equally often. The dataset must have `labels` (ImageListDataset,
    the toy's ToyImages)."""
    labels = torch.as_tensor(list(dataset.labels))  # (N,)
    per_class = [torch.nonzero(labels == c).flatten() for c in labels.unique()]
    most = max(len(idx) for idx in per_class)
    indices = torch.cat([idx.repeat(-(-most // len(idx)))[:most] for idx in per_class])  # (classes * most,)
    return Subset(dataset, indices.tolist())


def split_digest(tasks: Sequence[TaskData], split: str) -> str:
    """A 16-hex-digit identity of the images of `split` over `tasks`, in order: what makes two predictions
    files comparable image by image. A folder dataset's image counts by its last three path parts
    (domain/class/file), its size, its first `HEAD_BYTES` and its label, so a copy of the dataset elsewhere
    is the same data and another dataset of the same layout is not; rendered images by pixels and labels."""
    h = hashlib.sha256()
    for task in tasks:
        h.update(f"task {task.name}\n".encode())
        _update(h, task.split(split))
    return h.hexdigest()[:16]


def _update(h: hashlib._Hash, ds: Dataset) -> None:
    if isinstance(ds, Subset):
        h.update(f"subset {list(ds.indices)}\n".encode())
        _update(h, ds.dataset)
    elif isinstance(ds, ImageListDataset):
        for path, label in ds.items:
            h.update(f"{'/'.join(Path(path).parts[-3:])} {os.stat(path).st_size} {label}\n".encode())
            with open(path, "rb") as f:  # the images were just decoded: this read is from the page cache
                h.update(hashlib.sha256(f.read(HEAD_BYTES)).digest())
    elif isinstance(getattr(ds, "images", None), Tensor):  # rendered (toy) images, uint8
        h.update(ds.images.contiguous().numpy().tobytes())
        h.update(torch.as_tensor(ds.labels).numpy().tobytes())
    else:
        h.update(f"{type(ds).__name__} {len(ds)} {list(getattr(ds, 'labels', []))}\n".encode())
