"""The analytic oracle: a Gaussian mixture and its exact marginals under any affine path.

If x ~ sum_k w_k N(mu_k, S_k) then x_t = alpha_t x + sigma_t eps ~ sum_k w_k N(alpha_t mu_k,
alpha_t^2 S_k + sigma_t^2 I), so the exact score, and through pipeline.parameterization the exact
eps, x0 and velocity, are closed-form. Samplers and likelihoods are tested against it apart from
training.
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
        x = x.double()
        means, covs = self._marginal(alpha.double(), sigma.double())
        diff = x[:, None, :] - means
        precision_diff = torch.linalg.solve(covs, diff.unsqueeze(-1)).squeeze(-1)
        maha = (diff * precision_diff).sum(-1)
        logdet = torch.linalg.slogdet(covs)[1]
        log_comp = torch.log(self.weights)[None] - 0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))
        log_prob = torch.logsumexp(log_comp, dim=1)
        responsibility = torch.softmax(log_comp, dim=1)
        score = -(responsibility[..., None] * precision_diff).sum(1)
        component_x0 = self.means[None] + alpha[:, None, None] * (
            self.covariances[None] @ precision_diff.unsqueeze(-1)).squeeze(-1)
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


class OracleNetwork(torch.nn.Module):
    """Stands in for a trained network: returns the exact target of the given prediction type."""

    def __init__(self, mixture: GaussianMixture, path: AffinePath, prediction: Prediction):
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
