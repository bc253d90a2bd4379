"""The VP SDE (Song et al. 2021, eq. 11): the continuous limit of DDPM's chain."""

from __future__ import annotations

from pipeline.methods.sde import VPSDEConfig, ScoreSDE
from pipeline.paths import VPPath


class VPSDE(ScoreSDE):
    """VP SDE dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw (Song et al. 2021, eq. 11)."""

    Config = VPSDEConfig

    def __init__(self, config: VPSDEConfig, data_shape):
        super().__init__(config, data_shape)
        self.path = VPPath(config.beta_min, config.beta_max)
