"""Claims on object storage: a lease object created with a conditional write.

POSIX locks need a shared kernel (one machine, or NFS); an S3 bucket has none. A claim
on `key` is the object `<root>/locks/<key>.claim`:

- taken with `PUT If-None-Match: *`, which S3 lets exactly one writer win;
- kept alive by a heartbeat thread that rewrites it every `lease/4` seconds with
  `PUT If-Match: <its own ETag>` (so a holder that lost its claim finds out);
- released with `DELETE If-Match: <ETag>`.

A waiter watches the claim's ETag. When the ETag has not changed for a whole lease (the
holder stopped beating: killed, or its node died), the claim is stale and the waiter
takes it over with `PUT If-Match: <stale ETag>`, which again only one waiter wins. Time
is measured on the waiter's own monotonic clock, so clocks of different nodes never
have to agree. A holder on this very machine whose process is gone is recognised at
once (same boot id, pid dead or reused), without waiting for the lease.

BENCH_CLAIM_LEASE_S sets the lease (default 60 seconds).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator

from bench.core import process

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = process.DEFAULT_LEASE_S


def lease_seconds() -> float:
    return process.current().claim_lease_s


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str:
    """When process `pid` started (clock ticks since boot), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def holder_is_dead(owner: dict) -> bool:
    """True only when `owner` ran on this machine (same boot) and its process is gone."""
    boot = _boot_id()
    if not boot or owner.get("boot") != boot or owner.get("host") != socket.gethostname():
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, under another user
    return bool(owner.get("start")) and _start_ticks(pid) != owner.get("start")


def s3_client():
    """A boto3 S3 client configured from the environment (see bench.core.fs)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as e:  # pragma: no cover - boto3 is a dependency
        from bench.core.fs import StorageError

        raise StorageError(f"s3:// storage needs boto3 ({e}); pip install boto3") from None
    from bench.core.fs import endpoint, region

    cfg = Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 5, "mode": "standard"})
    return boto3.session.Session().client("s3", endpoint_url=endpoint(), region_name=region(), config=cfg)


def _code(e: Exception) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


def _precondition_failed(e: Exception) -> bool:
    # 412 PreconditionFailed: the condition did not hold; 409 ConditionalRequestConflict:
    # a concurrent conditional write to the same key is in flight (retry later).
    return _code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


class S3Claims:
    def __init__(self, client, bucket: str, prefix: str):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def key_of(self, name: str) -> str:
        return f"{self.prefix}/locks/{name}.claim" if self.prefix else f"locks/{name}.claim"

    @contextlib.contextmanager
    def claim(self, name: str) -> Iterator[None]:
        lease = _Lease(self.client, self.bucket, self.key_of(name), lease_seconds())
        lease.acquire()
        try:
            yield
        finally:
            lease.release()


class _Lease:
    def __init__(self, client, bucket: str, key: str, lease_s: float):
        self.client, self.bucket, self.key, self.lease_s = client, bucket, key, lease_s
        self.owner = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start": _start_ticks(os.getpid()),
            "boot": _boot_id(),
            "token": uuid.uuid4().hex,
            "lease_s": lease_s,
        }
        self.etag: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self, beat: int) -> bytes:
        return json.dumps({**self.owner, "beat": beat, "time": time.time()}).encode()

    def _put(self, beat: int, **cond: str) -> str:
        r = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(beat), **cond)
        return r["ETag"]

    def _current(self) -> tuple[str, dict] | None:
        from botocore.exceptions import ClientError

        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as e:
            if _code(e) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        try:
            body = json.loads(r["Body"].read())
        except ValueError:
            body = {}
        return r["ETag"], body if isinstance(body, dict) else {}

    def acquire(self) -> None:
        from botocore.exceptions import ClientError

        seen_etag, seen_since = None, time.monotonic()
        while True:
            try:
                self.etag = self._put(0, IfNoneMatch="*")
                break
            except ClientError as e:
                if not _precondition_failed(e):
                    raise
            current = self._current()
            if current is None:
                continue  # released between our two requests: try again at once
            etag, holder = current
            now = time.monotonic()
            if etag != seen_etag:
                seen_etag, seen_since = etag, now
            lease = max(self.lease_s, float(holder.get("lease_s") or 0))
            if holder_is_dead(holder) or now - seen_since > lease:
                try:
                    self.etag = self._put(0, IfMatch=etag)
                    log.warning(
                        "took over the stale claim %s of %s pid %s", self.key, holder.get("host"), holder.get("pid")
                    )
                    break
                except ClientError as e:
                    if not _precondition_failed(e):
                        raise
                    continue  # another waiter took it first, or the holder beat just now
            time.sleep(min(2.0, self.lease_s / 8) * (0.5 + random.random()))
        self._thread = threading.Thread(target=self._beat, name=f"claim-heartbeat {self.key}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        from botocore.exceptions import ClientError

        beat = 0
        while not self._stop.wait(self.lease_s / 4):
            beat += 1
            try:
                self.etag = self._put(beat, IfMatch=self.etag)
            except ClientError as e:
                if _precondition_failed(e) and _code(e) not in ("ConditionalRequestConflict", "409"):
                    self.lost = True
                    log.warning("lost the claim %s (another process took it over after a missed heartbeat)", self.key)
                    return
                log.warning("claim heartbeat for %s failed: %s", self.key, e)
            except Exception as e:  # network trouble: keep trying until the lease runs out
                log.warning("claim heartbeat for %s failed: %s", self.key, e)

    def release(self) -> None:
        from botocore.exceptions import ClientError

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost or self.etag is None:
            return
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        except ClientError as e:
            if not (_precondition_failed(e) or _code(e) in ("NoSuchKey", "404")):
                log.warning("could not release the claim %s: %s", self.key, e)
