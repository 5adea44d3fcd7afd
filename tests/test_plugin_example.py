"""The example plugin under examples/bench-plugin-example, installed as a user installs a
plugin (pip, offline, into a folder on PYTHONPATH) and run in a grid through `bench`."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "bench-plugin-example"
SUITE = """
name: plugin
description: the example plugin's attack and defense on the smallest supervised grid
models: [tiny-resnet]
datasets: [shapes-smoke]
settings: [supervised]
seeds: [0]
control_datasets: []
setting_params: {supervised: {epochs: 0.15, lr: 0.003, batch_size: 64}}
attack_params: {frame: {width: 2}}
defense_params: {weight-noise: {sigmas: [0.05, 0.2]}}
"""


@pytest.mark.slow
def test_the_example_plugin_installs_and_reaches_the_leaderboard(tmp_path):
    target = tmp_path / "site"
    source = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr[-3000:]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "COLUMNS": "250",
           "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}  # fmt: skip

    def bench(*args):
        return subprocess.run([sys.executable, "-m", "bench.cli", *args], env=env, capture_output=True, text=True,
                              timeout=600, cwd=tmp_path)  # fmt: skip

    r = bench("list", "plugins")
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    rows = [ln for ln in r.stdout.splitlines() if "bench-plugin-example" in ln]
    assert len(rows) == 2 and all(" ok " in ln for ln in rows), r.stdout
    assert any("attack frame" in ln for ln in rows) and any("defense weight-noise" in ln for ln in rows)

    (tmp_path / "plugin.yaml").write_text(SUITE)
    r = bench("run", "--suite", str(tmp_path / "plugin.yaml"), "--attacks", "frame", "--defenses", "weight-noise",
              "--executor", "serial", "--results", str(tmp_path / "res"), "--leaderboards", str(tmp_path / "lb"))  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rows = (tmp_path / "lb" / "plugin.csv").read_text().splitlines()
    assert any(r.startswith("tiny-resnet,shapes-smoke,supervised,frame,weight-noise,") for r in rows), rows
    assert "frame" in (tmp_path / "lb" / "plugin.md").read_text()
    (artifact,) = (tmp_path / "res" / "artifacts").iterdir()
    assert (artifact / "trigger.png").exists()
    assert "data:image/png;base64" in (tmp_path / "lb" / "plugin.html").read_text()  # the thumbnail
