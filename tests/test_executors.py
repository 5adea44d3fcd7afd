"""The Ray executor, failures, kills, concurrent runs and a two-node cluster.

Runs go through the real `bench` command where the property is about the command
(kill and rerun, two processes), and through the library elsewhere."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.core.config import SuiteConfig
from bench.run.grid import Selection, plan_grid, run_serial
from bench.store import Store

SUITE = """
name: tinyexec
description: a tiny supervised grid for executor tests
models: [tiny-resnet]
datasets: [shapes-smoke]
settings: [supervised]
seeds: [0]
control_datasets: []
setting_params: {supervised: {steps: 40, lr: 0.003, batch_size: 64}}
defense_params: {tbar: {steps: 5, alpha_points: 5, alpha_max: 2.0}, finetune: {budget_x: 2}}
"""
GRID = ["--attacks", "badnets,none", "--defenses", "tbar,finetune"]  # 2 artifacts, 5 trials


def _suite_obj(**over) -> SuiteConfig:
    import yaml

    return SuiteConfig(**{**yaml.safe_load(SUITE), **over})


def _cmd(tmp_path: Path, *extra: str, results: str = "res") -> list[str]:
    suite = tmp_path / "tinyexec.yaml"
    suite.write_text(SUITE)
    return [sys.executable, "-m", "bench.cli", "run", "--suite", str(suite), *GRID,
            "--results", str(tmp_path / results), "--leaderboards", str(tmp_path / "lb"), *extra]  # fmt: skip


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_THREADS": "1", "RAY_AUTH_MODE": "disabled"}


def _records(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "records").glob("*.json"))}


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["serial", pytest.param("ray", marks=pytest.mark.ray)])
def test_sigkill_then_rerun_computes_only_the_missing_trials(tmp_path, executor):
    """Kill the whole run (its process group: the driver and, for Ray, every Ray process
    it started) mid-grid; the rerun leaves every complete record byte-for-byte alone,
    recomputes a record we tore, and finishes the rest."""
    proc = subprocess.Popen(
        _cmd(tmp_path, "--executor", executor), env=_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    records = tmp_path / "res" / "records"
    while not records.exists() or len(list(records.glob("*.json"))) < 2:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # A Ray worker notices its raylet's death only at its next poll: one that was renaming
    # a finished record may complete it just after the kill (seen under load). Wait until
    # the folder is still, so `before` is what the rerun will find.
    names, still_by = None, time.time() + 30
    while names != (names := sorted(p.name for p in records.glob("*.json"))) and time.time() < still_by:
        time.sleep(3)
    before = _records(tmp_path / "res")
    assert 2 <= len(before) < 5
    torn_name = sorted(before)[0]
    (tmp_path / "res" / "records" / torn_name).write_bytes(before[torn_name][: len(before[torn_name]) // 2])

    summary = tmp_path / "summary.json"
    r = subprocess.run(
        _cmd(tmp_path, "--executor", executor, "--summary-json", str(summary)), env=_env(),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = json.loads(summary.read_text())
    assert s["computed"] == 5 - len(before) + 1 and s["reused"] == len(before) - 1
    assert f"recomputed {tmp_path / 'res' / 'records' / torn_name}" in r.stderr.replace("\n", "")
    after = _records(tmp_path / "res")
    assert len(after) == 5
    for name, data in before.items():
        if name != torn_name:
            assert after[name] == data, name
    assert json.loads(after[torn_name])["status"] == "ok"
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["artifacts", "locks", "records", "trials"]


@pytest.mark.slow
def test_two_processes_on_one_root_compute_each_trial_once(tmp_path):
    procs = []
    for i in range(2):
        cmd = _cmd(tmp_path, "--executor", "serial", "--summary-json", str(tmp_path / f"s{i}.json"))
        procs.append(subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    sums = [json.loads((tmp_path / f"s{i}.json").read_text()) for i in range(2)]
    assert sum(s["computed"] for s in sums) == 5  # claimed once each; the other process reused it
    assert all(s["computed"] + s["reused"] == 5 for s in sums)
    recs = [json.loads(b) for b in _records(tmp_path / "res").values()]
    assert len(recs) == 5 and all(r["status"] == "ok" for r in recs)
    assert len(list((tmp_path / "res" / "artifacts").iterdir())) == 2


@pytest.mark.slow
@pytest.mark.ray
def test_ray_executor_gives_the_serial_numbers_and_records_failures(tmp_path):
    from bench.run.ray_grid import RayOptions, run_ray

    suite = _suite_obj(defense_params={"tbar": {"steps": 5, "alpha_points": 5, "alpha_max": 2.0},
                                       "finetune": {"budget_x": 2}, "tbar-mix": {"data_fraction": 0.9}})  # fmt: skip
    plan = plan_grid(suite, Selection(attacks="badnets,none", defenses="tbar,finetune,tbar-mix"))
    ray_sum = run_ray(plan, Store(tmp_path / "ray"), RayOptions(cpus_per_trial=1, num_cpus=2))
    assert ray_sum.computed == 6 and ray_sum.workers == 2
    assert [label for label, _ in ray_sum.failed] == ["tiny-resnet/shapes-smoke/supervised/badnets/tbar-mix/seed0"]
    assert "defender's pool holds" in ray_sum.failed[0][1]
    ray_recs = {(r["config"]["attack"], r["config"]["defense"]): r for r in ray_sum.records}
    assert all(r["worker"]["executor"] == "ray" and r["worker"]["threads"] == 1 for r in ray_recs.values())

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same per-trial threads as the Ray workers
    try:
        serial = run_serial(plan, Store(tmp_path / "serial"))
    finally:
        torch.set_num_threads(threads)
    for r in serial.records:
        twin = ray_recs[(r["config"]["attack"], r["config"]["defense"])]
        assert r["trial_id"] == twin["trial_id"] and r["status"] == twin["status"]
        if r["status"] == "ok":
            for k in ("ca", "asr", "ra"):
                assert r["metrics"][k] == twin["metrics"][k], (r["config"]["defense"], k)

    again = run_ray(plan, Store(tmp_path / "ray"), RayOptions(cpus_per_trial=1, num_cpus=2))
    assert again.reused == 5 and again.computed == 1  # only the failed trial is retried


def test_a_failed_attack_fails_its_trials_once_without_retrying(tmp_path, monkeypatch):
    """Stage 1 raising: every dependent trial gets a failed record naming stage 1, and the
    attack is tried once, not once per defense."""
    import bench.run.grid as grid

    calls = []

    def broken(spec, store, progress):
        calls.append(spec.attack)
        raise RuntimeError("the attack broke")

    monkeypatch.setattr(grid, "run_attack", broken)
    plan = plan_grid(_suite_obj(), Selection(attacks="badnets", defenses="tbar,finetune"))
    summary = run_serial(plan, Store(tmp_path))
    assert calls == ["badnets"]
    assert len(summary.failed) == 3
    assert all("stage 1 (attack artifact) failed: RuntimeError: the attack broke" in e for _, e in summary.failed)
    assert all(Store(tmp_path).read_record(r["trial_id"])["status"] == "failed" for r in summary.records)


@pytest.mark.slow
@pytest.mark.ray
def test_trials_land_on_both_nodes_of_a_two_node_cluster(tmp_path):
    from ray.cluster_utils import Cluster

    from bench.run.ray_grid import RayOptions, run_ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        plan = plan_grid(_suite_obj(), Selection(attacks="badnets,blended,none", defenses="tbar,finetune"))
        summary = run_ray(plan, Store(tmp_path), RayOptions(cpus_per_trial=1, address=cluster.address))
        assert summary.failed == [] and summary.computed == 8 and summary.workers == 2
        # Units (stage 1 and 2) ran on both nodes, and every record landed in the one root.
        assert len(summary.nodes) == 2 and sum(summary.nodes.values()) == 3 + 8, summary.nodes
        assert {r["worker"]["node_id"] for r in summary.records} <= set(summary.nodes)
        assert len(list((tmp_path / "records").glob("*.json"))) == 8
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
