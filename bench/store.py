"""Results and artifacts on disk: atomic, content-addressed, resumable.

Layout under a storage root:

    artifacts/<artifact_id>/model.safetensors   stage-1 backdoored weights
    artifacts/<artifact_id>/model.json          sidecar: architecture, config, metrics
    artifacts/<artifact_id>/trigger.png|.pt     the trigger, for people and for reuse
    records/<trial_id>.json                     one result record per (artifact, defense)

Weights are safetensors with a JSON sidecar; nothing is ever unpickled, since
backdoored models come from untrusted sources by definition.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

SCHEMA = 1


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(obj: Any, n: int = 16) -> str:
    """Stable content hash of a JSON-able config (key order does not matter)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`:
    readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finite(obj: Any) -> Any:
    """NaN/inf -> None, so records stay strict JSON that every reader accepts."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    text = json.dumps(_finite(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def read_json(path: Path) -> Any | None:
    """The JSON in `path`, or None when it is missing or unreadable (a torn write)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def save_weights(model: nn.Module, stem: Path, sidecar: dict) -> None:
    """`stem`.safetensors (the state dict) + `stem`.json (what it is). The sidecar is
    written last, so its presence marks a complete checkpoint."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=stem.parent, suffix=".safetensors.tmp")
    os.close(fd)
    try:
        save_file(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, stem.with_suffix(".safetensors"))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_json(stem.with_suffix(".json"), sidecar)


def load_weights(model: nn.Module, stem: Path) -> dict:
    """Load `stem`.safetensors into `model` (strict) and return the sidecar."""
    stem = Path(stem)
    meta = read_json(stem.with_suffix(".json"))
    if meta is None:
        raise FileNotFoundError(f"{stem.with_suffix('.json')}: missing or unreadable checkpoint sidecar")
    model.load_state_dict(load_file(stem.with_suffix(".safetensors")), strict=True)
    return meta


def state_to_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class Store:
    """A storage root (local folder) holding artifacts and records."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def artifact_dir(self, artifact_id: str) -> Path:
        return self.root / "artifacts" / artifact_id

    def artifact_done(self, artifact_id: str) -> bool:
        d = self.artifact_dir(artifact_id)
        return (d / "model.safetensors").exists() and read_json(d / "model.json") is not None

    def record_path(self, trial_id: str) -> Path:
        return self.root / "records" / f"{trial_id}.json"

    def read_record(self, trial_id: str) -> dict | None:
        rec = read_json(self.record_path(trial_id))
        if rec is not None and rec.get("schema") == SCHEMA and rec.get("trial_id") == trial_id:
            return rec
        return None

    def write_record(self, record: dict) -> None:
        atomic_write_json(self.record_path(record["trial_id"]), record)

    def records(self) -> list[dict]:
        out = []
        for p in sorted((self.root / "records").glob("*.json")):
            rec = read_json(p)
            if rec is not None and rec.get("schema") == SCHEMA:
                out.append(rec)
        return out
