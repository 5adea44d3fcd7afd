"""The `bench` command line: the parser, the types of its options and the checks that run
before any work starts.

Every bad input ends the same way: one line on stderr that names the option or field and
what is allowed, and exit code 2, before Ray starts or anything is written. Option values
are checked by argparse `type=` functions (this module); suite files by the pydantic models
of bench.core.config; names by the registries once the plugins are loaded.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

from bench.core.config import ConfigError, is_suite_path, suite_file_problem, suite_names, unknown_suite_message

# ---------------------------------------------------------------- parser classes


class Parser(argparse.ArgumentParser):
    """argparse's parser with errors on one line: `bench run: error: argument --seeds: ...`
    (argparse prints the usage block first; `bench run --help` shows it)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class IntermixedParser(Parser):
    """A subcommand's parser that takes options between positionals, so that
    `bench list models --pretrained 'ViT*'` reads the pattern (plain argparse has taken
    the optional positional as empty by the time it reaches the flag)."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._inside:  # parse_known_intermixed_args calls back into this method
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default after its help, unless the help states it or there is
    none to show (flags, options whose default depends on the suite)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default:" in text or not action.option_strings:
            return text
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return text
        return text + " (default: %(default)s)"


def version_string() -> str:
    """This package's version and, in a git checkout, the commit it runs from."""
    import importlib.metadata as md

    try:
        version = md.version("bench-harness")
    except md.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parents[2]
    commit = ""
    if (root / ".git").exists():
        try:
            commit = subprocess.run(
                ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
                capture_output=True, text=True, timeout=5,
            ).stdout.strip()  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            commit = ""
    return f"bench {version}" + (f" (git {commit})" if commit else "")


