"""Changed input files, full disks, broken plugins, damaged weights, file:// URIs, Ray's
temporary folders and executor-independent artifacts: each through the real `bench`
command, as a user meets them."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import quote

import pytest

SUITE = """
name: tinyrob
description: the smallest supervised grid
models: [tiny-resnet]
datasets: [shapes-smoke]
settings: [supervised]
seeds: [0]
control_datasets: []
setting_params: {supervised: {epochs: 0.15, lr: 0.003, batch_size: 64}}
defense_params: {tbar: {steps: 3, alpha_points: 3, alpha_max: 2.0, refine_steps: 0}, finetune: {budget_x: 1, epochs: 1}}
"""


def _env(**extra) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", **extra}
    env.pop("BENCH_THREADS", None)  # the default (1 thread per unit) unless a test sets it
    env.update({k: v for k, v in extra.items() if k == "BENCH_THREADS"})
    return env


def _run(tmp_path: Path, *args: str, suite: str = SUITE, env: dict | None = None, timeout: int = 600):
    (tmp_path / "tinyrob.yaml").write_text(suite)
    cmd = [sys.executable, "-m", "bench.cli", "run", "--suite", str(tmp_path / "tinyrob.yaml"),
           "--leaderboards", str(tmp_path / "lb"), *args]  # fmt: skip
    return subprocess.run(cmd, env=env or _env(), capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def _summary(r) -> tuple[int, int]:
    m = re.search(r"(\d+) computed, (\d+) reused", r.stderr)
    assert m, r.stderr[-3000:]
    return int(m.group(1)), int(m.group(2))


def _png(path: Path, rgb: tuple[int, int, int]) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), rgb).save(path)


# ---------------------------------------------------------------- 1. input files by content


@pytest.mark.slow
def test_a_changed_pattern_file_is_recomputed_not_reused(tmp_path):
    """Red pattern, run; overwrite it with blue, rerun: the artifact is rebuilt and its
    stored trigger is blue. The root is a file://localhost URI with an escaped space."""
    pattern = tmp_path / "pattern.png"
    _png(pattern, (255, 0, 0))
    suite = SUITE + f"attack_params: {{blended: {{pattern_file: {pattern}, alpha: 0.3}}}}\n"
    root = tmp_path / "with space" / "res"
    uri = "file://localhost" + quote(str(root))
    args = ["--attacks", "blended", "--defenses", "none", "--executor", "serial", "--results", uri]
    r = _run(tmp_path, *args, suite=suite)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _summary(r) == (1, 0)
    (rec,) = [json.loads(p.read_text()) for p in (root / "records").glob("*.json")]  # the space was decoded
    import hashlib

    key = "attack_params.blended.pattern_file"
    assert rec["config"]["inputs"] == {key: hashlib.sha256(pattern.read_bytes()).hexdigest()}

    _png(pattern, (0, 0, 255))
    r = _run(tmp_path, *args, suite=suite)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _summary(r) == (1, 0)  # computed again, nothing stale reused
    from PIL import Image

    stored = [Image.open(p).convert("RGB").getpixel((0, 0)) for p in (root / "artifacts").glob("*/trigger.png")]
    assert sorted(stored) == [(0, 0, 255), (255, 0, 0)]  # both artifacts, each with its own pattern
    recs = [json.loads(p.read_text()) for p in (root / "records").glob("*.json")]
    assert len({r["trial_id"] for r in recs}) == 2


def test_a_fifo_or_folder_as_pattern_file_is_one_line_before_any_work(tmp_path):
    fifo = tmp_path / "pattern.fifo"
    os.mkfifo(fifo)
    for bad, word in ((fifo, "FIFO"), (tmp_path, "folder")):
        suite = SUITE + f"attack_params: {{blended: {{pattern_file: {bad}}}}}\n"
        r = _run(tmp_path, "--attacks", "blended", "--defenses", "none", "--executor", "serial",
                 "--results", str(tmp_path / "res"), suite=suite, timeout=120)  # fmt: skip
        assert r.returncode == 2, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "attack_params.blended.pattern_file" in lines[0] and word in lines[0], lines
        assert not (tmp_path / "res").exists()  # no lock taken, nothing written


