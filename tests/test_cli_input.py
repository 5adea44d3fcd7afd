"""Bad input to the real `bench` command: one line on stderr naming the option or field and
what is allowed, exit code 2, and nothing started or written."""

import json
import os
import subprocess
import sys

import pytest

from bench.core.config import ConfigError, SuiteConfig, load_suite

SUITES = {
    "fraction.yaml": "name: x\ndefender_fraction: 1.5\n",
    "negseed.yaml": "name: x\nseeds: [-3]\n",
    "knob.yaml": "name: x\nattack_params: {badnets: {side: big}}\n",
    "dupseed.yaml": "name: x\nseeds: [1, 1]\n",
}

# (arguments, words the one line must contain). Option errors exit before torch is imported
# (under a second each); suite and registry errors load the plugins first (seconds), so
# those cases are fewer here and the rest are tested in-process below.
BAD = [
    (["run", "--seeds", "a"], ["--seeds", "integers >= 0"]),
    (["run", "--seeds", "-1"], ["--seeds", "integers >= 0"]),
    (["run", "--seeds", "0,,1"], ["--seeds"]),
    (["run", "--seeds", "99999999999999999999"], ["--seeds", "[0, 4294967295]"]),
    (["run", "--seeds", "0,0"], ["--seeds", "distinct"]),
    (["run", "--results", "/proc/bench-results"], ["--results", "cannot write under /proc"]),
    (["run", "--results", "afile/sub"], ["--results", "under the file"]),
    (["run", "--suite", "dupseed.yaml"], ["seeds = [1, 1]", "at most once"]),
    (["analyze", "disentanglement", "--grid", "a,b"], ["--grid", "numbers"]),
    (["run", "--results", "afile"], ["--results", "is a file"]),
    (["leaderboard", "--results", "afile"], ["--results", "is a file"]),
    (["leaderboard", "--results", "missing-folder"], ["--results", "no such results folder"]),
    (["report", "tbar", "--results", "missing-folder"], ["--results", "no results folder"]),
    (["analyze", "alpha", "--results", "afile"], ["--results", "is a file"]),
    (["run", "--results", "gs://bucket/x"], ["--results", "gs://"]),
    (["run", "--suite", "fraction.yaml"], ["defender_fraction = 1.5", "must be in (0, 1)"]),
    (["run", "--suite", "negseed.yaml"], ["seeds[0] = -3", "must be >= 0"]),
    (["run", "--suite", "knob.yaml"], ["attack_params.badnets.side", "integer"]),
    (["leaderboard", "--suite", "microo"], ["unknown suite 'microo'", "Did you mean 'micro'?"]),
    (["report", "tbar", "--suite", "microo", "--results", "."], ["unknown suite 'microo'"]),
    (["analyze", "alpha", "--suite", "mirco", "--results", "."], ["Did you mean 'micro'?"]),
    (["run", "--suite", "nosuch.yaml"], ["no such suite file", "nosuch.yaml"]),
    (["leaderboard", "--check", "--suite", "sub/nosuch.yml"], ["no such suite file"]),
    (["run", "--cpus-per-trial", "0"], ["--cpus-per-trial", "> 0"]),
    (["run", "--cpus-per-trial", "-2"], ["--cpus-per-trial", "> 0"]),
    (["run", "--gpus-per-trial", "-1"], ["--gpus-per-trial", ">= 0"]),
    (["run", "--max-concurrent", "0"], ["--max-concurrent", ">= 1"]),
    (["run", "--device", "gpu"], ["--device", "auto, cpu, cuda"]),
    (["run", "--data-root", "missing-folder"], ["--data-root", "no such folder"]),
    (["run", "--summary-json", "."], ["--summary-json", "is a folder"]),
    (["run", "--executor", "dask"], ["--executor", "invalid choice"]),
    (["pretrain", "--steps", "0"], ["--steps", ">= 1"]),
    (["analyze", "disentanglement", "--steps", "1.5", "--results", "."], ["--steps", "integer"]),
    (["run", "--attacks", ""], ["--attacks", "comma list"]),
    (["run", "--models", "ViT-B-32:opnai"], ["no pretrained tag 'opnai'", "Did you mean 'openai'?"]),
    (["run", "--models", "tiny-clip", "--pretrained", "openai"], ["--pretrained", "tiny-clip"]),
    (["run", "--models", "timm:resnt18"], ["unknown timm architecture 'resnt18'", "resnet18"]),
    (["list", "attacks", "--pretrained"], ["--pretrained"]),
    (["list", "modles"], ["invalid choice"]),
    (["frobnicate"], ["invalid choice"]),
]


def _bench(*args, cwd, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_THREADS": "2", "RAY_AUTH_MODE": "disabled", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-input")
    (d / "afile").write_text("not a folder\n")
    for name, text in SUITES.items():
        (d / name).write_text(text)
    return d


