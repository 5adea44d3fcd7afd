"""The real `bench` command, in a subprocess, as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = """
name: e2e
description: the smallest real run of the default path (tiny-clip, finetune)
models: [tiny-clip]
datasets: [shapes-smoke]
settings: [finetune]
seeds: [0]
control_datasets: [colors-smoke]
setting_params: {finetune: {steps: 15}}
defense_params: {tbar: {steps: 5, alpha_points: 4}, finetune: {budget_x: 1}}
"""


def _bench(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def test_misspelt_attack_is_a_one_line_error_with_exit_code_2(tmp_path):
    r = _bench("run", "--attacks", "badnet", "--results", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "unknown attack 'badnet'" in lines[0] and "Did you mean 'badnets'?" in lines[0]


def test_list_reads_the_registries(tmp_path):
    r = _bench("list", "attacks", cwd=tmp_path)
    assert r.returncode == 0 and "badnets" in r.stdout and "blended" in r.stdout
    r = _bench("list", "suites", cwd=tmp_path)
    assert r.returncode == 0 and "micro" in r.stdout


@pytest.mark.slow
@pytest.mark.ray  # the default executor
def test_run_end_to_end_then_rerun_computes_nothing(tmp_path):
    suite = tmp_path / "e2e.yaml"
    suite.write_text(SUITE)
    args = [
        "run",
        "--suite",
        str(suite),
        "--attacks",
        "badnets",
        "--defenses",
        "tbar,finetune",
        "--results",
        str(tmp_path / "res"),
        "--leaderboards",
        str(tmp_path / "lb"),
    ]
    r = _bench(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "res" / "records").glob("*.json")]
    assert sorted(rec["config"]["defense"] for rec in records) == ["finetune", "none", "tbar"]
    assert all(rec["status"] == "ok" for rec in records)
    board = (tmp_path / "lb" / "e2e.md").read_text()
    assert "## tiny-clip / shapes-smoke / finetune" in board and "| badnets | tbar |" in board
    csv_head = (tmp_path / "lb" / "e2e.csv").read_text().splitlines()[0]
    assert csv_head.startswith("model,dataset,setting,attack,defense,n_seeds,n_took,ca,ca_lo,ca_hi,ca_std,asr,asr_lo")
    artifact = next((tmp_path / "res" / "artifacts").iterdir())
    assert (artifact / "model.safetensors").exists() and (artifact / "trigger.png").exists()

    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "res").rglob("*") if p.is_file()}
    r2 = _bench(*args, cwd=tmp_path)
    assert r2.returncode == 0
    assert "0 computed, 3 reused" in r2.stderr
    assert stamp == {p: p.stat().st_mtime_ns for p in (tmp_path / "res").rglob("*") if p.is_file()}
    assert Path(tmp_path / "lb" / "e2e.md").read_text() == board