class VersionAction(argparse.Action):
    """--version, computed only when asked (it runs git)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        sys.stdout.write(version_string() + "\n")
        parser.exit()


# ---------------------------------------------------------------- option types
# Each returns the value to store or raises ArgumentTypeError with what is allowed;
# argparse prefixes the option's name.


def _fail(text: str, allowed: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"{text!r} is not allowed; allowed: {allowed}")


def _items(text: str) -> list[str]:
    return [s.strip() for s in text.split(",")]


def name_list(text: str) -> str:
    """A comma list of names (checked against the registries later) or 'all'."""
    items = _items(text)
    if not text.strip() or any(not s for s in items):
        raise _fail(text, "a comma list of names without empty items, or 'all'")
    return ",".join(items)


SEED_MAX = 2**32 - 1  # seeds feed 32-bit generators (NumPy's legacy seeding, CUDA's)


def seed_list(text: str) -> str:
    items = _items(text)
    if not all(s.isdigit() for s in items):  # isdigit: no sign, no blanks, no decimals
        raise _fail(text, "a comma list of integers >= 0, e.g. 0,1,2")
    seeds = [int(s) for s in items]
    if max(seeds) > SEED_MAX:
        raise _fail(text, f"a comma list of distinct integers in [0, {SEED_MAX}] (32 bits)")
    if len(set(seeds)) != len(seeds):
        raise _fail(text, "a comma list of distinct integers, each once (a repeated seed would plan every trial twice)")
    return ",".join(map(str, seeds))


def float_list(text: str) -> list[float]:
    try:
        values = [float(s) for s in _items(text)]
    except ValueError:
        raise _fail(text, "a comma list of numbers, e.g. 0,0.5,1") from None
    if not all(math.isfinite(v) for v in values):
        raise _fail(text, "a comma list of finite numbers, e.g. 0,0.5,1")
    return values


def positive_float_list(text: str) -> list[float]:
    values = float_list(text)
    if not values or min(values) <= 0:
        raise _fail(text, "a comma list of numbers > 0, e.g. 0.5,1,2")
    return values


def _number(kind, low: float, low_open: bool, high: float | None = None, rule: str = ""):
    def check(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise _fail(text, rule) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise _fail(text, rule)
        if value < low or (low_open and value == low) or (high is not None and value > high):
            raise _fail(text, rule)
        return value

    check.__name__ = rule  # argparse names the type in some messages
    return check


positive_int = _number(int, 0, True, rule="an integer >= 1")
nonneg_int = _number(int, 0, False, rule="an integer >= 0")
positive_float = _number(float, 0, True, rule="a number > 0")
nonneg_float = _number(float, 0, False, rule="a number >= 0")


def suite_ref(text: str) -> str:
    """A built-in suite name or the path of a suite .yaml file that exists."""
    if is_suite_path(text):
        problem = suite_file_problem(Path(text))
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return text
    if text not in suite_names():
        raise argparse.ArgumentTypeError(unknown_suite_message(text))
    return text


def storage_path(text: str) -> Path | None:
    """The local folder a storage root names (a path, or a file:// URI per RFC 8089);
    None for an object store (s3://), which has no folder to check here."""
    from bench.core.fs import StorageError, parse_root

    try:
        spec = parse_root(text, option="")
    except StorageError as e:
        raise argparse.ArgumentTypeError(str(e).strip()) from None
    return spec.path if spec.kind == "local" else None


def results_root(text: str) -> str:
    """A storage root that may not exist yet, but is not a file."""
    path = storage_path(text)
    if path is not None and path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file; allowed: a folder (created if missing) or file:// URI")
    return text


def writable_results(text: str) -> str:
    """A storage root `bench run` can write: for a local folder, its nearest existing
    ancestor must be a folder in which a file can be created (probed with a temporary
    folder, removed at once), so /proc or a read-only mount is refused before any work."""
    import tempfile

    path = storage_path(results_root(text))
    if path is None:
        return text
    ancestor = next((p for p in (path.absolute(), *path.absolute().parents) if p.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} lies under the file {ancestor}; allowed: a folder (created if missing)")
    try:
        with tempfile.TemporaryDirectory(dir=ancestor, prefix=".bench-probe-"):
            pass
    except OSError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: cannot write under {ancestor} ({e.strerror or e}); allowed: a "
                                         "writable folder") from None  # fmt: skip
    return text


def existing_results(text: str) -> str:
    """A storage root that exists (commands that read results)."""
    path = storage_path(results_root(text))
    if path is not None and not path.is_dir():
        raise argparse.ArgumentTypeError(f"no results folder {text!r}; allowed: a folder written by bench run")
    return text


def out_folder(text: str) -> str:
    """A folder to write into: created if missing, but not an existing file."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file; allowed: a folder (created if missing)")
    return text


def out_file(text: str) -> str:
    """A file to write: not an existing folder, and its parent not a file."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; allowed: a file path")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: {parent} is a file, not a folder")
    return text


def existing_folder(text: str) -> str:
    if not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"no such folder {text!r}; allowed: an existing folder")
    return text


def device_spec(text: str) -> str:
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise _fail(text, "auto, cpu, cuda or cuda:N")


def pretrained_tag(text: str) -> str:
    if not text or any(c in text for c in ":,/ "):
        raise _fail(text, "one pretrained tag, e.g. openai (open_clip) or a1_in1k (timm)")
    return text


def with_pretrained(models: str, tag: str) -> str:
    """--models A,B --pretrained TAG -> 'A:TAG,B:TAG' (open_clip) / 'timm:A.TAG' (timm);
    the registry then checks that each architecture has that tag."""
    from bench.models.published import open_clip_architectures

    out = []
    for name in models.split(","):
        if name == "all":
            raise ConfigError("--pretrained needs --models to name architectures, not 'all'")
        if name.startswith("timm:"):
            if "." in name:
                raise ConfigError(f"--pretrained {tag}: model {name!r} names a tag already")
            out.append(f"{name}.{tag}")
        elif ":" in name:
            raise ConfigError(f"--pretrained {tag}: model {name!r} names a tag already")
        elif name in open_clip_architectures():
            out.append(f"{name}:{tag}")
        else:
            raise ConfigError(
                f"--pretrained {tag}: model {name!r} has no pretrained tags; allowed: open_clip architectures "
                "(ViT-B-32) and timm:ARCH names"
            )
    return ",".join(out)


def require_results(text: str, option: str = "--results") -> None:
    """The check of existing_results, for commands where it depends on another option."""
    path = storage_path(text)
    if path is not None and not path.is_dir():
        raise ConfigError(f"{option} {text!r}: no such results folder; allowed: a folder written by bench run")


