"""The import contract: the project's modules form no cycle, and no module imports a layer
above its own, counting imports inside functions (they are real dependencies, only later).
Read from the source with `ast`; nothing is imported."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "attacks", "defenses")

# The layers, bottom first. A module may import its own layer and those below, never one
# above: the packages of bench/ are these layers, and the methods sit between what a trial
# is (protocol) and what runs it (run).
LAYERS = (
    ("bench.core",),  # configs, knobs, registry, process, devices, training, metrics, task vectors
    ("bench.store",),  # artifacts, records, claims
    ("bench.data",),
    ("bench.models",),
    ("bench.protocol",),  # specs, settings, the victim, the record
    ("attacks", "defenses"),
    ("bench.run",),  # one trial, the grid, the executors
    ("bench.report",),  # tables, pages, the exact check
    ("bench.study",),  # the TBAR study
    ("bench.cli",),
)
# The bottom: modules that import nothing of the project but each other.
BOTTOM = ("bench.core.fs", "bench.core.knobs", "bench.core.splits", "bench.core.repro", "bench.core.process")
# The registry is below every method, model and dataset: they come in through entry points.
REGISTERED = ("attacks", "defenses", "bench.models", "bench.data", "bench.protocol.settings")


def _layer(module: str) -> int | None:
    for i, prefixes in enumerate(LAYERS):
        if _under(module, prefixes):
            return i
    return None


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(name: str, path: Path) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):  # every import, at any depth
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {i for i in _imports(m, p) if i in mods and i != m} for m, p in mods.items()}


def _under(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append([*path[path.index(n) :], n])
            elif n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def test_every_module_lives_in_a_layer():
    loose = [m for m in _modules() if _layer(m) is None and m.count(".") > 0 and m not in ("bench.suites", "bench.templates")]  # data folders
    assert loose == [], f"modules outside every layer package: {loose}"


def test_no_module_imports_a_layer_above_it():
    graph = _graph()
    upward = []
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            lm, ld = _layer(m), _layer(d)
            if lm is not None and ld is not None and ld > lm:
                upward.append(f"{m} -> {d} (layer {LAYERS[lm][0]} imports {LAYERS[ld][0]})")
            if m == "bench.core.registry" and _under(d, REGISTERED):
                upward.append(f"{m} -> {d} (the registry imports what registers with it)")
            if m in BOTTOM and d.startswith("bench") and d not in BOTTOM:
                upward.append(f"{m} -> {d} (a bottom module imports the project)")
    assert upward == [], "\n".join(upward)


def test_the_contract_sees_imports_inside_functions(tmp_path):
    """The reader must not miss a late import: the very thing the contract is for."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from bench.run.trial import run_attack\n    import bench.cli.commands\n")
    assert {"bench.run.trial", "bench.run.trial.run_attack", "bench.cli.commands"} <= _imports("attacks.m", src)
