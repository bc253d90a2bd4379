"""The linear path of flow matching, shared by the flows that regress its velocity (flow matching, OT flow
matching, rectified flow; Lipman et al. 2023, Tong et al. 2024, Liu et al. 2023).

Native time tau = 1 - t runs from noise (tau = 0) to data (tau = 1) with x_tau = tau x1 +
(1 - (1 - sigma_min) tau) x0. In unified time this is pipeline.paths.LinearPath and the network
regresses the unified velocity dx_t/dt = -x_data + (1 - sigma_min) eps, i.e. minus the native
target x1 - (1 - sigma_min) x0 (Lipman et al. 2023, eq. 23). Each flow's own module adds its coupling
of noise and data and its Config.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from pipeline import rng
from pipeline.schema import AffineConfig
from pipeline.methods.affine import AffineMethod
from pipeline.parameterization import Prediction, from_x0_and_eps
from pipeline.paths import LinearPath


class LinearFlowConfig(AffineConfig):
    sigma_min: float = Field(0.0, ge=0, lt=1)


class LinearFlow(AffineMethod):
    """A velocity network on the linear path, trained at uniform times t in [0, 1], sampled to t = 0."""

    Config = LinearFlowConfig
    prediction = Prediction.VELOCITY
    t_min_train = 0.0
    t_end_sample = 0.0
    t_start_likelihood = 0.0
    denoise_final = False

    def __init__(self, config: LinearFlowConfig, data_shape):
        super().__init__(config, data_shape)
        self.path = LinearPath(config.sigma_min)

    def sample_time(self, n: int, generator: torch.Generator, device) -> Tensor:
        return rng.uniform((n,), generator, device)


def coupled_regression_loss(method: LinearFlow, net: nn.Module, x_data: Tensor, noise: Tensor,
                            generator: torch.Generator) -> Tensor:
    """Flow matching's per-sample loss E_t ||net(x_t, t) - target||^2 on given (data, noise) pairs.

    x_t = alpha_t x_data + sigma_t noise on the method's path, averaged over dimensions
    (Lipman et al. 2023, eq. 23; Liu et al. 2023, eq. 1 with tau = 1 - t).
    """
    t = method.sample_time(x_data.shape[0], generator, x_data.device)
    c = method.path(t).broadcast_to(x_data)
    x_t = c.alpha * x_data + c.sigma * noise
    target = from_x0_and_eps(x_data, noise, method.prediction, c)
    return method.loss_weight(t) * (method.output(net, x_t, t) - target).pow(2).flatten(1).mean(1)
