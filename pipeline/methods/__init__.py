"""The name table of methods: the only place a method name maps to code.

Adding a method: write one module, named as the method, with a Method subclass (its Config, loss, prior,
capabilities and own samplers) and add one line here. A method's module imports no other method's module
(what several share lives in base, affine, flows, sde, analytic_dpm), so dvc.yaml's run stage depends on
pipeline/methods/<method>.py and the shared modules only: editing one method re-runs its stages alone.
"""

from __future__ import annotations

from pipeline.methods.base import Method
from pipeline.methods.ddpm import DDPM
from pipeline.methods.flow_matching import FlowMatching
from pipeline.methods.ot_flow_matching import OTFlowMatching
from pipeline.methods.pfgm import PFGM
from pipeline.methods.rectified_flow import RectifiedFlow
from pipeline.methods.subvp_sde import SubVPSDE
from pipeline.methods.ve_sde import VESDE
from pipeline.methods.vp_sde import VPSDE
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



def reflowed_name(source: str) -> str:
    """The name a reflow round of a method is evaluated under (rectified_flow -> rectified_flow_2, Liu et al.'s
    2-rectified flow); dvc.yaml's reflow stage writes its files under the same name."""
    return f"{source}_2"


def build_method(name: str, config, data_shape: tuple[int, ...], reflowed: bool = False) -> Method:
    """The method of a name (a key of METHODS); reflowed: the model a reflow round made from it, the same class
    with the capabilities it keeps (Method.reflowed_capabilities)."""
    method = METHODS[name](config, data_shape)
    return method.restrict(METHODS[name].reflowed_capabilities) if reflowed else method
