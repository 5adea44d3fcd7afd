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
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from bench.core.fs import StorageError as StorageError  # re-exported: the CLI reports it
from bench.core.fs import atomic_write_bytes as atomic_write_bytes  # re-exported: the pages write with it
from bench.core.fs import file_lock as file_lock  # re-exported
from bench.core.fs import parse_root

log = logging.getLogger(__name__)

SCHEMA = 1


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(obj: Any, n: int = 16) -> str:
    """Stable content hash of a JSON-able config (key order does not matter)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]


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


class StoreWriteError(RuntimeError):
    """The storage root refused a write (a full disk, a quota, a read-only or failing
    mount, an object store that errs): the grid stops cleanly instead of going on."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"could not write {path}: {reason}")
        self.path = str(path)
        self.reason = reason


# Errors that say the storage, not a method, failed: raised inside a method's own code
# (a defense saving a picture) they still stop the grid rather than fail one trial.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG}


def storage_write_error(e: OSError, where: str | Path) -> StoreWriteError:
    reason = f"{e.strerror or e} (errno {e.errno})" if e.errno else str(e) or type(e).__name__
    return StoreWriteError(e.filename or where, reason)


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
        os.chmod(tmp, 0o644)
        os.replace(tmp, stem.with_suffix(".safetensors"))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    weights = stem.with_suffix(".safetensors")
    integrity = {"bytes": weights.stat().st_size, "sha256": file_digest(weights)}
    _remember_digest(weights, integrity["sha256"])
    atomic_write_json(stem.with_suffix(".json"), {**sidecar, "weights_file": integrity})


def _remember_digest(path: Path, value: str) -> None:
    from bench.core import inputs

    inputs.remember(path, value)


def _cached_digest(path: Path) -> str:
    """SHA-256 of a weight file, hashed once per (path, inode, size, mtime, ctime)."""
    from bench.core import inputs

    try:
        return inputs.digest(path, str(path))
    except inputs.InputFileError:
        return ""


def weights_intact(stem: Path, meta: dict | None, verify_hash: bool = False) -> bool:
    """The weight file exists and matches the size (and optionally hash) in its sidecar."""
    return weights_problem(stem, meta, verify_hash) is None


def weights_problem(stem: Path, meta: dict | None, verify_hash: bool = False) -> str | None:
    """None when the weight file matches its sidecar, else what is wrong with it. The
    hash is checked through the digest cache, so an unchanged file is hashed once."""
    weights = Path(stem).with_suffix(".safetensors")
    if meta is None:
        return "sidecar missing or unreadable"
    if not weights.exists():
        return "weight file missing"
    expected = meta.get("weights_file")
    if expected is None:  # written before integrity data existed: existence is all we know
        return None
    size = weights.stat().st_size
    if size != expected["bytes"]:
        return f"weight file is {size} bytes, its sidecar says {expected['bytes']} (truncated or replaced)"
    if verify_hash and _cached_digest(weights) != expected["sha256"]:
        return "weight file's SHA-256 differs from its sidecar (altered)"
    return None


def load_weights(model: nn.Module, stem: Path) -> dict:
    """Load `stem`.safetensors into `model` (strict) and return the sidecar."""
    stem = Path(stem)
    meta = read_json(stem.with_suffix(".json"))
    if meta is None:
        raise FileNotFoundError(f"{stem.with_suffix('.json')}: missing or unreadable checkpoint sidecar")
    problem = weights_problem(stem, meta, verify_hash=True)
    if problem:
        raise CorruptCheckpointError(f"{stem.with_suffix('.safetensors')}: {problem}; size or SHA-256 differs")
    model.load_state_dict(load_file(stem.with_suffix(".safetensors")), strict=True)
    return meta


