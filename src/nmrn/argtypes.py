"""argparse ``type=`` converters shared by the command-line entry points.

Each raises :class:`argparse.ArgumentTypeError` with a message that says what was expected and
what was given, which argparse turns into ``nmrn <command>: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def int_at_least(low: int) -> Callable[[str], int]:
    """A converter for whole numbers >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a number >= {low}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
"""A whole number >= 1."""


def port(text: str) -> int:
    """A TCP port: a whole number in 0..65535 (0: any free port)."""
    value = int_at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535, got {value}")
    return value


def fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value}")
    return value


def _seconds(text: str, *, zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (0 <= value if zero else 0 < value) or not value < math.inf:
        bound = ">= 0" if zero else "> 0"
        raise argparse.ArgumentTypeError(f"expected a finite number {bound}, got {value}")
    return value


def non_negative_number(text: str) -> float:
    """A finite number >= 0 (a rate, say)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value}")
    return value


def positive_seconds(text: str) -> float:
    """A finite number of seconds > 0."""
    return _seconds(text, zero=False)


def non_negative_seconds(text: str) -> float:
    """A finite number of seconds >= 0 (0 usually means "never")."""
    return _seconds(text, zero=True)
