"""Benchmark of diffusion, score-based and flow generative models.

Time convention everywhere: t in [0, 1], t = 0 is the data end, t = 1 the noise end.
"""

import os

# MKL's strict conditional numerical reproducibility: a matrix product gives the same bits for any thread
# count (without it a Linear on 5-7 or 9-11 rows did not, on this project's machines, at no measured speed
# cost). pipeline.threads changes the count under load and relies on it. MKL reads it at its first call,
# so it is set here, before anything of the package imports torch.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
# cuBLAS's repeatable mode (pipeline.layout.deterministic_cuda), read when CUDA starts; no effect on the CPU
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

__version__ = "0.1.0"
