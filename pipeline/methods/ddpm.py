"""DDPM (Ho, Jain, Abbeel 2020) and the samplers that reuse its eps-network unchanged: DDIM (Song,
Meng, Ermon 2021) and Analytic-DPM (Bao, Li, Zhu, Zhang 2022).

Step i in {1..T} sits at t = i / T on the shared path (pipeline.paths.DiscreteLinearBetaPath).
Ancestral sampling, DDIM and DPM-Solver++ are the shared samplers of every affine path (pipeline.samplers);
this module gives them the chain: its sub-sequences tau_1 < ... < tau_S of the steps (S = the budget;
pipeline.grids), alpha and sigma at the steps, and eps_theta with x0_hat as the papers' code clips it. The per-step
quantities of a step r -> s are recomputed from alpha_bar at the sub-sequence points (Nichol &
Dhariwal 2021, sec. 4; methods.md 2.1, 2.2, 2.12A):
    beta_{r|s} = 1 - ab_r / ab_s,
    posterior mean  [sqrt(ab_s) beta_{r|s} / (1 - ab_r)] x0 + [sqrt(ab_r / ab_s)(1 - ab_s) / (1 - ab_r)] x_r,
    posterior var   beta_tilde_{r|s} = (1 - ab_s) beta_{r|s} / (1 - ab_r).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from pipeline import grids, rng
from pipeline.schema import AffineConfig
from pipeline.methods.affine import AffineMethod
from pipeline.methods.analytic_dpm import AnalyticTable, estimate_table
from pipeline.likelihood import discretized_gaussian_log_likelihood, pixel_grid
from pipeline.methods.base import EvalContext, LikelihoodRecord, SamplerSpec
from pipeline.parameterization import Prediction
from pipeline.paths import DiscreteLinearBetaPath
from pipeline.samplers import ancestral_chain, implicit_chain
from pipeline.solvers import SolverResult

#: the samplers (and the bound) that use Analytic-DPM's optimal variance, hence its sigma clip on images
ANALYTIC_SAMPLERS = frozenset({"analytic_ddpm", "analytic_ddim"})
VarianceFn = Callable[[int, int], float]


class DDPMConfig(AffineConfig):
    num_steps: PositiveInt = 1000
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(0.02, gt=0, lt=1)
    #: on image data, clip x0_hat to [-1, 1] in every sampler and in the bound, as the papers' code (Ho et al.
    #: 2020; Song et al. 2021; Bao et al. 2022; diffusers' default); 2-D data is never clipped (no paper does,
    #: and it has no fixed range; methods.md 6.3)
    clip_x0: bool = True
    #: on image data, Analytic-DPM's clip of the variance of the step onto tau_1 to (y 2/255 sqrt(pi/2))^2, so its
    #: expected |sigma z| stays within y pixel bins: y = 2 with DDPM's mean, 1 with DDIM's (their code's
    #: clip_sigma_idx = 1, clip_pixel; methods.md 2.8); never on 2-D data
    clip_sigma: bool = True
    #: size of Analytic-DPM's Monte Carlo estimate of E||eps_theta(x_n, n)||^2 / d at every n, in scalar
    #: coordinates: M = ceil(analytic_coordinates / d) training points (2000 in 2-D, 63 8x8 digits). The
    #: estimate averages over the d coordinates too, so its error shrinks with M d; raise it for large images.
    analytic_coordinates: PositiveInt = 4000


class DDPM(AffineMethod):
    Config = DDPMConfig
    prediction = Prediction.EPS
    t_end_sample = 0.0
    denoise_final = False
    #: the chain's samplers (its probability-flow ODE gives a likelihood, not a sampler: the chain is discrete)
    capabilities = frozenset({"affine_ode", "gaussian_posterior"})

    def __init__(self, config: DDPMConfig, data_shape):
        super().__init__(config, data_shape)
        self.path = DiscreteLinearBetaPath(config.num_steps, config.beta_start, config.beta_end)
        self.num_steps = config.num_steps
        self.t_start_likelihood = 1.0 / config.num_steps
        #: alpha_bar at steps 0..T (float64; alpha_bar_0 = 1)
        self.alpha_bars = self.path.alpha_bar(torch.arange(config.num_steps + 1))
        #: Analytic-DPM's per-step E||eps||^2 / d, set by after_training or load_extras
        self.analytic: AnalyticTable | None = None
        images = len(self.data_shape) == 3
        #: the papers' handling of 8-bit images, in force on image data only (DDPMConfig.clip_x0, clip_sigma)
        self.clip_x0 = images and config.clip_x0
        self.clip_sigma = images and config.clip_sigma

    def max_budget(self) -> int:
        return self.num_steps

    def sample_time(self, n: int, generator: torch.Generator, device) -> Tensor:
        """i ~ U{1..T}, t = i / T (Ho et al. 2020, Alg. 1)."""
        i = rng.integers(1, self.num_steps + 1, (n,), generator, device)
        return i.float() / self.num_steps

    def timesteps(self, budget: int, spacing: str = "uniform") -> list[int]:
        """tau_1 < ... < tau_S of a spacing (pipeline.grids.chain)."""
        return grids.chain(spacing, self.alpha_bars, budget).tolist()

    def time_grid(self, budget: int, spacing: str, nfe_per_step: int = 1) -> Tensor:
        """The shared samplers' grid on the chain: tau_S, ..., tau_1, 0 as times i / T, one NFE a step."""
        steps = self.timesteps(grids.steps_within(budget, nfe_per_step), spacing)
        return torch.tensor([*reversed(steps), 0], dtype=torch.float64) / self.num_steps

    def step(self, t: float) -> int:
        return round(t * self.num_steps)

    def alpha_sigma(self, t: float) -> tuple[float, float]:
        """sqrt(ab_i) and sqrt(1 - ab_i) at the chain's step i = t T."""
        ab = float(self.alpha_bars[self.step(t)])
        return math.sqrt(ab), math.sqrt(1 - ab)

    def data_and_noise_fn(self, net: nn.Module):
        """(x0_hat, eps_theta) at the chain's step t T, x0_hat clipped on images (eps_and_x0)."""

        def data_and_noise(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            eps, x0 = self.eps_and_x0(net, x, self.step(float(t[0])))
            return x0, eps

        return data_and_noise

    def eps_and_x0(self, net: nn.Module, x: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """eps_theta(x, step) and x0_hat = (x - sqrt(1 - ab) eps) / sqrt(ab), clipped if the config says so."""
        t = torch.full((x.shape[0],), step / self.num_steps, dtype=x.dtype, device=x.device)
        eps = self.output(net, x, t)
        ab = float(self.alpha_bars[step])
        x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        if self.clip_x0:
            x0 = x0.clamp(-1, 1)
        return eps, x0

    def protocol(self, sampler: str) -> dict[str, float]:
        """Whether x0_hat (every sampler and bound) and Analytic-DPM's last noisy step were clipped."""
        settings = {"clip_x0": float(self.clip_x0)}
        if sampler in ANALYTIC_SAMPLERS:
            settings["clip_sigma"] = float(self.clip_sigma)
        return settings

    def clipped_variance(self, variance: VarianceFn, steps: list[int], pixels: int) -> VarianceFn:
        """`variance` of steps r -> s as a function of the grid's times, with the step onto tau_1 capped at
        (pixels 2/255 sqrt(pi/2))^2 when clip_sigma is in force."""
        threshold = (pixels * 2.0 / 255.0 * math.sqrt(math.pi / 2.0)) ** 2

        def of_times(t: float, t_next: float) -> float:
            r, s = self.step(t), self.step(t_next)
            value = variance(r, s)
            return min(value, threshold) if self.clip_sigma and s == steps[0] else value

        return of_times

    # ---------------------------------------------------------------- per-step variances

    def skip_beta(self, r: int, s: int) -> float:
        """beta_{r|s} = 1 - ab_r / ab_s."""
        return float(1 - self.alpha_bars[r] / self.alpha_bars[s])

    def posterior_variance(self, r: int, s: int) -> float:
        """beta_tilde_{r|s} = (1 - ab_s) beta_{r|s} / (1 - ab_r)."""
        return float((1 - self.alpha_bars[s]) / (1 - self.alpha_bars[r])) * self.skip_beta(r, s)

    def analytic_variance(self, r: int, s: int, lambda_sq: float) -> float:
        """Analytic-DPM's sigma*^2 of the step r -> s for the generalized posterior with variance lambda^2."""
        if self.analytic is None:
            raise RuntimeError("Analytic-DPM needs the per-step E||eps||^2/d that the run stage computes after "
                               "training (DDPM.after_training); retrain the model (`dvc repro run@...`)")
        return self.analytic.variance(self.alpha_bars, r, s, lambda_sq)

    # ---------------------------------------------------------------- Analytic-DPM's table

    def after_training(self, net: nn.Module, train: Tensor, generator: torch.Generator) -> dict:
        """Analytic-DPM's E||eps_theta(x_n, n)||^2 / d for n = 1..T, once per trained model (Bao et al. 2022, eq. 8)."""
        points = math.ceil(self.config.analytic_coordinates / self.dim)
        with torch.no_grad():
            self.analytic = estimate_table(lambda x, n: self.eps_and_x0(net, x, n)[0], self.alpha_bars, train,
                                           points, generator)
        return {"analytic_dpm": self.analytic.to_dict()}

    def load_extras(self, extras: dict) -> None:
        if "analytic_dpm" in extras:
            self.analytic = AnalyticTable.from_dict(extras["analytic_dpm"])

    # ---------------------------------------------------------------- likelihood

    def bound_variances(self) -> dict[str, VarianceFn]:
        """Reverse variance of each step r -> s, s = 0 the decoder, per reported bound.

        beta_tilde_{1|0} = 0, so the posterior-variance model's decoder keeps beta_{tau_1|0} (methods.md 6.4).
        Analytic-DPM uses sigma*^2 in every KL term. Its decoder (s = 0) on 8-bit images ([C, H, W] data) has
        the authors' variance beta_tilde_2 (their code, as Ho et al.'s). On continuous data it is sigma*^2 at
        s = 0 (lambda = 0, gamma = 1): the clamped E||x - x0_hat||^2 / d, the optimal variance of a Gaussian
        decoder (Bao et al. 2022, Thm. 1); beta_tilde_2, about beta_1 / 2, would cost about 0.3 nats in 2-D.
        """
        variances: dict[str, VarianceFn] = {
            "ancestral_beta": self.skip_beta,
            "ancestral_posterior": lambda r, s: self.posterior_variance(r, s) if s > 0 else self.skip_beta(r, s),
        }
        if self.analytic is not None:
            variances["analytic_ddpm"] = self.analytic_bound_variance
        return variances

    def analytic_bound_variance(self, r: int, s: int) -> float:
        if s == 0 and len(self.data_shape) == 3:
            return self.posterior_variance(2, 1)
        return self.analytic_variance(r, s, self.posterior_variance(r, s))

    def log_likelihood(self, net: nn.Module, x: Tensor, generator: torch.Generator,
                       context: EvalContext) -> list[LikelihoodRecord]:
        """The variational bound (Ho et al. 2020, eq. 5) on each step budget, for every reverse variance.

        L = KL(q(x_S | x) || N(0, I)) + sum_k KL(q(x_{tau_{k-1}} | x_{tau_k}, x) || p(x_{tau_{k-1}} | x_{tau_k}))
            - log N(x; mu(x_{tau_1}), sigma_1^2),
        one x_{tau_k} ~ q(x_{tau_k} | x) per term, shared by all variances (the means agree). For continuous
        (2-D) data the decoder is a Gaussian density; for 8-bit images ([C, H, W] data) x is snapped to the
        pixel grid and the decoder is the discretized Gaussian (Ho et al. 2020, eq. 13; pipeline.likelihood).
        Analytic-DPM's bound (Bao et al. 2022, sec. 5) is reported as `analytic_ddpm` once its table is loaded.
        Then the probability-flow ODE's likelihood of the same network on the chain's continuous view
        (AffineMethod; log alpha_bar linear between steps, pipeline.paths), from t = 1/T: the report sets the
        bound beside it. The ODE draws from `generator` as it was on entry (a copy), so its Hutchinson probes on
        images are those of every other method's ODE likelihood (common random numbers).
        """
        ode_input = x
        ode_generator = torch.Generator(device=generator.device).set_state(generator.get_state())
        records = []
        images = len(self.data_shape) == 3
        x = pixel_grid(x.double()) if images else x.double()
        d = self.dim
        variances = self.bound_variances()
        for budget in self.config.budgets:
            if budget > self.num_steps:
                continue
            steps = self.timesteps(budget)
            ab_last = float(self.alpha_bars[steps[-1]])
            prior_kl = 0.5 * (d * (1 - ab_last) - d + ab_last * x.flatten(1).pow(2).sum(1)
                              - d * math.log(1 - ab_last))
            bound = {key: prior_kl.clone() for key in variances}
            previous = [0] + steps[:-1]
            with torch.no_grad():
                for r, s in zip(steps, previous):
                    ab_r, ab_s = float(self.alpha_bars[r]), float(self.alpha_bars[s])
                    x_r = math.sqrt(ab_r) * x + math.sqrt(1 - ab_r) * rng.normal_like(x, generator)
                    _, x0_hat = self.eps_and_x0(net, x_r, r)
                    coef_x0 = math.sqrt(ab_s) * self.skip_beta(r, s) / (1 - ab_r)
                    mean_sq = (coef_x0 * (x - x0_hat)).flatten(1).pow(2).sum(1)
                    post_var = self.posterior_variance(r, s)
                    for key, variance in variances.items():
                        var = variance(r, s)
                        if s == 0 and images:
                            bound[key] -= discretized_gaussian_log_likelihood(x, x0_hat, math.sqrt(var))
                        elif s == 0:
                            bound[key] += 0.5 * (mean_sq / var + d * math.log(2 * math.pi * var))
                        else:
                            bound[key] += 0.5 * (d * (post_var / var - 1 + math.log(var / post_var)) + mean_sq / var)
            for key, value in bound.items():
                records.append(LikelihoodRecord(key, len(steps), -value, "elbo"))
        return records + super().log_likelihood(net, ode_input, ode_generator, context)


def sample_analytic_ddpm(method: DDPM, net, x, budget, generator) -> SolverResult:
    """Analytic-DDPM: DDPM's mean (lambda^2 = beta_tilde) with the optimal variance sigma*^2 (Bao et al. 2022),
    the step onto tau_1 clipped to 2 pixel bins on images."""

    def variance(r: int, s: int) -> float:
        return method.analytic_variance(r, s, method.posterior_variance(r, s))

    grid = method.time_grid(budget, "uniform")
    steps = method.timesteps(budget)
    return ancestral_chain(method.alpha_sigma, method.data_and_noise_fn(net), x, grid,
                           method.clipped_variance(variance, steps, pixels=2), generator)


def sample_analytic_ddim(method: DDPM, net, x, budget, generator) -> SolverResult:
    """Analytic-DDIM: DDIM's mean (lambda = 0) with the optimal variance sigma*^2 (Bao et al. 2022), the step
    onto tau_1 clipped to 1 pixel bin on images."""
    grid = method.time_grid(budget, "uniform")
    variance = method.clipped_variance(lambda r, s: method.analytic_variance(r, s, 0.0), method.timesteps(budget),
                                       pixels=1)
    return implicit_chain(method.alpha_sigma, method.data_and_noise_fn(net), x, grid, lambda t, t_next: 0.0,
                          variance, generator)


DDPM.samplers = {
    "analytic_ddpm": SamplerSpec(sample_analytic_ddpm, description="Analytic-DPM, DDPM mean, optimal variance"),
    "analytic_ddim": SamplerSpec(sample_analytic_ddim, description="Analytic-DPM, DDIM mean, optimal variance"),
}