def test_input_digests_are_cached_and_size_limited(tmp_path, monkeypatch):
    import hashlib

    from bench.core import inputs

    f = tmp_path / "p.bin"
    f.write_bytes(b"x" * 1000)
    old = os.stat(f).st_mtime_ns - 10**10
    os.utime(f, ns=(old, old))  # older than the racy window: cacheable
    assert inputs.digest(f, "w") == hashlib.sha256(b"x" * 1000).hexdigest()
    calls, real = [], hashlib.sha256
    monkeypatch.setattr(inputs.hashlib, "sha256", lambda: calls.append(1) or real())
    inputs._MEMO.clear()
    inputs.digest(f, "w")
    assert calls == []  # read from the on-disk cache by (path, inode, size, mtime, ctime)
    f.write_bytes(b"y" * 1000)  # same size, new content
    assert inputs.digest(f, "w") == real(b"y" * 1000).hexdigest()
    with pytest.raises(inputs.InputFileError, match="at most 10 are allowed"):
        inputs.digest(f, "w", max_bytes=10)


# ---------------------------------------------------------------- 2. a full disk

# Fault injection for every Python process of the run (Ray workers too): os.replace, the
# last step of every atomic write under the root, fails with ENOSPC once the root holds
# FAULT_AFTER records, as on a disk that has just filled up.
SITECUSTOMIZE = """
import errno, os, pathlib
_root, _after = os.environ.get("FAULT_ROOT"), int(os.environ.get("FAULT_AFTER", "0"))
if _root:
    _replace = os.replace
    def _faulty_replace(src, dst, *a, **k):
        d = os.path.abspath(os.fspath(dst))
        if d.startswith(_root + os.sep) and ("/records/" in d or "/artifacts/" in d):
            recs = pathlib.Path(_root, "records")
            if recs.is_dir() and len(list(recs.glob("*.json"))) >= _after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(dst))
        return _replace(src, dst, *a, **k)
    os.replace = _faulty_replace
"""


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["serial", pytest.param("ray", marks=pytest.mark.ray)])
def test_a_full_disk_stops_the_grid_with_one_line_and_a_rerun_resumes(tmp_path, executor):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    root = tmp_path / "res"
    pythonpath = os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])
    env = _env(PYTHONPATH=pythonpath, FAULT_ROOT=str(root), FAULT_AFTER="1")
    args = ["--attacks", "badnets", "--defenses", "tbar,finetune", "--executor", executor, "--results", str(root)]
    r = _run(tmp_path, *args, env=env)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-5000:]
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1, r.stderr[-3000:]
    m = re.search(r"bench: error: could not write (\S+): No space left on device .*the grid stopped with (\d) of 3 "
                  r"trials stored .*nothing partial written.*rerun the same command to resume", errors[0])  # fmt: skip
    assert m, errors[0]
    assert m.group(1).startswith(str(root))
    stored = sorted((root / "records").glob("*.json"))
    assert 1 <= len(stored) < 3 and int(m.group(2)) <= len(stored)
    assert all(json.loads(p.read_text())["status"] == "ok" for p in stored)
    leftovers = [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.startswith((".build-", ".fetch-"))]
    assert leftovers == []
    before = {p.name: p.read_bytes() for p in stored}

    if executor == "ray":
        return  # resuming is the same code for both executors; once is enough
    r = _run(tmp_path, *args)  # space again
    assert r.returncode == 0, r.stderr[-3000:]
    assert _summary(r) == (3 - len(before), len(before))
    assert all((root / "records" / n).read_bytes() == b for n, b in before.items())


# ---------------------------------------------------------------- 3. plugins


