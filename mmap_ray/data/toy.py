"""A procedurally rendered cross-domain benchmark: 12 shape classes in 4 Office-Home-like domains.

Why: with no dataset downloads, the embedded default still needs a benchmark on which the method's
behaviour shows. Every image is a shape (the class) with a random colour, position, size and a small
rotation, rendered in one of four styles:

- Clipart:   flat saturated fill, thick dark outline, plain white background.
- Art:       the same flat illustration with a thinner outline, brush-stroke texture and pastel paper.
- Product:   a shaded object (directional light) with a drop shadow on a light-grey studio gradient.
- RealWorld: a shaded object on a cluttered low-frequency colour background, lighting jitter and noise.

Three benchmarks are built from these renders:

- `toy` (the first benchmark): every class name means its shape in every domain. Planted structure:
  {Art, Clipart} are flat illustrations and {Product, RealWorld} shaded photo-like renders. It is
  confounded as a grouping benchmark: the tiny CLIP is pretrained on RealWorld only, so what it saw
  already separates the pairs, and training-free proxies find them (issue 17). Kept for the ablations.
- `toy2` (the grouping benchmark): the tasks follow one of two labelling *conventions*, like two
  annotation teams. Every class name means another shape than in pretraining, and differently in each
  convention: convention A (Art, Product) swaps the names in pairs (circle<->square, ...), convention B
  (Clipart, RealWorld) shifts them by two (circle->triangle, ...). No name means the same shape in both
  conventions, so a prompt shared across conventions is pulled two ways (negative transfer), while tasks
  of one convention help each other (16 training images per class, so sharing matters). The planted
  partition "Art+Product|Clipart+RealWorld" crosses the style pairs, and the tiny CLIP for `toy2` is
  pretrained on every domain with the pretraining names, so neither what it saw nor its zero-shot
  accuracy (near zero in every domain: every name is relabelled) points to it.
- `toy3` (the grouping benchmark since toy2's oracle, issue 17): toy2's conventions, and each domain is
  labelled mostly for half of the classes (`TOY3_SHOTS` training images per class) and scarcely for the
  other half (`TOY3_SCARCE`). The halves are complementary within each convention (Art and Clipart have
  the first half, Product and RealWorld the second), so only a convention's two tasks together cover all
  its names: a prompt shared with the partner of the same convention can learn every name (positive
  transfer), one shared with a task of the other convention learns the scarce names wrong (negative
  transfer). Neither the style pairs nor the halves alone give the planted partition: the tasks with
  the same half (Art+Clipart, Product+RealWorld) are the style pairs. Whether grouping then matters
  depends on the prompts: with group prompts only it does, by tens of points; with MmAP's task prompts
  on top, each task's own prompt absorbs its data and no group prompt carries a name across (README).

Everything is deterministic from a seed, vectorised in torch (no Python loop over pixels), at any size.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .base import TaskData

CLASSES = (
    "circle",
    "square",
    "triangle",
    "diamond",
    "cross",
    "ring",
    "star",
    "hexagon",
    "crescent",
    "ellipse",
    "bar",
    "hourglass",
)
DOMAINS = ("Art", "Clipart", "Product", "RealWorld")
PAIRS = "Art+Clipart|Product+RealWorld"  # toy's planted partition (the styles)
# toy2: the labelling convention of each domain, and the names it relabels.
CONVENTIONS = {"Art": "A", "Product": "A", "Clipart": "B", "RealWorld": "B"}
CONVENTION_GROUPS = "Art+Product|Clipart+RealWorld"  # toy2's planted partition
RELABELLED = tuple(range(len(CLASSES)))  # every class (a first version relabelled 6: too little at stake)
TOY2_SHOTS = 16  # training images per class and domain in toy2
# toy3: the half of the classes each domain is labelled for (TOY3_SHOTS images each; the rest TOY3_SCARCE)
HALF = len(CLASSES) // 2
FIRST, SECOND = range(HALF), range(HALF, 2 * HALF)
ABUNDANT = {"Art": FIRST, "Clipart": FIRST, "Product": SECOND, "RealWorld": SECOND}
TOY3_SHOTS = 16
TOY3_SCARCE = 2
# open_clip's (OpenAI) normalisation; the tiny toy CLIP uses the same.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _shape_sdf(cls: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Signed field (< 0 inside) of each image's class shape. cls: (N,); x, y: (N, S, S) -> (N, S, S)."""
    r = torch.sqrt(x * x + y * y)
    ax, ay = x.abs(), y.abs()
    theta = torch.atan2(y, x)
    fields = torch.stack(
        [
            r - 0.8,  # circle
            torch.maximum(ax, ay) - 0.7,  # square
            torch.maximum(ax * 0.866 + y * 0.5, -y) - 0.42,  # triangle
            ax + ay - 0.9,  # diamond
            torch.minimum(torch.maximum(ax - 0.22, ay - 0.8), torch.maximum(ax - 0.8, ay - 0.22)),  # cross
            (r - 0.6).abs() - 0.17,  # ring
            r - (0.5 + 0.32 * torch.cos(5 * theta)),  # star
            torch.maximum(ax * 0.866 + ay * 0.5, ay) - 0.72,  # hexagon
            torch.maximum(r - 0.8, 0.62 - torch.sqrt((x - 0.38) ** 2 + (y - 0.1) ** 2)),  # crescent
            torch.sqrt((x / 0.9) ** 2 + (y / 0.42) ** 2) - 1.0,  # ellipse
            torch.maximum(ax - 0.2, ay - 0.85),  # bar
            torch.maximum(ax - ay * 0.85, ay - 0.8),  # hourglass
        ]
    )  # (classes, N, S, S)
    return fields.gather(0, cls.view(1, -1, 1, 1).expand(1, *x.shape))[0]