def quarantine(paths: list[Path], folder: Path, reason: str) -> Path | None:
    """Move `paths` (files or folders) aside into `folder/<UTC time>-<name>/` and log it:
    a damaged file is kept for inspection, never deleted, and never loaded again."""
    present = [Path(p) for p in paths if Path(p).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = Path(folder) / f"{stamp}-{present[0].stem}-{os.getpid()}"
    if len(present) == 1 and present[0].is_dir():  # a whole folder (an artifact): moved as it is
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(present[0], dest)
    else:
        dest.mkdir(parents=True, exist_ok=True)
        for p in present:
            os.replace(p, dest / p.name)
    log.warning("quarantined %s -> %s: %s; it will be rebuilt", ", ".join(map(str, present)), dest, reason)
    return dest


@dataclass
class RecordState:
    """What is on disk for one trial: `missing`, `ok`, `failed` or `corrupt`."""

    state: str
    record: dict | None = None
    reason: str = ""


def check_record(trial_id: str, rec: Any) -> RecordState:
    if not isinstance(rec, dict):
        return RecordState("corrupt", reason="not valid JSON (a partial or damaged write)")
    if rec.get("schema") != SCHEMA or rec.get("trial_id") != trial_id:
        return RecordState("corrupt", reason="schema or trial id does not match its file name")
    if rec.get("status") not in ("ok", "failed") or (rec["status"] == "ok" and "metrics" not in rec):
        return RecordState("corrupt", reason="status or metrics missing")
    if rec["status"] == "ok" and "matched" in rec and "matched_blind" not in rec:
        return RecordState("corrupt", reason="made before blind operating points were recorded")
    return RecordState(rec["status"], rec)


def record_bytes(record: dict) -> bytes:
    text = json.dumps(_finite(record), indent=2, sort_keys=True, default=str, allow_nan=False)
    return (text + "\n").encode()


class Store:
    """A storage root holding artifacts, records and claims.

    The root is a local folder, or a folder every node mounts (NFS and the like) when
    trials run on a cluster; `file://` URIs (RFC 8089) name the same thing. Claims are
    POSIX advisory locks (flock): the kernel drops them when a process dies, so a
    killed run never leaves a stale claim behind. `bench.store.remote.open_store("s3://bucket/prefix")`
    gives an object-store root instead (`bench.store.remote.S3Store`), with the same interface.
    """

    remote = False

    def __init__(self, root: str | Path):
        spec = parse_root(root)
        if spec.kind == "s3" and not self.remote:
            raise StorageError(f"{spec.uri} is an object-store root: open it with bench.store.remote.open_store")
        self.root = spec.path

    @property
    def uri(self) -> str:
        """What a worker on any node passes to Store() to reach this root."""
        return str(self.root.resolve())

    def __str__(self) -> str:
        return str(self.root)

    # ------------------------------------------------------------ artifacts

    def artifact_dir(self, artifact_id: str) -> Path:
        """The local folder holding the artifact (for an object store: after fetch_artifact)."""
        return self.root / "artifacts" / artifact_id

    def artifact_problem(self, artifact_id: str, verify_hash: bool = False) -> str | None:
        """None: complete and intact; "missing": not built; otherwise what is damaged."""
        d = self.artifact_dir(artifact_id)
        meta = read_json(d / "model.json")
        if meta is None:
            return "missing"
        return weights_problem(d / "model", meta, verify_hash)

    def artifact_done(self, artifact_id: str) -> bool:
        return self.artifact_problem(artifact_id) is None

    def fetch_artifact(self, artifact_id: str) -> Path:
        """The artifact's local folder, checked against its sidecar (hash included)."""
        d = self.artifact_dir(artifact_id)
        problem = self.artifact_problem(artifact_id, verify_hash=True)
        if problem:
            raise CorruptCheckpointError(f"{d / 'model.safetensors'}: {problem}")
        return d

    def build_dir(self, artifact_id: str) -> Path:
        """A fresh folder to build the artifact in; commit_artifact moves it into place
        whole, so the artifact folder never holds half an artifact."""
        base = self.root / "artifacts"
        try:
            base.mkdir(parents=True, exist_ok=True)
            for stale in base.glob(f".build-{artifact_id}-*"):  # left by a killed builder (we hold the claim)
                shutil.rmtree(stale, ignore_errors=True)
            build = Path(tempfile.mkdtemp(prefix=f".build-{artifact_id}-", dir=base))
            os.chmod(build, 0o755)  # mkdtemp makes 0700; results are meant to be shared
            return build
        except OSError as e:
            raise storage_write_error(e, base) from None

    def commit_artifact(self, artifact_id: str, build: Path) -> None:
        target = self.artifact_dir(artifact_id)
        try:
            if target.exists():  # an incomplete or damaged copy (quarantined before a rebuild)
                problem = self.artifact_problem(artifact_id)
                if problem not in (None, "missing"):
                    self.quarantine_artifact(artifact_id, problem)
                shutil.rmtree(target, ignore_errors=True)
            os.replace(build, target)
        except OSError as e:
            raise storage_write_error(e, target) from None

    def discard_build(self, build: Path) -> None:
        shutil.rmtree(build, ignore_errors=True)

    def quarantine_artifact(self, artifact_id: str, reason: str) -> None:
        quarantine([self.artifact_dir(artifact_id)], self.root / "quarantine", reason)

    # ------------------------------------------------------------ records

    def record_path(self, trial_id: str) -> Path:
        return self.root / "records" / f"{trial_id}.json"

    def record_state(self, trial_id: str) -> RecordState:
        path = self.record_path(trial_id)
        if not path.exists():
            return RecordState("missing")
        return check_record(trial_id, read_json(path))

    def read_record(self, trial_id: str) -> dict | None:
        st = self.record_state(trial_id)
        return st.record if st.state in ("ok", "failed") else None

    def write_record(self, record: dict) -> None:
        path = self.record_path(record["trial_id"])
        try:
            atomic_write_bytes(path, record_bytes(record))
        except OSError as e:
            raise storage_write_error(e, path) from None

    def records(self) -> list[dict]:
        out = []
        for p in sorted((self.root / "records").glob("*.json")):
            rec = read_json(p)
            if isinstance(rec, dict) and rec.get("schema") == SCHEMA:
                out.append(rec)
        return out

    # ------------------------------------------------------------ per-trial files

    def trial_dir(self, trial_id: str) -> Path:
        """A local folder where a defense may save pictures and vectors for its trial."""
        return self.root / "trials" / trial_id

    def publish_trial_dir(self, trial_id: str) -> None:
        """Make the trial folder's files durable in the store (local: already there)."""

    def local_root(self) -> Path:
        """A local folder with the store's small files (trigger images, trial pictures,
        analyses) for readers that walk the tree; the store itself for a local root."""
        return self.root

    def put_json(self, rel: str, obj: Any) -> Path:
        """Write a JSON file at `rel` under the root (atomically); returns its local path."""
        path = self.root / rel
        try:
            atomic_write_json(path, obj)
        except OSError as e:
            raise storage_write_error(e, path) from None
        return path

    # ------------------------------------------------------------ claims

    def claim(self, key: str) -> contextlib.AbstractContextManager:
        """Hold the exclusive claim on `key` (an artifact or trial id) across processes
        and nodes sharing this root; blocks while another process holds it."""
        return file_lock(self.root / "locks" / f"{key}.lock")
