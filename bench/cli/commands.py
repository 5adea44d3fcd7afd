"""The `bench` command. Thin: parses arguments, then calls the library."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.core import process
from bench.core.config import ConfigError, load_suite, suite_names
from bench.core.process import ProcessConfig
from bench.core.registry import UnknownNameError, load_plugins

console = Console(stderr=True, soft_wrap=True)
out = Console()


def _threads() -> None:
    """Threads for work done in this process: one in the reproducibility mode (the same
    as inside every Ray trial), else BENCH_THREADS or every core."""
    import torch

    from bench.core import repro

    if repro.enabled():
        repro.configure_torch()
    else:
        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))


# ---------------------------------------------------------------- commands


def cmd_list(args: argparse.Namespace) -> int:
    from bench.core.registry import ATTACKS, DATASETS, DEFENSES, MODELS, SETTINGS
    from bench.report import listing

    if args.pretrained and args.what != "models":
        raise ConfigError(f"--pretrained lists model weights; it does not apply to bench list {args.what}")
    if args.what == "suites":
        table = Table("suite", "description")
        for name in suite_names():
            if listing.matches(name, args.pattern):
                table.add_row(name, load_suite(name).description)
        out.print(table)
        return 0
    if args.what == "plugins":
        return _list_plugins()
    if args.pretrained:
        table = Table("model (for --models)", "cached", "weights file, or the hub repo to fetch from")
        table.columns[0].no_wrap = table.columns[1].no_wrap = True
        table.columns[2].overflow = "fold"
        for row in listing.pretrained_rows(args.pattern):
            table.add_row(*row)
        out.print(table, soft_wrap=True)
        return 0
    reg = {"attacks": ATTACKS, "defenses": DEFENSES, "datasets": DATASETS, "models": MODELS, "settings": SETTINGS}[
        args.what
    ]
    rows = listing.model_rows(args.pattern) if args.what == "models" else listing.registry_rows(reg, args.pattern)
    table = Table(args.what[:-1], "settings", "description")
    table.columns[0].no_wrap = True
    for row in rows:
        table.add_row(*row)
    out.print(table)
    if args.what == "models":
        out.print(listing.naming_note(), highlight=False)
    return 0


def _list_plugins() -> int:
    from bench.core.registry import plugin_status

    plugins = plugin_status()
    if not plugins:
        out.print("no plugins installed (entry points in groups bench.attacks, bench.defenses, bench.datasets, "
                  "bench.models, bench.protocol.settings; see docs/plugins.md)")  # fmt: skip
        return 0
    table = Table("plugin", "package", "entry point", "status", "registered")
    for p in plugins:
        status = p.status if p.status == "ok" else f"[red]{p.status}[/]"
        table.add_row(p.name, p.package, f"{p.group}: {p.value}", status, ", ".join(p.registered) or "-")
    out.print(table)
    return 0


def _process_config(args: argparse.Namespace) -> ProcessConfig:
    """This run's process-wide choices: the environment's, overridden by the options given.
    Installed for the command (`main`); Ray workers receive it as an argument."""
    cfg = ProcessConfig.from_env()
    over: dict = {}
    if getattr(args, "data_root", None):
        over["data_root"] = str(Path(args.data_root).expanduser().resolve())
    if getattr(args, "allow_download", False):
        over["allow_download"] = True
    if getattr(args, "device", None):
        over["device"] = args.device
    if getattr(args, "compile", False):
        over["compile"] = True
    return dataclasses.replace(cfg, **over)


def _apply_environment(args: argparse.Namespace) -> None:
    """Configure this process's device from the installed configuration (imports torch)."""
    from bench.core import runtime

    cfg = process.current()
    runtime.configure(cfg.device, compile=cfg.compile)  # a bad --device is an error now, not in a worker


