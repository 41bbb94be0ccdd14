"""MmAP prompt generators and the group-shared + task-specific prompt bank.

A *generator* holds P prompts at once (one per group or per task) and produces, for every alignment
layer, the text prompt (P, L_text, n, d_text) and/or the visual prompt (P, L_vis, n, d_vis) from its
parameters. The five projection kinds differ only in how prompts are generated, never in how they are
injected (that is `model.PromptedCLIP`'s single mechanism):

- `kron` (MmAP): one source prompt S_l of shape (n, d_s) per alignment layer generates both modalities,
  P_text_l = S_l ⊗ A_text_l and P_vis_l = S_l ⊗ A_vis_l, with factors of shape (1, d_text/d_s) and
  (1, d_vis/d_s). A gradient from either tower moves the shared source, which keeps the towers aligned.
- `linear` (MaPLe): learned text prompts; visual prompts are `Linear(d_text, d_vis)` of them, one linear
  map per layer shared by all P prompts (a per-prompt map would cost d_text*d_vis each).
- `independent` (IVLP): unrelated text and visual prompts.
- `text` (CoOp-deep) and `visual` (VPT-deep): one tower only.

The *bank* has one generator row per group (group-shared MmAP) and one per task (task-specific MmAP).
Task t in group g gets `combine(group[g], task[t])`: concatenated along tokens (2n tokens) or added (n).
Per-sample prompts come from indexing with task ids: no Python loop over samples or tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .backbone import BackboneInfo
from .fields import check_types, option
from .grouping import Partition


class Projection(StrEnum):
    KRON = "kron"
    LINEAR = "linear"
    INDEPENDENT = "independent"
    TEXT = "text"
    VISUAL = "visual"


class Combine(StrEnum):
    CONCAT = "concat"
    ADD = "add"


def _choices(enum: type[Enum]) -> str:
    return ", ".join(repr(e.value) for e in enum)


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
        if "{}" not in self.template:
            raise ValueError(f"MmAPConfig.template={self.template!r} must contain '{{}}' where the class name goes")

    @property
    def tokens_per_task(self) -> int:
        """Prompt tokens a task sees per layer after combining group and task prompts."""
        return 2 * self.n_tokens if self.task_prompts and self.combine == Combine.CONCAT else self.n_tokens

    def resolve(self, info: BackboneInfo) -> ResolvedLayers:
        """Check this config against a loaded backbone and return each tower's alignment layers."""
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
        return ResolvedLayers(text=text, vision=vision, source_dim=source_dim)


@dataclass(frozen=True)
class ResolvedLayers:
    """Alignment layers per tower after defaults and projection kind are applied."""

    text: tuple[int, ...]
    vision: tuple[int, ...]
    source_dim: int
    union: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "union", tuple(sorted(set(self.text) | set(self.vision))))


class TowerPrompts(NamedTuple):
    """Prompts for both towers; None for a tower without prompts."""

    text: Tensor | None  # (P, L_text, tokens, d_text)
    vision: Tensor | None  # (P, L_vis, tokens, d_vis)


def _normal(shape: tuple[int, ...], std: float) -> nn.Parameter:
    return nn.Parameter(torch.randn(shape) * std)


