"""Typed configs: method parameters, suites, and trial identities.

Every knob is a dataclass field, so a misspelt or out-of-range value is an error
at load time that names the field and what is allowed, never a traceback from
deep inside torch halfway through a grid.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from bench.registry import ATTACKS, DATASETS, DEFENSES, MODELS, SETTINGS, UnknownNameError

P = TypeVar("P")


class ConfigError(ValueError):
    """A config value that is not allowed; the message names the field."""


def _check_value(where: str, name: str, typ: Any, value: Any) -> Any:
    origin = get_origin(typ)
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
    hints = typing.get_type_hints(cls)
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


@dataclass
class SuiteConfig:
    """A suite file: which cells to run by default and every method knob it overrides."""

    name: str
    description: str = ""
    models: list[str] = field(default_factory=lambda: ["tiny-clip"])
    datasets: list[str] = field(default_factory=lambda: ["shapes"])
    settings: list[str] = field(default_factory=lambda: ["finetune"])
    seeds: list[int] = field(default_factory=lambda: [0])
    attacks: list[str] = field(default_factory=lambda: ["all"])
    defenses: list[str] = field(default_factory=lambda: ["none", "tbar", "finetune"])
    control_datasets: list[str] = field(default_factory=lambda: ["colors", "digits"])
    # Share of each train split held out as the defender's own clean pool; the
    # attacker trains on the rest, so no defense ever sees poisoned samples.
    defender_fraction: float = 0.25
    precision: Literal["fp32", "bf16"] = "fp32"  # autocast inside training and evaluation
    # Per-method and per-setting overrides: {name: {field: value}}.
    attack_params: dict[str, dict] = field(default_factory=dict)
    defense_params: dict[str, dict] = field(default_factory=dict)
    setting_params: dict[str, dict] = field(default_factory=dict)
    model_params: dict[str, dict] = field(default_factory=dict)


def suite_names() -> list[str]:
    return sorted(p.stem for p in resources.files("bench.suites").iterdir() if p.name.endswith(".yaml"))


def load_suite(name_or_path: str) -> SuiteConfig:
    """A built-in suite by name, or a suite YAML file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        text, where = path.read_text(), str(path)
    else:
        names = suite_names()
        if name_or_path not in names:
            import difflib

            close = difflib.get_close_matches(name_or_path, names, n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(f"unknown suite {name_or_path!r}.{hint} Valid: {', '.join(names)} (or a .yaml path)")
        text = (resources.files("bench.suites") / f"{name_or_path}.yaml").read_text()
        where = f"suite {name_or_path}"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping of fields")
    suite = from_dict(SuiteConfig, data, where)
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
