"""The Method protocol: a method contributes only its math.

A method is its training loss (per-sample, on a batch of training examples), its prior, its
named samplers and its likelihood. The training loop, the sampling entry point, the checkpoint
format and the DVC stages are shared and know no method names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from pipeline import grids, rng, threads
from pipeline.schema import MethodConfig
from pipeline.nets import build_network
from pipeline.samplers import SamplerSpec, applicable
from pipeline.solvers import SolverResult


@dataclass(frozen=True)
class LikelihoodRecord:
    """Per-sample log-likelihood (nats) under the reverse model a sampler defines, at an NFE."""

    sampler: str
    nfe: float
    log_prob: Tensor
    estimator: str  # "elbo" | "ode_exact" | "ode_hutchinson"


@dataclass(frozen=True)
class EvalContext:
    """Evaluation settings a likelihood may use."""

    rtol: float = 1e-5
    atol: float = 1e-5


class Method(ABC):
    """Base class: subclasses set `Config`, `samplers` and implement `loss` and `prior_sample`."""

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    #: the samplers only this method runs; the shared ones come from its capabilities (pipeline.samplers)
    samplers: ClassVar[dict[str, SamplerSpec]] = {}
    #: what the method offers the shared samplers (pipeline.samplers lists them and what each needs)
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: whether a row's loss depends on the other rows of its batch (a minibatch coupling or a field of the
    #: batch): under data-parallel training each process then couples only its own rows (pipeline.training)
    couples_batch_rows: ClassVar[bool] = False
    #: output units the network needs beyond the data's size (PFGM's augmented coordinate)
    extra_outputs: ClassVar[int] = 0
    #: the hook of a derived method: the settings of a reflow round of this method (params.yaml's
    #: `reflow.<method>`, evaluated as pipeline.methods.reflowed_name(method)); None: it has none. A method
    #: with one implements coupled_pairs and pair_loss, and names the capabilities its reflowed model keeps.
    ReflowConfig: ClassVar[type | None] = None
    reflowed_capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: MethodConfig, data_shape: tuple[int, ...]):
        self.config = config
        self.data_shape = tuple(data_shape)
        self.dim = int(torch.tensor(self.data_shape).prod())
        self.restrict(type(self).capabilities)

    def restrict(self, capabilities: frozenset[str]) -> "Method":
        """Keep only these capabilities (a model derived from this class's, e.g. a reflowed flow) and the
        samplers they allow: the shared ones, then the class's own."""
        self.capabilities = frozenset(capabilities)
        self.samplers = self.sampler_table(self.config, self.capabilities)
        return self

    @classmethod
    def sampler_table(cls, config: MethodConfig, capabilities: frozenset[str] | None = None) -> dict[str, SamplerSpec]:
        """Every sampler a configuration defines, keyed by its results.csv name: the shared samplers the
        capabilities allow (DDIM once per eta x skipping of the config), then the class's own."""
        capabilities = cls.capabilities if capabilities is None else capabilities
        shared = applicable(capabilities, getattr(config, "ddim_etas", ()), getattr(config, "ddim_skips", ()))
        return {**shared, **cls.samplers}

    @classmethod
    def sampler_groups(cls, config: MethodConfig) -> dict[str, list[str]]:
        """Names that select several samplers at once in `samplers:` (`ddim`: all its variants)."""
        names = [name for name in cls.sampler_table(config) if name.startswith("ddim-")]
        return {"ddim": names} if names else {}

    @classmethod
    def selected_samplers(cls, config: MethodConfig) -> list[str]:
        """The sampler names `config.samplers` selects (all by default); ValueError on an unknown name."""
        table = cls.sampler_table(config)
        if not config.samplers:
            return list(table)
        groups = cls.sampler_groups(config)
        names: list[str] = []
        for name in config.samplers:
            if name not in groups and name not in table:
                raise ValueError(f"unknown sampler {name!r}; accepted: {', '.join([*table, *groups])}")
            names.extend(groups.get(name, [name]))
        return list(dict.fromkeys(names))

    @abstractmethod
    def loss(self, net: nn.Module, batch: Tensor, generator: torch.Generator) -> Tensor:
        """Per-sample training loss [B] on a batch of training examples."""

    @abstractmethod
    def prior_sample(self, n: int, generator: torch.Generator, device: torch.device | str) -> Tensor:
        """n draws from the distribution sampling starts at."""

    def make_network(self, network_section) -> nn.Module:
        """The network this method trains, from params.yaml's `network` section (the data kind's net)."""
        return build_network(self.data_shape, network_section, extra_outputs=self.extra_outputs)

    def max_budget(self) -> int | None:
        return None

    def sampler_runs(self) -> list[tuple[str, int | None]]:
        """(sampler, budget) pairs this method runs: budget None for adaptive samplers."""
        names = [name for name in self.selected_samplers(self.config) if name in self.samplers]
        cap = self.max_budget()
        runs: list[tuple[str, int | None]] = []
        for name in names:
            if not self.samplers[name].uses_budget:
                runs.append((name, None))
                continue
            for budget in self.config.budgets:
                if cap is None or budget <= cap:
                    runs.append((name, budget))
        return runs

    def sample(self, net: nn.Module, sampler: str, budget: int | None, n: int, generator: rng.Source,
               device: torch.device | str = "cpu") -> SolverResult:
        """The one sampling entry point: prior draw, then the named sampler, every draw from `generator` (the
        stages pass per-sample streams, pipeline.rng.SampleStreams, of n samples)."""
        x_init = self.prior_sample(n, generator, device)
        with torch.no_grad():
            return self.samplers[sampler].fn(self, net, x_init, budget, generator)

    def fits_budget(self, sampler: str, budget: int | None, device: torch.device | str = "cpu") -> bool:
        """Whether a fixed-step sampler can spend at most `budget` NFE (pipeline.grids.steps_within): a dry run
        on one row, on the device the stage samples on, that stops at the first network call, by which point
        the sampler has built its grid. The model's extras must be loaded (e.g. Analytic-DPM's table)."""
        if budget is None:
            return True
        try:
            self.sample(_Probe().to(device), sampler, budget, 1, torch.Generator(device=device).manual_seed(0),
                        device)
        except grids.BudgetTooSmall:
            return False
        except _ReachedTheNetwork:
            return True
        return True

    def log_likelihood(self, net: nn.Module, x: Tensor, generator: torch.Generator,
                       context: EvalContext) -> list[LikelihoodRecord]:
        """Likelihoods this method defines (none by default)."""
        return []

    def protocol(self, sampler: str) -> dict[str, float]:
        """Settings that change a sampler's or bound's numbers, recorded beside them as metrics (none by default)."""
        return {}

    def trajectory_metrics(self, net: nn.Module, n: int, generator: torch.Generator,
                           context: EvalContext) -> list[tuple[str, int, str, float]]:
        """(sampler, nfe, metric, value) rows measured along sampling paths, e.g. straightness (none by default)."""
        return []

    def after_training(self, net: nn.Module, train: Tensor, generator: torch.Generator) -> dict:
        """Quantities computed once from the trained network, stored in the model file (none by default)."""
        return {}

    def load_extras(self, extras: dict) -> None:
        """Restore what `after_training` computed; the stages call it when they load a model."""

    def coupled_pairs(self, net: nn.Module, n: int, generator: torch.Generator, solve_batch: int,
                      rtol: float, atol: float) -> tuple[Tensor, Tensor]:
        """(noise, data) pairs a reflow round trains on (methods with a ReflowConfig)."""
        raise NotImplementedError(f"{type(self).__name__} has no reflow")

    def pair_loss(self, net: nn.Module, pairs: Tensor, generator: torch.Generator) -> Tensor:
        """Per-sample loss on coupled pairs [B, 2, ...] (methods with a ReflowConfig)."""
        raise NotImplementedError(f"{type(self).__name__} has no reflow")

    def training_data(self, train: Tensor, net: nn.Module | None = None) -> Tensor:
        """The examples the loss is trained on (the data's training split by default)."""
        return train


def call_network(net: nn.Module, x: Tensor, t: Tensor) -> Tensor:
    """Evaluate net in its own dtype and return the caller's dtype (solvers may work in float64)."""
    threads.poll()
    first = next(net.parameters(), None)
    dtype = x.dtype if first is None else first.dtype
    return net(x.to(dtype), t.to(dtype)).to(x.dtype)


class _ReachedTheNetwork(Exception):
    pass


class _Probe(nn.Module):
    """A network that stops a sampler at its first call (Method.fits_budget)."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # its device is the stage's

    def forward(self, *args, **kwargs):
        raise _ReachedTheNetwork
