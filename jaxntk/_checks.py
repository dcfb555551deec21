"""Argument checks shared by the modules: one wording for every bad-input error."""

from __future__ import annotations

import numbers


def check_int(
    name: str, value: object, low: int, high: int | None = None, high_name: str | None = None
) -> None:
    """TypeError unless `value` is an int (not a bool); ValueError unless low ≤ value ≤ high."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        if high is None:
            bound = f"≥ {low}"
        else:
            bound = f"between {low} and {high}" + (f" ({high_name})" if high_name else "")
        raise ValueError(f"{name} must be {bound}, got {value}")