def _smooth_noise(n: int, size: int, cells: int, g: torch.Generator) -> Tensor:
    """Low-frequency colour noise (n, 3, size, size) in [0, 1]."""
    coarse = torch.rand(n, 3, cells, cells, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def render(classes: Tensor, domain: str, size: int, g: torch.Generator) -> Tensor:
    """Render one image per class id in `classes` (N,) in `domain`'s style -> uint8 (N, 3, size, size)."""
    if domain not in DOMAINS:
        raise ValueError(f"domain={domain!r} is not a toy domain; choose one of {DOMAINS}")
    n = len(classes)
    u = lambda lo, hi, *shape: lo + (hi - lo) * torch.rand(n, *shape, generator=g)  # noqa: E731
    lin = torch.linspace(-1, 1, size)
    gy, gx = torch.meshgrid(-lin, lin, indexing="ij")  # (S, S), y points up
    cx, cy, scale = u(-0.25, 0.25, 1, 1), u(-0.25, 0.25, 1, 1), u(0.5, 0.75, 1, 1)
    angle = u(-0.25, 0.25, 1, 1)  # radians: small, so square and diamond stay distinct
    px, py = (gx - cx) / scale, (gy - cy) / scale
    x = px * torch.cos(angle) + py * torch.sin(angle)  # (N, S, S)
    y = -px * torch.sin(angle) + py * torch.cos(angle)
    f = _shape_sdf(classes, x, y)  # (N, S, S)
    edge = 2.5 / size / scale  # about one pixel of antialiasing, in shape units
    inside = torch.sigmoid(-f / edge)[:, None]  # (N, 1, S, S)
    outline = lambda w: torch.sigmoid((w - f.abs()) / edge)[:, None]  # noqa: E731
    hue = u(0, 1, 1)
    colour = _hsv_to_rgb(hue, u(0.75, 1.0, 1), u(0.75, 1.0, 1))[..., None, None]  # (N, 3, 1, 1)

    if domain in ("Clipart", "Art"):  # flat illustrations
        if domain == "Clipart":
            bg = torch.ones(n, 3, size, size)
            fill = colour.expand(n, 3, size, size)
            line = outline(0.09)
        else:
            paper = _hsv_to_rgb(u(0, 1, 1), u(0.05, 0.25, 1), u(0.92, 1.0, 1))[..., None, None]
            d = u(0, math.pi, 1, 1)
            strokes = torch.sin((gx * torch.cos(d) + gy * torch.sin(d)) * u(10, 18, 1, 1) + u(0, 6.3, 1, 1))
            bg = paper * (0.9 + 0.1 * strokes[:, None])
            fill = colour * (0.8 + 0.2 * torch.sin((gx - gy) * 12 + u(0, 6.3, 1, 1))[:, None])
            line = outline(0.07)
        img = bg * (1 - inside) + fill * inside
        img = img * (1 - line) + 0.08 * line
    else:  # shaded, photo-like renders
        light = u(0, 2 * math.pi, 1, 1)
        shade = 0.55 + 0.45 * (0.5 + 0.5 * (x * torch.cos(light) + y * torch.sin(light)).clamp(-1, 1))
        fill = colour * shade[:, None]  # (N, 3, S, S)
        shift = max(1, size // 16)
        shadow = torch.roll(inside, shifts=(shift, shift), dims=(2, 3))
        if domain == "Product":
            bg = (0.82 + 0.16 * (gy + 1) / 2).expand(n, 3, size, size).clone()
            noise = 0.015
        else:
            clutter = _smooth_noise(n, size, 4, g)  # (N, 3, S, S)
            bg = 0.45 + 0.45 * (0.5 * clutter + 0.5 * clutter.mean(1, keepdim=True))
            fill = fill * u(0.7, 1.1, 1, 1, 1)
            noise = 0.03
        bg = bg * (1 - 0.35 * shadow)
        img = bg * (1 - inside) + fill * inside
        img = img + noise * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """h, s, v: (N, 1) in [0, 1] -> rgb (N, 3)."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + h * 6) % 6  # (N, 3)
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def convention_shapes(convention: str) -> Tensor:
    """(classes,) the shape each class id is drawn as under a labelling convention: 'A' swaps the relabelled
    names in pairs (0<->1, ...), 'B' shifts them by two (0->2, ...)."""
    if convention not in ("A", "B"):
        raise ValueError(f"convention={convention!r} is not valid; choose 'A' or 'B'")
    shapes = torch.arange(len(CLASSES))
    k = len(RELABELLED)
    for i, c in enumerate(RELABELLED):
        shapes[c] = RELABELLED[i ^ 1] if convention == "A" else RELABELLED[(i + 2) % k]
    return shapes


def shape_of(domain: str, conventions: bool) -> Tensor:
    """(classes,) the shape each class id is drawn as in `domain`: itself, or under toy2's conventions
    (`CONVENTIONS`: Art and Product follow A, Clipart and RealWorld B; `convention_shapes`)."""
    return convention_shapes(CONVENTIONS[domain]) if conventions else torch.arange(len(CLASSES))


@dataclass(frozen=True)
class ToyConfig:
    """Size and seed of the toy benchmark."""

    image_size: int = 32
    train_per_class: int = 64  # per domain
    val_per_class: int = 8
    test_per_class: int = 32
    seed: int = 0
    domains: tuple[str, ...] = DOMAINS
    conventions: bool = False  # toy2: labels follow the domain's labelling convention
    scarce_per_class: int | None = None  # toy3: training images of the classes outside the domain's half

    def train_counts(self, domain: str) -> list[int]:
        """Training images per class in `domain`: `train_per_class`, or toy3's abundant / scarce halves."""
        n = len(CLASSES)
        if self.scarce_per_class is None:
            return [self.train_per_class] * n
        return [self.train_per_class if c in ABUNDANT[domain] else self.scarce_per_class for c in range(n)]

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"ToyConfig.image_size={self.image_size} must be >= 8 pixels")
        for name in ("train_per_class", "val_per_class", "test_per_class", "scarce_per_class"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"ToyConfig.{name}={getattr(self, name)} must be >= 1")
        bad = [d for d in self.domains if d not in DOMAINS]
        if bad or not self.domains or len(set(self.domains)) != len(self.domains):
            raise ValueError(f"ToyConfig.domains={self.domains!r} must be distinct names from {DOMAINS}")


class ToyImages(Dataset):
    """Rendered images of one domain and split, normalised for CLIP on access; yields (image, label)."""

    def __init__(self, images: Tensor, labels: Tensor):
        self.images = images  # (N, 3, S, S) uint8
        self.labels = labels  # (N,) long
        self._mean = torch.tensor(MEAN).view(3, 1, 1)
        self._std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return (self.images[i].float() / 255 - self._mean) / self._std, int(self.labels[i])


def render_split(
    domain: str,
    per_class: int | list[int],
    size: int,
    seed: int,
    stream: str,
    conventions: bool = False,
    shapes: Tensor | None = None,
) -> ToyImages:
    """`per_class` images of every class in `domain` (or per_class[c] of class c), sorted by class, from the
    random stream named by (seed, stream); class c is drawn as the shape `shapes[c]` (default: with
    `conventions`, `shape_of(domain)[c]`, else shape c)."""
    g = torch.Generator().manual_seed(_seed(seed, domain, stream))
    counts = torch.tensor(per_class) if isinstance(per_class, list) else per_class
    labels = torch.arange(len(CLASSES)).repeat_interleave(counts)  # (N,)
    shapes = shape_of(domain, conventions) if shapes is None else shapes
    return ToyImages(render(shapes[labels], domain, size, g), labels)


def load_toy_tasks(cfg: ToyConfig | None = None) -> list[TaskData]:
    """The toy benchmark (toy2 with `cfg.conventions`; toy3 with `scarce_per_class` too): one task per
    domain with train / val / test splits."""
    cfg = cfg or ToyConfig()
    split = lambda d, n, stream: render_split(d, n, cfg.image_size, cfg.seed, stream, cfg.conventions)  # noqa: E731
    return [
        TaskData(
            name=d,
            class_names=list(CLASSES),
            train=split(d, cfg.train_counts(d), "train"),
            val=split(d, cfg.val_per_class, "val"),
            test=split(d, cfg.test_per_class, "test"),
        )
        for d in cfg.domains
    ]
