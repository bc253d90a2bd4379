"""Benchmark of diffusion, score-based and flow generative models.

Time convention everywhere: t in [0, 1], t = 0 is the data end, t = 1 the noise end.
"""

__version__ = "0.1.0"
