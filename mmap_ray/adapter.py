"""CLIP-Adapter (Gao et al., 2021), the paper's adapter baseline: a residual MLP on CLIP's image features.

Not a prompt: the bank holds it when `MmAPConfig.projection == "clip-adapter"`, one adapter per group of
the partition, so it trains, checkpoints and counts like every other design.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ClipAdapter(nn.Module):
    """CLIP-Adapter (Gao et al.): f' = ratio * ReLU(ReLU(f W1) W2) + (1 - ratio) * f on image features f,
    with bias-free W1 (E x E/r) and W2 (E/r x E) as in its code; one adapter per group of the partition."""

    def __init__(self, width: int, reduction: int, ratio: float, num: int):
        super().__init__()
        hidden = max(1, width // reduction)
        first = [nn.Linear(width, hidden, bias=False) for _ in range(num)]  # nn.Linear's init, as the paper
        second = [nn.Linear(hidden, width, bias=False) for _ in range(num)]
        self.w1 = nn.Parameter(torch.stack([m.weight.T for m in first]))  # (G, E, E/r)
        self.w2 = nn.Parameter(torch.stack([m.weight.T for m in second]))  # (G, E/r, E)
        self.ratio = ratio

    def forward(self, features: Tensor, groups: Tensor) -> Tensor:
        """features (B, E), groups (B,) -> adapted features (B, E)."""
        h = torch.relu(torch.einsum("be,beh->bh", features, self.w1[groups].to(features.dtype)))
        x = torch.relu(torch.einsum("bh,bhe->be", h, self.w2[groups].to(features.dtype)))
        return self.ratio * x + (1 - self.ratio) * features