# ---------------------------------------------------------------- the parser


def build_parser(commands: dict) -> argparse.ArgumentParser:
    """The parser; `commands` maps each subcommand to its function (set as args.func)."""
    p = Parser(
        prog="bench",
        description="Benchmark backdoor defenses on CLIP and image classifiers.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--version", action=VersionAction, help="print the version and git commit, then exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=IntermixedParser)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
        sp.set_defaults(func=commands[name])
        return sp

    def suite_option(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--suite", type=suite_ref, default="micro",
                        help=f"built-in suite ({', '.join(suite_names())}) or the path of a suite .yaml file")  # fmt: skip

    r = command("run", "run a grid of attacks x defenses and print the leaderboard")
    suite_option(r)
    r.add_argument("--attacks", type=name_list, help="comma list of attacks or 'all' (default: the suite's)")
    r.add_argument("--defenses", type=name_list, help="comma list of defenses or 'all' (default: the suite's)")
    r.add_argument(
        "--models",
        type=name_list,
        help="comma list or 'all' (default: the suite's): registered names, open_clip ARCH or ARCH:TAG "
        "(ViT-B-32:openai), timm:ARCH or timm:ARCH.TAG (timm:resnet18)",
    )
    r.add_argument(
        "--pretrained", type=pretrained_tag, help="pretrained tag for every --models architecture (ARCH -> ARCH:TAG)"
    )
    r.add_argument("--datasets", type=name_list, help="comma list of datasets or 'all' (default: the suite's)")
    r.add_argument("--settings", type=name_list, help="comma list of threat settings or 'all' (default: the suite's)")
    r.add_argument("--seeds", type=seed_list, help="comma list of distinct integers in [0, 2^32 - 1] (default: the suite's)")
    r.add_argument(
        "--results",
        type=writable_results,
        default="results",
        help="storage root for artifacts and records: a folder (shared by all nodes on a cluster), a file:// URI, "
        "or s3://bucket/prefix (endpoint from AWS_ENDPOINT_URL)",
    )
    r.add_argument("--executor", choices=["ray", "serial"], default="ray", help="ray: Ray tasks; serial: in-process")
    r.add_argument("--cpus-per-trial", type=positive_float, default=1.0, help="Ray: CPUs per trial; torch threads follow")
    r.add_argument("--gpus-per-trial", type=nonneg_float, default=0.0, help="Ray: GPUs per trial (fractions allowed)")
    r.add_argument(
        "--max-concurrent", type=positive_int, help="Ray: at most this many trials at once (default: as CPUs allow)"
    )
    r.add_argument("--address", help="Ray: join this cluster (e.g. auto; default: RAY_ADDRESS, else a local Ray)")
    r.add_argument("--summary-json", type=out_file, help="also write the run's timing summary to this JSON file")
    r.add_argument("--data-root", type=existing_folder, help="folder holding real datasets (see bench list datasets)")
    r.add_argument(
        "--allow-download", action="store_true", help="let torchvision / the HF hub download data and weights"
    )
    r.add_argument(
        "--device", type=device_spec, help="auto, cpu, cuda or cuda:N (default: $BENCH_DEVICE, else auto: cuda if visible)"
    )
    r.add_argument(
        "--precision", choices=["fp32", "bf16"], help="autocast precision (default: the suite's)"
    )
    r.add_argument("--compile", action="store_true", help="torch.compile each victim's forward")
    r.add_argument(
        "--leaderboards",
        type=out_folder,
        help="where leaderboard files go (default: <results>/leaderboards; the committed pages are regenerated "
        "with --leaderboards leaderboards)",
    )
    r.add_argument(
        "--dry-run",
        action="store_true",
        help="print the grid (artifacts and trials) and whether each would be computed or reused, then exit",
    )

    ls = command("list", "list registered attacks, defenses, datasets, models, settings, suites or plugins")
    ls.add_argument("what", choices=["attacks", "defenses", "datasets", "models", "settings", "suites", "plugins"],
                    help="which registry to list")  # fmt: skip
    ls.add_argument(
        "pattern", nargs="?", help="shell-style filter on names, e.g. 'ViT-B*' or 'timm:resnet*' (quote it)"
    )
    ls.add_argument(
        "--pretrained",
        action="store_true",
        help="models: list open_clip ARCH:TAG pairs (timm:ARCH.TAG with a 'timm:*' pattern) and whether "
        "their weights are in the local HF cache",
    )

    lb = command("leaderboard", "rebuild leaderboard tables from stored records")
    suite_option(lb)
    lb.add_argument("--results", type=results_root, default="results", help="storage root the records are read from")
    lb.add_argument("--leaderboards", type=out_folder, default="leaderboards", help="where leaderboard files go")
    lb.add_argument(
        "--check",
        action="store_true",
        help="rerun the commands that made the committed page, from scratch, and compare every (cell, seed, defense) "
        "value with <leaderboards>/<suite>-rows.csv exactly",
    )
    lb.add_argument(
        "--add-reference",
        action="store_true",
        help="--check on a CPU kind with no committed rows yet: write the rerun as <leaderboards>/<suite>-rows@<cpu>.csv "
        "(reruns are bitwise identical within one CPU kind only)",
    )
    lb.add_argument("--executor", choices=["ray", "serial"], default="ray", help="--check: executor for the rerun")

    an = command("analyze", "TBAR analyses: alpha curves, weight disentanglement; attack budget curves")
    an.add_argument("what", choices=["alpha", "disentanglement", "budget", "scale"], help="which analysis")
    suite_option(an)
    an.add_argument("--results", type=existing_results, default="results", help="storage root of the records")
    an.add_argument("--out", type=out_folder,
                    help="where plots and CSVs go (default: <results>/reports/tbar-analysis)")  # fmt: skip
    an.add_argument("--attacks", type=name_list,
                    help="comma list of attacks (default: badnets,blended; scale: every attack in the suite's "
                         "records, one analysis each)")  # fmt: skip
    an.add_argument("--defense", default="tbar", help="alpha: which tbar variant's records (tbar, tbar-mix, ...)")
    an.add_argument("--model", help="disentanglement: a clip model (default: the suite's first)")
    an.add_argument("--dataset", help="disentanglement: dataset (default: the suite's first)")
    an.add_argument("--grid", type=float_list, default="0,0.25,0.5,0.75,1",
                    help="disentanglement: comma list of coefficients for a_c and a_t")  # fmt: skip
    an.add_argument("--steps", type=positive_int, default=150, help="disentanglement: fine-tuning steps per task vector")
    an.add_argument("--lr", type=positive_float, default=3e-4, help="disentanglement: fine-tuning learning rate")
    an.add_argument("--seed", type=nonneg_int, default=0, help="disentanglement and budget: seed")
    an.add_argument("--settings", type=name_list, help="budget: comma list of settings (default: the suite's)")
    an.add_argument("--budgets", type=positive_float_list, default="0.25,0.5,1,2",
                    help="budget: comma list of multiples (> 0) of the suite's attack training epochs")  # fmt: skip

    rp = command("report", "write tbar-report.md from stored records and analyses")
    rp.add_argument("what", choices=["tbar"], help="which report")
    suite_option(rp)
    rp.add_argument("--results", type=existing_results, default="results", help="storage root of the records")
    rp.add_argument(
        "--out",
        type=out_folder,
        help="folder for tbar-report.md (default: <results>/reports; the committed report is regenerated "
        "with --out leaderboards)",
    )

    pt = command("pretrain", "(re)produce the checkpoint of a CLIP pre-trained here (tiny-clip, ladder rungs)")
    pt.add_argument("--model", default="tiny-clip", help="a clip model pre-trained here (bench list models)")
    pt.add_argument("--steps", type=positive_int, help="pre-training steps (default: the model's)")
    pt.add_argument("--seed", type=nonneg_int, default=0, help="pre-training seed")
    pt.add_argument("--force", action="store_true", help="train even if the cache or the package has it")
    shipped = pt.add_mutually_exclusive_group()
    shipped.add_argument(
        "--check-shipped",
        action="store_true",
        help="train it again from scratch and exit 1 unless the weights are byte for byte the file shipped in "
        "bench/weights/",
    )
    shipped.add_argument(
        "--ship", action="store_true", help="copy the checkpoint into bench/weights/ (for a maintainer; commit it)"
    )
    return p
