"""The analytic oracle: data laws whose marginals under any affine path are closed-form.

If x ~ sum_k w_k N(mu_k, S_k) then x_t = alpha_t x + sigma_t eps ~ sum_k w_k N(alpha_t mu_k,
alpha_t^2 S_k + sigma_t^2 I); if x is uniform on a union of boxes, the marginal is a sum over boxes
of products of normal-CDF differences. The exact score, and through pipeline.parameterization the
exact eps, x0 and velocity, follow. Samplers and likelihoods are tested against them apart from
training, and pipeline.data.toy gives every 2-D benchmark's law in these terms.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pipeline import rng
from pipeline.parameterization import Prediction, from_x0_and_eps
from pipeline.paths import AffinePath


class GaussianMixture:
    """A mixture of full-covariance Gaussians in R^d (float64 internally)."""

    def __init__(self, weights: Tensor, means: Tensor, covariances: Tensor):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.covariances = torch.as_tensor(covariances, dtype=torch.float64)
        self.dim = self.means.shape[1]
        variances = torch.diagonal(self.covariances, dim1=1, dim2=2)
        #: [K, d] when every covariance is diagonal: then the marginals need no d x d solves
        self.variances = variances if torch.equal(torch.diag_embed(variances), self.covariances) else None

    def standardized(self, mean: Tensor, std: Tensor) -> "GaussianMixture":
        """The law of (x - mean) / std, per coordinate."""
        mean, std = (torch.as_tensor(v, dtype=torch.float64) for v in (mean, std))
        scale = torch.diag(1 / std)
        return GaussianMixture(self.weights, (self.means - mean) / std, scale @ self.covariances @ scale)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        component = rng.categorical(self.weights, n, generator)
        chol = torch.linalg.cholesky(self.covariances)[component]
        z = rng.normal((n, self.dim), generator, self.means.device, torch.float64)
        return self.means[component] + (chol @ z.unsqueeze(-1)).squeeze(-1)

    def _marginal(self, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """Component means [B, K, d] and covariances [B, K, d, d] of x_t for per-sample alpha, sigma [B]."""
        eye = torch.eye(self.dim, dtype=torch.float64)
        means = alpha[:, None, None] * self.means[None]
        covs = alpha[:, None, None, None] ** 2 * self.covariances[None] + sigma[:, None, None, None] ** 2 * eye
        return means, covs

    def _log_prob_and_score(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        return self._posterior(x, alpha, sigma)[:2]

    def _posterior(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log p_t(x), its score and E[x_data | x_t = x] (per component: mu + alpha S C^-1 (x - alpha mu))."""
        x, alpha, sigma = x.double(), alpha.double(), sigma.double()
        if self.variances is not None:
            variances = alpha[:, None, None] ** 2 * self.variances[None] + sigma[:, None, None] ** 2
            diff = x[:, None, :] - alpha[:, None, None] * self.means[None]
            precision_diff = diff / variances
            maha = (diff * precision_diff).sum(-1)
            logdet = variances.log().sum(-1)
        else:
            means, covs = self._marginal(alpha, sigma)
            diff = x[:, None, :] - means
            precision_diff = torch.linalg.solve(covs, diff.unsqueeze(-1)).squeeze(-1)
            maha = (diff * precision_diff).sum(-1)
            logdet = torch.linalg.slogdet(covs)[1]
        log_comp = torch.log(self.weights)[None] - 0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))
        log_prob = torch.logsumexp(log_comp, dim=1)
        responsibility = torch.softmax(log_comp, dim=1)
        score = -(responsibility[..., None] * precision_diff).sum(1)
        if self.variances is not None:
            covariance_precision_diff = self.variances[None] * precision_diff
        else:
            covariance_precision_diff = (self.covariances[None] @ precision_diff.unsqueeze(-1)).squeeze(-1)
        component_x0 = self.means[None] + alpha[:, None, None] * covariance_precision_diff
        x0 = (responsibility[..., None] * component_x0).sum(1)
        return log_prob, score, x0

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density of the data distribution (t = 0), per sample."""
        one = torch.ones(x.shape[0], dtype=torch.float64)
        return self._log_prob_and_score(x, one, torch.zeros_like(one))[0]

    def marginal_log_prob(self, x: Tensor, t: Tensor, path: AffinePath) -> Tensor:
        c = path(self._times(t, x))
        return self._log_prob_and_score(x, c.alpha.double(), c.sigma.double())[0]

    def score(self, x: Tensor, t: Tensor, path: AffinePath) -> Tensor:
        """Exact grad_x log p_t(x) under the path."""
        c = path(self._times(t, x))
        return self._log_prob_and_score(x, c.alpha.double(), c.sigma.double())[1]

    def network(self, path: AffinePath, prediction: Prediction) -> "OracleNetwork":
        return OracleNetwork(self, path, prediction)

    @staticmethod
    def _times(t: Tensor, x: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        return t.expand(x.shape[0]) if t.ndim == 0 else t.double()


def _log_normal_mass(lower: Tensor, upper: Tensor) -> Tensor:
    """log(Phi(upper) - Phi(lower)) for lower < upper, accurate in both tails (reflected where lower > 0)."""
    flip = lower > 0
    low, high = torch.where(flip, -upper, lower), torch.where(flip, -lower, upper)
    log_high = torch.special.log_ndtr(high)
    return log_high + torch.log1p(-torch.exp(torch.special.log_ndtr(low) - log_high).clamp(max=1 - 1e-16))


class UniformBoxes:
    """A mixture of uniform laws on axis-aligned boxes [lower_k, upper_k] in R^d (float64), e.g. a checkerboard.

    Under x_t = alpha y + sigma eps a box's marginal factorizes over coordinates:
    p_k(x) = prod_i [Phi((alpha u_i - x_i)/sigma) - Phi((alpha l_i - x_i)/sigma)] / (alpha (u_i - l_i)).
    The score is its autograd gradient, E[y | x_t] follows by Tweedie, (x + sigma^2 score) / alpha.
    """

    def __init__(self, weights: Tensor, lower: Tensor, upper: Tensor):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        self.lower = torch.as_tensor(lower, dtype=torch.float64)
        self.upper = torch.as_tensor(upper, dtype=torch.float64)
        self.dim = self.lower.shape[1]

    def standardized(self, mean: Tensor, std: Tensor) -> "UniformBoxes":
        mean, std = (torch.as_tensor(v, dtype=torch.float64) for v in (mean, std))
        return UniformBoxes(self.weights, (self.lower - mean) / std, (self.upper - mean) / std)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        box = rng.categorical(self.weights, n, generator)
        u = rng.uniform((n, self.dim), generator, self.lower.device, torch.float64)
        return self.lower[box] + u * (self.upper[box] - self.lower[box])

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density of the data (t = 0): log sum of w_k / vol_k over the boxes containing x."""
        x = x.double()
        inside = ((x[:, None] >= self.lower[None]) & (x[:, None] <= self.upper[None])).all(-1)
        density = (inside * (self.weights / (self.upper - self.lower).prod(-1))[None]).sum(1)
        return density.log()

    def _log_prob_t(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        a, s = alpha[:, None, None], sigma[:, None, None]
        upper, lower = (a * self.upper[None] - x[:, None]) / s, (a * self.lower[None] - x[:, None]) / s
        log_box = (_log_normal_mass(lower, upper) - torch.log(a * (self.upper - self.lower)[None])).sum(-1)
        return torch.logsumexp(torch.log(self.weights)[None] + log_box, dim=1)

    def _posterior(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log p_t(x), its score (autograd) and E[y | x_t = x] (Tweedie), for sigma > 0."""
        alpha, sigma = alpha.double(), sigma.double()
        with torch.enable_grad():
            x = x.detach().double().requires_grad_(True)
            log_prob = self._log_prob_t(x, alpha, sigma)
            score, = torch.autograd.grad(log_prob.sum(), x)
        x0 = (x.detach() + sigma[:, None] ** 2 * score) / alpha[:, None]
        return log_prob.detach(), score, x0

    def _log_prob_and_score(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        return self._posterior(x, alpha, sigma)[:2]

    marginal_log_prob = GaussianMixture.marginal_log_prob
    score = GaussianMixture.score
    network = GaussianMixture.network
    _times = staticmethod(GaussianMixture._times)


class OracleNetwork(torch.nn.Module):
    """Stands in for a trained network: returns the exact target of the given prediction type."""

    def __init__(self, mixture: "GaussianMixture | UniformBoxes", path: AffinePath, prediction: Prediction):
        super().__init__()
        self.mixture = mixture
        self.path = path
        self.prediction = prediction

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = GaussianMixture._times(t, x)
        coefficients = self.path(t)
        c = coefficients.broadcast_to(x.double())
        _, score, x0 = self.mixture._posterior(x, coefficients.alpha.double(), coefficients.sigma.double())
        eps = -c.sigma * score
        return from_x0_and_eps(x0, eps, self.prediction, c).to(x.dtype)


def oracle_mixture() -> GaussianMixture:
    """The benchmark's `gaussian_mixture` data set: four anisotropic components, roughly unit scale."""
    means = torch.tensor([[-1.2, -0.8], [1.3, -0.6], [0.2, 1.3], [-0.9, 1.0]])

    def rot(a: float) -> torch.Tensor:
        return torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])

    scales = [(0.35, 0.12), (0.25, 0.25), (0.4, 0.1), (0.15, 0.2)]
    angles = [0.4, 0.0, -0.7, 1.1]
    covs = torch.stack([rot(a) @ torch.diag(torch.tensor(s) ** 2) @ rot(a).T for s, a in zip(scales, angles)])
    return GaussianMixture(torch.tensor([0.3, 0.25, 0.3, 0.15]), means, covs)
