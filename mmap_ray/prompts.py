"""MmAP prompt generators and the group-shared + task-specific prompt bank.

A *generator* holds P prompts at once (one per group or per task) and produces, for every alignment
layer, the text prompt (P, L_text, n, d_text) and/or the visual prompt (P, L_vis, n, d_vis) from its
parameters. The prompted designs (`Projection`, settings in `prompt_config.py`) differ only in how prompts
are generated, never in how they are injected (that is `model.PromptedCLIP`'s single mechanism):

- `kron` (MmAP): one source prompt S_l of shape (n, d_s) per alignment layer generates both modalities,
  P_text_l = S_l ⊗ A_text_l and P_vis_l = S_l ⊗ A_vis_l, with factors of shape (1, d_text/d_s) and
  (1, d_vis/d_s). A gradient from either tower moves the shared source, which keeps the towers aligned.
- `linear` (MaPLe): learned text prompts; visual prompts are `Linear(d_text, d_vis)` of them, one linear
  map per layer shared by all P prompts (a per-prompt map would cost d_text*d_vis each).
- `independent` (IVLP): unrelated text and visual prompts.
- `text-deep` (CoOp-deep) and `visual-deep` (VPT-deep): one tower only.
- `phm`: a PHM layer (W = sum_i A_i ⊗ B_i) maps the source prompt to each tower's width.
- `coop`: CoOp, learned context tokens at the text input only.

The baselines `clip-adapter` and `bitfit` use no prompts (`adapter.py`, `model.py`).

The *bank* has one generator row per group (group-shared MmAP) and one per task (task-specific MmAP).
Task t in group g gets `combine(group[g], task[t])`: concatenated along tokens (2n tokens) or added (n).
Per-sample prompts come from indexing with task ids: no Python loop over samples or tasks.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .adapter import ClipAdapter
from .backbone import BackboneInfo
from .grouping import Partition
from .prompt_config import (  # noqa: F401  (the names callers know)
    FIXED_LAYERS,
    Combine,
    MmAPConfig,
    Projection,
    ResolvedLayers,
    parse_layers,
)


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