def _fake_plugins(where: Path) -> None:
    """Installed distributions as importlib.metadata sees them: a dist-info folder with
    entry points, beside the modules they name."""

    def dist(name: str, entry_points: str) -> None:
        info = where / f"{name.replace('-', '_')}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))

    dist("broken-plugin", "[bench.attacks]\nbroken = broken_plugin\n")
    (where / "broken_plugin.py").write_text("import a_module_that_is_not_installed\n")
    dist("good-plugin", "[bench.attacks]\ngood = good_plugin\n")
    (where / "good_plugin.py").write_text(
        textwrap.dedent("""
        from attacks.badnets import BadNets
        from bench.core.registry import ATTACKS

        ATTACKS.register("good-patch", "a plugin's badnets", settings=("supervised",))(type("Good", (BadNets,), {}))
    """)
    )
    dist("sloppy-plugin", "[bench.defenses]\nnosettings = sloppy_nosettings\nnoparams = sloppy_noparams\n")
    (where / "sloppy_nosettings.py").write_text(
        textwrap.dedent("""
        from bench.core.registry import DEFENSES
        from defenses.none import NoDefense

        DEFENSES.register("sloppy-a", "forgot settings=")(type("A", (NoDefense,), {}))
    """)
    )
    (where / "sloppy_noparams.py").write_text(
        textwrap.dedent("""
        from bench.core.registry import DEFENSES
        from defenses.base import Defense

        @DEFENSES.register("sloppy-b", "forgot Params", settings=("supervised",))
        class B(Defense):
            def run(self, ctx):
                return None
    """)
    )


def test_a_broken_plugin_is_one_warning_and_everything_else_works(tmp_path):
    _fake_plugins(tmp_path / "site")
    site = os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])
    env = _env(PYTHONPATH=site, COLUMNS="250")  # wide enough that rich does not wrap the table

    def bench(*args):
        return subprocess.run([sys.executable, "-m", "bench.cli", *args], env=env, capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)  # fmt: skip

    r = bench("list", "attacks")
    assert r.returncode == 0, r.stderr
    assert "badnets" in r.stdout and "good-patch" in r.stdout and "broken" not in r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 3 and all(ln.startswith("bench: warning: plugin ") for ln in lines), r.stderr
    (broken,) = [ln for ln in lines if "broken-plugin" in ln]  # one line per broken entry point
    assert "ModuleNotFoundError" in broken and "a_module_that_is_not_installed" in broken

    r = bench("list", "plugins")
    assert r.returncode == 0, r.stderr
    rows = {ln.split("│")[1].strip(): ln for ln in r.stdout.splitlines() if ln.count("│") > 4}
    assert "ok" in rows["good"] and "attack good-patch" in rows["good"]
    assert "failed: ModuleNotFoundError" in rows["broken"]
    assert "without settings" in " ".join(r.stdout.split()) and "no Params dataclass" in " ".join(r.stdout.split())

    r = bench("list", "defenses")  # the sloppy plugin's defenses never register, the built-ins do
    assert r.returncode == 0 and "tbar" in r.stdout and "sloppy" not in r.stdout
    assert r.stderr.count("bench: warning: plugin 'sloppy-plugin'") == 2


def test_the_ci_page_runs_exactly_the_builtin_methods():
    """CI reruns the committed ci page's own commands (bench leaderboard --check): together
    they must run every built-in attack and defense, and the suite names its methods one by
    one, so an installed plugin never changes the grid CI checks."""
    from bench.core.config import load_suite
    from bench.core.registry import ATTACKS, DEFENSES, load_plugins
    from bench.report import check

    load_plugins()
    # Adaptive attacks (bench list attacks) are outside `all` and get a page of their own.
    builtin = {reg.kind: sorted(e.name for e in reg if e.obj.__module__.split(".")[0] in ("attacks", "defenses")
                                and not getattr(e.obj, "adaptive", None))
               for reg in (ATTACKS, DEFENSES)}  # fmt: skip
    rows = check.read_rows((Path(__file__).parents[1] / "leaderboards" / "ci-rows.csv").read_text())
    assert sorted(set(rows["attack"])) == builtin["attack"] and sorted(set(rows["defense"])) == builtin["defense"]
    suite = load_suite("ci")
    assert "all" not in suite.attacks and "all" not in suite.defenses
    assert sorted(ATTACKS.resolve(suite.attacks)) == builtin["attack"]
    assert set(DEFENSES.resolve(suite.defenses)) <= set(builtin["defense"])


def test_builtin_selects_the_projects_own_methods_and_no_plugin(monkeypatch):
    """`builtin` is `all` without plugins: a method registered from outside the project's
    packages joins `all` and never `builtin`."""
    from bench.core.registry import ATTACKS, Entry, load_plugins

    load_plugins()
    before_all, before_builtin = ATTACKS.resolve("all"), ATTACKS.resolve("builtin")
    assert before_all == before_builtin and "adap-blend" not in before_builtin
    plugin = type("PluginAttack", (), {"__module__": "someones_plugin.attacks"})
    monkeypatch.setitem(ATTACKS._entries, "zz-plugin", Entry("zz-plugin", plugin, "a plugin's attack", ("finetune",)))
    assert ATTACKS.resolve("all") == [*before_all, "zz-plugin"]
    assert ATTACKS.resolve("builtin") == before_builtin


