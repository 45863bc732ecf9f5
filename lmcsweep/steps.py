"""Durations of training written with their unit: "2000it" (iterations) or "2ep" (epochs).

A Step keeps the unit the user wrote; it becomes a number of iterations only once the
number of iterations per epoch (data set size // batch size) is known.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PATTERN = re.compile(r"^\s*(\d+)\s*(it|ep)\s*$")


@dataclass(frozen=True, order=True)
class Step:
    """A duration: `value` iterations (unit "it") or `value` epochs (unit "ep")."""

    value: int
    unit: str = "it"

    def __post_init__(self) -> None:
        if self.unit not in ("it", "ep"):
            raise ValueError(f"unit must be 'it' or 'ep', not {self.unit!r}")
        if self.value < 0:
            raise ValueError(f"a duration cannot be negative ({self.value}{self.unit})")

    def to_iterations(self, iterations_per_epoch: int) -> int:
        """The number of iterations this duration stands for."""
        if self.unit == "it":
            return self.value
        if iterations_per_epoch <= 0:
            raise ValueError("iterations_per_epoch must be positive")
        return self.value * iterations_per_epoch

    def __str__(self) -> str:
        return f"{self.value}{self.unit}"


def parse_step(text: str | int | Step) -> Step:
    """Parse "2000it", "2ep" or a bare non-negative integer (iterations).

    Raises ValueError with a message fit to show the user.
    """
    if isinstance(text, Step):
        return text
    if isinstance(text, bool):
        raise ValueError(f"expected a duration like '2000it' or '2ep', got {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"a duration cannot be negative ({text})")
        return Step(text, "it")
    if isinstance(text, str):
        match = _PATTERN.match(text)
        if match:
            return Step(int(match.group(1)), match.group(2))
        if re.match(r"^\s*-\d+\s*(it|ep)?\s*$", text):
            raise ValueError(f"a duration cannot be negative ({text.strip()!r})")
    raise ValueError(f"expected a duration like '2000it' or '2ep', got {text!r}")
