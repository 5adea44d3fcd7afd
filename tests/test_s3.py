"""Results and artifacts on object storage (`--results s3://bucket/prefix`), against a
local S3-compatible server (moto) that the tests start on 127.0.0.1 and stop."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bench.store.claims

pytestmark = pytest.mark.s3

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

SUITE = """
name: tinys3
description: a tiny supervised grid on object storage
models: [tiny-resnet]
datasets: [shapes-smoke]
settings: [supervised]
seeds: [0]
control_datasets: []
setting_params: {supervised: {epochs: 0.15, lr: 0.003, batch_size: 64}}
defense_params: {tbar: {steps: 3, alpha_points: 3, alpha_max: 2.0, refine_steps: 0}, finetune: {budget_x: 1, epochs: 1}}
"""
GRID = ["--attacks", "badnets", "--defenses", "tbar,finetune"]  # 1 artifact, 3 trials
BUCKET = "bench-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(environment for a client of the local server, boto3 client); the server is stopped after the module."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    client.create_bucket(Bucket=BUCKET)
    try:
        yield env, client
    finally:
        server.stop()


def _env(s3env: dict, **extra) -> dict:
    env = {**os.environ, **s3env, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
           "BENCH_CLAIM_LEASE_S": "6", **extra}  # fmt: skip
    env.pop("BENCH_THREADS", None)
    return env


def _cmd(tmp_path: Path, prefix: str, *extra: str) -> list[str]:
    (tmp_path / "tinys3.yaml").write_text(SUITE)
    return [sys.executable, "-m", "bench.cli", "run", "--suite", str(tmp_path / "tinys3.yaml"), *GRID,
            "--results", f"s3://{BUCKET}/{prefix}", "--leaderboards", str(tmp_path / "lb"), *extra]  # fmt: skip


def _records(client, prefix: str) -> dict[str, bytes]:
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/records/")
    return {
        o["Key"].rsplit("/", 1)[1]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
        for o in listing.get("Contents", [])
    }


def _keys(client, prefix: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", [])]


class _VirtualClock:
    """Stands in for the `time` module inside bench.store.claims: monotonic() reads a counter that
    only sleep() advances; wall time (written into the claim's body) stays real."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    @staticmethod
    def time() -> float:
        return time.time()


def test_claims_on_s3_exclude_each_other_and_stale_ones_are_taken_over(s3, monkeypatch, tmp_path):
    """Two holders never overlap; a claim whose holder stopped beating expires."""
    env, client = s3
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("BENCH_CLAIM_LEASE_S", "2")
    from bench.store.claims import S3Claims, s3_client

    claims = S3Claims(s3_client(), BUCKET, "claims-test")
    with claims.claim("k"):
        body = json.loads(client.get_object(Bucket=BUCKET, Key="claims-test/locks/k.claim")["Body"].read())
        assert body["pid"] == os.getpid()
    assert _keys(client, "claims-test") == []  # released

    # A claim left by a holder on another machine that stopped beating: taken after a lease.
    client.put_object(Bucket=BUCKET, Key="claims-test/locks/k.claim",
                      Body=json.dumps({"host": "elsewhere", "pid": 1, "lease_s": 2}).encode())  # fmt: skip
    # The waiter's clock is virtual (it advances only by the waiter's own sleeps), so "after a
    # whole lease and within two polls of it" is checked exactly, however loaded the machine.
    clock = _VirtualClock()
    monkeypatch.setattr(bench.store.claims, "time", clock)
    with claims.claim("k"):
        waited = clock.now
    monkeypatch.setattr(bench.store.claims, "time", time)
    poll = min(2.0, 2 / 8) * 1.5  # the longest jittered poll at a 2 s lease
    assert 2 < waited <= 2 + 2 * poll, waited

    # A holder in another process: the waiter blocks until it lets go. The holder leaves a
    # mark as the last thing it does while holding; the waiter must find it once it gets in.
    mark = tmp_path / "holder-done"
    code = (
        "import pathlib, sys, time; from bench.store.claims import S3Claims, s3_client\n"
        f"with S3Claims(s3_client(), {BUCKET!r}, 'claims-test').claim('k'):\n"
        f"    print('held', flush=True); time.sleep(2); pathlib.Path({str(mark)!r}).touch()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **env}, stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with claims.claim("k"):
        assert mark.exists()  # not before the holder let go
    assert holder.wait(timeout=120) == 0


@pytest.mark.slow
def test_a_grid_on_s3_resumes_after_sigkill_with_finished_records_unchanged(tmp_path, s3):
    env, client = s3
    proc = subprocess.Popen(_cmd(tmp_path, "kill", "--executor", "serial"), env=_env(env), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    while len(_records(client, "kill")) < 1:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _records(client, "kill")
    assert 1 <= len(before) < 3

    summary = tmp_path / "summary.json"  # resumed by the Ray executor: its workers reach the bucket too
    r = subprocess.run(_cmd(tmp_path, "kill", "--executor", "ray", "--summary-json", str(summary)),
                       env=_env(env), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(summary.read_text())
    print(
        f"s3 resume after SIGKILL: {len(before)} records before, rerun computed {s['computed']}, reused {s['reused']}"
    )
    assert s["computed"] == 3 - len(before) and s["reused"] == len(before)
    after = _records(client, "kill")
    assert len(after) == 3 and all(after[n] == b for n, b in before.items())
    assert all(json.loads(b)["status"] == "ok" for b in after.values())
    keys = _keys(client, "kill")
    assert not [k for k in keys if "/locks/" in k]  # every claim released or taken over
    assert len([k for k in keys if k.endswith("/model.json")]) == 1
    rows = (tmp_path / "lb" / "tinys3.csv").read_text().splitlines()[1:]
    assert {r.split(",")[4] for r in rows if r.startswith("tiny-resnet,shapes-smoke,supervised,badnets,")} == {
        "none", "tbar", "finetune"}  # fmt: skip


@pytest.mark.slow
def test_two_concurrent_runs_on_s3_compute_each_trial_once(tmp_path, s3):
    env, client = s3
    procs = []
    for i in range(2):
        cmd = _cmd(tmp_path, "two", "--executor", "serial", "--summary-json", str(tmp_path / f"s{i}.json"))
        procs.append(subprocess.Popen(cmd, env=_env(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    sums = [json.loads((tmp_path / f"s{i}.json").read_text()) for i in range(2)]
    print("s3 concurrent runs: " + ", ".join(f"computed {s['computed']} reused {s['reused']}" for s in sums))
    assert sum(s["computed"] for s in sums) == 3  # each trial claimed and computed once
    assert all(s["computed"] + s["reused"] == 3 for s in sums)
    recs = [json.loads(b) for b in _records(client, "two").values()]
    assert len(recs) == 3 and all(r["status"] == "ok" for r in recs)
    keys = _keys(client, "two")
    assert len([k for k in keys if k.endswith("/model.json")]) == 1 and not [k for k in keys if "/locks/" in k]
