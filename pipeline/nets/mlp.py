"""The MLP used on 2-D data: residual SiLU blocks conditioned on a time embedding."""

from __future__ import annotations

from torch import Tensor, nn

from pipeline.nets.embeddings import SinusoidalEmbedding


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm with its scale and shift applied as plain tensor ops.

    The fused kernel's backward sums the scale's and shift's gradients over the batch in chunks that
    follow torch's thread count, so a model trained on 1 and on 2 threads differed in the last bits
    (and then everywhere). Autograd's sum over the batch for `normalized * weight + bias` is the same
    for any thread count, which lets pipeline.threads change the count under load without changing a
    number (tests/test_threads.py).
    """

    def forward(self, x: Tensor) -> Tensor:
        normalized = nn.functional.layer_norm(x, self.normalized_shape, None, None, self.eps)
        return normalized * self.weight + self.bias


class ResidualBlock(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.norm = LayerNorm(hidden)
        self.linear = nn.Linear(hidden, hidden)
        self.time = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        return h + self.linear(nn.functional.silu(self.norm(h) + self.time(temb)))


class MLP(nn.Module):
    """x [B, d], t [B] -> [B, d + extra_outputs]."""

    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, time_embedding: int = 64,
                 extra_outputs: int = 0):
        super().__init__()
        self.embed = nn.Sequential(SinusoidalEmbedding(time_embedding), nn.Linear(time_embedding, hidden),
                                   nn.SiLU(), nn.Linear(hidden, hidden))
        self.input = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResidualBlock(hidden) for _ in range(depth))
        self.output = nn.Sequential(LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim + extra_outputs))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        # samplers and ODE solvers call the network with one time for the whole batch: the time path
        # (half of the layers) then runs on one row and broadcasts, which nearly halves a sampling step
        shared_time = t.shape[0] > 1 and bool((t == t[0]).all())
        temb = self.embed(t[:1] if shared_time else t)
        h = self.input(x)
        for block in self.blocks:
            h = block(h, temb)
        return self.output(h)
