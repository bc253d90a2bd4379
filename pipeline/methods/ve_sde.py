"""The VE SDE (Song et al. 2021, eq. 9): the continuous limit of SMLD's noise levels."""

from __future__ import annotations

from pipeline.methods.sde import VESDEConfig, ScoreSDE
from pipeline.paths import VEPath


class VESDE(ScoreSDE):
    """VE SDE dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw, prior N(0, sigma_max^2 I)
    (Song et al. 2021, eq. 9)."""

    Config = VESDEConfig

    def __init__(self, config: VESDEConfig, data_shape):
        super().__init__(config, data_shape)
        self.path = VEPath(config.sigma_min, config.sigma_max)
