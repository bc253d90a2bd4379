"""Rectified flow and reflow (Liu, Gong, Liu 2023; methods.md 2.11).

1-rectified flow is flow matching on the straight path X_tau = tau X1 + (1 - tau) X0 with
sigma_min = 0, regressing the velocity X1 - X0 (unified time t = 1 - tau, so the network learns
-(X1 - X0); pipeline.methods.flows). It is sampled with Euler at a few steps (1, 2, 5, 10
by default; one step is one-step generation) and with adaptive RK45.

Reflow (k -> k + 1): draw Z0 ~ N(0, I), solve the k-th flow's ODE accurately (RK45) to get
Z1 = ODE_k(Z0), keep the coupled pairs (Z0, Z1), and train the next flow on them with the same
loss and uniform tau, initialised from the k-th flow's weights (Liu et al. 2023, Alg. 1; their code).
Pairing fresh noise with data points instead would retrain the 1-rectified flow (methods.md 6.9).

Pipeline design of the second round (`rectified_flow_2`), the method protocol's reflow hook
(Method.ReflowConfig, coupled_pairs, pair_loss, reflowed_capabilities):
- It is not a key of params.yaml's `methods` (every key there gets the generic run stage, which
  cannot depend on another method's model). The top-level params section `reflow` holds, under the
  source's name (`reflow.rectified_flow`), its ReflowSettings (number of pairs, solver tolerance,
  training overrides on top of rectified_flow's training settings); the round is evaluated as
  pipeline.methods.reflowed_name("rectified_flow") = rectified_flow_2. Its class and budgets are
  rectified_flow's, so both rounds are compared step for step. Keeping the reflow settings out of
  methods.rectified_flow keeps round one cached when they change; an empty `reflow: {}` removes the
  stages below.
- The DVC matrix stage `reflow@rectified_flow-<dataset>-<seed>` (`pipeline run --method rectified_flow_2`,
  which calls pipeline.stages.run_reflow for a derived method) depends on models/rectified_flow/<dataset>/seed<k>.pt
  and params methods.rectified_flow and reflow.rectified_flow (dvc.yaml names no method). It writes the pairs
  (reflow/rectified_flow_2/<dataset>/seed<k>.npz) and models/rectified_flow_2/<dataset>/seed<k>.pt,
  trained by the one training loop (pipeline.training.train) from the first round's EMA weights,
  then samples and scores them as any method; the report lists it right after rectified_flow.

Both flows (and OT flow matching) also report, under sampler `ode_rk45`, the straightness
S = int_0^1 E||(Z1 - Z0) - v(Z_tau, tau)||^2 dtau along their own ODE trajectories and the transport
cost E||Z1 - Z0||^2 (methods.md 2.11 and 5.5).
"""

from __future__ import annotations

import torch
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from pipeline.schema import Strict, TrainOverrides
from pipeline.methods.affine import device_of, flow_path_metrics
from pipeline.methods.base import EvalContext
from pipeline.methods.flows import LinearFlow, LinearFlowConfig, coupled_regression_loss
from pipeline.nets import float64_copy
from pipeline.solvers import ode_rk45


class ImageReflowSettings(Strict):
    """Pair generation on image data sets, where every pair is an ODE solve through the U-Net."""

    n_pairs: PositiveInt = 1000
    solve_batch: PositiveInt = 500


class ReflowSettings(Strict):
    """A reflow round: pair generation and training overrides (on top of the source flow's training)."""

    n_pairs: PositiveInt = 20000
    #: tolerance of the RK45 solve Z1 = ODE_1(Z0); pairs must follow the first flow accurately
    rtol: float = Field(1e-5, gt=0, lt=1)
    atol: float = Field(1e-5, gt=0, lt=1)
    #: noise draws solved at once while generating pairs
    solve_batch: PositiveInt = 10000
    #: n_pairs and solve_batch on image data sets (20000 pairs of 8x8 digits took over 5 minutes on 2 cores)
    image: ImageReflowSettings = ImageReflowSettings()
    train: TrainOverrides = TrainOverrides()

    def pair_counts(self, kind: str) -> tuple[int, int]:
        """(n_pairs, solve_batch) for a data set of this kind ("toy" or "image")."""
        source = self.image if kind == "image" else self
        return source.n_pairs, source.solve_batch


class RectifiedFlowConfig(LinearFlowConfig):
    #: rectified flow is the straight path without a minimum width (Liu et al. 2023)
    sigma_min: float = Field(0.0, ge=0, le=0)
    budgets: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 5, 10], min_length=1)


class RectifiedFlow(LinearFlow):
    Config = RectifiedFlowConfig
    #: settings of a flow derived from this one by reflow (params.yaml's `reflow` section)
    ReflowConfig = ReflowSettings
    #: a reflowed flow couples its noise with its data (the pairs (Z0, Z1)), so q(x_s | x_r, x0) is no longer
    #: the path's Gaussian posterior: it keeps the ODE samplers and DDIM with eta = 0, not the stochastic ones
    reflowed_capabilities = frozenset({"ode", "affine_ode"})

    def coupled_pairs(self, net: nn.Module, n: int, generator: torch.Generator, solve_batch: int,
                      rtol: float = 1e-5, atol: float = 1e-5) -> tuple[Tensor, Tensor]:
        """(Z0, Z1): n prior draws and their images under this flow's ODE, solved by RK45 from t = 1 to 0 in
        float64 (pipeline.nets.float64_copy)."""
        device = device_of(net)
        velocity = self.velocity_fn(float64_copy(net))
        noise, data = [], []
        for offset in range(0, n, solve_batch):
            z0 = self.prior_sample(min(solve_batch, n - offset), generator, device)
            with torch.no_grad():
                z1 = ode_rk45(velocity, z0.double(), 1.0, 0.0, rtol=rtol, atol=atol).x.to(z0.dtype)
            noise.append(z0)
            data.append(z1)
        return torch.cat(noise), torch.cat(data)

    def pair_loss(self, net: nn.Module, pairs: Tensor, generator: torch.Generator) -> Tensor:
        """The rectified-flow loss on coupled pairs [B, 2, ...] = (Z0, Z1) (Liu et al. 2023, eq. 1)."""
        return coupled_regression_loss(self, net, pairs[:, 1], pairs[:, 0], generator)

    def trajectory_metrics(self, net: nn.Module, n: int, generator: torch.Generator,
                           context: EvalContext) -> list[tuple[str, int, str, float]]:
        """Straightness and transport cost of the learned flow (methods.md 2.11, 5.5)."""
        return flow_path_metrics(self, net, n, generator, context)
