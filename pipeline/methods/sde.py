"""Score-based generative modeling through SDEs (Song et al. 2021), shared by the VP, sub-VP and VE SDEs
(pipeline.methods.vp_sde, subvp_sde, ve_sde: each adds only its path).

Training is continuous-time denoising score matching with the standard weighting lambda(t) = sigma_t^2,
    E_{t ~ U[1e-5, 1]} E || sigma_t s_theta(x_t, t) + eps ||^2 = E || eps_theta(x_t, t) - eps ||^2
with s_theta = -eps_theta / sigma_t (methods.md 2.4-2.6). For VE an eps-network is NCSN's scale-by-sigma
score network. The loss is averaged over dimensions (the VP configs of the released code; the VE configs
sum and halve, a constant factor).

Samplers (methods.md 2.7; pipeline.samplers, shared) run from t = 1 to t = 1e-3 and finish with Tweedie's
denoising step:
  euler_maruyama  the reverse SDE dx = [f x - g^2 s] dt + g dw_bar (reverse_sde below),
  pc              reverse-diffusion predictor + one Langevin corrector step (signal-to-noise rule),
  ode_*, dpm_solver_pp_2m, ddim-*, ancestral_*  as on every affine path.
The likelihood is the probability-flow ODE's (AffineMethod.log_likelihood).
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import Tensor

from pipeline.schema import AffineConfig
from pipeline.methods.affine import AffineMethod
from pipeline.parameterization import Prediction


class VPSDEConfig(AffineConfig):
    beta_min: float = Field(0.1, gt=0)
    beta_max: float = Field(20.0, gt=0)
    #: signal-to-noise ratio r of the PC sampler's Langevin corrector (0.16 as Song et al.'s VE setting)
    snr: float = Field(0.16, gt=0)

    @model_validator(mode="after")
    def _increasing_beta(self) -> "VPSDEConfig":
        if self.beta_max <= self.beta_min:
            raise ValueError("beta_max must exceed beta_min")
        return self


class VESDEConfig(AffineConfig):
    sigma_min: float = Field(0.01, gt=0)
    #: must be at least the data's diameter, or the prior misses modes (methods.md 6.2)
    sigma_max: float = Field(10.0, gt=0)
    snr: float = Field(0.16, gt=0)

    @model_validator(mode="after")
    def _increasing_sigma(self) -> "VESDEConfig":
        if self.sigma_max <= self.sigma_min:
            raise ValueError("sigma_max must exceed sigma_min")
        return self


class ScoreSDE(AffineMethod):
    """An eps-network on one of Song et al.'s SDE paths; subclasses choose the path."""

    prediction = Prediction.EPS
    capabilities = AffineMethod.capabilities | {"reverse_sde"}

    def reverse_sde(self, net):
        """Drift f x - g^2 s and diffusion g of the reverse-time SDE (Anderson 1982; Song et al. 2021, eq. 6)."""
        score = self.score_fn(net)

        def drift(x: Tensor, t: Tensor) -> Tensor:
            c = self.path.at(t, x)
            return c.drift * x - c.diffusion_squared * score(x, t)

        def diffusion(t: Tensor) -> Tensor:
            return self.path(t).diffusion_squared.clamp_min(0).sqrt()

        return drift, diffusion

    def transition(self, t: float, t_next: float) -> tuple[float, float]:
        """Forward kernel x_t | x_{t_next} ~ N(a x_{t_next}, G^2 I) of the path: a = alpha_t / alpha_{t_next},
        G^2 = sigma_t^2 - a^2 sigma_{t_next}^2. For VP this is the chain's beta_i = 1 - a^2, for VE
        G^2 = sigma_t^2 - sigma_{t_next}^2 (methods.md 2.7)."""
        c, c_next = (self.path(torch.tensor([time], dtype=torch.float64)) for time in (t, t_next))
        a = float(c.alpha / c_next.alpha)
        return a, float(c.sigma**2 - a**2 * c_next.sigma**2)
