"""Typed configs: method parameters, suites, and trial identities.

Every knob is a dataclass field, so a misspelt or out-of-range value is an error
at load time that names the field and what is allowed, never a traceback from
deep inside torch halfway through a grid.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from bench.core import knobs
from bench.core.registry import ATTACKS, DATASETS, DEFENSES, MODELS, SETTINGS, UnknownNameError, did_you_mean

P = TypeVar("P")


class ConfigError(ValueError):
    """A config value that is not allowed; the message names the field."""


def _check_value(where: str, name: str, typ: Any, value: Any) -> Any:
    origin = get_origin(typ)
    if origin is Annotated:  # a knob with a declared range (bench/core/knobs.py)
        value = _check_value(where, name, get_args(typ)[0], value)
        b = knobs.bounds(typ.__metadata__)
        if b and not knobs.within(value, b):
            raise ConfigError(f"{where}.{name} = {value!r} is not allowed; {knobs.describe(b)}")
        return value
    if origin is Literal:
        if value not in get_args(typ):
            allowed = ", ".join(repr(a) for a in get_args(typ))
            raise ConfigError(f"{where}.{name} = {value!r} is not allowed; allowed: {allowed}")
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}.{name} must be true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}.{name} must be an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, str):
            # PyYAML reads 3e-4 (no dot) as a string; accept what is plainly a number.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}.{name} must be a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}.{name} must be a string, got {value!r}")
        return value
    args = get_args(typ)
    if type(None) in args:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_value(where, name, inner[0], value)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}.{name} must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [
            _check_value(where, name, inner, v) if inner is not Any and inner is not Ellipsis else v for v in value
        ]
        return tuple(items) if origin is tuple else items
    return value


def from_dict(cls: type[P], data: dict[str, Any] | None, where: str) -> P:
    """Build dataclass `cls` from `data`, checking names and types of every field."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls, include_extras=True)  # extras: the ranges of bench/core/knobs.py
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}")
    kwargs = {k: _check_value(where, k, hints[k], v) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    d = dataclasses.asdict(obj)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# ---------------------------------------------------------------- suites


NonEmpty = Annotated[str, Field(min_length=1)]
Names = Annotated[list[NonEmpty], Field(min_length=1)]
Overrides = dict[str, dict[str, Any]]


def _number(value: Any) -> Any:
    # PyYAML reads 3e-4 (no dot) as a string; accept what is plainly a number.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _distinct(values: list) -> list:
    if len(set(values)) != len(values):
        raise ValueError("each value at most once")
    return values


class SuiteConfig(BaseModel):
    """A suite file: which cells to run by default and every method knob it overrides.

    Validated by pydantic: unknown fields are errors, and every field has a type and a
    range (seeds >= 0, defender_fraction in (0, 1), at least one entry per list); the
    error names the field and the rule. Registry names and the per-method overrides are
    checked by `validate_suite` once the registries are loaded."""

    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())

    name: NonEmpty
    description: str = ""
    models: Names = Field(default_factory=lambda: ["tiny-clip"])
    datasets: Names = Field(default_factory=lambda: ["shapes"])
    settings: Names = Field(default_factory=lambda: ["finetune"])
    # 32-bit seeds (they feed 32-bit generators), each once: a repeated seed would plan every trial twice
    seeds: Annotated[
        list[Annotated[int, Field(ge=0, le=2**32 - 1)]], Field(min_length=1), AfterValidator(_distinct)
    ] = Field(default_factory=lambda: [0])
    attacks: Names = Field(default_factory=lambda: ["all"])
    defenses: Names = Field(default_factory=lambda: ["none", "tbar", "finetune"])
    control_datasets: list[NonEmpty] = Field(default_factory=lambda: ["colors", "digits"])
    # Share of each train split held out as the defender's own clean pool; the
    # attacker trains on the rest, so no defense ever sees poisoned samples. Both
    # sides need data, hence the open interval.
    defender_fraction: Annotated[float, BeforeValidator(_number), Field(gt=0, lt=1)] = 0.25
    precision: Literal["fp32", "bf16"] = "fp32"  # autocast inside training and evaluation
    # Per-method and per-setting overrides: {name: {field: value}}.
    attack_params: Overrides = Field(default_factory=dict)
    defense_params: Overrides = Field(default_factory=dict)
    setting_params: Overrides = Field(default_factory=dict)
    model_params: Overrides = Field(default_factory=dict)


