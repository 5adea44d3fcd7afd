"""Trade-off curves and matched-retention operating points (methods.md section 5).

Every defense trades clean accuracy for backdoor removal through a strength knob (TBAR's
alpha, the length of fine-tuning, a pruning ratio or threshold). A defense exposes its
knob as a `Knob` (values to try, and how to put the model at one of them); the engine
evaluates each value on the validation split and keeps the curve. Defenses are then
compared at matched clean-accuracy retention:

    blind (the headline): for R in LEVELS, the strongest knob value whose validation
    CA >= R * CA_bd, reported with its test metrics. It reads no ASR, so it is the same
    rule for every defense, whatever the defense knows.

    oracle (an upper bound, never the headline): the knob value with the lowest
    validation ASR, measured with the attacker's trigger, among those with validation
    CA >= R * CA_bd (ties: the weakest setting, the one listed first). For a defense that
    does not know the trigger this is a choice it could not make.

Every curve starts at the undefended model (`IDENTITY`), which is always feasible: at a
retention level a defense cannot reach, it is credited with doing nothing.

The summary number is the normalised area under the (retention, ASR) curve over
[0.90, 1.0]: the mean, over retention levels r uniform in [0.90, 1.0], of the test ASR
at the knob value chosen on validation for level r. Lower is better; a defense that
removes nothing scores the backdoored ASR.

Everything here is a pure function of numbers, except `refine`, which calls back to
evaluate new knob values.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

LEVELS = (0.99, 0.95, 0.90)
AUC_RANGE = (0.90, 1.0)
IDENTITY = "identity"  # the knob label of the undefended model on every curve

Knob = float | str


@dataclass
class KnobSpec:
    """What a defense exposes about its strength knob.

    `values` are ordered from weakest to strongest; `at(v)` puts the defense's output
    model in the state of knob value v (in place) and is cheap (no retraining);
    `identity` is the value at which the model is the undefended one (TBAR's alpha 0,
    zero fine-tuning steps), or None when no value is, and then `at(IDENTITY)` must
    restore the undefended model; `continuous` says values between two listed ones are
    meaningful, so the engine may bisect between them; `chosen` is the value the
    defense's own rule picked (the model it returns is at that value)."""

    name: str
    values: list[float]
    at: Callable[[Knob], None]
    chosen: float
    identity: float | None = None
    continuous: bool = False
    extra: dict = field(default_factory=dict)


def feasible(points: Sequence[dict], ca_ref: float, level: float) -> list[int]:
    return [i for i, p in enumerate(points) if p["ca"] is not None and p["ca"] >= level * ca_ref - 1e-12]


def select(points: Sequence[dict], ca_ref: float, level: float) -> int:
    """Index of the chosen point: the lowest ASR among points with CA >= level * ca_ref;
    ties go to the earliest point (the weakest setting). `points` are ordered weakest
    first and must include one that is always feasible (the identity) for a sound
    choice; with none feasible, index 0."""
    ok = feasible(points, ca_ref, level)
    if not ok:
        return 0
    return min(ok, key=lambda i: (_asr(points[i]), i))


def _asr(p: dict) -> float:
    return float("inf") if p.get("asr") is None else p["asr"]


def bracket(points: Sequence[dict], ca_ref: float, level: float) -> tuple[int, int] | None:
    """Indices (i, i + 1) of adjacent points where the curve leaves the feasible set
    just after the chosen point, i.e. where a value between them might reach a lower
    ASR at this retention level; None when there is nothing to refine."""
    best = select(points, ca_ref, level)
    nxt = best + 1
    if nxt >= len(points):
        return None
    if points[nxt]["ca"] is not None and points[nxt]["ca"] >= level * ca_ref:
        return None  # the next point is feasible and worse (or equal): no crossing here
    return best, nxt


def strongest_feasible(points: Sequence[dict], ca_ref: float, level: float) -> int:
    """The blind operating point (methods.md section 5): index of the strongest knob value
    (the last point; points are ordered weakest first) whose CA >= level * ca_ref. It reads
    no ASR, so it needs no trigger: the same rule for every defense. With none feasible, 0."""
    ok = feasible(points, ca_ref, level)
    return ok[-1] if ok else 0


def boundary_bracket(points: Sequence[dict], ca_ref: float, level: float) -> tuple[int, int] | None:
    """Indices (i, i + 1) of the blind point and its infeasible neighbour: where a value
    between them might keep the retention level with a stronger knob; None at the end."""
    i = strongest_feasible(points, ca_ref, level)
    return (i, i + 1) if i + 1 < len(points) else None


def refine(
    points: list[dict],
    ca_ref: float,
    levels: Sequence[float],
    evaluate: Callable[[float], dict],
    steps: int,
    bracket_of: Callable[[Sequence[dict], float, float], tuple[int, int] | None] = bracket,
) -> list[dict]:
    """Bisect the knob inside the bracket `bracket_of` names (by default between the oracle's
    chosen point and its infeasible neighbour; `boundary_bracket` for the blind point),
    `steps` times per level, so that the choice moves smoothly with the curve instead of
    jumping by grid steps. Points must carry a numeric 'knob' and be sorted by it (the
    identity point, if present, first). Returns the new, sorted list."""
    points = list(points)
    for level in levels:
        for _ in range(steps):
            br = bracket_of(points, ca_ref, level)
            if br is None:
                break
            lo, hi = points[br[0]], points[br[1]]
            if not isinstance(lo["knob"], (int, float)) or not isinstance(hi["knob"], (int, float)):
                break
            mid = (lo["knob"] + hi["knob"]) / 2
            if mid in (lo["knob"], hi["knob"]):
                break
            points.insert(br[1], {"knob": mid, **evaluate(mid), "refined": True})
    return points


def auc_breakpoints(points: Sequence[dict], ca_ref: float, lo: float = AUC_RANGE[0], hi: float = AUC_RANGE[1]):
    """The retention band [lo, hi] cut into segments on which the chosen point is
    constant: a list of (width, index of the chosen point)."""
    cuts = {lo, hi}
    for p in points:
        if p["ca"] is not None and ca_ref > 0:
            r = p["ca"] / ca_ref
            if lo < r < hi:
                cuts.add(r)
    edges = sorted(cuts)
    out = []
    for a, b in itertools.pairwise(edges):
        # the choice on (a, b] is the choice at b: feasibility is CA >= r * ca_ref
        out.append((b - a, select(points, ca_ref, b)))
    return out


def auc(points: Sequence[dict], ca_ref: float, test_asr: Callable[[int], float]) -> float:
    """Normalised area under (retention, test ASR) over AUC_RANGE: the mean test ASR of
    the validation-chosen point over retention levels uniform in the range."""
    segments = auc_breakpoints(points, ca_ref)
    total = sum(w for w, _ in segments)
    return sum(w * test_asr(i) for w, i in segments) / total
