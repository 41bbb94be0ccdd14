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

import dataclasses
import math
import os
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .adapter import ClipAdapter
from .backbone import BackboneInfo
from .fields import check_types, option
from .grouping import Partition


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
        self.kind, self.order = cfg.projection, cfg.kron_order
        std = cfg.init_std
        if self.kind == Projection.KRON:
            ds, t = layers.source_dim, cfg.kron_tokens
            self.source = _normal((P, U, n // t, ds), std)
            self.text_factor = nn.Parameter(torch.ones(P, Lt, t, dt // ds))  # (P, L_text, t, d_text/d_s)
            self.vision_factor = nn.Parameter(torch.ones(P, Lv, t, dv // ds))  # (P, L_vis, t, d_vis/d_s)
        elif self.kind == Projection.PHM:
            ds, k = layers.source_dim, cfg.phm_rank
            self.source = _normal((P, U, n, ds), std)
            # W = sum_i A_i ⊗ B_i per layer and tower, shared by the P prompts; var(W) = 1/d_s keeps S·W at std
            self.text_a, self.text_b = _phm_factors(Lt, k, ds, dt)
            self.vision_a, self.vision_b = _phm_factors(Lv, k, ds, dv)
        elif self.kind == Projection.LINEAR:
            self.source = _normal((P, U, n, dt), std)  # text prompts are the source
            lin = [nn.Linear(dt, dv) for _ in range(Lv)]  # MaPLe's default nn.Linear init
            self.proj_weight = nn.Parameter(torch.stack([m.weight.T for m in lin]) if lin else torch.empty(0, dt, dv))
            self.proj_bias = nn.Parameter(torch.stack([m.bias for m in lin]) if lin else torch.empty(0, dv))
        else:  # independent, text-deep, visual-deep, coop; clip-adapter and bitfit have no prompt layers
            self.text_prompt = _normal((P, Lt, n, dt), std) if Lt else None
            self.vision_prompt = _normal((P, Lv, n, dv), std) if Lv else None

    def forward(self) -> TowerPrompts:
        has_text, has_vision = len(self.text_idx) > 0, len(self.vision_idx) > 0
        if self.kind == Projection.KRON:
            kron = _kron if self.order == "SA" else lambda s, a: _kron(a, s)
            text = kron(self.source[:, self.text_idx], self.text_factor) if has_text else None
            vision = kron(self.source[:, self.vision_idx], self.vision_factor) if has_vision else None
            return TowerPrompts(text, vision)
        if self.kind == Projection.PHM:
            text = _phm(self.source[:, self.text_idx], self.text_a, self.text_b) if has_text else None
            vision = _phm(self.source[:, self.vision_idx], self.vision_a, self.vision_b) if has_vision else None
            return TowerPrompts(text, vision)
        if self.kind == Projection.LINEAR:
            text = self.source[:, self.text_idx] if has_text else None  # (P, L_text, n, d_text)
            src = self.source[:, self.vision_idx]  # (P, L_vis, n, d_text)
            vision = torch.einsum("plnd,lde->plne", src, self.proj_weight) + self.proj_bias[None, :, None]
            return TowerPrompts(text, vision if has_vision else None)
        return TowerPrompts(self.text_prompt, self.vision_prompt)


def _kron(x: Tensor, y: Tensor) -> Tensor:
    """Batched Kronecker product of the last two dimensions: x (..., a, b), y (..., c, d) -> (..., a*c, b*d).

    out[..., i*c + k, j*d + l] = x[..., i, j] * y[..., k, l], as `torch.kron` of each pair of matrices.
    """
    *batch, a, b = x.shape
    c, d = y.shape[-2:]
    return (x[..., :, None, :, None] * y[..., None, :, None, :]).reshape(*batch, a * c, b * d)


def _phm_factors(layers: int, k: int, ds: int, d: int) -> tuple[nn.Parameter, nn.Parameter]:
    """A (L, k, k, k) and B (L, k, d_s/k, d/k) of W_l = sum_i A_l,i ⊗ B_l,i (d_s x d), var(W) = 1/d_s."""
    a = nn.Parameter(torch.randn(layers, k, k, k))
    b = nn.Parameter(torch.randn(layers, k, ds // k, d // k) / math.sqrt(k * ds))
    return a, b


def _phm(source: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Prompts S·W_l with W_l = sum_i A_l,i ⊗ B_l,i: source (P, L, n, d_s) -> (P, L, n, d)."""
    w = _kron(a, b).sum(1)  # (L, d_s, d)
    return torch.einsum("plns,lsd->plnd", source, w)


class BankPrompts(NamedTuple):
    text: Tensor | None  # (T, L_text, m, d_text): one text prompt per task
    vision: Tensor | None  # (B, L_vis, m, d_vis): one visual prompt per sample


def _check_fits(cfg: MmAPConfig, info: BackboneInfo, layers: ResolvedLayers, prompts: int) -> None:
    """Refuse prompt tensors larger than this machine's memory before allocating them (a typo such as
    n_tokens=100000000 would otherwise end in an allocation traceback), naming the memory they need."""
    n_bytes = 4 * prompts * len(layers.union) * cfg.n_tokens * (info.text_width + info.vision_width)  # fp32 bound
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no check
        return
    if n_bytes > memory // 2:
        raise ValueError(
            f"MmAPConfig.n_tokens={cfg.n_tokens}: the prompts of {prompts} groups and tasks over "
            f"{len(layers.union)} layers would need up to {n_bytes / 2**30:.1f} GiB, more than half of this "
            f"machine's {memory / 2**30:.1f} GiB; use fewer tokens or layers"
        )


class PromptBank(nn.Module):
    """Group-shared generators (one per group) plus task-specific generators (one per task)."""

    def __init__(self, cfg: MmAPConfig, info: BackboneInfo, partition: Partition):
        super().__init__()
        self.cfg = cfg
        self.tasks = partition.tasks
        self.partition = partition
        self.layers = cfg.resolve(info)
        _check_fits(cfg, info, self.layers, partition.num_groups + len(self.tasks) * cfg.task_prompts)
        self.groups = PromptGenerator(cfg, info, self.layers, partition.num_groups)
        self.task_specific = PromptGenerator(cfg, info, self.layers, len(self.tasks)) if cfg.task_prompts else None
        adapter = cfg.projection == Projection.ADAPTER
        ratio, width, groups = cfg.adapter_ratio, info.embed_dim, partition.num_groups
        self.adapter = ClipAdapter(width, cfg.adapter_reduction, ratio, groups) if adapter else None
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
