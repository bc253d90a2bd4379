"""The sub-VP SDE (Song et al. 2021, eq. 34): VP's mean with a smaller variance."""

from __future__ import annotations

from pipeline.methods.sde import VPSDEConfig, ScoreSDE
from pipeline.paths import SubVPPath


class SubVPSDE(ScoreSDE):
    """sub-VP SDE (Song et al. 2021, eq. 34): VP's mean, standard deviation 1 - alpha_t^2."""

    Config = VPSDEConfig

    def __init__(self, config: VPSDEConfig, data_shape):
        super().__init__(config, data_shape)
        self.path = SubVPPath(config.beta_min, config.beta_max)
