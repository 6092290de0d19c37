"""Byte counts and durations: parsing and formatting (the bottom of the house).

Pure Python; imports nothing from the project, so every layer may use it (the engine's
planner for memory budgets, the store's cache for its size limit, the CLI and pages for
messages).

* :func:`parse_bytes` -- ``1000000``, ``"1e9"``, ``"4GB"``, ``"4 GiB"``, ``"512M"`` -> bytes.
  Suffixes without ``i`` are decimal (``GB`` = 10⁹), with ``i`` binary (``GiB`` = 2³⁰).
* :func:`format_bytes` -- ``2.4 GB`` (decimal units).
* :func:`format_seconds` -- ``0.4 s``, ``12 s``, ``3.5 min``, ``2.1 h``.
"""
from __future__ import annotations

import math
import re

__all__ = ["format_bytes", "format_seconds", "parse_bytes"]

_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_bytes(value: int | float | str) -> int:
    """Parse a byte count: ``1000000``, ``"1e9"``, ``"4GB"``, ``"4 GiB"``, ``"512M"``.

    Suffixes without ``i`` are decimal (``GB`` = 10⁹), with ``i`` binary (``GiB`` = 2³⁰).
    """
    if isinstance(value, bool):
        raise ValueError(f"not a byte count: {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"memory budget must be a positive number of bytes, got {value!r}")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]i?)?[bB]?\s*", str(value))
    if not m:
        raise ValueError(f"cannot parse a byte count from {value!r} (examples: 4GB, 512MiB, 1e9)")
    n = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    if not math.isfinite(n):
        raise ValueError(f"byte count too large: {value!r}")
    if n <= 0:
        raise ValueError(f"memory budget must be positive, got {value!r}")
    return int(n)


def format_bytes(n: float) -> str:
    """``2.4 GB`` style (decimal units)."""
    n = float(n)
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= f:
            return f"{n / f:.3g} {unit}"
    return f"{int(n)} B"


def format_seconds(s: float) -> str:
    """``0.4 s``, ``12 s``, ``3.5 min``, ``2.1 h``."""
    s = float(s)
    if s < 10:
        return f"{s:.2g} s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"
