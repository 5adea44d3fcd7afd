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

import contextlib
import fcntl
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
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
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
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


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class CorruptCheckpointError(RuntimeError):
    pass


class StorageError(ValueError):
    """A storage root that cannot be used (reported to the user, not a traceback)."""


def save_weights(model: nn.Module, stem: Path, sidecar: dict) -> None:
    """`stem`.safetensors (the state dict) + `stem`.json (what it is). The sidecar is
    written last, so its presence marks a complete checkpoint; it carries the weight
    file's size and SHA-256, so a truncated or altered weight file is detected."""
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
    weights = stem.with_suffix(".safetensors")
    integrity = {"bytes": weights.stat().st_size, "sha256": file_digest(weights)}
    atomic_write_json(stem.with_suffix(".json"), {**sidecar, "weights_file": integrity})


def weights_intact(stem: Path, meta: dict | None, verify_hash: bool = False) -> bool:
    """The weight file exists and matches the size (and optionally hash) in its sidecar."""
    weights = Path(stem).with_suffix(".safetensors")
    if meta is None or not weights.exists():
        return False
    expected = meta.get("weights_file")
    if expected is None:  # written before integrity data existed: existence is all we know
        return True
    if weights.stat().st_size != expected["bytes"]:
        return False
    return not verify_hash or file_digest(weights) == expected["sha256"]


def load_weights(model: nn.Module, stem: Path) -> dict:
    """Load `stem`.safetensors into `model` (strict) and return the sidecar."""
    stem = Path(stem)
    meta = read_json(stem.with_suffix(".json"))
    if meta is None:
        raise FileNotFoundError(f"{stem.with_suffix('.json')}: missing or unreadable checkpoint sidecar")
    if not weights_intact(stem, meta, verify_hash=True):
        raise CorruptCheckpointError(
            f"{stem.with_suffix('.safetensors')}: size or SHA-256 differs from its sidecar "
            f"{stem.with_suffix('.json').name}; delete the folder and rerun to rebuild it"
        )
    model.load_state_dict(load_file(stem.with_suffix(".safetensors")), strict=True)
    return meta


def state_to_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@dataclass
class RecordState:
    """What is on disk for one trial: `missing`, `ok`, `failed` or `corrupt`."""

    state: str
    record: dict | None = None
    reason: str = ""


class Store:
    """A storage root holding artifacts, records and claim locks.

    The root is a local folder, or a folder every node mounts (NFS and the like) when
    trials run on a cluster; `file://` URIs are accepted for the same thing. Locks are
    POSIX advisory locks (flock): the kernel drops them when a process dies, so a
    killed run never leaves a stale claim behind.
    """

    def __init__(self, root: str | Path):
        root = str(root)
        if "://" in root:
            scheme, _, rest = root.partition("://")
            if scheme != "file":
                raise StorageError(
                    f"--results {root!r}: storage URIs must be file:// (a folder every node mounts); "
                    f"mount {scheme}:// storage with its FUSE driver and pass the mount path"
                )
            root = rest
        self.root = Path(root)

    def artifact_dir(self, artifact_id: str) -> Path:
        return self.root / "artifacts" / artifact_id

    def artifact_done(self, artifact_id: str) -> bool:
        d = self.artifact_dir(artifact_id)
        return weights_intact(d / "model", read_json(d / "model.json"))

    def record_path(self, trial_id: str) -> Path:
        return self.root / "records" / f"{trial_id}.json"

    def record_state(self, trial_id: str) -> RecordState:
        path = self.record_path(trial_id)
        if not path.exists():
            return RecordState("missing")
        rec = read_json(path)
        if not isinstance(rec, dict):
            return RecordState("corrupt", reason="not valid JSON (a partial or damaged write)")
        if rec.get("schema") != SCHEMA or rec.get("trial_id") != trial_id:
            return RecordState("corrupt", reason="schema or trial id does not match its file name")
        if rec.get("status") not in ("ok", "failed") or (rec["status"] == "ok" and "metrics" not in rec):
            return RecordState("corrupt", reason="status or metrics missing")
        return RecordState(rec["status"], rec)

    def read_record(self, trial_id: str) -> dict | None:
        st = self.record_state(trial_id)
        return st.record if st.state in ("ok", "failed") else None

    def write_record(self, record: dict) -> None:
        atomic_write_json(self.record_path(record["trial_id"]), record)

    def records(self) -> list[dict]:
        out = []
        for p in sorted((self.root / "records").glob("*.json")):
            rec = read_json(p)
            if isinstance(rec, dict) and rec.get("schema") == SCHEMA:
                out.append(rec)
        return out

    def claim(self, key: str) -> contextlib.AbstractContextManager:
        """Hold the exclusive claim on `key` (an artifact or trial id) across processes
        and nodes sharing this root; blocks while another process holds it."""
        return file_lock(self.root / "locks" / f"{key}.lock")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive POSIX advisory lock on `path` (created if missing), released when
    the block ends or the process dies. Blocks while another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
