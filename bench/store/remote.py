"""A storage root on object storage: `--results s3://bucket/prefix`.

The layout under the prefix is the local one (`artifacts/`, `records/`, `trials/`,
`quarantine/`), plus `locks/<key>.claim` objects for claims (see `bench.store.claims`).

- Records are small JSON objects, each written with a single PUT: a reader sees the
  old record or the new one, never half of one.
- An artifact is built in a local folder, then uploaded file by file with its sidecar
  `model.json` last: the sidecar's presence marks a complete artifact, as on disk.
- Artifacts are read through a local mirror under the bench cache
  (`$BENCH_CACHE/remote/<bucket>-<hash>/`): downloaded once per node, checked against
  the sidecar's SHA-256, and reused while the sidecar is unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.core.fs import ObjectStore, StorageError, cache_dir, parse_root
from bench.store import (
    SCHEMA,
    CorruptCheckpointError,
    RecordState,
    Store,
    check_record,
    file_lock,
    record_bytes,
    storage_write_error,
    weights_problem,
)


class S3Store(Store):
    remote = True

    def __init__(self, root: str | Path):
        from bench.store.claims import S3Claims, s3_client

        self.spec = parse_root(root)
        self.obj = ObjectStore(self.spec)
        client = s3_client()
        try:
            client.head_bucket(Bucket=self.spec.bucket)
        except Exception as e:
            raise StorageError(
                f"--results {self.spec.uri}: cannot reach bucket {self.spec.bucket!r} ({type(e).__name__}: {e}); "
                "check AWS_ENDPOINT_URL and the credentials"
            ) from None
        self.claims = S3Claims(client, self.spec.bucket, self.spec.prefix)
        tag = hashlib.sha256(f"{self.obj.fs.type_name}:{self.spec.uri}".encode()).hexdigest()[:12]
        self.root = cache_dir() / "remote" / f"{self.spec.bucket}-{tag}"

    @property
    def uri(self) -> str:
        return self.spec.uri

    def __str__(self) -> str:
        return self.spec.uri

    # ------------------------------------------------------------ artifacts

    def _remote_meta(self, artifact_id: str) -> tuple[bytes | None, dict | None]:
        import json

        raw = self.obj.read_bytes(f"artifacts/{artifact_id}/model.json")
        if raw is None:
            return None, None
        try:
            meta = json.loads(raw)
        except ValueError:
            return raw, None
        return raw, meta if isinstance(meta, dict) else None

    def artifact_problem(self, artifact_id: str, verify_hash: bool = False) -> str | None:
        if verify_hash:
            try:
                self.fetch_artifact(artifact_id)
            except CorruptCheckpointError as e:
                return str(e).split(": ", 1)[-1]
            except FileNotFoundError:
                return "missing"
            return None
        raw, meta = self._remote_meta(artifact_id)
        if raw is None:
            return "missing"
        if meta is None:
            return "sidecar unreadable"
        expected = (meta.get("weights_file") or {}).get("bytes")
        size = self.obj.size(f"artifacts/{artifact_id}/model.safetensors")
        if size is None:
            return "weight file missing"
        if expected is not None and size != expected:
            return f"weight file is {size} bytes, its sidecar says {expected} (truncated or replaced)"
        return None

    def fetch_artifact(self, artifact_id: str) -> Path:
        """Download the artifact into the local mirror (once), checked against its sidecar."""
        raw, meta = self._remote_meta(artifact_id)
        if raw is None:
            raise FileNotFoundError(f"{self.obj.uri(f'artifacts/{artifact_id}')}: no such artifact")
        local = self.artifact_dir(artifact_id)
        local.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.root / "locks" / f"fetch-{artifact_id}.lock"):
            if (local / "model.json").exists() and (local / "model.json").read_bytes() == raw:
                if weights_problem(local / "model", meta, verify_hash=True) is None:
                    return local
            tmp = Path(tempfile.mkdtemp(prefix=f".fetch-{artifact_id}-", dir=local.parent))
            try:
                for rel in self.obj.list(f"artifacts/{artifact_id}"):
                    self.obj.download(rel, tmp / rel.split("/", 2)[2])
                problem = weights_problem(tmp / "model", meta, verify_hash=True)
                if problem:
                    raise CorruptCheckpointError(
                        f"{self.obj.uri(f'artifacts/{artifact_id}/model.safetensors')}: {problem}"
                    )
                shutil.rmtree(local, ignore_errors=True)
                tmp.replace(local)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return local

    def commit_artifact(self, artifact_id: str, build: Path) -> None:
        """Upload every file, the sidecar last (it marks completion); then keep the build
        as this node's mirror copy."""
        prefix = f"artifacts/{artifact_id}"
        stale = self.obj.list(prefix)
        if f"{prefix}/model.json" in stale:  # a complete but damaged copy: keep it for inspection
            self.quarantine_artifact(artifact_id, "replaced by a rebuild")
        else:  # files of a builder killed before its sidecar: not an artifact
            for rel in stale:
                self.obj.delete(rel)
        files = sorted(p for p in build.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == "model.json")
        for p in files:
            rel = f"{prefix}/{p.relative_to(build).as_posix()}"
            try:
                self.obj.upload(p, rel)
            except OSError as e:
                raise storage_write_error(e, self.obj.uri(rel)) from None
        local = self.artifact_dir(artifact_id)
        with file_lock(self.root / "locks" / f"fetch-{artifact_id}.lock"):
            shutil.rmtree(local, ignore_errors=True)
            build.replace(local)

    def quarantine_artifact(self, artifact_id: str, reason: str) -> None:
        import logging
        import os
        import time

        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = f"quarantine/{stamp}-{artifact_id}-{os.getpid()}"
        prefix = f"artifacts/{artifact_id}"
        moved = self.obj.list(prefix)
        # The sidecar goes first, so the artifact stops counting as complete at once.
        moved.sort(key=lambda rel: rel.endswith("model.json"), reverse=True)
        for rel in moved:
            self.obj.move(rel, f"{dest}/{rel[len(prefix) + 1 :]}")
        shutil.rmtree(self.artifact_dir(artifact_id), ignore_errors=True)
        if moved:
            logging.getLogger("bench.store").warning(
                "quarantined %s -> %s: %s; it will be rebuilt", self.obj.uri(prefix), self.obj.uri(dest), reason
            )

    # ------------------------------------------------------------ records

    def record_path(self, trial_id: str) -> str:  # type: ignore[override]
        return self.obj.uri(f"records/{trial_id}.json")

    def record_state(self, trial_id: str) -> RecordState:
        import json

        raw = self.obj.read_bytes(f"records/{trial_id}.json")
        if raw is None:
            return RecordState("missing")
        try:
            rec = json.loads(raw)
        except ValueError:
            rec = None
        return check_record(trial_id, rec)

    def write_record(self, record: dict) -> None:
        rel = f"records/{record['trial_id']}.json"
        try:
            self.obj.write_bytes(rel, record_bytes(record))
        except OSError as e:
            raise storage_write_error(e, self.obj.uri(rel)) from None

    def _record_names(self) -> list[str]:
        return [rel for rel in self.obj.list("records") if rel.endswith(".json") and rel.count("/") == 1]

    def records(self) -> list[dict]:
        import json

        def read(rel: str) -> dict | None:
            raw = self.obj.read_bytes(rel)
            try:
                rec = json.loads(raw) if raw is not None else None
            except ValueError:
                return None
            return rec if isinstance(rec, dict) and rec.get("schema") == SCHEMA else None

        with ThreadPoolExecutor(8) as pool:
            return [r for r in pool.map(read, self._record_names()) if r is not None]

    # ------------------------------------------------------------ per-trial files

    def publish_trial_dir(self, trial_id: str) -> None:
        local = self.trial_dir(trial_id)
        if not local.is_dir():
            return
        for p in sorted(local.rglob("*")):
            if p.is_file():
                rel = f"trials/{trial_id}/{p.relative_to(local).as_posix()}"
                try:
                    self.obj.upload(p, rel)
                except OSError as e:
                    raise storage_write_error(e, self.obj.uri(rel)) from None

    def local_root(self) -> Path:
        """Mirror the small files readers walk (trigger images, trial pictures, analyses)."""
        for top in ("artifacts", "trials", "analysis"):
            for rel, size in self.obj.list(top, sizes=True):
                if top == "artifacts" and not rel.endswith(".png"):
                    continue  # weights are fetched per artifact, when a trial needs them
                dest = self.root / rel
                if not dest.exists() or dest.stat().st_size != size:
                    with contextlib.suppress(OSError):
                        self.obj.download(rel, dest)
        return self.root

    def put_json(self, rel: str, obj) -> Path:
        path = super().put_json(rel, obj)  # the mirror copy
        try:
            self.obj.upload(path, rel)
        except OSError as e:
            raise storage_write_error(e, self.obj.uri(rel)) from None
        return path

    # ------------------------------------------------------------ claims

    def claim(self, key: str) -> contextlib.AbstractContextManager:
        return self.claims.claim(key)


def open_store(root: str | Path) -> Store:
    """The store of a results root: a local folder (a path or a `file://` URI), or an
    object-store root (`s3://bucket/prefix`) mirrored through a local folder."""
    return S3Store(root) if parse_root(root).kind == "s3" else Store(root)
