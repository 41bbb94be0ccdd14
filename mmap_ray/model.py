"""PromptedCLIP: a frozen open_clip CLIP with MmAP prompts injected per layer in both towers.

CLIP is a decoder-free multi-task model: each task is classification over its own class names, and a
sample's logits are cosine(image feature, text feature of each class prompt of *its* task) times CLIP's
logit scale. One forward serves a batch of mixed tasks: the text tower encodes the class prompts of the
tasks present in one batched call, and each sample's logits are gathered from that task's columns; the
columns past a task's class count are masked to -inf (never multiplied by zero).

Injection (one mechanism for every projection kind):
- text: the class prompt is "SOT X...X classname. EOT" with m placeholder tokens; at each text alignment
  layer l the m positions after SOT are replaced by the task's prompt for layer l (CoOp / MaPLe-deep). At
  the first text alignment layer the prompts also get the positional embeddings of the slots they take,
  as CoOp and MaPLe add `positional_embedding` to their learned context; deeper prompts replace the
  slots' hidden states as they are.
- vision: at the first vision alignment layer the sample's m prompt tokens are appended after CLS and the
  patches; at each later alignment layer they are replaced (VPT-deep / MaPLe). At layer 0 the prompts go
  through `ln_pre` with the class and patch tokens, as MaPLe appends them before `ln_pre` (a per-token
  norm, so normalising them apart is the same). They are removed before pooling, so open_clip's own
  pooling and projection apply unchanged.
Outside the alignment layers the towers are exactly open_clip's. Blocks below a tower's first alignment
layer run without building a graph (they see no trainable input) unless the backbone itself is trainable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import Transformer, text_global_pool
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .backbone import Backbone
from .block import run_block
from .grouping import Partition
from .prompts import MmAPConfig, Projection, PromptBank

PLACEHOLDER = "X"


def class_prompt_tokens(
    backbone: Backbone, class_names: Sequence[str], n_ctx: int, template: str, field: str = "MmAPConfig.n_tokens"
) -> Tensor:
    """Token ids (C, context_length) of one task's class prompts.

    With n_ctx > 0: "SOT X*n_ctx classname. EOT" (the X positions are replaced by prompts);
    with n_ctx == 0: the tokenised `template` (e.g. "a photo of a classname.").
    """
    tok, info = backbone.tokenizer, backbone.info
    x_id = tok.encode(PLACEHOLDER)
    rows = []
    for name in class_names:
        if n_ctx:
            ids = [info.sot_token_id, *(x_id * n_ctx), *tok.encode(f"{name}."), info.eot_token_id]
        else:
            ids = [info.sot_token_id, *tok.encode(template.format(name)), info.eot_token_id]
        rows.append(ids)
    longest = max(rows, key=len)
    if len(longest) > info.context_length:
        name = class_names[rows.index(longest)]
        name_len = len(tok.encode(f"{name}."))
        room = info.context_length - 2 - name_len
        raise ValueError(
            f"{field}: {n_ctx} prompt tokens per text prompt do not fit {info.name}'s context of "
            f"{info.context_length} tokens with class name {name!r} ({name_len} tokens with its period, plus SOT "
            f"and EOT); at most {max(room, 0)} prompt tokens fit"
        )
    out = torch.zeros(len(rows), info.context_length, dtype=torch.long)
    for i, ids in enumerate(rows):
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def _run_block(
    transformer: Transformer, blk: nn.Module, x: Tensor, attn_mask: Tensor | None, fused: bool = True
) -> Tensor:
    """One residual block as open_clip's Transformer.forward runs it (batch-first); with a graph and
    `fused`, through one GEMM per projection and fused attention (`block`): open_clip's block to rounding."""
    run = run_block if fused else _open_clip_block
    if transformer.grad_checkpointing and torch.is_grad_enabled():
        return checkpoint(run, blk, x, attn_mask, use_reentrant=False)
    return run(blk, x, attn_mask)


def _open_clip_block(blk: nn.Module, x: Tensor, attn_mask: Tensor | None) -> Tensor:
    return blk(x, attn_mask=attn_mask)


