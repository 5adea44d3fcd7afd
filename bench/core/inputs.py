"""Files a config names enter a trial's identity by their content, not their path.

A method's parameter that names a file (blended's `pattern_file`, a model `checkpoint`)
is declared with `input_file()`; every such field, and the files of a real dataset
under `--data-root`, is hashed (SHA-256) when the grid is planned, and the digests go
into the artifact config as `inputs: {field: sha256}`. A changed file therefore
changes the artifact and trial ids, so it is recomputed, never silently reused; every
record lists the digests.

Hashing a large file once is enough: digests are cached in `<bench cache>/digests.json`
by (path, device, inode, size, mtime_ns, ctime_ns). Only regular files are accepted: a
FIFO, device or folder is a one-line error naming the field, raised while planning,
before any work starts or any claim is taken.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

from bench.core.config import ConfigError
from bench.core.fs import atomic_write_bytes, cache_dir

PATTERN_MAX_BYTES = 64 << 20  # an image pattern larger than this is a mistake, not a pattern

_CACHE_LOCK = threading.Lock()
_MEMO: dict[str, str] = {}


class InputFileError(ConfigError):
    """A file a config names cannot be used (missing, not a regular file, too large)."""


def input_file(default: str | None = None, max_bytes: int | None = None) -> Any:
    """A dataclass field naming an input file (content-addressed; see module docstring)."""
    return dataclasses.field(default=default, metadata={"input_file": True, "max_bytes": max_bytes})


def file_fields(params_cls: type | None) -> dict[str, int | None]:
    """{field name: size limit} of `params_cls`'s input-file fields."""
    if params_cls is None or not dataclasses.is_dataclass(params_cls):
        return {}
    return {f.name: f.metadata.get("max_bytes") for f in dataclasses.fields(params_cls) if f.metadata.get("input_file")}


def _cache_path() -> Path:

    return cache_dir() / "digests.json"


def _stat_key(path: Path, st: os.stat_result) -> str:
    return f"{path}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"


def _load_cache() -> dict[str, str]:
    try:
        data = json.loads(_cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(key: str, digest: str) -> None:

    with _CACHE_LOCK:
        data = _load_cache()
        data[key] = digest
        if len(data) > 20000:  # keep the cache small: drop the oldest half
            data = dict(list(data.items())[len(data) // 2 :])
        try:
            atomic_write_bytes(_cache_path(), json.dumps(data, sort_keys=False).encode())
        except OSError:
            pass  # a cache, not a record: hashing again next time is fine


def check_regular(path: str | Path, where: str, max_bytes: int | None = None) -> os.stat_result:
    """stat() `path` (following links) and insist on a regular file of at most `max_bytes`."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputFileError(f"{where}: {path} does not exist") from None
    except OSError as e:
        raise InputFileError(f"{where}: {path} cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a file"
        raise InputFileError(f"{where}: {path} is {kind}; a regular file is required")
    if max_bytes is not None and st.st_size > max_bytes:
        raise InputFileError(f"{where}: {path} is {st.st_size} bytes; at most {max_bytes} are allowed")
    return st


def open_regular(path: str | Path, where: str, max_bytes: int | None = None):
    """Open `path` for reading, refusing anything but a regular file without ever
    blocking on it (a FIFO opened for reading would wait for a writer forever)."""
    check_regular(path, where, max_bytes)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped for something else since the check
            raise InputFileError(f"{where}: {path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def digest(path: str | Path, where: str, max_bytes: int | None = None) -> str:
    """SHA-256 of a regular file's content, hashed once per (path, inode, size, mtime, ctime)."""
    path = Path(path).expanduser().resolve()
    st = check_regular(path, where, max_bytes)
    key = _stat_key(path, st)
    if key in _MEMO:
        return _MEMO[key]
    cached = _load_cache().get(key)
    if cached:
        _MEMO[key] = cached
        return cached
    h = hashlib.sha256()
    with open_regular(path, where, max_bytes) as f:
        after = os.fstat(f.fileno())
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    value = h.hexdigest()
    # A file written within the last two seconds may change again within the same mtime
    # tick; such a digest is used but not cached (git's "racily clean" rule).
    if _stat_key(path, after) == key and time.time_ns() - st.st_mtime_ns > 2_000_000_000:
        _MEMO[key] = value
        _save_cache(key, value)
    return value


def remember(path: Path, value: str) -> None:
    """Seed the cache with a digest just computed while writing `path` (weights)."""
    path = Path(path).resolve()
    try:
        st = os.stat(path)
    except OSError:
        return
    key = _stat_key(path, st)
    _MEMO[key] = value
    if time.time_ns() - st.st_mtime_ns > 2_000_000_000:
        _save_cache(key, value)


# ---------------------------------------------------------------- configs


def config_inputs(acfg: dict) -> dict[str, str]:
    """{field: sha256} of every input file a stage-1 config names: method parameters
    declared with `input_file()` and the files of the real datasets it reads."""
    from bench.core.registry import ATTACKS, DATASETS, MODELS, SETTINGS

    out: dict[str, str] = {}
    for reg, name, section in (
        (ATTACKS, acfg["attack"], "attack_params"),
        (MODELS, acfg["model"], "model_params"),
        (SETTINGS, acfg["setting"], "setting_params"),
    ):
        params = acfg.get(section) or {}
        for fname, limit in file_fields(getattr(reg.get(name), "Params", None)).items():
            value = params.get(fname)
            if value:
                out[f"{section}.{name}.{fname}"] = digest(value, f"{section}.{name}.{fname}", limit)
    for ds in dict.fromkeys([acfg["dataset"], *acfg.get("control_datasets", [])]):
        files = getattr(DATASETS.get(ds), "input_files", None)
        if files is None:
            continue
        for rel, path in files():
            out[f"data.{ds}.{rel}"] = digest(path, f"--data-root file of {ds}")
    return out


def verify(acfg: dict) -> None:
    """The input files still hold what the config was planned with (else: an error)."""
    planned = acfg.get("inputs") or {}
    if not planned:
        return
    now = config_inputs(acfg)
    changed = sorted(k for k, v in planned.items() if now.get(k) != v)
    if changed:
        raise InputFileError(
            f"input file(s) changed since this trial was planned: {', '.join(changed)}; rerun to use the new content"
        )
