"""Config schemas: each field of a family's ``Config`` dataclass declares its type and range.

A family's ``Config`` is a dataclass whose every field has a default. The field's *type*
is the type of its default (``int``, ``float``, ``bool``, ``str``); its *range*, when it
has one, is declared on the field with :func:`param`, in the dataclass itself::

    @dataclass
    class MyConfig:
        width: int = param(512, lo=1, hi=2**20, size=True, doc="hidden units")
        lr: float = param(1e-3, lo=0.0, lo_open=True, hi=10.0, doc="learning rate")
        seed: int = param(0, lo=0, hi=2**63 - 1)

:func:`check_config` enforces the schema on a dict (a manifest's config, a config file, CLI
options) or on a Config instance, before anything is built from it. Every refusal is one
line naming the field (``ValueError``):

* ``int`` fields take integers only (not ``True``/``False``, not ``29.5`` or ``1e9``), and
  always within ``[-2**63, 2**63)`` (what torch and numpy can hold);
* ``float`` fields take integers or floats, finite (no NaN, no infinity);
* ``bool`` fields take ``true``/``false`` only; ``str`` fields strings only;
* declared ranges are inclusive unless ``lo_open``/``hi_open``; ``choices`` lists the
  allowed values.

``size=True`` marks the fields that scale a model or its data; a family's
``memory_estimate`` (checked by :meth:`entk_core.families.base.ModelFamily.check_config`)
names them when a config would not fit in memory.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["FieldRule", "param", "rule_of", "check_value", "check_config", "size_fields", "INT64"]

INT64 = (-(2**63), 2**63 - 1)
"""Bounds of every integer field (what torch and numpy index with)."""

_KEY = "entk_schema"


@dataclass(frozen=True)
class FieldRule:
    """The declared range of one config field (see the module docstring)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple | None = None
    size: bool = False
    doc: str = ""

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(repr, self.choices))
        lo = "" if self.lo is None else f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        hi = "" if self.hi is None else f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return " and ".join(x for x in (lo, hi) if x) or "any value"


def _num(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() and abs(x) >= 1e4 else f"{x:g}"


def param(default: Any, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
          hi_open: bool = False, choices: tuple | None = None, size: bool = False, doc: str = "") -> Any:
    """A dataclass field with ``default`` and a declared range (module docstring)."""
    rule = FieldRule(lo, hi, lo_open, hi_open, tuple(choices) if choices is not None else None, size, doc)
    return dataclasses.field(default=default, metadata={_KEY: rule})


def rule_of(f: dataclasses.Field) -> FieldRule:
    """The field's declared rule (an empty one when it declares none)."""
    return f.metadata.get(_KEY) or FieldRule()


def size_fields(config_cls: type) -> list[str]:
    """Names of the fields declared with ``size=True``."""
    return [f.name for f in dataclasses.fields(config_cls) if rule_of(f).size]


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def check_value(name: str, value: Any, default: Any, rule: FieldRule) -> Any:
    """``value`` checked (and, for a float field given an integer, converted) against the
    type of ``default`` and ``rule``; ``ValueError`` naming ``name`` otherwise."""
    kind = type(default)
    if default is None:
        return value  # an untyped optional field: the family checks it
    if kind is bool:
        if type(value) is not bool:
            raise ValueError(f"config field '{name}' must be true or false, got {_show(value)}")
        return value
    if kind is int:
        if type(value) is not int:
            what = type(value).__name__
            raise ValueError(f"config field '{name}' must be an integer, got {_show(value)} ({what})")
        if not INT64[0] <= value <= INT64[1]:
            raise ValueError(f"config field '{name}' is out of range for a 64-bit integer: {_show(value)}")
    elif kind is float:
        if type(value) is bool or not isinstance(value, (int, float)):
            raise ValueError(f"config field '{name}' must be a number, got {_show(value)} ({type(value).__name__})")
        try:
            value = float(value)
        except OverflowError:
            raise ValueError(f"config field '{name}' is too large: {_show(value)}") from None
        if not math.isfinite(value):
            raise ValueError(f"config field '{name}' must be a finite number, got {value}")
    elif kind is str:
        if type(value) is not str:
            raise ValueError(f"config field '{name}' must be a string, got {_show(value)} ({type(value).__name__})")
    elif not isinstance(value, kind):
        raise ValueError(f"config field '{name}' must be a {kind.__name__}, got {_show(value)}")
    if rule.choices is not None and value not in rule.choices:
        raise ValueError(f"config field '{name}' must be {rule.describe()}, got {_show(value)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low = rule.lo is not None and (value <= rule.lo if rule.lo_open else value < rule.lo)
        high = rule.hi is not None and (value >= rule.hi if rule.hi_open else value > rule.hi)
        if low or high:
            raise ValueError(f"config field '{name}' must be {rule.describe()}, got {_show(value)}")
    return value


def check_config(config_cls: type, values: dict[str, Any] | Any, *, family: str = "") -> Any:
    """A ``config_cls`` instance from ``values`` (a dict of some fields, the others keep their
    defaults; or an instance), every field checked (module docstring). Unknown keys are
    refused. ``ValueError`` (one line naming the field) on the first fault."""
    label = f"{family} " if family else ""
    if dataclasses.is_dataclass(values) and not isinstance(values, type):
        values = {f.name: getattr(values, f.name) for f in dataclasses.fields(values)}
    if not isinstance(values, dict):
        raise ValueError(f"a {label}config must be a JSON object, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown {label}config keys: {unknown}; known: {', '.join(fields)}")
    defaults = config_cls()
    kwargs = {k: check_value(k, v, getattr(defaults, k), rule_of(fields[k])) for k, v in values.items()}
    return config_cls(**kwargs)
