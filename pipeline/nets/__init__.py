"""Networks: every net is forward(x, t) -> raw output, with x of the data's shape and t of shape [B].

With extra_outputs = k > 0 a net returns [B, prod(data shape) + k]: the data's units flattened, then
the k extra scalars (the MLP on flat data, the U-Net's pooled head on images).
"""

from __future__ import annotations

from torch import nn

from pipeline.nets.mlp import MLP
from pipeline.nets.unet import build_unet


def build_network(data_shape: tuple[int, ...], network_section, extra_outputs: int = 0) -> nn.Module:
    """The MLP for flat (2-D) data, the U-Net for [C, H, W] images. `extra_outputs` adds output units."""
    if len(data_shape) == 1:
        cfg = network_section.mlp
        return MLP(data_shape[0], hidden=cfg.hidden, depth=cfg.depth, time_embedding=cfg.time_embedding,
                   extra_outputs=extra_outputs)
    if len(data_shape) == 3:
        return build_unet(tuple(data_shape), network_section.unet, extra_outputs=extra_outputs)
    raise ValueError(f"no network for data of shape {data_shape}")
