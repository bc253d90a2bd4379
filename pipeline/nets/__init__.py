"""Networks: every net is forward(x, t) -> raw output, with x of the data's shape and t of shape [B].

With extra_outputs = k > 0 a net returns [B, prod(data shape) + k]: the data's units flattened, then
the k extra scalars (the MLP on flat data, the U-Net's pooled head on images).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from pipeline.nets.mlp import MLP
from pipeline.nets.unet import build_unet


def network_settings(data_shape: tuple[int, ...], network_section):
    """params.yaml's network.mlp for flat (2-D) data, network.unet for [C, H, W] images."""
    if len(data_shape) == 1:
        return network_section.mlp
    if len(data_shape) == 3:
        return network_section.unet
    raise ValueError(f"no network for data of shape {data_shape}")


def build_network(data_shape: tuple[int, ...], network_section, extra_outputs: int = 0) -> nn.Module:
    """The MLP for flat (2-D) data, the U-Net for [C, H, W] images. `extra_outputs` adds output units."""
    cfg = network_settings(data_shape, network_section)
    if len(data_shape) == 1:
        return MLP(data_shape[0], hidden=cfg.hidden, depth=cfg.depth, time_embedding=cfg.time_embedding,
                   extra_outputs=extra_outputs)
    return build_unet(tuple(data_shape), cfg, extra_outputs=extra_outputs)


def float64_copy(net: nn.Module) -> nn.Module:
    """The network in float64, for adaptive solves (RK45 sampling, ODE likelihoods, reflow pairs): their embedded
    error estimate is a difference of nearly equal stage slopes, which float32 outputs fix to only about 1% at
    the default tolerance, so a float32 network's rounding (which depends on the batch's shape) flips accept /
    reject decisions and a sample's result would depend on its batch (tests/test_streams.py)."""
    if next(iter(net.parameters()), torch.empty(0, dtype=torch.float64)).dtype == torch.float64:
        return net
    return copy.deepcopy(net).double()


def autocast(device: torch.device | str, precision: str):
    """The context that runs a network's products in `precision` (pipeline.config.Params.precision): bf16
    autocast, or nothing for fp32. Float64 work inside it (adaptive solvers, likelihoods) is not cast."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