# ---------------------------------------------------------------- 4. damaged weights, executors


@pytest.mark.slow
def test_altered_or_truncated_weights_are_quarantined_and_rebuilt(tmp_path):
    root = tmp_path / "res"
    args = ["--attacks", "badnets", "--defenses", "none", "--executor", "serial", "--results", str(root)]
    r = _run(tmp_path, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    (artifact,) = (root / "artifacts").iterdir()
    weights = artifact / "model.safetensors"
    original = weights.read_bytes()
    (record,) = (root / "records").glob("*.json")

    for damage in ("altered", "truncated"):
        data = bytearray(original)
        if damage == "altered":
            data[-1] ^= 0xFF  # same size, one flipped byte
        else:
            del data[-100:]
        weights.write_bytes(bytes(data))
        record.unlink()  # a trial that needs the artifact again
        r = _run(tmp_path, *args)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "quarantined" in r.stderr and "rebuilt" in r.stderr, r.stderr[-3000:]
        assert _summary(r) == (1, 0)
        assert weights.read_bytes() == original  # rebuilt, to the same bytes
        kept = sorted((root / "quarantine").glob("*/model.safetensors"))
        assert any(p.read_bytes() == bytes(data) for p in kept)  # the damaged copy, kept aside
    assert len(list((root / "quarantine").iterdir())) == 2


@pytest.mark.slow
@pytest.mark.ray
def test_serial_and_ray_build_byte_identical_artifacts(tmp_path):
    """Same artifact id, same bytes: the serial executor (which used every core) and Ray
    (one thread per trial) used to build different weights under one id."""
    args = ["--attacks", "badnets", "--defenses", "none"]
    for executor in ("serial", "ray"):
        r = _run(tmp_path, *args, "--executor", executor, "--results", str(tmp_path / executor))
        assert r.returncode == 0, r.stderr[-3000:]
    (a,) = (tmp_path / "serial" / "artifacts").iterdir()
    assert (a / "model.safetensors").read_bytes() == (
        tmp_path / "ray" / "artifacts" / a.name / "model.safetensors"
    ).read_bytes()
    workers = [
        json.loads(next((tmp_path / e / "records").glob("*.json")).read_text())["worker"] for e in ("serial", "ray")
    ]
    assert [w["executor"] for w in workers] == ["serial", "ray"] and [w["threads"] for w in workers] == [1, 1]


@pytest.mark.slow
def test_a_damaged_pretrained_checkpoint_is_quarantined_and_retrained():
    from bench.models.pretrain import PretrainConfig, checkpoint_path, get_pretrained

    cfg = PretrainConfig(steps=2, batch_size=16, n_shapes=64, warmup_steps=1)
    get_pretrained(cfg)
    path = checkpoint_path(cfg).with_suffix(".safetensors")
    original = path.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    get_pretrained(cfg)  # used to raise CorruptCheckpointError on every call
    assert path.read_bytes() == original
    (kept,) = (path.parent / "quarantine").glob(f"*/{path.name}")
    assert kept.read_bytes() == bytes(data)


# ---------------------------------------------------------------- 5. file:// URIs


def test_file_uris_follow_rfc_8089(tmp_path):
    from bench.core.fs import StorageError, parse_root

    assert parse_root("file:///tmp/a%20b/c").path == Path("/tmp/a b/c")
    assert parse_root("file://localhost/tmp/x").path == Path("/tmp/x")
    assert parse_root("file:/tmp/x").path == Path("/tmp/x")
    assert parse_root("relative/dir").path == Path("relative/dir")
    for bad, words in (
        ("file://otherhost/x", "names host 'otherhost'"),
        ("gs://b/p", "gs:// storage is not supported"),
    ):
        with pytest.raises(StorageError, match=words):
            parse_root(bad)
    r = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--results", "file://otherhost/results"],
                       env=_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "otherhost" in lines[0], r.stderr
