"""Conversions between network parameterizations of an affine Gaussian path (methods.md 1.2).

At a point (x_t, t) with x_t = alpha_t x + sigma_t eps, the posterior means satisfy
    eps = (x_t - alpha_t x0) / sigma_t,            x0 = (x_t - sigma_t eps) / alpha_t,
    score = -eps / sigma_t  (Tweedie),             velocity = alpha'_t x0 + sigma'_t eps.
The velocity is dx_t/dt in unified time (t = 0 data); it is the probability-flow ODE drift
f(t) x - 1/2 g(t)^2 score. This is the only module that branches on the prediction type.
"""

from __future__ import annotations

from enum import Enum

from torch import Tensor

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
