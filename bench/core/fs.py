"""Where a storage root lives: a local folder (a path or a `file://` URI) or an object
store (`s3://bucket/prefix`), and the few object-store operations the Store needs.

Object storage goes through pyarrow's filesystems (Ray ships pyarrow). The endpoint and
credentials come from the usual AWS environment variables, so S3-compatible servers
(MinIO, Ceph, a local test server) work the same way:

    AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3)   e.g. http://127.0.0.1:9000; unset: AWS S3
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY     (or any other source the AWS SDK reads)
    AWS_REGION (or AWS_DEFAULT_REGION)

Claims on object storage need conditional writes, which pyarrow does not expose; they
live in `bench.store.claims` (boto3).
"""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from filelock import FileLock

from bench.core.process import current as process_config


class StorageError(ValueError):
    """A storage root that cannot be used (reported to the user, not a traceback)."""


@dataclass(frozen=True)
class RootSpec:
    """A parsed storage root: `kind` is "local" (path set) or "s3" (bucket, prefix set)."""

    kind: str
    path: Path | None = None
    bucket: str = ""
    prefix: str = ""

    @property
    def uri(self) -> str:
        if self.kind == "local":
            return str(self.path)
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def _local_hostnames() -> set[str]:
    names = {"localhost"}
    try:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    except OSError:
        pass
    return names


def parse_root(root: str | Path, option: str = "--results") -> RootSpec:
    """A storage root as given on the command line -> RootSpec.

    `file:` URIs follow RFC 8089: `file:///abs/path`, `file://localhost/abs/path` and
    `file:/abs/path` name a local path, percent-escapes are decoded (`%20` is a space),
    and a URI naming another host (`file://otherhost/path`) is refused: reach another
    machine's folder by mounting it. `s3://bucket/prefix` is an object store.
    """
    if isinstance(root, Path) or ("://" not in str(root) and not str(root).startswith("file:")):
        return RootSpec("local", Path(root))
    text = str(root)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        host = parts.netloc
        if host and host.lower() not in _local_hostnames():
            raise StorageError(
                f"{option} {text!r}: a file:// URI names host {host!r}, not this machine; use file:///path "
                f"(or file://localhost/path) for a local folder, and mount a remote folder to reach it"
            )
        if parts.query or parts.fragment:
            raise StorageError(f"{option} {text!r}: a file:// URI takes no query or fragment")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise StorageError(f"{option} {text!r}: a file:// URI needs an absolute path (file:///path)")
        return RootSpec("local", Path(path))
    if scheme == "s3":
        bucket = parts.netloc
        if not bucket:
            raise StorageError(f"{option} {text!r}: an s3:// URI needs a bucket (s3://bucket/prefix)")
        prefix = unquote(parts.path).strip("/")
        return RootSpec("s3", bucket=bucket, prefix=prefix)
    raise StorageError(
        f"{option} {text!r}: {scheme}:// storage is not supported; use a folder (file:// or a path every node "
        f"mounts) or s3:// (AWS S3 or an S3-compatible server such as MinIO, set with AWS_ENDPOINT_URL)"
    )


def endpoint() -> str | None:
    """The S3 endpoint URL from the environment (None: AWS's own)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


class ObjectStore:
    """Small files and folders under `bucket/prefix` of an S3 bucket, through pyarrow.

    Every write is one object; an object appears whole or not at all, which is what
    makes records and sidecars atomic without a rename."""

    def __init__(self, spec: RootSpec):
        from pyarrow import fs as pafs

        kwargs: dict = {"connect_timeout": 10, "request_timeout": 60}
        url = endpoint()
        if url:
            ep = urlsplit(url)
            kwargs["endpoint_override"] = ep.netloc or ep.path
            kwargs["scheme"] = ep.scheme or "https"
        if region():
            kwargs["region"] = region()
        self.fs = pafs.S3FileSystem(**kwargs)
        self.spec = spec
        self.base = f"{spec.bucket}/{spec.prefix}".rstrip("/")

    def path(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def uri(self, rel: str) -> str:
        return f"{self.spec.uri}/{rel}"

    def read_bytes(self, rel: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        try:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.fs.open_output_stream(self.path(rel)) as f:
            f.write(data)

    def size(self, rel: str) -> int | None:
        from pyarrow import fs as pafs

        info = self.fs.get_file_info(self.path(rel))
        return info.size if info.type == pafs.FileType.File else None

    def list(self, rel_dir: str, sizes: bool = False) -> list:
        """Paths (relative to the root) of every object under `rel_dir`; with `sizes`,
        (path, size) pairs."""
        from pyarrow import fs as pafs

        sel = pafs.FileSelector(self.path(rel_dir), allow_not_found=True, recursive=True)
        n = len(self.base) + 1
        found = sorted((i.path[n:], i.size) for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File)
        return found if sizes else [rel for rel, _ in found]

    def upload(self, local: Path, rel: str) -> None:
        from pyarrow import fs as pafs

        pafs.copy_files(str(local), self.path(rel), destination_filesystem=self.fs)

    def download(self, rel: str, local: Path) -> None:
        from pyarrow import fs as pafs

        local.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(self.path(rel), str(local), source_filesystem=self.fs)

    def delete(self, rel: str) -> None:
        try:
            self.fs.delete_file(self.path(rel))
        except FileNotFoundError:
            pass

    def move(self, src: str, dst: str) -> None:
        self.fs.copy_file(self.path(src), self.path(dst))
        self.delete(src)


# ---------------------------------------------------------------- local files
# The lowest layer: every module that writes, locks or caches uses these.


def cache_dir() -> Path:
    """Where built datasets and pre-trained models are cached ($BENCH_CACHE overrides)."""
    root = process_config().cache or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "bench"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


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


def file_lock(path: Path) -> FileLock:
    """An exclusive advisory lock on `path` (created if missing, with its folder), held
    while the `with` block runs and released when it ends or the process dies (filelock's
    flock backend). Blocks while another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path)
