"""The result record of one trial, as a typed object: `bench run` writes one per trial
(records/<trial_id>.json, through `Store.write_record`), and every page, analysis and
check reads them back as JSON.

A record holds who ran what (ids, the flat config, versions, host, worker, time) and
either the trial's outcome (status `ok`: metrics, cost, the curve and operating points,
...) or its failure (status `failed`: the error and traceback).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from bench.store import SCHEMA

# What a defended trial adds (bench/run/trial.py `_defend`); `templates` only in the CLIP settings.
OUTCOME = ("metrics", "cost", "attack", "defense", "deviations", "curve", "matched", "matched_blind", "knob", "protocol")


@dataclass(frozen=True)
class Record:
    trial_id: str
    artifact_id: str
    config: dict  # TrialSpec.record_config(): the artifact's fields, the defense and its knobs
    versions: dict  # python, torch, open_clip_torch, timm, ray, bench-harness, git_commit
    host: str
    worker: dict  # executor, node, threads, device and precision of the unit that ran it
    created: str  # ISO 8601, UTC, seconds
    status: Literal["ok", "failed"] = "failed"
    schema: int = SCHEMA
    error: str = ""
    traceback: str = ""
    metrics: dict | None = None  # test CA / ASR / RA, control accuracy, the backdoored model's
    cost: dict | None = None  # wall time, device, memory, data and steps the defense spent
    attack: dict | None = None  # the artifact's poison, training, trigger files and quality
    defense: dict | None = None  # what the defense reports about itself
    deviations: dict | None = None  # {"defense": [...], "attack": [...]}: departures from the references
    curve: list | None = None  # the validation trade-off curve
    matched: dict | None = None  # the oracle operating point per retention level
    matched_blind: dict | None = None  # the blind operating point (the headline) per level
    knob: dict | None = None  # the defense's strength knob and the value its own rule chose
    protocol: dict | None = None  # the evaluator's settings (levels, refinement, ...)
    templates: dict | None = None  # zero-shot templates per dataset (CLIP settings)

    def succeeded(self, outcome: dict[str, Any]) -> Record:
        return dataclasses.replace(self, status="ok", **outcome)

    def failed(self, error: str, tb: str = "") -> Record:
        return dataclasses.replace(self, status="failed", error=error, traceback=tb)

    def to_json(self) -> dict:
        head = ("schema", "trial_id", "artifact_id", "config", "versions", "host", "worker", "created", "status")
        out = {k: getattr(self, k) for k in head}
        if self.status == "failed":
            return out | {"error": self.error, "traceback": self.traceback}
        out |= {k: getattr(self, k) for k in OUTCOME}
        if self.templates is not None:
            out["templates"] = self.templates
        return out
