"""open_clip's residual attention block, recomputed with one GEMM per projection and fused attention.

Why: `nn.MultiheadAttention(batch_first=True)` applies its packed in-projection to a transposed view of
the input. When the weight is frozen and the input needs a gradient (every block at or above a prompt),
`torch.matmul` does not fold that 3-D product into one GEMM: it runs a batched matmul of L small products,
forward and backward (BENCHMARKS.md: 23% of a ViT-B-16 MmAP step in `aten::bmm`). Here q, k and v come
from one contiguous `(B*L, E) @ (E, 3E)` GEMM, the heads go through
`torch.nn.functional.scaled_dot_product_attention` (the text tower's causal mask passed as open_clip
passes it), and the output projection is one GEMM too. Layer norms, LayerScale and the MLP are the
block's own modules, called as open_clip calls them.

`run_block` uses this path only where a graph is built; without one (evaluation, frozen blocks) it calls
the block itself, so open_clip's fused inference kernel keeps serving the frozen forward. Blocks it does
not recognise (cross-attention, open_clip's custom attention) and blocks with forward hooks always run as
they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import Tensor, nn


def fusable(blk: nn.Module) -> bool:
    """Whether `blk` is a plain open_clip self-attention block this module can recompute exactly."""
    attn = getattr(blk, "attn", None)
    return (
        isinstance(blk, ResidualAttentionBlock)
        and not hasattr(blk, "ln_1_kv")
        and isinstance(attn, nn.MultiheadAttention)
        and attn.batch_first
        and attn._qkv_same_embed_dim
        and attn.in_proj_weight is not None
        and attn.bias_k is None
        and not attn.add_zero_attn
    )


def fused_block(blk: ResidualAttentionBlock, x: Tensor, attn_mask: Tensor | None) -> Tensor:
    """`blk(x, attn_mask=attn_mask)` for a `fusable` block; x: (B, L, E) batch-first, mask: (L, L) additive."""
    attn: nn.MultiheadAttention = blk.attn
    B, L, E = x.shape
    H = attn.num_heads
    h = blk.ln_1(x).reshape(B * L, E)  # (B*L, E): contiguous, so the projection is one GEMM
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)  # (B*L, 3E)
    q, k, v = qkv.view(B, L, 3, H, E // H).permute(2, 0, 3, 1, 4)  # each (B, H, L, E/H)
    mask = attn_mask.to(q.dtype) if attn_mask is not None else None  # open_clip casts it to the input's dtype
    dropout = attn.dropout if attn.training else 0.0
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, H, L, E/H)
    o = o.transpose(1, 2).reshape(B * L, E)  # (B*L, E)
    o = F.linear(o, attn.out_proj.weight, attn.out_proj.bias).view(B, L, E)  # (B, L, E)
    x = x + blk.ls_1(o)
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


def run_block(blk: nn.Module, x: Tensor, attn_mask: Tensor | None) -> Tensor:
    """One residual block: the fused path where a graph is built and the block allows it, else open_clip's.
    A block with forward hooks (feature extraction, probes) runs as itself, so its hooks still fire."""
    hooked = bool(blk._forward_hooks or blk._forward_pre_hooks)
    if torch.is_grad_enabled() and not hooked and fusable(blk):
        return fused_block(blk, x, attn_mask)
    return blk(x, attn_mask=attn_mask)