def _write_csv(path: Path, rows: list[dict]) -> None:
    """An analysis's rows as a CSV file (columns in the first row's order), written atomically."""
    import csv
    import io

    from bench.store import atomic_write_bytes

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def preflight(plan) -> list[str]:
    """Every missing dataset file and model weight the plan needs, found by looking
    for files only (seconds), so a run fails before any training rather than hours in."""
    from bench.core.registry import DATASETS, MODELS

    problems: list[str] = []
    datasets = {a.dataset for a in plan.artifacts} | {d for a in plan.artifacts for d in a.control_datasets}
    for name in sorted(datasets):
        check = getattr(DATASETS.get(name), "check", None)
        if check is not None:
            problems += check()
    models = {(a.model, json.dumps(a.model_params_json, sort_keys=True)): a for a in plan.artifacts}
    for key in sorted(models):
        missing = getattr(MODELS.get(key[0]), "missing", None)
        if missing is not None:
            problem = missing(models[key].model_params)
            if problem:
                problems.append(problem)
    return problems


def cmd_run(args: argparse.Namespace) -> int:
    from bench.report import leaderboard
    from bench.run.grid import Selection, plan_grid, run_serial
    from bench.store.remote import open_store

    suite = load_suite(args.suite)
    store = open_store(args.results)  # a bad --results is an error before anything else (nothing is created)
    models = args.models
    if getattr(args, "pretrained", None):
        from bench.cli.args import with_pretrained

        models = with_pretrained(models or ",".join(suite.models), args.pretrained)
    sel = Selection(
        args.attacks,
        args.defenses,
        models,
        args.datasets,
        args.settings,
        args.seeds,
        getattr(args, "precision", None),
    )
    _apply_environment(args)  # a bad --device is an error before anything is planned or printed
    plan = plan_grid(suite, sel)
    by_reason: dict[str, list[str]] = {}
    for cell, reason in plan.skipped:
        by_reason.setdefault(reason, []).append(cell)
    for reason, cells in by_reason.items():
        where = cells[0] if len(cells) == 1 else f"{len(cells)} cells (e.g. {cells[0]})"
        console.print(f"[yellow]skip[/] {where}: {reason}", highlight=False)
    if not plan.trials:
        console.print("[red]nothing to run[/]: every requested cell was skipped")
        return 1
    problems = preflight(plan)
    if getattr(args, "dry_run", False):
        return _dry_run(plan, open_store(args.results), suite.name, problems)
    if problems:
        console.print(f"bench: error: {len(problems)} required file(s) missing; nothing was run:", highlight=False)
        for p in problems:
            console.print(f"  {p}", highlight=False, soft_wrap=True)
        return 2
    ray_opts = None
    if args.executor == "ray":
        from bench.run.ray_grid import RayOptions

        ray_opts = RayOptions(args.cpus_per_trial, args.gpus_per_trial, args.max_concurrent, args.address)
        ray_opts.check()
    else:
        _threads()
    console.print(
        f"suite [bold]{suite.name}[/]: {len(plan.artifacts)} attack artifacts, {len(plan.trials)} trials "
        f"-> {store} ({args.executor} executor)"
    )
    from bench.run.progress import RunDisplay

    with RunDisplay(console) as display:
        events = display.events()
        if ray_opts is None:
            summary = run_serial(plan, store, events=events)
        else:
            from bench.run.ray_grid import run_ray

            summary = run_ray(plan, store, ray_opts, events)
    if args.summary_json:
        from bench.store import atomic_write_json

        with contextlib.suppress(OSError) if summary.aborted else contextlib.nullcontext():
            atomic_write_json(
                Path(args.summary_json),
                {
                    "executor": summary.executor,
                    "workers": summary.workers,
                    "wall_s": summary.wall_s,
                    "compute_s": summary.compute_s,
                    "overhead_share": summary.overhead_share,
                    "computed": summary.computed,
                    "reused": summary.reused,
                    "failed": len(summary.failed),
                    "aborted": summary.aborted,
                },
            )
    if summary.aborted:  # the storage refused a write: one line, no leaderboard, exit 1
        console.print(
            f"bench: error: {summary.aborted}; the grid stopped with {summary.computed + summary.reused} of "
            f"{len(plan.trials)} trials stored ({summary.computed} in this run) and nothing partial written; "
            "once it can write again, rerun the same command to resume",
            highlight=False,
            soft_wrap=True,
        )
        return 1
    for path, reason in summary.corrupt:
        console.print(f"[yellow]recomputed[/] {path}: {reason}", highlight=False)
    console.print(
        f"{summary.computed} computed, {summary.reused} reused, {len(summary.failed)} failed in "
        f"{summary.wall_s:.1f} s ({summary.executor}, {summary.workers} worker(s), "
        f"harness overhead {100 * summary.overhead_share:.0f}% of worker time)"
    )
    records = leaderboard.select_records(store.records(), suite.name, {t.id for t in plan.trials})
    # (an object-store root has no local folder of its own: there, ./leaderboards)
    default_dir = Path("." if store.remote else store.root) / "leaderboards"
    out_dir = Path(args.leaderboards) if args.leaderboards else default_dir
    paths = leaderboard.write(records, suite.name, out_dir, store, suite_cfg=suite, suite_ref=args.suite)
    sys.stdout.write(Path(paths["markdown"]).read_text())
    console.print("leaderboard: " + ", ".join(str(p) for p in paths.values()))
    for label, err in summary.failed:
        console.print(f"[red]failed[/] {label}: {err}", highlight=False)
    return 1 if summary.failed else 0