class PromptGenerator(nn.Module):
    """P prompts of one projection kind, generated for every alignment layer of both towers."""

    def __init__(self, cfg: MmAPConfig, info: BackboneInfo, layers: ResolvedLayers, num_prompts: int):
        super().__init__()
        P, n, dt, dv = num_prompts, cfg.n_tokens, info.text_width, info.vision_width
        Lt, Lv, U = len(layers.text), len(layers.vision), len(layers.union)
        slot = {layer: i for i, layer in enumerate(layers.union)}
        # Positions of each tower's layers within the union of alignment layers.
        self.register_buffer(
            "text_idx", torch.tensor([slot[i] for i in layers.text], dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "vision_idx", torch.tensor([slot[i] for i in layers.vision], dtype=torch.long), persistent=False
        )
        self.kind = cfg.projection
        std = cfg.init_std
        if self.kind == Projection.KRON:
            ds = layers.source_dim
            self.source = _normal((P, U, n, ds), std)
            self.text_factor = nn.Parameter(torch.ones(P, Lt, dt // ds))  # (P, L_text, d_text/d_s)
            self.vision_factor = nn.Parameter(torch.ones(P, Lv, dv // ds))  # (P, L_vis, d_vis/d_s)
        elif self.kind == Projection.LINEAR:
            self.source = _normal((P, U, n, dt), std)  # text prompts are the source
            lin = [nn.Linear(dt, dv) for _ in range(Lv)]  # MaPLe's default nn.Linear init
            self.proj_weight = nn.Parameter(torch.stack([m.weight.T for m in lin]) if lin else torch.empty(0, dt, dv))
            self.proj_bias = nn.Parameter(torch.stack([m.bias for m in lin]) if lin else torch.empty(0, dv))
        else:
            self.text_prompt = _normal((P, Lt, n, dt), std) if Lt else None
            self.vision_prompt = _normal((P, Lv, n, dv), std) if Lv else None

    def forward(self) -> TowerPrompts:
        has_text, has_vision = len(self.text_idx) > 0, len(self.vision_idx) > 0
        if self.kind == Projection.KRON:
            text = _kron_rows(self.source[:, self.text_idx], self.text_factor) if has_text else None
            vision = _kron_rows(self.source[:, self.vision_idx], self.vision_factor) if has_vision else None
            return TowerPrompts(text, vision)
        if self.kind == Projection.LINEAR:
            text = self.source[:, self.text_idx] if has_text else None  # (P, L_text, n, d_text)
            src = self.source[:, self.vision_idx]  # (P, L_vis, n, d_text)
            vision = torch.einsum("plnd,lde->plne", src, self.proj_weight) + self.proj_bias[None, :, None]
            return TowerPrompts(text, vision if has_vision else None)
        return TowerPrompts(self.text_prompt, self.vision_prompt)


def _kron_rows(source: Tensor, factor: Tensor) -> Tensor:
    """Batched Kronecker product S ⊗ A for A of shape (1, r): out[..., i, j*r + k] = S[i, j] * A[k].

    source: (P, L, n, d_s); factor: (P, L, r) -> (P, L, n, d_s * r)
    """
    return (source[..., :, :, None] * factor[:, :, None, None, :]).flatten(-2)


class BankPrompts(NamedTuple):
    text: Tensor | None  # (T, L_text, m, d_text): one text prompt per task
    vision: Tensor | None  # (B, L_vis, m, d_vis): one visual prompt per sample


class PromptBank(nn.Module):
    """Group-shared generators (one per group) plus task-specific generators (one per task)."""

    def __init__(self, cfg: MmAPConfig, info: BackboneInfo, partition: Partition):
        super().__init__()
        self.cfg = cfg
        self.tasks = partition.tasks
        self.partition = partition
        self.layers = cfg.resolve(info)
        self.groups = PromptGenerator(cfg, info, self.layers, partition.num_groups)
        self.task_specific = PromptGenerator(cfg, info, self.layers, len(self.tasks)) if cfg.task_prompts else None
        self.register_buffer("group_of_task", torch.tensor(partition.group_index(), dtype=torch.long), persistent=False)

    @property
    def tokens_per_task(self) -> int:
        return self.cfg.tokens_per_task

    def per_task(self) -> TowerPrompts:
        """Every task's combined prompts: text (T, L_text, m, d_text), vision (T, L_vis, m, d_vis)."""
        group = self.groups()
        task = self.task_specific() if self.task_specific is not None else TowerPrompts(None, None)
        return TowerPrompts(*(self._combine(g, t) for g, t in zip(group, task)))

    def _combine(self, group: Tensor | None, task: Tensor | None) -> Tensor | None:
        if group is None:
            return None
        group = group[self.group_of_task]  # (T, L, n, d)
        if task is None:
            return group
        if self.cfg.combine == Combine.CONCAT:
            return torch.cat([group, task], dim=2)  # (T, L, 2n, d)
        return group + task

    def forward(self, task_ids: Tensor) -> BankPrompts:
        """Per-task text prompts and per-sample visual prompts for a batch with task ids (B,)."""
        text, vision = self.per_task()
        return BankPrompts(text=text, vision=vision[task_ids] if vision is not None else None)
