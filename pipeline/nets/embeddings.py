"""Time / noise-level embeddings."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal features of a scalar time (Vaswani et al. 2017; Ho et al. 2020).

    t in [0, 1] is scaled by `scale` (1000, as DDPM's integer steps) before the sin/cos features.
    """

    def __init__(self, dim: int, scale: float = 1000.0, max_period: float = 10000.0):
        super().__init__()
        half = dim // 2
        frequencies = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.scale = scale
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        args = self.scale * t.float()[:, None] * self.frequencies[None]
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
        if self.dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
        return emb