def _rule(err: dict) -> str:
    """One pydantic error as 'what is allowed', in the words of this project's messages."""
    ctx = err.get("ctx") or {}
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown field; allowed: " + ", ".join(SuiteConfig.model_fields)
    if kind == "missing":
        return "required field is missing"
    if any(key in ctx for key in ("ge", "gt", "le", "lt")):
        # The field's whole range where it has two bounds: "must be in (0, 1)".
        field = SuiteConfig.model_fields.get(str(err["loc"][0])) if len(err["loc"]) == 1 else None
        bounds = {k: getattr(m, k) for m in (field.metadata if field else []) for k in ("ge", "gt", "le", "lt")
                  if getattr(m, k, None) is not None}  # fmt: skip
        lo = [("[", bounds[k]) for k in ("ge",) if k in bounds] + [("(", bounds[k]) for k in ("gt",) if k in bounds]
        hi = [(bounds[k], "]") for k in ("le",) if k in bounds] + [(bounds[k], ")") for k in ("lt",) if k in bounds]
        if lo and hi:
            return f"must be in {lo[0][0]}{lo[0][1]}, {hi[0][0]}{hi[0][1]}"
        for key, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if key in ctx:
                return f"must be {word} {ctx[key]}"
    if kind == "literal_error":
        return f"allowed: {ctx.get('expected')}"
    if kind == "too_short" and ctx.get("min_length") is not None:
        return f"must have at least {ctx['min_length']} item(s)"
    return err["msg"][0].lower() + err["msg"][1:]


def suite_error(where: str, exc: ValidationError) -> ConfigError:
    """A pydantic ValidationError as one ConfigError line naming each bad field and its rule."""
    parts = []
    for err in exc.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        shown = "" if err["type"] in ("missing", "extra_forbidden") else f" = {err['input']!r}"
        parts.append(f"{loc or 'suite'}{shown}: {_rule(err)}")
    return ConfigError(f"{where}: " + "; ".join(parts))


def suite_names() -> list[str]:
    return sorted(p.stem for p in resources.files("bench.suites").iterdir() if p.name.endswith(".yaml"))


def is_suite_path(name_or_path: str) -> bool:
    """A suite file path (ends in .yaml/.yml or names a folder), not a built-in name."""
    return Path(name_or_path).suffix in (".yaml", ".yml") or "/" in name_or_path or os.sep in name_or_path


def suite_file_problem(path: Path) -> str | None:
    """None when `path` is a readable suite file, else one line saying what is wrong."""
    if not path.exists():
        return f"no such suite file: {str(path)!r} (a built-in name is one of {', '.join(suite_names())})"
    if not path.is_file():
        return f"suite file {str(path)!r} is a folder, not a .yaml file"
    if path.suffix not in (".yaml", ".yml"):
        return f"suite file {str(path)!r} must end in .yaml or .yml"
    return None


def unknown_suite_message(name: str) -> str:
    names = suite_names()
    return f"unknown suite {name!r}.{did_you_mean(name, names)} Valid: {', '.join(names)} (or a .yaml path)"


def load_suite(name_or_path: str) -> SuiteConfig:
    """A built-in suite by name, or a suite YAML file by path."""
    path = Path(name_or_path)
    if is_suite_path(name_or_path):
        problem = suite_file_problem(path)
        if problem:
            raise ConfigError(problem)
        text, where = path.read_text(), str(path)
    else:
        names = suite_names()
        if name_or_path not in names:
            raise UnknownNameError(unknown_suite_message(name_or_path))
        text = (resources.files("bench.suites") / f"{name_or_path}.yaml").read_text()
        where = f"suite {name_or_path}"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or " ".join(str(e).split())
        raise ConfigError(f"{where}: not valid YAML: {problem}{at}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping of fields")
    try:
        suite = SuiteConfig.model_validate(data)
    except ValidationError as e:
        raise suite_error(where, e) from None
    validate_suite(suite, where)
    return suite


def validate_suite(suite: SuiteConfig, where: str) -> None:
    for reg, names in (
        (MODELS, suite.models),
        (DATASETS, suite.datasets + suite.control_datasets),
        (SETTINGS, suite.settings),
    ):
        reg.resolve(names)
    for reg, overrides in (
        (ATTACKS, suite.attack_params),
        (DEFENSES, suite.defense_params),
        (SETTINGS, suite.setting_params),
        (MODELS, suite.model_params),
    ):
        for name, params in overrides.items():
            entry = reg.entry(name)
            params_cls = getattr(entry.obj, "Params", None)
            if params_cls is not None:
                from_dict(params_cls, params, f"{where}: {reg.kind}_params.{name}")
