"""Poisson flow generative models, PFGM (Xu, Liu, Tegmark, Jaakkola 2022; methods.md 2.9, 6.8).

The data y in R^d are charges on the plane z = 0 of the augmented space R^{d+1}, points
x~ = (x, z). Their field E(x~) = int (x~ - y~)/||x~ - y~||^{d+1} p(y) dy has E_z > 0 above the plane,
so z decreases monotonically along a field line followed backwards, and the slice density at
height z is the data smoothed by the Cauchy kernel c_d z/(||x - y||^2 + z^2)^{(d+1)/2}.

Training (their Alg. 2 and released code): perturb a batch in R^{d+1},
    m ~ U[0, M], (eps_x, eps_z) ~ N(0, sigma^2 I), u uniform on the unit sphere,
    x = y + ||eps_x|| (1 + tau)^m u,   z = |eps_z| (1 + tau)^m,
and regress the network f(x, z) in R^{d+1} onto the normalized empirical field
    E^_i = sum_j w_ij (y~_j - x~_i),  w_ij proportional to ||x~_i - y~_j||^{-(d+1)} (normalized over j, log-space),
    target = sqrt(d) E^_i / (||E^_i|| + gamma),
over a reference batch larger than the training batch: the batch's own points plus
`reference_batch - batch` more training points drawn every step (the code's large batch). The
self-normalized estimator is biased, hence the large reference (S2 13.7). `restrict_M` (off by
default, see below) is the code's: a draw with |eps_z| < 0.005 gets m ~ U[0, 0.7 M] (forward_pz in the
released models/utils_poisson.py takes z.abs() before the test; an earlier revision tested the signed
draw, as methods.md's "raw eps_z" does, which restricts 69% instead of 2 Phi(0.5) - 1 = 38% at
sigma = 0.01). The per-sample
loss is averaged over the d + 1 components (the code sums and halves; the mean keeps the shared
learning rate).

Because E^_z = -z exactly (the weights sum to one), the z-component of the target is a function
of the x-component and z: with a = ||v_x||^2/d and N = ||E^|| + gamma,
    N = (gamma + sqrt(a gamma^2 + (1 - a) z^2)) / (1 - a),   v_z = -sqrt(d) z / N.

Network: input x / sqrt(z^2 + 1) (an input scaling in the spirit of EDM's c_in, not in the paper),
time input t' = (ln z - ln z_min)/(ln z_max - ln z_min) (0 at z_min, 1 at z_max), and d + 1
outputs (Method.extra_outputs = 1).

Prior at z = z_max: x = z_max g/|g'| with g ~ N(0, I_d), g' ~ N(0, 1), which has the radius law of the
code's Beta(d/2, 1/2) trick; the radius is clipped to [1, upper_norm]. Backward ODE in s = ln z:
    dx/ds = z v_x / v_z = -E^_x = -N v_x / sqrt(d),   from ln z_max down to ln z_min,
with adaptive RK45 (`ode_rk45`) or Euler or Heun on a uniform grid in s (`ode_euler`, `ode_heun`). The network gives
1/N two ways: from its z-part, -v_z/(sqrt(d) z), singular where the prediction reaches v_z = 0, and
from its x-part through the formula above, exact near the plane and ill-conditioned far out
(a -> 1). The code divides by v_z + 1e-5 above z_exp and substitutes the x-part estimate below
(their app. B.2.3): the drift jumps at z_exp and is about 1e5 z v_x wherever the network predicts
v_z >= 0 (on the default moons model the NLL was 4.35 and 4.10 nats at rtol 1e-4 and 1e-6, at 3254
and 15878 NFE; with the drift below 2.34 and 2.33 (checkerboard 2.93 and 2.92 at 242 and 1388 NFE), the samples' W2 unchanged
at 0.26). Here (`drift_fn`) the two estimates of 1/N are blended by a cosine ramp in ln z over
[z_exp/3, 3 z_exp], and 1/N is floored smoothly at its physical minimum 1/(||x|| + R + z + gamma),
R the largest norm of the training data (E^_x is a weighted mean of y - x, so ||E^|| <= ||x|| + R + z).
The drift is then smooth and grows at most linearly in ||x|| whatever the network predicts.

Likelihood (methods.md 2.9): log p(x) = log p_prior(x(z_max)) + int_{ln z_min}^{ln z_max} div_x F ds
with F the drift above and the Cauchy prior c_d z_max/(||x||^2 + z_max^2)^{(d+1)/2}; the z_min slice
stands for the data and the z_max slice is taken to be exactly Cauchy.

2-D settings (methods.md 2.9 "2D [SUG]"): sigma = 0.01, tau = 0.03, M = 291 as on CIFAR-10, so
sigma (1 + tau)^M = 54 covers z_max = 40 (about 30 data scales of standardized data). In 2-D the
radius of the prior (and of the perturbation at a given z) is heavy-tailed, P(r > k z) ~ 1/k,
unlike in high dimension where it concentrates near sqrt(d) z. Two departures follow, both checked
on moons: restrict_M is off, because it removes exactly the large radius-to-height ratios the prior
starts from (with it on, a few percent of the samples never come in); and the radius is clipped
at 20 z_max rather than the suggested 50 z_max, because the learned field is inaccurate that far out
(at 50 z_max about 0.5% of the samples stay far away), while clipping 5% of the prior radii at
20 z_max leaves the W2 of the exact field's samples unchanged (0.194 at 20 and 50 z_max).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, PositiveInt, model_validator
from torch import Tensor, nn

from pipeline import rng
from pipeline.nets import float64_copy
from pipeline.schema import MethodConfig
from pipeline.likelihood import ode_log_likelihood
from pipeline.methods.base import EvalContext, LikelihoodRecord, Method, call_network
from pipeline.samplers import FlowODE


class PFGMConfig(MethodConfig):
    sigma: float = Field(0.01, gt=0)
    tau: float = Field(0.03, gt=0)
    M: PositiveInt = 291
    #: the code's restriction of m for small eps_z (see the module docstring); off for 2-D data
    restrict_M: bool = False
    gamma: float = Field(5.0, ge=0)
    #: charges of the empirical field per step: the training batch plus this many minus the batch
    reference_batch: PositiveInt = 4096
    z_max: float = Field(40.0, gt=0)
    z_min: float = Field(1e-3, gt=0)
    #: below z_exp/3 the drift takes N from the network's x-part, above 3 z_exp from its v_z (app. B.2.3 of the paper)
    z_exp: float = Field(1.0, ge=0)
    upper_norm: float = Field(800.0, gt=1)
    budgets: list[PositiveInt] = Field(default_factory=lambda: [1000, 100, 20, 10], min_length=1)

    @model_validator(mode="after")
    def _heights(self) -> "PFGMConfig":
        if self.z_min >= self.z_max:
            raise ValueError(f"z_min ({self.z_min}) must be below z_max ({self.z_max})")
        return self


def empirical_field(x: Tensor, z: Tensor, charges: Tensor) -> tuple[Tensor, Tensor]:
    """(E^_x, E^_z): sum_j w_ij (y~_j - x~_i) with w_ij proportional to ||x~_i - y~_j||^{-(d+1)}, normalized over j.

    x [B, d], z [B], charges [R, d] on the plane z = 0. As in the authors' code, squared distances
    are divided by their row minimum before the power, so the weights never overflow and the
    nearest charge has weight 1 before normalization (any dimension; far charges may underflow to 0,
    which is their weight to float precision). Distances are exact differences in low dimension
    (the matrix-product form loses the small ones); the power is an integer power of rsqrt: 1.9-2.3 ms
    against 6.4-10.8 ms for log + softmax on the 512 x 2048 matrix of a 2-D training step (2 cores).
    """
    d = x.shape[1]
    # in place (one [B, R] buffer) unless autograd needs the intermediates, as the exact-field oracle's divergence does
    inplace = not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, z, charges)))

    def step(tensor: Tensor, op: str, *args) -> Tensor:
        return getattr(tensor, op + "_" if inplace else op)(*args)

    mode = "donot_use_mm_for_euclid_dist" if d <= 16 else "use_mm_for_euclid_dist_if_necessary"
    squared = step(step(torch.cdist(x, charges, compute_mode=mode), "square"), "add", z[:, None].square())
    squared = step(squared, "clamp", torch.finfo(squared.dtype).tiny)  # a point on a charge at z = 0 takes all the weight
    weights = step(step(step(squared, "div", squared.amin(dim=1, keepdim=True)), "rsqrt"), "pow", d + 1)
    weights = step(weights, "div", weights.sum(dim=1, keepdim=True))
    return weights @ charges - x, -z * weights.sum(1)


def normalized_field(field_x: Tensor, field_z: Tensor, gamma: float) -> Tensor:
    """[B, d + 1] target sqrt(d) E^/(||E^|| + gamma) of the PFGM loss."""
    field = torch.cat([field_x, field_z[:, None]], dim=1)
    d = field_x.shape[1]
    return math.sqrt(d) * field / (field.norm(dim=1, keepdim=True) + gamma)


def field_scale(v_x: Tensor, z: Tensor, gamma: float) -> Tensor:
    """N = ||E^|| + gamma of a normalized field v = sqrt(d) E^/N, from its x-part and E^_z = -z.

    Ill-conditioned for gamma = 0 when z << ||E^|| (then ||v_x|| -> sqrt(d) whatever z is), so the
    sampler substitutes only for gamma > 0, as the code does.
    """
    d = v_x.shape[1]
    a = (v_x.pow(2).sum(1) / d).clamp(max=1 - 1e-6)
    return (gamma + torch.sqrt(a * gamma**2 + (1 - a) * z.pow(2))) / (1 - a)


def exact_z_component(v_x: Tensor, z: Tensor, gamma: float) -> Tensor:
    """v_z = -sqrt(d) z / N of a normalized field, from its x-part."""
    return -math.sqrt(v_x.shape[1]) * z / field_scale(v_x, z, gamma)


def field_estimate_weight(z: Tensor, z_exp: float) -> Tensor:
    """Weight of the x-part estimate of 1/N: 1 below z_exp/3, 0 above 3 z_exp, a cosine ramp in ln z between."""
    if z_exp <= 0:
        return torch.zeros_like(z)
    ramp = ((torch.log(z) - math.log(z_exp / 3)) / math.log(9)).clamp(0, 1)
    return 0.5 * (1 + torch.cos(math.pi * ramp))


def smooth_floor(value: Tensor, floor: Tensor, sharpness: float = 20.0) -> Tensor:
    """floor (1 + softplus(k (value/floor - 1))/k): value where value >> floor, never below floor, smooth."""
    return floor * (1 + nn.functional.softplus(sharpness * (value / floor - 1)) / sharpness)


class PFGM(Method):
    Config = PFGMConfig
    extra_outputs = 1
    #: the shared ODE samplers (pipeline.samplers) on the backward Poisson-field ODE in ln z (probability_flow)
    capabilities = frozenset({"ode"})
    couples_batch_rows = True  # the empirical field of the batch (and its reference points)

    def __init__(self, config: PFGMConfig, data_shape):
        super().__init__(config, data_shape)
        self.reference_pool: Tensor | None = None
        #: the largest norm of the training data, R of the drift's floor (training_data or load_extras)
        self.data_radius: float | None = None

    # ------------------------------------------------------------- training

    def training_data(self, train: Tensor, net: nn.Module | None = None) -> Tensor:
        """The training split; it is also the pool the loss draws its reference charges from."""
        self.reference_pool = train.flatten(1)
        self.data_radius = float(self.reference_pool.norm(dim=1).max())
        return train

    def after_training(self, net: nn.Module, train: Tensor, generator: torch.Generator) -> dict:
        return {"data_radius": float(train.flatten(1).norm(dim=1).max())}

    def load_extras(self, extras: dict) -> None:
        if "data_radius" in extras:
            self.data_radius = float(extras["data_radius"])

    def network_input(self, x: Tensor, z: Tensor) -> Tensor:
        """x / sqrt(z^2 + 1): the perturbed points spread like z around unit-scale data, so this keeps the
        network's input of order one at every height (EDM's c_in, Karras et al. 2022). Without it the
        prior's radii (up to upper_norm) swamp the MLP's layer norms and its output stops depending on z."""
        return x / torch.sqrt(z.pow(2) + 1).reshape(-1, *([1] * (x.ndim - 1)))

    def network(self, net: nn.Module, x: Tensor, z: Tensor) -> Tensor:
        """The network's d + 1 outputs at (x, z), flattened to [B, d + 1]."""
        return call_network(net, self.network_input(x, z), self.network_time(z)).flatten(1)

    def network_time(self, z: Tensor) -> Tensor:
        """t' = (ln z - ln z_min)/(ln z_max - ln z_min): 0 at z_min, 1 at z_max."""
        low, high = math.log(self.config.z_min), math.log(self.config.z_max)
        return (torch.log(z.clamp_min(1e-10)) - low) / (high - low)

    def perturb(self, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(x, z) = (y + ||eps_x|| (1 + tau)^m u, |eps_z| (1 + tau)^m) (Xu et al. 2022, Alg. 2 and code)."""
        cfg = self.config
        n, d = y.shape
        m = rng.uniform((n,), generator, y.device) * cfg.M
        eps_z = rng.normal((n,), generator, y.device) * cfg.sigma
        if cfg.restrict_M:
            restricted = rng.uniform((n,), generator, y.device) * int(0.7 * cfg.M)
            m = torch.where(eps_z.abs() < 0.005, restricted, m)  # the code's forward_pz tests |eps_z|
        multiplier = (1 + cfg.tau) ** m
        radius = (rng.normal((n, d), generator, y.device) * cfg.sigma).norm(dim=1) * multiplier
        direction = rng.normal((n, d), generator, y.device)
        direction = direction / direction.norm(dim=1, keepdim=True)
        return y + radius[:, None] * direction, eps_z.abs() * multiplier

    def reference_charges(self, batch: Tensor, generator: torch.Generator) -> Tensor:
        """The batch itself plus reference_batch - len(batch) points of the training split."""
        extra = self.config.reference_batch - batch.shape[0]
        if extra <= 0 or self.reference_pool is None:
            return batch
        if self.reference_pool.device != batch.device:
            self.reference_pool = self.reference_pool.to(batch.device)
        index = rng.integers(0, self.reference_pool.shape[0], (extra,), generator, batch.device,
                             per_row=False)  # the same reference points on every process of a data-parallel run
        return torch.cat([batch, self.reference_pool[index].to(batch.dtype)])

    def loss(self, net: nn.Module, batch: Tensor, generator: torch.Generator) -> Tensor:
        """|| f(x, z) - sqrt(d) E^/(||E^|| + gamma) ||^2 averaged over the d + 1 components."""
        y = batch.flatten(1)
        x, z = self.perturb(y, generator)
        with torch.no_grad():
            charges = self.reference_charges(y, generator)
            target = normalized_field(*empirical_field(x, z, charges), self.config.gamma)
        output = self.network(net, x.reshape(batch.shape), z)
        return (output - target).pow(2).mean(1)

    # ------------------------------------------------------------- prior and sampling

    def prior_sample(self, n: int, generator: torch.Generator, device) -> Tensor:
        """x on the z = z_max plane: z_max g/|g'|, radius clipped to [1, upper_norm] (Xu et al. 2022, app. A.4)."""
        g = rng.normal((n, self.dim), generator, device)
        g_z = rng.normal((n,), generator, device).abs()
        radius = (self.config.z_max * g.norm(dim=1) / g_z).clamp(1.0, self.config.upper_norm)
        return (g / g.norm(dim=1, keepdim=True) * radius[:, None]).reshape(n, *self.data_shape)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """log c_d z_max/(||x||^2 + z_max^2)^{(d+1)/2}, c_d = Gamma((d+1)/2)/pi^{(d+1)/2} (radius clipping ignored)."""
        d, z_max = self.dim, self.config.z_max
        log_c = math.lgamma((d + 1) / 2) - (d + 1) / 2 * math.log(math.pi)
        return log_c + math.log(z_max) - (d + 1) / 2 * torch.log(x.flatten(1).pow(2).sum(1) + z_max**2)

    def probability_flow(self, net: nn.Module) -> FlowODE:
        """dx/ds from s = ln z_max to ln z_min (Xu et al. 2022, sec. 4)."""
        return FlowODE(self.drift_fn(net), math.log(self.config.z_max), math.log(self.config.z_min))

    def drift_fn(self, net: nn.Module):
        """dx/ds = -N v_x / sqrt(d) in s = ln z, 1/N blended from the z- and x-part estimates and floored at
        1/(||x|| + R + z + gamma) (the module docstring derives both)."""
        cfg = self.config
        sqrt_d = math.sqrt(self.dim)
        if self.data_radius is None:
            raise RuntimeError("PFGM's drift needs the data radius: call training_data or load_extras first")
        radius = self.data_radius

        def drift(x: Tensor, s: Tensor) -> Tensor:
            z = s.exp()
            output = self.network(net, x, z)
            v_x, v_z = output[:, :-1], output[:, -1]
            weight = field_estimate_weight(z, cfg.z_exp if cfg.gamma > 0 else 0.0)
            inverse_scale = weight * (1 / field_scale(v_x, z, cfg.gamma)) + (1 - weight) * (-v_z / (sqrt_d * z))
            floor = 1 / (x.flatten(1).norm(dim=1) + radius + z + cfg.gamma)
            inverse_scale = smooth_floor(inverse_scale, floor)
            return (-v_x / (sqrt_d * inverse_scale[:, None])).reshape(x.shape)

        return drift

    def log_likelihood(self, net: nn.Module, x: Tensor, generator: torch.Generator,
                       context: EvalContext) -> list[LikelihoodRecord]:
        """The CNF formula in s = ln z from ln z_min to ln z_max with the Cauchy prior (exact divergence in 2-D)."""
        estimator = "exact" if self.dim <= 16 else "hutchinson"
        result = ode_log_likelihood(self.drift_fn(float64_copy(net)), x, self.prior_log_prob, math.log(self.config.z_min),
                                    math.log(self.config.z_max), divergence=estimator, generator=generator,
                                    rtol=context.rtol, atol=context.atol)
        return [LikelihoodRecord("ode_rk45", result.nfe, result.log_prob, f"ode_{estimator}")]


class ExactFieldNetwork(nn.Module):
    """PFGM's oracle: the normalized empirical field of a set of charges at (x, z(t')), the target the network
    regresses onto, in the network's own input convention. The charges are the data (they set the drift's R)."""

    def __init__(self, method: "PFGM", charges: Tensor):
        super().__init__()
        self.method = method
        self.register_buffer("charges", charges.flatten(1).float())
        method.training_data(charges)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        low, high = math.log(self.method.config.z_min), math.log(self.method.config.z_max)
        z = torch.exp(t.float() * (high - low) + low)
        x = x.flatten(1).float() * torch.sqrt(z.pow(2) + 1)[:, None]  # undo PFGM.network_input
        return normalized_field(*empirical_field(x, z, self.charges), self.method.config.gamma)