def _dry_run(plan, store, suite: str, problems: list[str]) -> int:
    """bench run --dry-run: the grid and what a run would compute or reuse; nothing is run."""
    from bench.run.grid import dry_run

    artifacts, trials = dry_run(plan, store)
    out.print(f"suite {suite}: {len(artifacts)} attack artifacts, {len(trials)} trials -> {store.root} (dry run)",
              highlight=False, soft_wrap=True)  # fmt: skip
    for title, rows in (("attack artifacts (stage 1)", artifacts), ("trials (stage 2)", trials)):
        out.print(title + ":", highlight=False)
        for action, label in rows:
            out.print(f"  {action:<10}  {label}", highlight=False, soft_wrap=True)
    count = lambda rows, word: sum(a.startswith(word) for a, _ in rows)  # noqa: E731
    out.print(
        f"would compute {count(artifacts, 'compute')} artifacts and "
        f"{count(trials, 'compute') + count(trials, 'recompute')} trials; would reuse {count(artifacts, 'reuse')} "
        f"artifacts and {count(trials, 'reuse')} trials",
        highlight=False,
        soft_wrap=True,
    )
    for p in problems:
        out.print(f"missing (a real run stops here): {p}", highlight=False, soft_wrap=True)
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from bench.report import leaderboard
    from bench.store.remote import open_store

    if args.check:
        return _check_leaderboard(args)
    from bench.cli.args import require_results

    require_results(args.results)
    store = open_store(args.results)
    suite = load_suite(args.suite)  # by name or file: records carry the suite's name
    records = leaderboard.select_records(store.records(), suite.name)
    if not records:
        console.print(f"[red]no records[/] for suite {suite.name!r} under {store}")
        return 1
    paths = leaderboard.write(records, suite.name, Path(args.leaderboards), store, suite_cfg=suite, suite_ref=args.suite)
    sys.stdout.write(Path(paths["markdown"]).read_text())
    console.print("leaderboard: " + ", ".join(str(p) for p in paths.values()))
    return 0


