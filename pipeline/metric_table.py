"""The table of metrics: one entry per metric and data kind, read by the evaluation (which scorers run on
which data), the report (its columns, the direction of each, its glossary), the convergence section and
the tests. Adding a metric is one entry here and, for a new scorer, one function in pipeline.evaluation.

Kinds: `toy` (2-D sets) and `image`. Sources: `samples` (scored on generated samples against held-out
data, by the named scorer), `likelihood` (the method's log-likelihood of held-out data), `trajectory`
(the ODE paths of a flow), `protocol` (a setting beside a number), `features` (the image classifier the
feature metrics use). A metric with `lower_is_better` None is a count or a setting, not a score.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str
    source: str
    #: None for counts and settings (the protocol beside a number)
    lower_is_better: bool | None
    #: how it is computed (the report's glossary)
    computed: str
    #: the scorer of pipeline.evaluation that computes it (samples only)
    scorer: str | None = None
    #: the companion value of its own sampling error, where the evaluation estimates one
    error: str | None = None
    #: the summary table it is a column of: headline, modes, path (or none)
    table: str | None = None
    #: against training steps in the convergence section; `rule`: the budget rule waits for it too
    convergence: str | None = None
    #: the score the summary ranks methods by on data of this kind (one per kind)
    ranks: bool = False
    #: grid.md tabulates it against the NFE, per data set
    against_nfe: bool = False


METRICS: tuple[Metric, ...] = (
    Metric("w2", "toy", "samples", True, "exact 2-Wasserstein distance between the samples and as many held-out "
           "points (POT's emd2, squared Euclidean cost)", scorer="w2", table="headline", convergence="rule", ranks=True,
           against_nfe=True),
    Metric("w2_n", "toy", "samples", None, "points in each W2 set", scorer="w2"),
    Metric("precision", "toy", "samples", False, "share of samples inside the k-NN balls of held-out points "
           "(Kynkaanniemi et al. 2019, the prdc package)", scorer="prdc", table="modes"),
    Metric("recall", "toy", "samples", False, "share of held-out points inside the k-NN balls of the samples",
           scorer="prdc", table="modes"),
    Metric("density", "toy", "samples", False, "mean count of held-out k-NN balls holding a sample, over k "
           "(Naeem et al. 2020)", scorer="prdc", table="modes"),
    Metric("coverage", "toy", "samples", False, "share of held-out points whose k-NN ball holds a sample "
           "(Naeem et al. 2020)", scorer="prdc", table="modes", convergence="rule"),
    Metric("modes", "toy", "samples", False, "mixture components holding at least half their expected share of "
           "samples within 3 standard deviations (sets with a known mixture law)", scorer="structure",
           table="modes", convergence="rule"),
    Metric("on_support", "toy", "samples", False, "share of samples on the law's support (the checkerboard's "
           "occupied squares)", scorer="structure", table="modes", convergence="rule"),
    Metric("nll", "toy", "likelihood", True, "negative log-likelihood of held-out points in nats (ODE, ELBO or "
           "the method's own estimator; the sampler column names it)", error="nll_se", table="headline",
           convergence="curve", against_nfe=True),
    Metric("nll_se", "toy", "likelihood", None, "standard error of the mean NLL over the held-out points"),
    Metric("nll_n", "toy", "likelihood", None, "held-out points in the NLL"),
    Metric("fid", "image", "samples", True, "Frechet distance of feature statistics (torch-fidelity) against "
           "the held-out images", scorer="fidelity", error="fid_se", table="headline", convergence="rule",
           ranks=True, against_nfe=True),
    Metric("fid_se", "image", "samples", None, "standard error of FID over the generated images: delete-a-group "
           "jackknife, the held-out statistics fixed", scorer="fidelity"),
    Metric("fid_n", "image", "samples", None, "images in each FID set", scorer="fidelity"),
    Metric("kid", "image", "samples", True, "kernel inception distance (torch-fidelity, subsets)",
           scorer="fidelity", error="kid_sd", table="headline", convergence="curve"),
    Metric("kid_sd", "image", "samples", None, "spread of KID over its subsets", scorer="fidelity"),
    Metric("precision", "image", "samples", False, "improved precision in feature space (torch-fidelity)",
           scorer="fidelity", table="headline"),
    Metric("recall", "image", "samples", False, "improved recall in feature space (torch-fidelity)",
           scorer="fidelity", table="headline"),
    Metric("nll_bpd", "image", "likelihood", True, "bits per dimension of the dequantized held-out images",
           error="nll_bpd_se", table="headline", convergence="curve"),
    Metric("nll_bpd_se", "image", "likelihood", None, "standard error of the mean bits/dim"),
    Metric("sliced_w2", "image", "samples", True, "sliced 2-Wasserstein distance in pixel space over random "
           "directions (POT)", scorer="sliced_w2", table="headline"),
    Metric("sliced_w2_projections", "image", "samples", None, "random directions of the sliced W2",
           scorer="sliced_w2"),
    Metric("nll", "image", "likelihood", True, "negative log-likelihood in nats of the dequantized images",
           error="nll_se"),
    Metric("nll_se", "image", "likelihood", None, "standard error of the mean NLL"),
    Metric("nll_n", "image", "likelihood", None, "held-out images in the NLL"),
    Metric("nll_probes", "image", "likelihood", None, "Hutchinson probes per image of the ODE divergence"),
    *(Metric("straightness", kind, "trajectory", True, "E int ||(Z1 - Z0) - dZ_t/dt||^2 dt of the ODE paths "
             "(Liu et al. 2023, def. 3.4; the squared norm sums over every pixel on images)", table="path")
      for kind in ("toy", "image")),
    *(Metric("transport_cost", kind, "trajectory", True, "E ||Z1 - Z0||^2 of the ODE paths", table="path")
      for kind in ("toy", "image")),
    *(Metric("clip_x0", kind, "protocol", None, "1 where the sampler clips x0_hat to [-1, 1] (DDPM's samplers "
             "on images)") for kind in ("toy", "image")),
    *(Metric("clip_sigma", kind, "protocol", None, "1 where Analytic-DPM's last variance is clipped")
      for kind in ("toy", "image")),
    *(Metric("checkpoint_step", kind, "protocol", None, "training steps of the EMA weights evaluated")
      for kind in ("toy", "image")),
    Metric("test_accuracy", "image", "features", False, "accuracy of the feature classifier on the test split"),
    Metric("train_accuracy", "image", "features", False, "accuracy of the feature classifier on its training split"),
)

_BY_KEY = {(m.name, m.kind): m for m in METRICS}


def metric(name: str, kind: str) -> Metric:
    return _BY_KEY[(name, kind)]


def known(name: str, kind: str) -> bool:
    """An entry of the table, or `<entry>_sd`: a data floor's spread over its reference chunks."""
    return (name, kind) in _BY_KEY or (name.endswith("_sd") and (name[: -len("_sd")], kind) in _BY_KEY)


def select(kind: str | None = None, **fields) -> list[Metric]:
    """The table's entries of a kind (None: both) whose fields equal `fields`, in table order."""
    return [m for m in METRICS if (kind is None or m.kind == kind)
            and all(getattr(m, key) == value for key, value in fields.items())]


def ranked(kind: str) -> Metric:
    """The metric the summary ranks methods by on data of `kind`."""
    (entry,) = select(kind, ranks=True)
    return entry


def directions(kind: str, **fields) -> dict[str, bool]:
    """{name: lower_is_better} of the selected scores (counts and settings left out), in table order."""
    return {m.name: m.lower_is_better for m in select(kind, **fields) if m.lower_is_better is not None}
