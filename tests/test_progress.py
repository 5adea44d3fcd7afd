"""What `bench run` shows while it works (bench/run/progress.py): the stage, the counts, an ETA,
and plain lines where the output is not a terminal."""

import io
import re

from rich.console import Console

from bench.run.progress import RunDisplay, StepLines, clock


def _record(defense: str, status: str = "ok") -> dict:
    return {"status": status, "config": {"model": "m", "dataset": "d", "setting": "s", "attack": "a",
                                         "defense": defense, "seed": 0}}  # fmt: skip


def test_plain_output_names_each_stage_as_it_starts_with_counts_and_an_eta():
    buf = io.StringIO()
    with RunDisplay(Console(file=buf, width=200), every=3600) as d:
        d.plan(artifacts=2, trials=3, reused=1)
        d.progress("tiny-clip: shipped weights")
        d.start("attack m/d/s/a/seed0")
        d.unit_end("attack m/d/s/a/seed0")
        d.start("attack m/d/s/b/seed0")
        d.unit_end("attack m/d/s/b/seed0")
        d.start("m/d/s/a/tbar/seed0")
        d.record(_record("tbar"), reused=False)
        assert d.done == 3 and d.total == 5 and d.eta() is not None
    lines = buf.getvalue().splitlines()
    stages = [re.match(r"\[\d+:\d\d\] (\w+):", ln).group(1) for ln in lines if ln.startswith("[")]
    assert stages[:3] == ["victims", "artifacts", "trials"], lines
    assert "artifacts 0/2, trials 0/3 (1 reused), eta unknown" in lines[0]
    assert "      ok  m/d/s/a/tbar/seed0" in lines
    assert re.search(r"artifacts 2/2, trials 1/3 \(1 reused\), eta \d+:\d\d", lines[-1]), lines[-1]


def test_plain_output_beats_while_nothing_happens():
    buf = io.StringIO()
    with RunDisplay(Console(file=buf, width=200), every=0.05) as d:
        d.plan(artifacts=1, trials=1, reused=0)
        d.progress("pre-training tiny-clip (once, then cached) step 10/1000 loss 3.000")
        d._stop.wait(0.5)  # the heartbeat thread prints on its own while no event comes
    beats = [ln for ln in buf.getvalue().splitlines() if "step 10/1000" in ln]
    assert len(beats) >= 3


def test_a_terminal_gets_a_live_bar_and_no_plain_lines():
    buf = io.StringIO()
    with RunDisplay(Console(file=buf, width=200, force_terminal=True), every=0.01) as d:
        d.plan(artifacts=1, trials=1, reused=0)
        d._stop.wait(0.1)
    assert d.live and not re.search(r"^\[\d+:\d\d\] ", buf.getvalue(), re.M)


def test_clock():
    assert clock(0) == "0:00" and clock(61.4) == "1:01" and clock(3725) == "1:02:05"


def test_step_lines_print_the_first_step_then_at_most_every_period_then_the_last(monkeypatch):
    """`bench pretrain` off a terminal: a line at step 1, none while the period has not passed,
    one once it has, and always the last step; the ETA comes from the pace after step 1 (65 s for 2 steps, 7 left)."""
    now = [100.0]
    monkeypatch.setattr("bench.run.progress.time.monotonic", lambda: now[0])
    buf = io.StringIO()
    lines = StepLines(Console(file=buf, width=200), "pre-training m", total=10, every=60)
    for step, t in ((1, 110), (2, 120), (3, 175), (4, 180), (10, 200)):
        now[0] = t
        lines.update(step, f"loss {step}")
    got = buf.getvalue().splitlines()
    assert got == [
        "[0:10] pre-training m: step 1/10, loss 1, eta unknown",
        "[1:15] pre-training m: step 3/10, loss 3, eta 3:48",
        "[1:40] pre-training m: step 10/10, loss 10, eta 0:00",
    ], got
