"""What an MmAP prompt design is, as settings: `MmAPConfig` (prompt length, alignment layers, projection,
combine), the `Projection` and `Combine` choices, and the layer-spec parser.

Kept apart from the modules (`prompts.py`) so that a config, a study file or a refusal can be checked
without importing torch: `mmap-ray study --print` and a bad flag answer in about a second.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from .fields import check_types, option

if TYPE_CHECKING:
    from .backbone import BackboneInfo


class Projection(StrEnum):
    """The prompt design: how prompts are generated, or a baseline that uses none (see the module doc)."""

    KRON = "kron"
    LINEAR = "linear"
    INDEPENDENT = "independent"
    TEXT = "text-deep"
    VISUAL = "visual-deep"
    PHM = "phm"
    COOP = "coop"
    ADAPTER = "clip-adapter"
    BITFIT = "bitfit"

    @classmethod
    def _missing_(cls, value: object) -> Projection | None:
        old_names = {"text": cls.TEXT, "visual": cls.VISUAL}  # the names before "-deep"
        return old_names.get(value) if isinstance(value, str) else None  # e.g. a TOML list: not a name


# Designs whose layers are fixed by the method: CoOp prompts the text input only; the others use no prompts.
FIXED_LAYERS = {Projection.COOP: ((0,), ()), Projection.ADAPTER: ((), ()), Projection.BITFIT: ((), ())}


class Combine(StrEnum):
    CONCAT = "concat"
    ADD = "add"


def parse_layers(spec: str | None) -> tuple[int, ...] | None:
    """Parse a layer spec: "0-10" (inclusive range), "0,2,4", a mix "0-3,8", "" or "none" (no layers)."""
    if spec is None:
        return None
    spec = spec.strip()
    if spec.lower() in ("", "none"):
        return ()
    layers: list[int] = []
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            layers.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
        except ValueError:
            raise ValueError(f"layer spec {spec!r} is not valid; use e.g. '0-10', '0,2,4', '0-3,8' or 'none'") from None
    return tuple(layers)


@dataclass(frozen=True)
class MmAPConfig:
    """How prompts are shaped, where they go, and how they are generated.

    Backbone-dependent checks (layer indices, `source_dim` divisibility) run in `resolve(info)`, which
    every model constructor calls, so a bad config fails before any training starts.
    """

    n_tokens: int = option(8, "learnable tokens per prompt per layer (the paper's prompt length)")
    # None: every block but the last of the shallower tower (11 of 12 for ViT-B/16, DESIGN.md). (): none.
    layers: tuple[int, ...] | None = option(
        None,
        "alignment layers shared by both towers: '0-10', '0,2,4', '0-3,8' or 'none' "
        "(default: every block but the last of the shallower tower)",
        parse=parse_layers,
    )
    text_layers: tuple[int, ...] | None = option(
        None, "text-tower alignment layers (overrides layers)", parse=parse_layers
    )
    vision_layers: tuple[int, ...] | None = option(
        None, "vision-tower alignment layers (overrides layers)", parse=parse_layers
    )
    source_dim: int | None = option(None, "width d_s of the kron source prompt (default: gcd of the tower widths)")
    projection: Projection = option(Projection.KRON, "how prompts are generated (kron = MmAP)")
    combine: Combine = option(Combine.CONCAT, "group + task prompt: concatenated tokens or added")
    task_prompts: bool = option(True, "give every task its own prompt on top of its group's")
    init_std: float = option(0.02, "std of the normal init of prompt parameters (CoOp/MaPLe use 0.02)")
    template: str = option("a photo of a {}.", "class prompt of a tower without text prompts; {} is the class name")
    # The Kronecker reading (kron): S (n/t, d_s) and A (t, d/d_s) with t = kron_tokens, P = S ⊗ A (or A ⊗ S).
    kron_tokens: int = option(1, "kron: rows t of the factor A (t, d/d_s); the source S has n/t rows")
    kron_order: str = option("SA", "kron: the product order, S ⊗ A (SA) or A ⊗ S (AS)", choices=("SA", "AS"))
    phm_rank: int = option(4, "phm: k, the number of Kronecker terms of W = sum_i A_i ⊗ B_i (A_i: k x k)")
    adapter_reduction: int = option(4, "clip-adapter: bottleneck width = embedding width / this")
    adapter_ratio: float = option(0.2, "clip-adapter: residual ratio alpha of the adapted image feature")

    def __post_init__(self) -> None:
        check_types(self)
        if self.n_tokens < 1:
            raise ValueError(f"MmAPConfig.n_tokens={self.n_tokens!r} must be an integer >= 1")
        object.__setattr__(self, "projection", Projection(self.projection))
        object.__setattr__(self, "combine", Combine(self.combine))
        for name in ("layers", "text_layers", "vision_layers"):
            value = getattr(self, name)
            if value is None:
                continue
            if any(i < 0 for i in value):
                raise ValueError(f"MmAPConfig.{name}={value!r} must hold block indices >= 0")
            if len(set(value)) != len(value):
                raise ValueError(f"MmAPConfig.{name}={value!r} repeats a layer; give each block index once")
            object.__setattr__(self, name, tuple(sorted(value)))
        if self.source_dim is not None and self.source_dim < 1:
            raise ValueError(f"MmAPConfig.source_dim={self.source_dim!r} must be a positive integer or None")
        if not self.init_std > 0:
            raise ValueError(f"MmAPConfig.init_std={self.init_std!r} must be > 0")
        if self.kron_tokens < 1 or self.n_tokens % self.kron_tokens:
            raise ValueError(
                f"MmAPConfig.kron_tokens={self.kron_tokens} must be >= 1 and divide n_tokens={self.n_tokens}"
            )
        for name in ("phm_rank", "adapter_reduction"):
            if getattr(self, name) < 1:
                raise ValueError(f"MmAPConfig.{name}={getattr(self, name)} must be >= 1")
        if not 0 < self.adapter_ratio <= 1:
            raise ValueError(f"MmAPConfig.adapter_ratio={self.adapter_ratio} must be in (0, 1]")
        if "{}" not in self.template:
            raise ValueError(f"MmAPConfig.template={self.template!r} must contain '{{}}' where the class name goes")

    def effective(self) -> MmAPConfig:
        """This config with the settings its design does not read reset to their defaults, so two configs
        that build the same model compare (and hash) equal: a study's identity uses it."""
        p, unused = self.projection, set()
        if p != Projection.KRON:
            unused |= {"kron_tokens", "kron_order"}
        if p != Projection.PHM:
            unused |= {"phm_rank"}
        if p not in (Projection.KRON, Projection.PHM):
            unused |= {"source_dim"}
        if p != Projection.ADAPTER:
            unused |= {"adapter_reduction", "adapter_ratio"}
        no_layers = self.layers == () and not self.text_layers and not self.vision_layers
        if p in (Projection.ADAPTER, Projection.BITFIT) or no_layers:  # no prompts at all
            unused |= {"n_tokens", "combine", "task_prompts", "init_std"}
        fields = {f.name: f for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{name: fields[name].default for name in unused})

    @property
    def tokens_per_task(self) -> int:
        """Prompt tokens a task sees per layer after combining group and task prompts."""
        return 2 * self.n_tokens if self.task_prompts and self.combine == Combine.CONCAT else self.n_tokens

    def resolve(self, info: BackboneInfo) -> ResolvedLayers:
        """Check this config against a loaded backbone and return each tower's alignment layers."""
        if self.projection in FIXED_LAYERS:
            return self._resolve_fixed(info)
        shared = self.layers
        if shared is None:
            shared = tuple(range(max(1, min(info.text_layers, info.vision_layers) - 1)))
        text = shared if self.text_layers is None else self.text_layers
        vision = shared if self.vision_layers is None else self.vision_layers
        for name, layers, depth, tower in (
            ("text_layers" if self.text_layers is not None else "layers", text, info.text_layers, "text"),
            ("vision_layers" if self.vision_layers is not None else "layers", vision, info.vision_layers, "vision"),
        ):
            bad = [i for i in layers if i >= depth]
            if bad:
                raise ValueError(
                    f"MmAPConfig.{name}={list(layers)} has {bad} beyond {info.name}'s {tower} tower, which has "
                    f"{depth} blocks; valid block indices are 0..{depth - 1}"
                )
        if self.projection == Projection.TEXT:
            vision = ()
        elif self.projection == Projection.VISUAL:
            text = ()
        source_dim = self.source_dim or math.gcd(info.text_width, info.vision_width)
        if self.projection == Projection.KRON:
            for tower, width in (("text", info.text_width), ("vision", info.vision_width)):
                if width % source_dim:
                    g = math.gcd(info.text_width, info.vision_width)
                    valid = [d for d in range(1, g + 1) if g % d == 0]
                    raise ValueError(
                        f"MmAPConfig.source_dim={source_dim} does not divide {info.name}'s {tower} width {width}; "
                        f"projection='kron' needs a divisor of both widths ({info.text_width}, {info.vision_width}): "
                        f"one of {valid}"
                    )
        if self.projection == Projection.PHM:
            k = self.phm_rank
            widths = (("source_dim", source_dim), ("text width", info.text_width), ("vision width", info.vision_width))
            bad = [f"{name}={w}" for name, w in widths if w % k]
            if bad:
                raise ValueError(f"MmAPConfig.phm_rank={k} must divide the source and both tower widths ({bad})")
        return ResolvedLayers(text=text, vision=vision, source_dim=source_dim)

    def _resolve_fixed(self, info: BackboneInfo) -> ResolvedLayers:
        """CoOp prompts the text input (layer 0) only; clip-adapter and bitfit use no prompts: a layer
        setting other than the default (or none) would be silently ignored, so it is refused."""
        for name in ("layers", "text_layers", "vision_layers"):
            value = getattr(self, name)
            if value not in (None, ()):
                raise ValueError(
                    f"MmAPConfig.{name}={list(value)} has no effect with projection {self.projection.value!r}: its "
                    f"layers are fixed (coop: the text input; clip-adapter, bitfit: no prompts); leave it unset"
                )
        text, vision = FIXED_LAYERS[self.projection]
        return ResolvedLayers(text=text, vision=vision, source_dim=math.gcd(info.text_width, info.vision_width))


@dataclass(frozen=True)
class ResolvedLayers:
    """Alignment layers per tower after defaults and projection kind are applied."""

    text: tuple[int, ...]
    vision: tuple[int, ...]
    source_dim: int
    union: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "union", tuple(sorted(set(self.text) | set(self.vision))))
