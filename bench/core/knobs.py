"""The ranges a method knob may take, as `Annotated` types.

A Params dataclass declares each numeric knob with one of these (or its own
`Annotated[float, Ge(...), ...]`); `config.from_dict` checks the bound when a suite
file or the command line sets the knob, so `tbar: {steps: -50}` is one line naming
the field and its range, before any work. The metadata is annotated_types', the
library pydantic reads, so the same declaration means the same thing there.

The annotation changes neither a dataclass's values nor its `to_dict`, so trial ids
do not move when a range is declared.
"""

from __future__ import annotations

from typing import Annotated, Any

from annotated_types import BaseMetadata, Ge, GroupedMetadata, Gt, Le, Lt

Count = Annotated[int, Ge(1)]  # steps, batch sizes, grid points: at least one
Index = Annotated[int, Ge(0)]  # class indices, seeds, patience: zero or more
Positive = Annotated[float, Gt(0)]  # learning rates, epochs, budgets, temperatures
NonNegative = Annotated[float, Ge(0)]  # weights of loss terms, weight decay, grid ends
Share = Annotated[float, Ge(0), Le(1)]  # a probability or a share that may be 0 or 1
Fraction = Annotated[float, Gt(0), Le(1)]  # a share of data that must hold something

_WORDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def bounds(metadata: tuple[Any, ...]) -> dict[str, float]:
    """The numeric bounds ({"ge": 0, "le": 1}, ...) among `Annotated` metadata."""
    out: dict[str, float] = {}
    for m in metadata:
        for item in m if isinstance(m, GroupedMetadata) else [m]:
            if isinstance(item, (Ge, Gt, Le, Lt)):
                key = type(item).__name__.lower()
                out[key] = getattr(item, key)
            elif isinstance(item, BaseMetadata):
                raise TypeError(f"knob metadata {item!r} is not a bound this project checks")
    return out


def describe(b: dict[str, float]) -> str:
    """'must be in (0, 1]' where there are two ends, else 'must be >= 1'."""
    lo = next(((k, b[k]) for k in ("ge", "gt") if k in b), None)
    hi = next(((k, b[k]) for k in ("le", "lt") if k in b), None)
    if lo and hi:
        return f"must be in {'[' if lo[0] == 'ge' else '('}{lo[1]:g}, {hi[1]:g}{']' if hi[0] == 'le' else ')'}"
    k, v = lo or hi  # type: ignore[misc]
    return f"must be {_WORDS[k]} {v:g}"


def within(value: float, b: dict[str, float]) -> bool:
    return (
        ("ge" not in b or value >= b["ge"])
        and ("gt" not in b or value > b["gt"])
        and ("le" not in b or value <= b["le"])
        and ("lt" not in b or value < b["lt"])
    )
