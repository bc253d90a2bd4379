"""The name table of methods: the only place a method name maps to code.

Adding a method: write one module with a Method subclass (its Config, loss, prior and samplers)
and add one line here.
"""

from __future__ import annotations

from pipeline.methods.base import Method
from pipeline.methods.ddpm import DDPM
from pipeline.methods.flow_matching import FlowMatching
from pipeline.methods.score_sde import VESDE, VPSDE, SubVPSDE
from pipeline.methods.smld import SMLD

METHODS: dict[str, type[Method]] = {
    "ddpm": DDPM,
    "flow_matching": FlowMatching,
    "vp_sde": VPSDE,
    "subvp_sde": SubVPSDE,
    "ve_sde": VESDE,
    "smld": SMLD,
}


def build_method(name: str, config, data_shape: tuple[int, ...]) -> Method:
    return METHODS[name](config, data_shape)
