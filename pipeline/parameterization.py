"""Conversions between network parameterizations of an affine Gaussian path (methods.md 1.2).

At a point (x_t, t) with x_t = alpha_t x + sigma_t eps, the posterior means satisfy
    eps = (x_t - alpha_t x0) / sigma_t,            x0 = (x_t - sigma_t eps) / alpha_t,
    score = -eps / sigma_t  (Tweedie),             velocity = alpha'_t x0 + sigma'_t eps.
The velocity is dx_t/dt in unified time (t = 0 data); it is the probability-flow ODE drift
f(t) x - 1/2 g(t)^2 score. This is the only module that branches on the prediction type.

It also holds the networks' preconditioning (`Preconditioned`): every prediction target is linear in
(x0, eps), so its best linear estimate from x_t is known in closed form, and the network only learns
the rest (Karras et al. 2022, EDM, sec. 5 and app. B.6, generalized to any affine path and target).
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor, nn

from pipeline.paths import Coefficients


class Prediction(str, Enum):
    """What a network's raw output estimates."""

    EPS = "eps"
    X0 = "x0"
    SCORE = "score"
    VELOCITY = "velocity"


def to_x0_and_eps(output: Tensor, prediction: Prediction, x_t: Tensor, c: Coefficients) -> tuple[Tensor, Tensor]:
    """Posterior means (x0_hat, eps_hat) from any prediction; c must broadcast against x_t."""
    if prediction is Prediction.EPS:
        eps = output
        return (x_t - c.sigma * eps) / c.alpha, eps
    if prediction is Prediction.X0:
        x0 = output
        return x0, (x_t - c.alpha * x0) / c.sigma
    if prediction is Prediction.SCORE:
        eps = -c.sigma * output
        return (x_t - c.sigma * eps) / c.alpha, eps
    if prediction is Prediction.VELOCITY:
        det = c.alpha * c.d_sigma - c.sigma * c.d_alpha
        x0 = (c.d_sigma * x_t - c.sigma * output) / det
        eps = (c.alpha * output - c.d_alpha * x_t) / det
        return x0, eps
    raise ValueError(f"unknown prediction {prediction!r}")


def to_eps(output: Tensor, prediction: Prediction, x_t: Tensor, c: Coefficients) -> Tensor:
    if prediction is Prediction.EPS:
        return output
    if prediction is Prediction.SCORE:
        return -c.sigma * output
    return to_x0_and_eps(output, prediction, x_t, c)[1]


def to_x0(output: Tensor, prediction: Prediction, x_t: Tensor, c: Coefficients) -> Tensor:
    if prediction is Prediction.X0:
        return output
    return to_x0_and_eps(output, prediction, x_t, c)[0]


def to_score(output: Tensor, prediction: Prediction, x_t: Tensor, c: Coefficients) -> Tensor:
    if prediction is Prediction.SCORE:
        return output
    return -to_eps(output, prediction, x_t, c) / c.sigma


def to_velocity(output: Tensor, prediction: Prediction, x_t: Tensor, c: Coefficients) -> Tensor:
    """Probability-flow velocity dx_t/dt = f x_t - 1/2 g^2 score, written without dividing by sigma."""
    if prediction is Prediction.VELOCITY:
        return output
    if prediction is Prediction.EPS:
        # alpha' x0 + sigma' eps with x0 = (x_t - sigma eps) / alpha
        return c.drift * x_t + (c.d_sigma - c.drift * c.sigma) * output
    x0, eps = to_x0_and_eps(output, prediction, x_t, c)
    return c.d_alpha * x0 + c.d_sigma * eps


def from_x0_and_eps(x0: Tensor, eps: Tensor, prediction: Prediction, c: Coefficients) -> Tensor:
    """The target a network of the given prediction type regresses onto, from (x0, eps)."""
    if prediction is Prediction.EPS:
        return eps
    if prediction is Prediction.X0:
        return x0
    if prediction is Prediction.SCORE:
        return -eps / c.sigma
    if prediction is Prediction.VELOCITY:
        return c.d_alpha * x0 + c.d_sigma * eps
    raise ValueError(f"unknown prediction {prediction!r}")


def preconditioning(prediction: Prediction, c: Coefficients, sigma_data: float) -> tuple[Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in) of the output c_skip x_t + c_out F(c_in x_t, t) (Karras et al. 2022, eq. 7).

    With the target A x0 + B eps (from_x0_and_eps is linear in both) and data of variance sigma_data^2 per
    coordinate, x_t has variance D = alpha^2 sigma_data^2 + sigma^2; c_in = 1/sqrt(D) gives F a unit-variance
    input, c_skip = (A alpha sigma_data^2 + B sigma)/D is the least-squares linear estimate of the target from
    x_t, and c_out the standard deviation of what it leaves, (A - c_skip alpha)^2 sigma_data^2 + (B - c_skip sigma)^2,
    so F's target has unit variance. For x0-prediction on the VE path these are EDM's c_skip, c_out, c_in.
    The linear part lets the output grow with |x_t| wherever the target does (an eps-network at t near 1
    must return about x_t), which a network ending in a normalization layer cannot.
    """
    a = from_x0_and_eps(torch.ones_like(c.alpha), torch.zeros_like(c.alpha), prediction, c)
    b = from_x0_and_eps(torch.zeros_like(c.alpha), torch.ones_like(c.alpha), prediction, c)
    variance = c.alpha**2 * sigma_data**2 + c.sigma**2
    c_skip = (a * c.alpha * sigma_data**2 + b * c.sigma) / variance
    c_out = ((a - c_skip * c.alpha) ** 2 * sigma_data**2 + (b - c_skip * c.sigma) ** 2).sqrt()
    return c_skip, c_out, variance.rsqrt()


class Preconditioned(nn.Module):
    """A raw network F behind the preconditioning of an affine path: forward(x_t, t) estimates the target.

    Checkpoints hold F's weights under `inner.`; the path and prediction type come from the method.
    """

    def __init__(self, inner: nn.Module, path, prediction: Prediction, sigma_data: float):
        super().__init__()
        self.inner = inner
        self.path = path
        self.prediction = prediction
        self.sigma_data = float(sigma_data)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        c = self.path.at(t, x)
        c_skip, c_out, c_in = preconditioning(self.prediction, c, self.sigma_data)
        return c_skip * x + c_out * self.inner(c_in * x, t)
