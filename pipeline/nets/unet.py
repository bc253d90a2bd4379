"""The image U-Net of DDPM (Ho et al. 2020, app. B; the PixelCNN++ backbone with Wide-ResNet blocks).

Per resolution level: `num_res_blocks` residual blocks (GroupNorm, SiLU, 3x3 convolutions, the
time embedding added between the two convolutions, dropout), self-attention after each block at
the chosen feature-map sizes, then a strided-convolution downsample; the middle is
res-attention-res; the decoder mirrors the encoder with skip connections and nearest-neighbour
upsampling. Widths are `channels * channel_mult[level]`. The same code runs the tiny default on a
CPU and the 35.7M-parameter CIFAR-10 network (channels 128, mult 1,2,2,2, 2 blocks, attention
at 16, dropout 0.1).

Odd sizes (MNIST's 28 -> 14 -> 7 -> 4) work: each upsample returns to its skip's exact size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pipeline.nets.embeddings import SinusoidalEmbedding


def group_norm(channels: int, max_groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest number of groups <= max_groups that divides `channels`."""
    groups = max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ResidualBlock(nn.Module):
    """h + conv(drop(silu(norm(conv(silu(norm(h))) + W temb)))), a 1x1 shortcut when widths differ."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time = nn.Linear(temb_channels, out_channels)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        out = self.conv1(F.silu(self.norm1(h)))
        out = out + self.time(F.silu(temb))[:, :, None, None]
        out = self.conv2(self.dropout(F.silu(self.norm2(out))))
        return self.shortcut(h) + out


class SelfAttention(nn.Module):
    """Single-head self-attention over the pixels of a feature map, residual (Ho et al. 2020, app. B)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: Tensor) -> Tensor:
        b, c, height, width = h.shape
        q, k, v = self.qkv(self.norm(h)).reshape(b, 3, c, height * width).unbind(1)
        attended = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return h + self.out(attended.transpose(1, 2).reshape(b, c, height, width))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, h: Tensor) -> Tensor:
        return self.conv(h)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: Tensor, size: tuple[int, int]) -> Tensor:
        return self.conv(F.interpolate(h, size=size, mode="nearest"))


class UNet(nn.Module):
    """x [B, C, H, W], t [B] -> [B, C, H, W].

    extra_outputs > 0 (a method's Method.extra_outputs, e.g. PFGM's augmented coordinate) appends
    that many scalars from a head on the globally pooled last feature map; the output is then
    flat, [B, C*H*W + extra_outputs], data units first (the MLP's convention).
    """

    def __init__(self, in_channels: int, image_size: int, channels: int = 32, channel_mult=(1, 2),
                 num_res_blocks: int = 1, attention_resolutions=(), dropout: float = 0.0, norm_groups: int = 8,
                 extra_outputs: int = 0):
        super().__init__()
        temb_channels = 4 * channels
        self.embed = nn.Sequential(SinusoidalEmbedding(channels), nn.Linear(channels, temb_channels), nn.SiLU(),
                                   nn.Linear(temb_channels, temb_channels))
        self.input = nn.Conv2d(in_channels, channels, 3, padding=1)
        attention_resolutions = set(attention_resolutions)

        def block(c_in: int, c_out: int) -> ResidualBlock:
            return ResidualBlock(c_in, c_out, temb_channels, dropout, norm_groups)

        def attention(c: int, resolution: int) -> nn.Module:
            return SelfAttention(c, norm_groups) if resolution in attention_resolutions else nn.Identity()

        self.down = nn.ModuleList()
        skips, width, resolution = [channels], channels, image_size
        level_resolutions = []
        for level, mult in enumerate(channel_mult):
            level_resolutions.append(resolution)
            for _ in range(num_res_blocks):
                self.down.append(nn.ModuleList([block(width, channels * mult), attention(channels * mult, resolution)]))
                width = channels * mult
                skips.append(width)
            if level < len(channel_mult) - 1:
                self.down.append(Downsample(width))
                skips.append(width)
                resolution = math.ceil(resolution / 2)
        self.middle = nn.ModuleList([block(width, width), SelfAttention(width, norm_groups), block(width, width)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(nn.ModuleList([block(width + skips.pop(), channels * mult),
                                              attention(channels * mult, level_resolutions[level])]))
                width = channels * mult
            if level > 0:
                self.up.append(Upsample(width))
        self.output_norm = group_norm(width, norm_groups)
        self.output = nn.Conv2d(width, in_channels, 3, padding=1)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        self.extra_head = nn.Linear(width, extra_outputs) if extra_outputs else None

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        temb = self.embed(t)
        h = self.input(x)
        skips = [h]
        for layer in self.down:
            if isinstance(layer, Downsample):
                h = layer(h)
            else:
                h = layer[1](layer[0](h, temb))
            skips.append(h)
        h = self.middle[2](self.middle[1](self.middle[0](h, temb)), temb)
        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h, skips[-1].shape[-2:])
            else:
                h = layer[1](layer[0](torch.cat([h, skips.pop()], dim=1), temb))
        h = F.silu(self.output_norm(h))
        out = self.output(h)
        if self.extra_head is None:
            return out
        return torch.cat([out.flatten(1), self.extra_head(h.mean(dim=(2, 3)))], dim=1)


def build_unet(data_shape: tuple[int, int, int], settings, extra_outputs: int = 0) -> UNet:
    """The U-Net for [C, H, W] data from params.yaml's network.unet section."""
    channels, height, _ = data_shape
    return UNet(channels, height, channels=settings.channels, channel_mult=tuple(settings.channel_mult),
                num_res_blocks=settings.num_res_blocks, attention_resolutions=tuple(settings.attention_resolutions),
                dropout=settings.dropout, norm_groups=settings.norm_groups, extra_outputs=extra_outputs)
