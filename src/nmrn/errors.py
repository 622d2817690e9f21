"""The package's exceptions.

Every error a user can trigger with bad input derives from :class:`NMRNError`, and from the
built-in class a caller would naturally catch (``ValueError``, ``KeyError``, ...), so that
``except ValueError`` keeps working for code that does not know this package.
"""

from __future__ import annotations


class NMRNError(Exception):
    """Base class of every error raised on purpose by nmrn."""


class DataError(NMRNError, ValueError):
    """A log or an event batch is malformed (names the file, the line and the problem)."""


class UnknownIdError(NMRNError, KeyError):
    """An external user or item id that the model has never seen."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class CheckpointError(NMRNError, ValueError):
    """A checkpoint is missing, not ours, of an unsupported version, or inconsistent."""


class DatasetError(NMRNError, RuntimeError):
    """A dataset could not be fetched or verified."""


class ModelFitError(NMRNError, RuntimeError):
    """Training diverged (NaN/inf loss or parameters)."""


class ConfigError(NMRNError, ValueError):
    """An invalid hyper-parameter or an unknown configuration key."""


class DistributedError(NMRNError, RuntimeError):
    """A collective of data-parallel training failed (a rank exited or timed out)."""
