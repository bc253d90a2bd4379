import os

import pytest
import torch

torch.set_num_threads(1)  # small networks run faster on one thread while other work shares the 2 cores
# the same for the CLI commands the tests invoke in this process (pipeline.threads would govern the count
# for the rest of the session); the pipeline tests' subprocesses drop it and run the governor
os.environ.setdefault("PIPELINE_NUM_THREADS", "1")

os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

from pipeline.metrics import w2_exact  # noqa: E402
from pipeline.oracle import oracle_mixture  # noqa: E402


@pytest.fixture(scope="session")
def mixture():
    return oracle_mixture()


@pytest.fixture(scope="session")
def mixture_reference(mixture):
    """Held-out mixture samples and the two-sample W2 floor at the same n."""
    generator = torch.Generator().manual_seed(1234)
    reference = mixture.sample(1500, generator).numpy()
    floor = w2_exact(mixture.sample(1500, generator).numpy(), reference)
    return reference, floor
