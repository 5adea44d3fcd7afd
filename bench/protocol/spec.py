"""The typed identity of grid work: an attack artifact (stage 1) and a trial (stage 2).

A spec is built once, when the grid is planned: every attack, model, setting and defense
knob is validated there (names, types, ranges) and its defaults are filled in, so a spec
holds each method's Params object, not a dict of overrides. It then travels unchanged
from the plan to the executor (Ray carries `to_json()` to its workers, which rebuild it)
and into the record. `id` hashes `to_json()`, the same resolved config this harness has
always hashed, so every stored record keeps its id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from bench.core.config import from_dict, to_dict
from bench.core.registry import ATTACKS, DEFENSES, MODELS, SETTINGS, Registry
from bench.store import config_hash

Params = Any  # a method's frozen Params dataclass instance, or None for a name that has none


def build_params(registry: Registry, name: str, overrides: dict | None, where: str) -> Params:
    """`name`'s Params with `overrides` applied and checked (None when it declares none)."""
    cls = getattr(registry.get(name), "Params", None)
    return from_dict(cls, overrides, f"{where}.{name}") if cls is not None else None


def _json(params: Params) -> dict:
    return to_dict(params) if params is not None else {}


@dataclass(frozen=True)
class ArtifactSpec:
    """Stage 1: one backdoored (or, for attack `none`, clean) model of one cell and seed."""

    suite: str
    model: str
    model_params: Params
    dataset: str
    setting: str
    setting_params: Params
    attack: str
    attack_params: Params
    seed: int
    defender_fraction: float
    control_datasets: tuple[str, ...]
    # Set only where they apply, so the ids of configs without them stay as they were.
    dataset_version: Any = None  # a generated dataset's generator version
    precision: str = "fp32"
    inputs: dict[str, str] = field(default_factory=dict)  # {field: sha256} of the files it names

    def to_json(self) -> dict:
        out = {
            "suite": self.suite,
            "model": self.model,
            "model_params": self.model_params_json,
            "dataset": self.dataset,
            "setting": self.setting,
            "setting_params": _json(self.setting_params),
            "attack": self.attack,
            "attack_params": _json(self.attack_params),
            "seed": self.seed,
            "defender_fraction": self.defender_fraction,
            "control_datasets": list(self.control_datasets),
        }
        if self.dataset_version is not None:
            out["dataset_version"] = self.dataset_version
        if self.precision != "fp32":
            out["precision"] = self.precision
        if self.inputs:
            out["inputs"] = dict(self.inputs)
        return out

    @cached_property
    def model_params_json(self) -> dict:
        """The model's knobs as the settings and the pre-training cache take them."""
        return _json(self.model_params)

    @cached_property
    def id(self) -> str:
        """Hash of the whole resolved config (suite included: a record belongs to exactly
        one suite, so `bench leaderboard --suite` and `bench run` agree)."""
        return config_hash(self.to_json())

    @property
    def label(self) -> str:
        return f"{self.model}/{self.dataset}/{self.setting}/{self.attack}/seed{self.seed}"

    @classmethod
    def from_json(cls, d: dict) -> ArtifactSpec:
        """The spec a `to_json()` (or a record's config) describes, its knobs checked again."""
        return cls(
            suite=d["suite"],
            model=d["model"],
            model_params=build_params(MODELS, d["model"], d.get("model_params"), "model_params"),
            dataset=d["dataset"],
            setting=d["setting"],
            setting_params=build_params(SETTINGS, d["setting"], d.get("setting_params"), "setting_params"),
            attack=d["attack"],
            attack_params=build_params(ATTACKS, d["attack"], d.get("attack_params"), "attack_params"),
            seed=d["seed"],
            defender_fraction=d["defender_fraction"],
            control_datasets=tuple(d.get("control_datasets", ())),
            dataset_version=d.get("dataset_version"),
            precision=d.get("precision", "fp32"),
            inputs=dict(d.get("inputs") or {}),
        )


@dataclass(frozen=True)
class TrialSpec:
    """Stage 2: one defense run on one artifact, evaluated, written as one record."""

    artifact: ArtifactSpec
    defense: str
    defense_params: Params

    def to_json(self) -> dict:
        return {"artifact": self.artifact.to_json(), "defense": self.defense, "defense_params": _json(self.defense_params)}

    @cached_property
    def id(self) -> str:
        return config_hash(self.to_json())

    @property
    def label(self) -> str:
        a = self.artifact
        return f"{a.model}/{a.dataset}/{a.setting}/{a.attack}/{self.defense}/seed{a.seed}"

    def record_config(self) -> dict:
        """The record's flat `config`: the artifact's fields, the defense and its knobs."""
        a = self.artifact.to_json()
        head = ("suite", "model", "dataset", "setting", "attack")
        return {
            **{k: a[k] for k in head},
            "defense": self.defense,
            "seed": a["seed"],
            **{k: v for k, v in a.items() if k not in (*head, "seed")},
            "defense_params": _json(self.defense_params),
        }

    @classmethod
    def from_json(cls, d: dict) -> TrialSpec:
        return cls(
            ArtifactSpec.from_json(d["artifact"]),
            d["defense"],
            build_params(DEFENSES, d["defense"], d.get("defense_params"), "defense_params"),
        )

    @classmethod
    def from_record_config(cls, c: dict) -> TrialSpec:
        """The spec a stored record's flat `config` was run from."""
        artifact = {k: v for k, v in c.items() if k not in ("defense", "defense_params")}
        return cls.from_json({"artifact": artifact, "defense": c["defense"], "defense_params": c.get("defense_params")})
