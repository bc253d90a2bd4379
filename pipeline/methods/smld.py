"""SMLD / NCSN: score matching with Langevin dynamics (Song & Ermon 2019, 2020; methods.md 2.3).

A noise-conditional score network over L geometric noise levels sigma_1 > ... > sigma_L, trained by
denoising score matching with lambda(sigma) = sigma^2, one level per example:
    E_i E || sigma_i s_theta(x + sigma_i z, sigma_i) + z ||^2 = E || eps_theta - z ||^2, s_theta = -eps_theta / sigma_i,
i.e. NCSNv2's scale-by-sigma score network (averaged over dimensions instead of halved and summed: a constant).
The levels sit on the VE path sigma(t) = sigma_L (sigma_1 / sigma_L)^t, level sigma at
t = log(sigma / sigma_L) / log(sigma_1 / sigma_L), so the geometric levels are the evenly spaced times
t = 1, ..., 0, the network sees t in [0, 1] and every conversion goes through pipeline.parameterization.
Sampling is annealed Langevin dynamics from N(0, sigma_1^2 I). The discrete model defines no likelihood
(its continuous counterpart is the VE SDE, pipeline.methods.ve_sde).
"""

from __future__ import annotations

import torch
from pydantic import Field, PositiveInt, model_validator
from torch import Tensor, nn

from pipeline import grids, rng
from pipeline.schema import MethodConfig
from pipeline.methods.affine import AffineMethod
from pipeline.methods.base import EvalContext, LikelihoodRecord, SamplerSpec
from pipeline.parameterization import Prediction, to_x0
from pipeline.paths import VEPath
from pipeline.solvers import SolverResult, annealed_langevin


class SMLDConfig(MethodConfig):
    #: sigma_1, about the largest pairwise distance of the standardized 2-D data (methods.md 2.3)
    sigma_max: float = Field(10.0, gt=0)
    #: sigma_L
    sigma_min: float = Field(0.01, gt=0)
    num_levels: PositiveInt = Field(10, ge=2)
    #: Langevin step eps of the released code's convention eta_i = eps sigma_i^2 / sigma_L^2 (the paper's
    #: Algorithm 1 writes alpha_i = 2 eta_i). sqrt(eps / 2) / sigma_L = 0.2, the signal-to-noise ratio
    #: suggested for 2-D data in methods.md 2.3.
    step_size: float = Field(8e-6, gt=0)
    #: NCSNv2's final denoising step x + sigma_L^2 s(x, sigma_L) (Song & Ermon 2020), one more NFE
    final_denoise: bool = True

    @model_validator(mode="after")
    def _decreasing_levels(self) -> "SMLDConfig":
        if self.sigma_max <= self.sigma_min:
            raise ValueError("sigma_max must exceed sigma_min")
        return self


class SMLD(AffineMethod):
    Config = SMLDConfig
    prediction = Prediction.EPS
    #: trained at L noise levels only, so it runs none of the shared samplers of a continuous path
    capabilities = frozenset()
    t_end_sample = 0.0
    denoise_final = False

    def __init__(self, config: SMLDConfig, data_shape):
        super().__init__(config, data_shape)
        self.path = VEPath(config.sigma_min, config.sigma_max)
        #: t of sigma_1, ..., sigma_L on the VE path: geometric levels are evenly spaced in t
        self.level_times = torch.linspace(1.0, 0.0, config.num_levels, dtype=torch.float64)

    def level_sigmas(self) -> Tensor:
        return self.path(self.level_times).sigma

    def sample_time(self, n: int, generator: torch.Generator, device) -> Tensor:
        """One noise level per example, uniformly over the L levels."""
        level = rng.integers(0, self.config.num_levels, (n,), generator, device)
        return self.level_times.to(device=device, dtype=torch.float32)[level]

    def log_likelihood(self, net: nn.Module, x: Tensor, generator: torch.Generator,
                       context: EvalContext) -> list[LikelihoodRecord]:
        """None: the discrete noise-conditional model has no likelihood (methods.md 2.3)."""
        return []


def sample_annealed_langevin(method: SMLD, net, x: Tensor, budget: int, generator) -> SolverResult:
    """Annealed Langevin dynamics, eta_i = eps sigma_i^2 / sigma_L^2, T steps per level within the budget
    (pipeline.grids.steps_within: L T + 1 <= budget with the final step), then NCSNv2's denoising step."""
    sigmas = method.level_sigmas()
    step_sizes = method.config.step_size * sigmas**2 / sigmas[-1] ** 2
    steps_per_level = grids.steps_within(budget, method.config.num_levels, int(method.config.final_denoise))
    result = annealed_langevin(method.score_fn(net), x, method.level_times, step_sizes, steps_per_level, generator)
    if not method.config.final_denoise:
        return result
    t = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    x0 = to_x0(method.output(net, result.x, t), method.prediction, result.x, method.path(t).broadcast_to(x))
    return SolverResult(x0, result.nfe + 1)


SMLD.samplers = {
    "annealed_langevin": SamplerSpec(sample_annealed_langevin, description="annealed Langevin dynamics"),
}