class PromptedCLIP(nn.Module):
    """Frozen CLIP + a prompt bank; `forward(images, task_ids)` gives per-task logits (B, C_max)."""

    # Benchmark switch: True runs the blocks below a tower's first alignment layer with autograd enabled
    # too (studies/benchmark.py measures what the no-grad default saves). Gradients are the same.
    grad_below_first_layer: bool = False
    # Benchmark and test switch: False runs open_clip's own blocks where a graph is built too (the
    # reference `block` is checked against; studies/benchmark.py measures what the fused blocks save).
    fused_blocks: bool = True

    def __init__(
        self,
        backbone: Backbone,
        tasks: Mapping[str, Sequence[str]],
        cfg: MmAPConfig | None = None,
        partition: Partition | str | None = None,
        truncate_context: bool = True,
    ):
        super().__init__()
        cfg = cfg or MmAPConfig()
        names = list(tasks)
        if not names:
            raise ValueError("tasks is empty; give at least one task with its class names")
        empty = [t for t in names if len(tasks[t]) == 0]
        if empty:
            raise ValueError(f"tasks {empty} have no class names; every task needs at least one class")
        if partition is None:
            partition = Partition.single(names)
        elif isinstance(partition, str):
            partition = Partition.parse(partition, names)
        elif list(partition.tasks) != names:
            raise ValueError(f"partition is over tasks {list(partition.tasks)} but the model's tasks are {names}")
        self.clip = backbone.model
        self.info = backbone.info
        self._backbone = backbone  # for `zero_shot` (a plain attribute: not a second copy of its parameters)
        self.cfg = cfg
        self.task_names = names
        self.class_names = {t: list(tasks[t]) for t in names}
        self.bank = PromptBank(cfg, backbone.info, partition)
        self.text_layers = {layer: i for i, layer in enumerate(self.bank.layers.text)}
        self.vision_layers = {layer: i for i, layer in enumerate(self.bank.layers.vision)}
        m = self.bank.tokens_per_task if self.text_layers else 0
        self.n_text_ctx = m

        # All class prompts of all tasks as rows of one token matrix, and where each (task, class) lives.
        per_task = [class_prompt_tokens(backbone, tasks[t], m, cfg.template) for t in names]
        tokens = torch.cat(per_task)  # (R, context_length)
        if truncate_context:
            longest = int((tokens != 0).sum(1).max())
            tokens = tokens[:, :longest]  # exact: the causal mask hides the dropped positions
        counts = torch.tensor([len(tasks[t]) for t in names])
        c_max = int(counts.max())
        starts = torch.cumsum(counts, 0) - counts
        col = torch.arange(c_max)
        self.register_buffer("text_tokens", tokens, persistent=False)
        self.register_buffer("row_task", torch.repeat_interleave(torch.arange(len(names)), counts), persistent=False)
        self.register_buffer("class_valid", col[None] < counts[:, None], persistent=False)  # (T, C_max)
        self.register_buffer("class_rows", torch.where(self.class_valid, starts[:, None] + col, 0), persistent=False)

    # ---- parameters -------------------------------------------------------------------------------

    @property
    def partition(self) -> Partition:
        return self.bank.partition

    def zero_shot(self) -> PromptedCLIP:
        """The same frozen backbone and tasks with plain class prompts and no MmAP: CLIP's zero-shot classifier."""
        tasks = self.class_names
        return PromptedCLIP(self._backbone, tasks, MmAPConfig(layers=()), Partition.single(list(tasks)))

    def train(self, mode: bool = True) -> PromptedCLIP:
        """Train the prompts; the backbone stays in eval mode unless it is itself trainable."""
        super().train(mode)
        if not self.backbone_trainable:
            self.clip.eval()
        return self

    def set_trainable(self, full_finetune: bool = False) -> list[nn.Parameter]:
        """Make the design's parameters trainable and return them: the prompts (and adapter), plus every
        backbone bias for BitFit, or the whole backbone for full fine-tuning. The model is left in train mode."""
        self.clip.requires_grad_(full_finetune)
        if self.cfg.projection == Projection.BITFIT and not full_finetune:
            for p in bias_parameters(self.clip):
                p.requires_grad_(True)
        self.train()  # keeps the backbone in eval mode unless it is trainable
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def backbone_trainable(self) -> bool:
        return any(p.requires_grad for p in self.clip.parameters())

    # ---- towers -------------------------------------------------------------------------------------

    def encode_image(self, images: Tensor, prompts: Tensor | None = None) -> Tensor:
        """Image features (B, E) like `clip.encode_image`; prompts: (B, L_vis, m, d_vis) or None."""
        visual = self.clip.visual
        first = min(self.vision_layers, default=None) if prompts is not None else None
        frozen = not (self.backbone_trainable or self.grad_below_first_layer)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            x = visual._embeds(images)  # (B, 1 + patches, d_vis)
        n_tokens = x.shape[1]
        for i, blk in enumerate(visual.transformer.resblocks):
            grad = torch.is_grad_enabled() and not (frozen and (first is None or i < first))
            with torch.set_grad_enabled(grad):
                if prompts is not None and i in self.vision_layers:
                    p = prompts[:, self.vision_layers[i]].to(x.dtype)  # (B, m, d_vis)
                    if i == 0:  # prompts enter with the patch embeddings: ln_pre applies to them too (MaPLe)
                        p = visual.ln_pre(p)
                    x = torch.cat([x[:, :n_tokens], p], dim=1)  # (B, 1 + patches + m, d_vis)
                x = _run_block(visual.transformer, blk, x, None, self.fused_blocks)
        x = x[:, :n_tokens]  # drop the prompt tokens before open_clip's pooling
        pooled, _ = visual._pool(x)  # (B, d_vis)
        return pooled @ visual.proj if visual.proj is not None else pooled  # (B, E)

    def encode_text(self, tokens: Tensor, prompts: Tensor | None = None) -> Tensor:
        """Text features (R, E) like `clip.encode_text`; prompts: (R, L_text, m, d_text) or None.

        `tokens` may be truncated to any length that keeps every EOT: the causal mask is sliced to match.
        """
        clip = self.clip
        L = tokens.shape[1]
        first = min(self.text_layers, default=None) if prompts is not None else None
        frozen = not (self.backbone_trainable or self.grad_below_first_layer)
        cast = clip.transformer.get_cast_dtype()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            x = clip.token_embedding(tokens).to(cast)  # (R, L, d_text)
            x = x + clip.positional_embedding[:L].to(cast)
        mask = clip.attn_mask[:L, :L] if clip.attn_mask is not None else None
        for i, blk in enumerate(clip.transformer.resblocks):
            grad = torch.is_grad_enabled() and not (frozen and (first is None or i < first))
            with torch.set_grad_enabled(grad):
                if prompts is not None and i in self.text_layers:
                    p = prompts[:, self.text_layers[i]].to(x.dtype)  # (R, m, d_text)
                    if i == first:  # the learned context takes the slots' positions (CoOp, MaPLe)
                        p = p + clip.positional_embedding[1 : 1 + p.shape[1]].to(x.dtype)
                    x = torch.cat([x[:, :1], p, x[:, 1 + p.shape[1] :]], dim=1)  # replace the m slots after SOT
                x = _run_block(clip.transformer, blk, x, mask, self.fused_blocks)
        x = clip.ln_final(x)
        x = text_global_pool(x, tokens, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
        if clip.text_projection is None:
            return x
        if isinstance(clip.text_projection, nn.Linear):
            return clip.text_projection(x)
        return x @ clip.text_projection  # (R, E)

    # ---- multi-task logits -----------------------------------------------------------------------------

    def text_features(self, tasks: Tensor, text_prompts: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Normalised class-prompt features of `tasks` (T',) and, per (task, class), its row in them.

        Returns features (R', E) and `where` (T, C_max): the row of task t's class c in the features
        (-1 for tasks not encoded and for padding columns).
        """
        if text_prompts is None and self.text_layers:
            text_prompts = self.bank.per_task().text
        rows = self.class_rows[tasks][self.class_valid[tasks]]  # (R',)
        prompts = text_prompts[self.row_task[rows]] if text_prompts is not None else None  # (R', L_t, m, d_t)
        feats = F.normalize(self.encode_text(self.text_tokens[rows], prompts), dim=-1)  # (R', E)
        where = torch.full((len(self.row_task),), -1, dtype=torch.long, device=rows.device)
        where[rows] = torch.arange(len(rows), device=rows.device)
        return feats, torch.where(self.class_valid, where[self.class_rows], -1)

    def logits(self, image_features: Tensor, task_ids: Tensor, text_feats: Tensor, where: Tensor) -> Tensor:
        """Per-task logits (B, C_max) from normalised image features (B, E) and `text_features` output."""
        scores = self.clip.logit_scale.exp() * image_features @ text_feats.T  # (B, R')
        if self.clip.logit_bias is not None:
            scores = scores + self.clip.logit_bias
        idx = where[task_ids]  # (B, C_max)
        return scores.gather(1, idx.clamp(min=0)).masked_fill(idx < 0, float("-inf"))

    def image_embedding(self, images: Tensor, task_ids: Tensor, vision_prompts: Tensor | None) -> Tensor:
        """Image features (B, E) of a batch of tasks: the prompted image tower, then the CLIP-Adapter of
        each sample's group when the design has one (before normalisation, as CLIP-Adapter does)."""
        img = self.encode_image(images, vision_prompts)
        if self.bank.adapter is not None:
            img = self.bank.adapter(img, self.bank.group_of_task[task_ids])
        return img

    def forward(self, images: Tensor, task_ids: Tensor) -> Tensor:
        """Logits (B, C_max) over each sample's own task's classes; columns past its class count are -inf."""
        text_prompts, vision_prompts = self.bank(task_ids)
        img = F.normalize(self.image_embedding(images, task_ids, vision_prompts), dim=-1)  # (B, E)
        text_feats, where = self.text_features(torch.unique(task_ids), text_prompts)
        return self.logits(img, task_ids, text_feats, where)


def bias_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Every bias of `module` (BitFit's trainable set): linear, attention in/out and LayerNorm biases."""
    return [p for name, p in module.named_parameters() if name.endswith("bias")]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
