"""The user-fixable errors: the CLI turns each into one line on stderr (pipeline.cli), the rest is a bug.

A leaf module, so the CLI catches them without importing the stages that raise them.
"""


class ParamsError(Exception):
    """A user mistake in params.yaml: one line naming the key path and what is accepted."""


class DataError(Exception):
    """A missing or unusable data file; the message says what to do."""


class StageError(Exception):
    """A user-fixable problem in a stage's inputs; the message says what to do."""


class CheckpointError(Exception):
    """A checkpoint that is truncated or was made by other parameters."""


class TrainingDiverged(Exception):
    """A non-finite loss or gradient; the last good checkpoint is kept."""


class TrackingError(Exception):
    """The tracking server or store cannot be used; the message says what to do."""
