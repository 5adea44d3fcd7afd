"""Every numeric knob of every method, model and setting declares its range
(bench/core/knobs.py), so an out-of-range suite override is one line naming the field,
refused before any work."""

import dataclasses
import os
import subprocess
import sys
import typing
from typing import Annotated, Literal, Union, get_args, get_origin

import pytest

from bench.core import knobs
from bench.core.config import ConfigError, from_dict
from bench.core.registry import ATTACKS, DEFENSES, MODELS, SETTINGS, load_plugins
from defenses.clp import ClpParams
from defenses.tbar import TbarParams

NUMBERS = (int, float)


def _params_classes() -> dict[str, type]:
    load_plugins()
    out: dict[str, type] = {}
    for reg in (ATTACKS, DEFENSES, MODELS, SETTINGS):
        for entry in reg:
            cls = getattr(entry.obj, "Params", None)
            if cls is not None and dataclasses.is_dataclass(cls):
                out.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)
    # Params of names built on first use (timm:ARCH), which the registries do not list.
    from bench.models.classifiers import TimmParams

    out.setdefault(f"{TimmParams.__module__}.{TimmParams.__qualname__}", TimmParams)
    return out


def _numeric_knobs(typ) -> list[tuple[type, dict]]:
    """(number type, bounds) of each number a field holds: itself, the X of an Optional X,
    or the items of a tuple/list of numbers. Empty when the field holds no number."""
    origin = get_origin(typ)
    if origin is Annotated:
        base = get_args(typ)[0]
        inner = _numeric_knobs(base)
        if base in NUMBERS:
            return [(base, knobs.bounds(typ.__metadata__))]
        return inner
    if typ is bool or origin is Literal:
        return []
    if typ in NUMBERS:
        return [(typ, {})]
    args = get_args(typ)
    if origin is Union or (args and type(None) in args):
        return [k for a in args if a is not type(None) for k in _numeric_knobs(a)]
    if origin in (tuple, list):
        return [k for a in args if a is not Ellipsis for k in _numeric_knobs(a)]
    return []


def test_every_numeric_knob_declares_a_range_that_admits_its_default():
    classes = _params_classes()
    assert len(classes) >= 20, sorted(classes)  # the walk found the built-in methods, models and settings
    unbounded, outside = [], []
    for cls in classes.values():
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            found = _numeric_knobs(hints[f.name])
            if not found:
                continue
            name = f"{cls.__name__}.{f.name}"
            if any(not b for _, b in found):
                unbounded.append(name)
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            values = list(default) if isinstance(default, (tuple, list)) else [default]
            b = found[0][1]
            if any(v is not None and not knobs.within(v, b) for v in values):
                outside.append(f"{name} = {default!r} ({knobs.describe(b)})")
    assert not unbounded, "numeric knobs without a declared range (bench/core/knobs.py): " + ", ".join(sorted(unbounded))
    assert not outside, "defaults outside their declared range: " + ", ".join(sorted(outside))


def test_the_walk_flags_an_unbounded_knob():
    @dataclasses.dataclass(frozen=True)
    class Loose:
        steps: int = 5
        rate: float | None = None
        sizes: tuple[int, ...] = (1,)
        flag: bool = True
        mode: Literal["a", "b"] = "a"

    hints = typing.get_type_hints(Loose, include_extras=True)
    flagged = [n for n, t in hints.items() if any(not b for _, b in _numeric_knobs(t))]
    assert flagged == ["steps", "rate", "sizes"]
    assert _numeric_knobs(typing.get_type_hints(TbarParams, include_extras=True)["steps"]) == [(int, {"ge": 1})]


def test_out_of_range_overrides_name_the_field_and_the_range():
    where = "suite.yaml: defense_params.tbar"
    with pytest.raises(ConfigError) as e:
        from_dict(TbarParams, {"steps": -50}, where)
    msg = str(e.value)
    assert "defense_params.tbar.steps" in msg and "must be >= 1" in msg and "\n" not in msg, msg
    with pytest.raises(ConfigError) as e:
        from_dict(ClpParams, {"u": -1}, "suite.yaml: defense_params.clp")
    msg = str(e.value)
    assert "defense_params.clp.u" in msg and "must be >= 0" in msg and "\n" not in msg, msg
    with pytest.raises(ConfigError, match=r"tbar\.data_fraction = 0(\.0)? is not allowed; must be in \(0, 1\]"):
        from_dict(TbarParams, {"data_fraction": 0}, "tbar")
    assert from_dict(TbarParams, {"steps": 7}, where).steps == 7
    assert from_dict(ClpParams, {"u": 1.5}, "clp").u == 1.5
    assert from_dict(ClpParams, {"u": 0}, "clp").u == 0.0


def test_cli_refuses_an_out_of_range_knob_in_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: bad\ndefense_params: {tbar: {steps: -50}}\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_THREADS": "2", "RAY_AUTH_MODE": "disabled"}
    r = subprocess.run(
        [sys.executable, "-m", "bench.cli", "run", "--suite", "bad.yaml", "--dry-run", "--results", "res"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "tbar.steps" in lines[0] and "must be >= 1" in lines[0], lines[0]
    assert not (tmp_path / "res").exists()
