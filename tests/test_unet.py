"""The image U-Net: shapes at odd sizes, attention where asked, extra outputs, time conditioning, paper size."""

import pytest
import torch

from pipeline.schema import UNetSettings
from pipeline.nets import build_network
from pipeline.nets.unet import SelfAttention, UNet


def _randomize_output(net: UNet) -> UNet:
    """The last convolution of each residual, attention and output block starts at zero (Ho et al.), so a
    fresh net ignores t; give those weights values so outputs depend on the inputs as after training."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d) and not module.weight.any():
                module.weight.copy_(0.1 * torch.randn(module.weight.shape, generator=generator))
    return net


@pytest.mark.parametrize("shape, mult, attention", [
    ((1, 8, 8), (1, 2), (4,)),
    ((1, 28, 28), (1, 2, 2), (7,)),     # 28 -> 14 -> 7, every upsample returns to its skip's size
    ((3, 32, 32), (1, 2, 2, 2), (16,)),
    ((3, 10, 10), (1, 2, 2), ()),       # 10 -> 5 -> 3 and back
])
def test_output_has_the_input_shape_at_any_size(shape, mult, attention):
    torch.manual_seed(0)
    net = _randomize_output(UNet(shape[0], shape[1], channels=8, channel_mult=mult, attention_resolutions=attention,
                                 norm_groups=4))
    x = torch.randn(3, *shape)
    out = net(x, torch.rand(3))
    assert out.shape == x.shape and torch.isfinite(out).all()
    levels_with_attention = sum(isinstance(m, SelfAttention) for m in net.modules()) - 1  # minus the middle one
    assert levels_with_attention == (3 if attention else 0)  # one down block + two up blocks at that level


def test_extra_outputs_are_appended_after_the_flattened_data_units():
    torch.manual_seed(0)
    net = UNet(1, 8, channels=8, norm_groups=4, extra_outputs=2)
    out = net(torch.randn(5, 1, 8, 8), torch.rand(5))
    assert out.shape == (5, 64 + 2)


def test_output_depends_on_time_and_dropout_only_in_training():
    torch.manual_seed(0)
    net = _randomize_output(UNet(1, 8, channels=8, norm_groups=4, dropout=0.5)).eval()
    x = torch.randn(4, 1, 8, 8)
    t = torch.full((4,), 0.2)
    assert not torch.allclose(net(x, t), net(x, t + 0.5))
    assert torch.equal(net(x, t), net(x, t))
    net.train()
    assert not torch.equal(net(x, t), net(x, t))


def test_samples_are_processed_independently():
    """No batch coupling (GroupNorm, not BatchNorm): a sample's output does not depend on its batch."""
    torch.manual_seed(0)
    net = _randomize_output(UNet(1, 8, channels=8, norm_groups=4, attention_resolutions=(4,))).eval()
    x, t = torch.randn(6, 1, 8, 8), torch.rand(6)
    torch.testing.assert_close(net(x, t)[:2], net(x[:2], t[:2]), rtol=1e-5, atol=1e-6)


def test_build_network_picks_the_unet_for_images_from_params():
    class Section:
        unet = UNetSettings(channels=8, channel_mult=[1, 2], attention_resolutions=[4], norm_groups=4)

    net = build_network((1, 8, 8), Section())
    assert isinstance(net, UNet)
    assert net(torch.randn(2, 1, 8, 8), torch.rand(2)).shape == (2, 1, 8, 8)


def test_ddpm_cifar10_settings_give_the_papers_35_7m_parameters():
    """Ho et al. 2020, app. B: 35.7M parameters for CIFAR-10 (128 channels, 1,2,2,2, 2 blocks, attention at 16)."""
    settings = UNetSettings(channels=128, channel_mult=[1, 2, 2, 2], num_res_blocks=2, attention_resolutions=[16],
                            dropout=0.1, norm_groups=32)
    net = build_network((3, 32, 32), type("Section", (), {"unet": settings})())
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(35.7e6, rel=0.005)
