"""The name table of methods: the only place a method name maps to code.

Adding a method: write one module with a Method subclass (its Config, loss, prior and samplers)
and add one line here.
"""

from __future__ import annotations

from pipeline.methods.base import Method
from pipeline.methods.ddpm import DDPM
from pipeline.methods.flow_matching import FlowMatching
from pipeline.methods.ot_flow_matching import OTFlowMatching
from pipeline.methods.pfgm import PFGM
from pipeline.methods.rectified_flow import RectifiedFlow
from pipeline.methods.score_sde import VESDE, VPSDE, SubVPSDE
from pipeline.methods.smld import SMLD

METHODS: dict[str, type[Method]] = {
    "ddpm": DDPM,
    "flow_matching": FlowMatching,
    "ot_flow_matching": OTFlowMatching,
    "rectified_flow": RectifiedFlow,
    "pfgm": PFGM,
    "vp_sde": VPSDE,
    "subvp_sde": SubVPSDE,
    "ve_sde": VESDE,
    "smld": SMLD,
}

#: methods whose model a later stage makes from another method's model: name -> source method.
#: They are not keys of params.yaml's `methods`: they share the source's section and class and are
#: sampled, evaluated and reported like every method (rectified flow's reflow, pipeline.stages.run_reflow).
DERIVED_METHODS: dict[str, str] = {
    "rectified_flow_2": "rectified_flow",
}


def build_method(name: str, config, data_shape: tuple[int, ...]) -> Method:
    """The method of a name; a derived method is its source's class with the capabilities it keeps."""
    if name not in DERIVED_METHODS:
        return METHODS[name](config, data_shape)
    source = METHODS[DERIVED_METHODS[name]]
    return source(config, data_shape).restrict(getattr(source, "derived_capabilities", source.capabilities))
