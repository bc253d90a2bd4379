"""Conditional flow matching on the linear (conditional OT) path (Lipman et al. 2023).

Native FM time tau = 1 - t runs from noise (tau = 0) to data (tau = 1) with x_tau = tau x1 +
(1 - (1 - sigma_min) tau) x0. In unified time this is pipeline.paths.LinearPath and the network
regresses the unified velocity dx_t/dt = -x_data + (1 - sigma_min) eps, i.e. minus the native
target x1 - (1 - sigma_min) x0 (Lipman et al. 2023, eq. 23).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from pipeline import rng
from pipeline.schema import AffineConfig
from pipeline.methods.affine import AffineMethod
from pipeline.parameterization import Prediction
from pipeline.paths import LinearPath


class FlowMatchingConfig(AffineConfig):
    sigma_min: float = Field(0.0, ge=0, lt=1)


class FlowMatching(AffineMethod):
    Config = FlowMatchingConfig
    prediction = Prediction.VELOCITY
    t_min_train = 0.0
    t_end_sample = 0.0
    t_start_likelihood = 0.0
    denoise_final = False

    def __init__(self, config: FlowMatchingConfig, data_shape):
        super().__init__(config, data_shape)
        self.path = LinearPath(config.sigma_min)

    def sample_time(self, n: int, generator: torch.Generator, device) -> Tensor:
        return rng.uniform((n,), generator, device)
