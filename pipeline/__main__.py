"""`python -m pipeline`: the `pipeline` command (torchrun starts its processes this way: `-m pipeline`)."""

from pipeline.cli import entry

entry()