@pytest.mark.parametrize("args,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_code_2(workdir, args, words):
    before = sorted(p.name for p in workdir.rglob("*"))
    r = _bench(*args, cwd=workdir)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and "error" in lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    assert sorted(p.name for p in workdir.rglob("*")) == before  # nothing written (no results/, no Ray logs)


def test_version_names_the_package_version(workdir):
    from importlib.metadata import version

    r = _bench("--version", cwd=workdir)
    assert r.returncode == 0
    assert r.stdout.startswith(f"bench {version('bench-harness')}"), r.stdout


def test_every_option_has_help_text_and_shows_its_default():
    import argparse

    from bench.cli.commands import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sp in subs.choices.items():
        for action in sp._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"bench {name} {action.option_strings or action.dest} has no help text"
        text = sp.format_help()
        for action in sp._actions:
            d = action.default
            if action.option_strings and d not in (None, argparse.SUPPRESS) and d is not False:
                assert "default:" in text, name
    assert "(default: micro)" in subs.choices["run"].format_help()
    assert "(default: 0.0)" in subs.choices["run"].format_help()  # a zero default is still shown


def test_run_dry_run_lists_the_grid_and_computes_nothing(workdir, tmp_path):
    (tmp_path / "dry.yaml").write_text(
        "name: dry\nmodels: [tiny-clip]\ndatasets: [shapes]\nsettings: [finetune]\ncontrol_datasets: [colors]\n"
    )
    r = _bench("run", "--suite", "dry.yaml", "--dry-run", "--attacks", "badnets,none", "--defenses", "tbar",
               "--results", str(tmp_path / "res"), cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "tiny-clip/shapes/finetune/badnets/seed0" in r.stdout
    assert "compute     tiny-clip/shapes/finetune/badnets/tbar/seed0" in r.stdout
    assert "would compute 2 artifacts and 3 trials; would reuse 0 artifacts and 0 trials" in r.stdout
    assert not (tmp_path / "res").exists() and not (tmp_path / "leaderboards").exists()


def test_dry_run_tells_reused_from_computed_and_recomputed(tmp_path):
    from bench.core.config import SuiteConfig
    from bench.run.grid import Selection, dry_run, plan_grid
    from bench.store import SCHEMA, Store

    suite = SuiteConfig(name="dry", models=["tiny-clip"], control_datasets=["colors"])
    plan = plan_grid(suite, Selection(attacks="badnets", defenses="tbar,finetune"))
    store = Store(tmp_path)
    (tmp_path / "records").mkdir()
    ok, bad = (t.id for t in plan.trials[:2])
    (tmp_path / "records" / f"{ok}.json").write_text(
        json.dumps({"schema": SCHEMA, "trial_id": ok, "status": "ok", "metrics": {}})
    )
    (tmp_path / "records" / f"{bad}.json").write_text("{ torn")
    artifacts, trials = dry_run(plan, store)
    actions = [a for a, _ in trials]
    assert actions[0] == "reuse" and actions[1].startswith("recompute (not valid JSON") and actions[2] == "compute"
    assert artifacts == [("compute", "tiny-clip/shapes/finetune/badnets/seed0")]


def test_report_refuses_to_write_from_zero_cells(tmp_path):
    (tmp_path / "results").mkdir()
    r = _bench("report", "tbar", "--results", "results", cwd=tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1 and "no tbar cells" in lines[0], r.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["results"]


def test_report_and_analysis_default_to_the_results_folder():
    from bench.cli.commands import build_parser

    parser = build_parser()
    # None: resolved to <results>/reports (and .../tbar-analysis), never the committed leaderboards/
    assert parser.parse_args(["report", "tbar", "--results", "."]).out is None
    assert parser.parse_args(["analyze", "alpha", "--results", "."]).out is None


# ---------------------------------------------------------------- suite files (pydantic)


def test_suite_fields_are_typed_and_ranged(tmp_path):
    cases = {
        "name: x\ndefender_fraction: 0\n": "defender_fraction = 0: must be in (0, 1)",
        "name: x\ndefender_fraction: 1\n": "must be in (0, 1)",
        "name: x\nseeds: [0, -1]\n": "seeds[1] = -1: must be >= 0",
        "name: x\nseeds: ['1']\n": "seeds[0] = '1'",
        "name: x\nseeds: [true]\n": "seeds[0] = True",
        "name: x\nseeds: []\n": "seeds = []: must have at least 1 item",
        "name: x\nmodels: ['']\n": "models[0]",
        "description: no name\n": "name: required field is missing",
        "name: x\nmodel_params: {tiny-clip: 3}\n": "model_params.tiny-clip = 3",
        "- a list\n": "must be a mapping",
        "name: x\nseedz: [1]\n": "seedz: unknown field; allowed: name, description, models",
        "name: x\nprecision: fp16\n": "precision = 'fp16': allowed: 'fp32' or 'bf16'",
        "name: x\n  bad: [\n": "not valid YAML: mapping values are not allowed here at line 2, column 6",
    }
    for text, expected in cases.items():
        path = tmp_path / "s.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_suite(str(path))
        assert expected in str(e.value) and "\n" not in str(e.value), (text, str(e.value))
    path = tmp_path / "ok.yaml"
    path.write_text("name: ok\ndefender_fraction: 2.5e-1\nseeds: [0, 3]\n")  # YAML reads 2.5e-1 as a string
    suite = load_suite(str(path))
    assert suite.defender_fraction == 0.25 and suite.seeds == [0, 3]


def test_suite_config_built_in_code_is_validated_too():
    with pytest.raises(ValueError, match="defender_fraction"):
        SuiteConfig(name="x", defender_fraction=1.5)
    assert SuiteConfig(name="x").models == ["tiny-clip"]


def test_missing_suite_file_is_not_an_unknown_suite(tmp_path):
    with pytest.raises(ConfigError, match="no such suite file"):
        load_suite(str(tmp_path / "gone.yaml"))
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        load_suite(str(tmp_path / "folder.yaml"))