def _check_leaderboard(args: argparse.Namespace) -> int:
    """Rerun exactly the grid that made the committed page (the commands derived from its
    rows, bench/report/check.py) in a temporary storage root, and compare every (cell, seed,
    defense) value with the committed `<leaderboards>/<suite>-rows.csv`, exactly. Nothing
    under --leaderboards is written."""
    import tempfile

    from bench.report import check, leaderboard, tables
    from bench.run.grid import run_serial
    from bench.run.progress import RunDisplay
    from bench.store import Store, atomic_write_bytes

    suite = load_suite(args.suite)
    committed_path = Path(args.leaderboards) / f"{suite.name}-rows.csv"
    if not committed_path.exists():
        console.print(f"bench: error: {committed_path} does not exist; generate it with bench run --suite {args.suite} "
                      f"--leaderboards {args.leaderboards}")  # fmt: skip
        return 2
    from bench.core.runtime import cpu_model

    page_rows = check.read_rows(committed_path.read_text())
    kind = tables.cpu_kind(cpu_model())
    reference, committed = check.reference_for(args.leaderboards, suite.name, kind)
    if reference is None and not args.add_reference:
        console.print(f"bench: error: no committed rows of suite {suite.name!r} were made on this CPU ({kind}); found: "
                      f"{'; '.join(committed) or 'none'}. Reruns are bitwise identical within one CPU kind only "
                      f"(docs/protocol.md): add this kind's reference with bench leaderboard --check --suite "
                      f"{args.suite} --add-reference, and commit {check.reference_path(args.leaderboards, suite.name, kind)}")  # fmt: skip
        return 1
    selections = check.page_selections(page_rows, suite)
    plan = check.union_plan(suite, selections)
    console.print(f"check: rerunning the page's {len(selections)} command(s), {len(plan.trials)} trials:")
    for sel in selections:
        console.print(f"  {sel.command(args.suite)}", highlight=False, soft_wrap=True)
    with tempfile.TemporaryDirectory(prefix="bench-check-") as tmp:
        store = Store(Path(tmp) / "results")
        with RunDisplay(console) as display:
            events = display.events()
            if args.executor == "serial":
                _threads()
                summary = run_serial(plan, store, events=events)
            else:
                from bench.run.ray_grid import RayOptions, run_ray

                summary = run_ray(plan, store, RayOptions(), events)
        if summary.aborted or summary.failed:
            console.print(f"[red]check failed[/]: the rerun of suite {suite.name!r} did not complete "
                          f"({summary.aborted or f'{len(summary.failed)} failed trials'})")  # fmt: skip
            return 1
        records = leaderboard.select_records(store.records(), suite.name)
        fresh_csv = check.rows_csv(tables.records_frame(records))
        fresh = check.read_rows(fresh_csv)
    if reference is None:  # --add-reference on a new CPU kind: the rerun becomes its reference
        missing = check.compare_keys(page_rows, fresh)
        if missing:
            console.print("[red]check failed[/]: the rerun's rows are not the page's rows: " + "; ".join(missing))
            return 1
        path = check.reference_path(args.leaderboards, suite.name, kind)
        atomic_write_bytes(path, fresh_csv.encode())
        console.print(f"reference written: {path} ({len(fresh)} rows made on {kind}); commit it beside {committed_path}")
        return 0
    problems = check.compare_rows(committed, fresh)
    if problems:
        console.print(f"[red]check failed[/]: {reference} differs from a fresh run of its own commands:")
        for line in problems:
            console.print(f"  {line}", highlight=False)
        console.print("regenerate it with the commands above")
        return 1
    console.print(f"[green]check passed[/]: {reference} ({kind}) equals a fresh run of the page's own commands, "
                  f"every value of all {len(committed)} rows exactly")  # fmt: skip
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    import time

    from bench.cli.args import storage_path
    from bench.core.registry import ATTACKS, DATASETS, DEFENSES, MODELS, SETTINGS
    from bench.report import leaderboard, plots
    from bench.store import atomic_write_bytes
    from bench.store.remote import open_store
    from bench.study import analysis

    suite = load_suite(args.suite)
    if args.attacks is None and args.what != "scale":
        args.attacks = "badnets,blended"
    if args.attacks:
        ATTACKS.resolve(args.attacks)  # every name is checked before any work
    if args.what == "alpha":
        DEFENSES.entry(args.defense)
    elif args.what == "budget":
        SETTINGS.resolve(args.settings or suite.settings)
    elif args.what == "scale":
        pass  # reads the suite's records
    else:
        model, dataset = args.model or suite.models[0], args.dataset or suite.datasets[0]
        if MODELS.entry(model).extra.get("kind") != "clip":
            raise ConfigError(f"--model {model!r}: disentanglement needs a clip model (bench list models)")
        DATASETS.entry(dataset)
    store = open_store(args.results)
    out = Path(args.out) if args.out else (storage_path(args.results) or Path(".")) / "reports" / "tbar-analysis"
    start = time.perf_counter()
    _threads()
    if args.what == "budget":
        return _analyze_budget(args, store, suite, out, start)
    if args.what == "scale":
        return _analyze_scale(args, store, suite, out, start)
    if args.what == "alpha":
        from bench.core.registry import DEFENSES

        params = DEFENSES.get(args.defense).Params  # TBAR's or a variant's: the alpha grid is theirs
        attacks = set(args.attacks.split(","))
        records = [
            r for r in leaderboard.select_records(store.records(), suite.name)
            if r["status"] == "ok" and r["config"]["defense"] == args.defense and r["config"]["attack"] in attacks
        ]  # fmt: skip
        if not records:
            console.print(f"bench: error: no ok {args.defense!r} records for attacks {sorted(attacks)} of suite "
                          f"{suite.name!r} under {store}; run the grid first")  # fmt: skip
            return 1
        for r in sorted(records, key=lambda r: r["config"]["attack"]):
            c = r["config"]
            alphas = params(**{k: v for k, v in c["defense_params"].items() if k in params.__dataclass_fields__}).alphas()
            console.print(
                f"alpha curve: {c['model']}/{c['dataset']}/{c['attack']}/{c['defense']} ({len(alphas)} points)"
            )
            result = analysis.run_alpha(store, r, alphas)
            stem = f"alpha-{c['model']}-{c['dataset']}-{c['setting']}-{c['attack']}-{c['defense']}-s{c['seed']}"
            analysis.save(result, store, stem)
            _write_csv(out / f"{stem}.csv", result["rows"])
            atomic_write_bytes(out / f"{stem}.png", plots.alpha_analysis(result))
            console.print(f"  -> {out / stem}.png, .csv; chosen alpha {result['chosen_alpha']}")
    else:
        from bench.protocol.spec import build_params

        attacks = {
            name: (build_params(ATTACKS, name, suite.attack_params.get(name), "attack_params"), args.seed)
            for name in args.attacks.split(",")
        }
        grid = args.grid
        result = analysis.run_disentanglement(
            model, suite.model_params.get(model, {}) or {}, dataset, attacks, grid,
            args.steps, args.lr, args.seed, progress=lambda m: console.print(m),
        )  # fmt: skip
        stem = f"disentanglement-{model}-{result['dataset']}-s{args.seed}"
        analysis.save(result, store, stem)
        rows = [
            {"vector": a, "a_c": grid[i], "a_t": grid[j], "xi": result["xi"][a][i][j],
             "target_bias": result["target_bias"][a][i][j], "trigger_effect": result["trigger_effect"][a][i][j]}
            for a in result["xi"] for i in range(len(grid)) for j in range(len(grid))
        ]  # fmt: skip
        _write_csv(out / f"{stem}.csv", rows)
        atomic_write_bytes(out / f"{stem}.png", plots.disentanglement(result))
        names, mat = result["cosine"]["names"], result["cosine"]["matrix"]
        console.print("cosine: " + "; ".join(f"{a}/{b} {mat[i][j]:.3f}" for i, a in enumerate(names)
                                               for j, b in enumerate(names) if j > i))  # fmt: skip
        console.print(f"  -> {out / stem}.png, .csv")
    console.print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def _analyze_scale(args, store, suite, out: Path, start: float) -> int:
    """The capacity ladder from the suite's records (bench run --suite scale first)."""
    import time

    from bench.report import leaderboard, plots
    from bench.store import atomic_write_bytes
    from bench.study import analysis

    records = [r for r in leaderboard.select_records(store.records(), suite.name) if r.get("status") == "ok"]
    if not records:
        console.print(f"bench: error: no ok records of suite {suite.name!r} under {store.root}; run the grid first")
        return 1
    # one analysis per attack: pooling attacks would let the trend with size follow which
    # attack took on which rung instead of the rungs themselves
    present = sorted({r["config"]["attack"] for r in records} - {"none"})
    wanted = present if args.attacks is None else [a for a in args.attacks.split(",") if a in present]
    if not wanted:
        console.print(f"bench: error: --attacks {args.attacks!r}: no ok records of suite {suite.name!r} under "
                      f"{store.root}; attacks with records: {', '.join(present) or 'none'}")  # fmt: skip
        return 1
    for attack in wanted:
        subset = [r for r in records if r["config"]["attack"] == attack]
        result = analysis.run_scale(store, subset, args.steps, args.lr,
                                    progress=lambda m: console.print(m, highlight=False))  # fmt: skip
        result |= {"suite": suite.name, "attack": attack}
        stem = f"scale-{suite.name}-{attack}"
        analysis.save(result, store, stem)
        for name, rows in (("", result["rows"]), ("-xi", result["xi"])):
            if rows:
                _write_csv(out / f"{stem}{name}.csv", rows)
        atomic_write_bytes(out / f"{stem}.png", plots.scale(result))
        console.print(f"  -> {out / stem}.png, .csv, -xi.csv in {time.perf_counter() - start:.0f} s")
    return 0


