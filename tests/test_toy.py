import pytest
import torch

from mmap_ray.data.toy import CLASSES, DOMAINS, PAIRS, ToyConfig, load_toy_tasks, render
from mmap_ray.grouping import Partition


def _render(domain, seed=0, n=24, size=32):
    return render(torch.arange(n) % len(CLASSES), domain, size, torch.Generator().manual_seed(seed))


def test_render_is_deterministic_and_any_size():
    a, b = _render("Art"), _render("Art")
    assert a.dtype == torch.uint8 and a.shape == (24, 3, 32, 32)
    assert torch.equal(a, b)
    assert not torch.equal(a, _render("Art", seed=1))
    assert _render("RealWorld", size=64).shape == (24, 3, 64, 64)


def test_classes_differ_within_a_domain():
    imgs = render(torch.arange(len(CLASSES)).repeat_interleave(8), "Clipart", 32, torch.Generator().manual_seed(0))
    dark = (imgs.float().mean(1) < 128).float().view(len(CLASSES), 8, -1).mean(1)  # outline+fill pixels per class
    # different shapes cover different areas: not all class means are equal
    assert dark.mean(1).std() > 0.01


def _sharp_edges(domain: str) -> float:
    """Share of strong intensity steps between neighbouring pixels: the planted style axis.

    Outlines and flat fills (the illustration pair) make many; shading, soft shadows and low-frequency
    clutter (the photo-like pair) make few.
    """
    gray = _render(domain, n=96).float().mean(1) / 255  # (N, S, S)
    return float((gray[:, :, 1:] - gray[:, :, :-1]).abs().gt(0.1).float().mean())


def test_planted_pairs_are_closer_within_than_across():
    style = {d: _sharp_edges(d) for d in DOMAINS}
    dist = lambda a, b: abs(style[a] - style[b])  # noqa: E731
    pairs = Partition.parse(PAIRS, DOMAINS).groups
    within = [dist(*g) for g in pairs]
    across = [dist(a, b) for a in pairs[0] for b in pairs[1]]
    assert max(within) < min(across), (style, within, across)


def test_load_toy_tasks_splits_and_labels():
    tasks = load_toy_tasks(ToyConfig(train_per_class=2, val_per_class=1, test_per_class=3, image_size=16))
    assert [t.name for t in tasks] == list(DOMAINS)
    t = tasks[0]
    assert t.class_names == list(CLASSES)
    assert (len(t.train), len(t.val), len(t.test)) == (24, 12, 36)
    image, label = t.train[5]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label == 2
    assert abs(float(image.mean())) < 3  # normalised
    again = load_toy_tasks(ToyConfig(train_per_class=2, val_per_class=1, test_per_class=3, image_size=16))
    assert torch.equal(again[0].train.images, t.train.images)
    assert not torch.equal(t.train.images[:12], t.test.images[:12])  # splits come from different streams


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"image_size": 4}, "image_size=4 must be >= 8"),
        ({"train_per_class": 0}, "train_per_class=0 must be >= 1"),
        ({"domains": ("Art", "Sketch")}, "must be distinct names from"),
    ],
)
def test_toy_config_errors(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        ToyConfig(**kwargs)
