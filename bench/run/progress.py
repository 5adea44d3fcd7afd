"""What `bench run` shows while it works: the stage, how far it is, and how long is left.

A run goes through three stages: the victims (a pre-trained CLIP loaded from the cache or
the package, or pre-trained here, step k of n), the attack artifacts (stage 1), then the
defense trials (stage 2; a trial starts as soon as its own artifact exists, so the last two
overlap under Ray). On a terminal a live bar shows the stage, the units done out of those
this run computes, the elapsed time and an estimate of the time left. Anywhere else (a log
file, CI) a live bar prints nothing until it ends, so the same state is written as one plain
line at least every `every` seconds, and at once whenever the stage changes.
"""

from __future__ import annotations

import threading
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class RunDisplay:
    """Receives the executor's events (grid.Events) and shows them; a context manager."""

    def __init__(self, console: Console, every: float = 60.0, live: bool | None = None):
        self.console = console
        self.every = every
        self.live = console.is_terminal if live is None else live
        self.stage = "planning"
        self.status = ""
        self.artifacts = self.trials = self.reused = 0  # what this run computes (and reuses)
        self.artifacts_done = self.trials_done = 0
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._bar: Progress | None = None
        self._task = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ events

    def plan(self, artifacts: int, trials: int, reused: int) -> None:
        with self._lock:
            self.artifacts, self.trials, self.reused = artifacts, trials, reused
        self._set_stage("victims" if artifacts else "trials")

    def progress(self, message: str) -> None:
        with self._lock:
            self.status = message
        self._refresh()

    def start(self, label: str) -> None:
        self._set_stage("artifacts" if label.startswith("attack ") and self.stage != "trials" else "trials")
        with self._lock:
            self.status = label
        self._refresh()

    def unit_end(self, label: str) -> None:
        """A stage-1 unit (an attack artifact) ended."""
        with self._lock:
            self.artifacts_done += 1
        self._refresh()

    def record(self, record: dict, reused: bool) -> None:
        from bench.run.grid import trial_label_of

        tag = "reused" if reused else record["status"]
        self.console.print(f"  {tag:>6}  {trial_label_of(record)}", highlight=False)
        if not reused:
            with self._lock:
                self.trials_done += 1
            if self.stage != "trials" and self.artifacts_done >= self.artifacts:
                self._set_stage("trials")
        self._refresh()

    # ------------------------------------------------------------ state

    @property
    def done(self) -> int:
        return self.artifacts_done + self.trials_done

    @property
    def total(self) -> int:
        return self.artifacts + self.trials

    def eta(self) -> float | None:
        """Seconds left, from the pace of the units done so far (None before the first)."""
        done = self.done
        if not done or done >= self.total:
            return None if not done else 0.0
        return (time.monotonic() - self.t0) / done * (self.total - done)

    def line(self) -> str:
        with self._lock:
            eta = self.eta()
            left = "eta unknown" if eta is None else f"eta {clock(eta)}"
            counts = f"artifacts {self.artifacts_done}/{self.artifacts}, trials {self.trials_done}/{self.trials}"
            reused = f" ({self.reused} reused)" if self.reused else ""
            status = f": {self.status}" if self.status else ""
            return f"[{clock(time.monotonic() - self.t0)}] {self.stage}: {counts}{reused}, {left}{status}"

    def _set_stage(self, stage: str) -> None:
        if stage == self.stage:
            return
        self.stage = stage
        if not self.live:
            self.console.print(self.line(), highlight=False, markup=False)
        self._refresh()

    def _refresh(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, total=max(self.total, 1), completed=self.done, stage=self.stage,
                             status=self.status)  # fmt: skip

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            self.console.print(self.line(), highlight=False, markup=False)

    def events(self):
        """The executor's events (grid.Events), wired to this display."""
        from bench.run.grid import Events

        return Events(self.start, self.record, self.progress, self.plan, self.unit_end)

    # ------------------------------------------------------------ lifetime

    def __enter__(self) -> RunDisplay:
        self.t0 = time.monotonic()
        if self.live:
            self._bar = Progress(
                TextColumn("[bold]{task.fields[stage]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                console=self.console,
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("run", total=1, stage=self.stage, status="")
        else:
            self._thread = threading.Thread(target=self._beat, name="bench-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._bar is not None:
            self._bar.__exit__(*exc)
        if self._thread is not None:
            self._thread.join(timeout=1)
            self.console.print(self.line(), highlight=False, markup=False)


class StepLines:
    """A long loop of steps (`bench pretrain`) shown off a terminal: a plain line at the first
    step, then at least every `every` seconds, then at the last, each with the step, the loss,
    the elapsed time and the time left at the pace since the first step (the set-up before
    it, such as drawing the corpus, is not a step). On a terminal the CLI shows a bar."""

    def __init__(self, console: Console, label: str, total: int, every: float = 60.0):
        self.console, self.label, self.total, self.every = console, label, total, every
        self.t0 = time.monotonic()
        self._last: float | None = None
        self._first: tuple[float, int] | None = None  # (time, steps done) at the first update

    def update(self, done: int, note: str = "") -> None:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.every and done < self.total:
            return
        self._last = now
        if self._first is None:
            self._first = (now, done)
        t1, d1 = self._first
        left = clock((now - t1) / (done - d1) * (self.total - done)) if done > d1 else "unknown"
        spent = now - self.t0
        note = f", {note}" if note else ""
        self.console.print(
            f"[{clock(spent)}] {self.label}: step {done}/{self.total}{note}, eta {left}", highlight=False, markup=False
        )
