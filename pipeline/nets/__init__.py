"""Networks: every net is forward(x, t) -> raw output, with x of the data's shape and t of shape [B]."""

from __future__ import annotations

from torch import nn

from pipeline.nets.mlp import MLP


def build_network(data_shape: tuple[int, ...], network_section, extra_outputs: int = 0) -> nn.Module:
    """The MLP for flat (2-D) data. `extra_outputs` adds output units beyond the data's size."""
    if len(data_shape) == 1:
        cfg = network_section.mlp
        return MLP(data_shape[0], hidden=cfg.hidden, depth=cfg.depth, time_embedding=cfg.time_embedding,
                   extra_outputs=extra_outputs)
    raise ValueError(f"no network for data of shape {data_shape}")
