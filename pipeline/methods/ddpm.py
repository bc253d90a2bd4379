"""DDPM (Ho, Jain, Abbeel 2020): eps-prediction on T discrete steps with linear betas.

Step i in {1..T} sits at t = i / T on the shared path (pipeline.paths.DiscreteLinearBetaPath).
Ancestral sampling and the variational bound run on a sub-sequence tau_1 < ... < tau_S of the
steps when the budget S is below T; the per-step quantities are recomputed from alpha_bar at the
sub-sequence points (Nichol & Dhariwal 2021, sec. 4; methods.md 2.1, 2.12A):
    beta_{r|s} = 1 - alpha_bar_r / alpha_bar_s,
    posterior mean  [sqrt(ab_s) beta_{r|s} / (1 - ab_r)] x0 + [sqrt(ab_r / ab_s)(1 - ab_s) / (1 - ab_r)] x_r,
    posterior var   (1 - ab_s) beta_{r|s} / (1 - ab_r).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from pipeline.config import MethodConfig
from pipeline.methods.affine import AffineMethod
from pipeline.methods.base import EvalContext, LikelihoodRecord, SamplerSpec
from pipeline.parameterization import Prediction
from pipeline.paths import DiscreteLinearBetaPath
from pipeline.solvers import SolverResult


class DDPMConfig(MethodConfig):
    num_steps: PositiveInt = 1000
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(0.02, gt=0, lt=1)
    #: clip x0_hat to [-1, 1] while sampling (images only; never for 2-D data, methods.md 6.3)
    clip_x0: bool = False


def skipped_timesteps(num_steps: int, budget: int) -> Tensor:
    """tau_1 < ... < tau_S: S evenly spaced steps of {1..T} starting at 1 (DDIM's uniform skipping)."""
    budget = min(budget, num_steps)
    return (torch.arange(budget, dtype=torch.float64) * num_steps / budget).floor().long() + 1


def posterior(path: DiscreteLinearBetaPath, r: Tensor, s: Tensor):
    """Coefficients (on x0, on x_r) and variance of q(x_s | x_r, x0) for steps s < r (s = 0 allowed)."""
    ab_r, ab_s = path.alpha_bar(r), path.alpha_bar(s)
    beta_rs = 1 - ab_r / ab_s
    coef_x0 = ab_s.sqrt() * beta_rs / (1 - ab_r)
    coef_xr = (ab_r / ab_s).sqrt() * (1 - ab_s) / (1 - ab_r)
    variance = (1 - ab_s) * beta_rs / (1 - ab_r)
    return float(coef_x0), float(coef_xr), float(variance), float(beta_rs)


class DDPM(AffineMethod):
    Config = DDPMConfig
    prediction = Prediction.EPS
    t_end_sample = 0.0
    denoise_final = False

    def __init__(self, config: DDPMConfig, data_shape):
        super().__init__(config, data_shape)
        self.path = DiscreteLinearBetaPath(config.num_steps, config.beta_start, config.beta_end)
        self.num_steps = config.num_steps
        self.t_start_likelihood = 1.0 / config.num_steps

    def max_budget(self) -> int:
        return self.num_steps

    def sample_time(self, n: int, generator: torch.Generator, device) -> Tensor:
        """i ~ U{1..T}, t = i / T (Ho et al. 2020, Alg. 1)."""
        i = torch.randint(1, self.num_steps + 1, (n,), generator=generator, device=device)
        return i.float() / self.num_steps

    def eps_and_x0(self, net: nn.Module, x: Tensor, step: int) -> tuple[Tensor, Tensor]:
        t = torch.full((x.shape[0],), step / self.num_steps, dtype=x.dtype, device=x.device)
        eps = self.output(net, x, t)
        ab = float(self.path.alpha_bar(torch.tensor(step)))
        x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        if self.config.clip_x0:
            x0 = x0.clamp(-1, 1)
        return eps, x0

    def ancestral(self, net: nn.Module, x: Tensor, budget: int, generator: torch.Generator,
                  variance: str) -> SolverResult:
        """x_s ~ N(posterior mean(x0_hat, x_r), sigma^2) with sigma^2 = beta_{r|s} or the posterior variance."""
        steps = skipped_timesteps(self.num_steps, budget).tolist()
        previous = [0] + steps[:-1]
        for r, s in zip(reversed(steps), reversed(previous)):
            _, x0 = self.eps_and_x0(net, x, r)
            coef_x0, coef_xr, post_var, beta_rs = posterior(self.path, torch.tensor(r), torch.tensor(s))
            x = coef_x0 * x0 + coef_xr * x
            if s > 0:
                var = beta_rs if variance == "beta" else post_var
                x = x + math.sqrt(var) * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return SolverResult(x, len(steps))

    def log_likelihood(self, net: nn.Module, x: Tensor, generator: torch.Generator,
                       context: EvalContext) -> list[LikelihoodRecord]:
        """The variational bound (Ho et al. 2020, eq. 5) on each step budget, for both variance choices.

        L = KL(q(x_S | x) || N(0, I)) + sum_k KL(q(x_{tau_{k-1}} | x_{tau_k}, x) || p(x_{tau_{k-1}} | x_{tau_k}))
            - log N(x; mu(x_{tau_1}), beta_{tau_1|0}),
        one x_{tau_k} ~ q(x_{tau_k} | x) per term. For continuous (2-D) data the decoder is a Gaussian
        density with variance beta_{tau_1|0} for both choices (beta_tilde_1 = 0, methods.md 6.4).
        """
        records = []
        x = x.double()
        d = self.dim
        for budget in self.config.budgets:
            if budget > self.num_steps:
                continue
            steps = skipped_timesteps(self.num_steps, budget).tolist()
            ab_last = float(self.path.alpha_bar(torch.tensor(steps[-1])))
            prior_kl = 0.5 * (d * (1 - ab_last) - d + ab_last * x.flatten(1).pow(2).sum(1)
                              - d * math.log(1 - ab_last))
            bound = {"beta": prior_kl.clone(), "posterior": prior_kl.clone()}
            previous = [0] + steps[:-1]
            with torch.no_grad():
                for r, s in zip(steps, previous):
                    ab_r = float(self.path.alpha_bar(torch.tensor(r)))
                    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
                    x_r = math.sqrt(ab_r) * x + math.sqrt(1 - ab_r) * noise
                    _, x0_hat = self.eps_and_x0(net, x_r, r)
                    coef_x0, coef_xr, post_var, beta_rs = posterior(self.path, torch.tensor(r), torch.tensor(s))
                    mean_sq = (coef_x0 * (x - x0_hat)).flatten(1).pow(2).sum(1)
                    if s == 0:
                        decoder = 0.5 * (mean_sq / beta_rs + d * math.log(2 * math.pi * beta_rs))
                        for key in bound:
                            bound[key] += decoder
                        continue
                    for key, var in (("beta", beta_rs), ("posterior", post_var)):
                        bound[key] += 0.5 * (d * (post_var / var - 1 + math.log(var / post_var)) + mean_sq / var)
            for key in ("beta", "posterior"):
                records.append(LikelihoodRecord(f"ancestral_{key}", len(steps), -bound[key], "elbo"))
        return records


def sample_ancestral_beta(method: DDPM, net, x, budget, generator) -> SolverResult:
    """Ancestral sampling with sigma^2 = beta (optimal for N(0, I) data; Ho et al. 2020, sec. 3.2)."""
    return method.ancestral(net, x, budget, generator, "beta")


def sample_ancestral_posterior(method: DDPM, net, x, budget, generator) -> SolverResult:
    """Ancestral sampling with sigma^2 = beta_tilde (optimal for a point mass; Ho et al. 2020, sec. 3.2)."""
    return method.ancestral(net, x, budget, generator, "posterior")


DDPM.samplers = {
    "ancestral_beta": SamplerSpec(sample_ancestral_beta, description="ancestral, variance beta"),
    "ancestral_posterior": SamplerSpec(sample_ancestral_posterior, description="ancestral, posterior variance"),
}