def _analyze_budget(args, store, suite, out: Path, start: float) -> int:
    """ASR against the attacker's training budget for the named attacks (stage 1 only)."""
    import time

    from bench.report import plots
    from bench.run.grid import Selection, plan_grid
    from bench.store import atomic_write_bytes
    from bench.study import analysis

    budgets = args.budgets  # a list of numbers > 0 (bench/cli/args.py)
    plan = plan_grid(
        suite, Selection(attacks=args.attacks, defenses="none", settings=args.settings, seeds=str(args.seed))
    )
    cells = [a for a in plan.artifacts if a.attack != "none"]
    result = analysis.run_budget(store, cells, budgets, progress=lambda m: console.print(m, highlight=False))
    # one file per (suite, settings, seed), so the settings can run as separate processes
    settings = "+".join(sorted({c.setting for c in cells}))
    stem = f"attack-budget-{suite.name}-{settings}-s{args.seed}"
    analysis.save(result, store, stem)
    _write_csv(out / f"{stem}.csv", result["rows"])
    atomic_write_bytes(out / f"{stem}.png", plots.budget(result))
    for r in result["rows"]:
        console.print(
            f"  {r['setting']}/{r['attack']} {r['budget_x']}x ({r['epochs']:g} epochs): "
            f"ASR {100 * (r['asr'] or 0):.1f}%, CA {100 * r['ca']:.1f}%",
            highlight=False,
        )
    console.print(f"  -> {out / stem}.png, .csv in {time.perf_counter() - start:.0f} s")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from bench.cli.args import storage_path
    from bench.report import leaderboard
    from bench.store.remote import open_store
    from bench.study import report

    suite = load_suite(args.suite).name
    store = open_store(args.results)
    if not report.tbar_cells(leaderboard.select_records(store.records(), suite)):
        console.print(f"bench: error: no tbar cells for suite {suite!r} under {store.root} (an ok tbar record whose "
                      "attack took: backdoored ASR >= 50%); run the grid first; nothing written",
                      markup=False, highlight=False)  # fmt: skip
        return 1
    out = Path(args.out) if args.out else (storage_path(args.results) or Path(".")) / "reports"
    path = report.write_tbar_report(store, suite, out)
    console.print(f"report: {path}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    import dataclasses
    import shutil

    from bench.core.registry import MODELS
    from bench.models.pretrain import SHIPPED_DIR, checkpoint_path, get_pretrained, shipped_path
    from bench.store import file_digest

    params_cls = getattr(MODELS.get(args.model), "Params", None)
    if params_cls is None or not hasattr(params_cls, "pretrain_config"):
        raise ConfigError(f"--model {args.model!r} is not pre-trained here; allowed: tiny-clip and the ladder rungs")
    params = params_cls(pretrain_seed=args.seed)
    if args.steps is not None:
        params = dataclasses.replace(params, pretrain_steps=args.steps)
    cfg = params.pretrain_config()
    shipped = shipped_path(cfg)
    if args.check_shipped and shipped is None:
        raise ConfigError(f"--check-shipped: no checkpoint of --model {args.model} with these settings is shipped")
    _threads()
    label = f"pre-training {args.model}"
    if console.is_terminal:
        bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TextColumn("{task.fields[loss]}"), console=console)  # fmt: skip
        task = bar.add_task("pretrain", total=cfg.steps, loss="")

        def on_step(s, loss):
            bar.update(task, completed=s + 1, loss=f"loss {loss:.3f}")

        def on_stage(source):
            bar.update(task, loss=source)
    else:  # a log or CI: a plain line at least every minute, not a bar that prints nothing until it ends
        from bench.run.progress import StepLines

        bar, lines = contextlib.nullcontext(), StepLines(console, label, cfg.steps)

        def on_step(s, loss):
            lines.update(s + 1, f"loss {loss:.3f}")

        def on_stage(source):
            console.print(f"{label}: {source}", highlight=False, markup=False)

    with bar:
        _, info = get_pretrained(
            cfg, on_step=on_step, force=args.force or args.check_shipped, on_stage=on_stage
        )
    built = checkpoint_path(cfg).with_suffix(".safetensors")
    out.print_json(data={"checkpoint": str(built), **info})
    if args.ship:
        SHIPPED_DIR.mkdir(exist_ok=True)
        for suffix in (".safetensors", ".json"):
            shutil.copyfile(checkpoint_path(cfg).with_suffix(suffix), (SHIPPED_DIR / built.stem).with_suffix(suffix))
        console.print(f"shipped: {SHIPPED_DIR / built.name} (sha256 {file_digest(built)})", highlight=False)
    if args.check_shipped:
        want, got = file_digest(shipped.with_suffix(".safetensors")), file_digest(built)
        same = want == got
        console.print(
            f"{'identical' if same else 'DIFFERENT'}: rebuilt sha256 {got}, shipped {want} "
            f"({shipped.with_suffix('.safetensors')})",
            highlight=False,
        )
        return 0 if same else 1
    return 0


# ---------------------------------------------------------------- parser


def build_parser():
    """The argument parser (bench/cli/args.py), wired to this module's commands."""
    from bench.cli.args import build_parser as _build

    commands = {"run": cmd_run, "list": cmd_list, "leaderboard": cmd_leaderboard, "analyze": cmd_analyze,
                "report": cmd_report, "pretrain": cmd_pretrain}  # fmt: skip
    return _build(commands)


def main(argv: list[str] | None = None) -> int:
    from bench.core import repro

    repro.apply_environment()  # before torch and numpy are imported: they read it once
    args = build_parser().parse_args(argv)
    from bench.store import StorageError  # after parsing: a bad option never waits for torch to import

    load_plugins()
    try:
        with process.installed(_process_config(args)):
            return args.func(args)
    except (UnknownNameError, ConfigError, StorageError) as e:
        console.print(f"bench: error: {e}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted: completed records are kept; rerun the same command to finish")
        return 130


if __name__ == "__main__":
    sys.exit(main())
