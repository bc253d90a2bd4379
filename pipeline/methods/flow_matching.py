"""Conditional flow matching on the linear (conditional OT) path (Lipman et al. 2023).

Native FM time tau = 1 - t runs from noise (tau = 0) to data (tau = 1) with x_tau = tau x1 +
(1 - (1 - sigma_min) tau) x0. In unified time this is pipeline.paths.LinearPath and the network
regresses the unified velocity dx_t/dt = -x_data + (1 - sigma_min) eps, i.e. minus the native
target x1 - (1 - sigma_min) x0 (Lipman et al. 2023, eq. 23).
"""

from __future__ import annotations

from pipeline.methods.flows import LinearFlow, LinearFlowConfig


class FlowMatchingConfig(LinearFlowConfig):
    """Flow matching's section: the linear path's sigma_min and the shared keys."""


class FlowMatching(LinearFlow):
    """Conditional flow matching: data and noise drawn independently (the shared samplers all apply)."""

    Config = FlowMatchingConfig
