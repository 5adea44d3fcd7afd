"""Name -> factory registries, in the style of timm's `register_model`.

Every pluggable kind of thing (attacks, defenses, datasets, models, settings,
suites) has one `Registry`. A module registers its factory with a decorator, the
listing commands read the registry, and third-party packages can add entries
through Python entry points (group ``bench.<kind>``) without editing this repo: the
entry point's value is a module, and importing it runs its ``@REGISTRY.register``
decorators. A plugin that fails to import is one warning line; the built-ins and the
other plugins keep working, and `bench list plugins` shows each plugin's status.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def did_you_mean(word: str, pool) -> str:
    """' Did you mean 'x'?' for the closest name in `pool`, or '' when none is close."""
    close = difflib.get_close_matches(word, list(pool), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


class UnknownNameError(ValueError):
    """A name that no registry entry has; the message is one line with a suggestion."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str
    settings: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def builtin(self) -> bool:
        """Defined in this project's own packages, not in a plugin."""
        return getattr(self.obj, "__module__", "").split(".")[0] in OWN_PACKAGES


@dataclass
class PluginStatus:
    """One entry point of a plugin package and what loading it did."""

    group: str
    name: str
    value: str  # the module it names
    package: str  # the distribution that declares it
    status: str = "ok"  # "ok" or "failed: <error>"
    registered: list[str] = field(default_factory=list)


PLUGINS: list[PluginStatus] = []


@dataclass(frozen=True)
class Resolver:
    """Builds registry entries for names of a form (a prefix, a colon) on first use.

    resolve(name) -> None when the name is not of its form, (obj, description, settings,
    extra) when it is, and raises UnknownNameError (one line) when it is of its form but
    names nothing (an unknown architecture, a tag the architecture does not have).
    candidates() feeds the "Did you mean" of unknown names; hint is one clause that says
    how to name what it resolves."""

    resolve: Callable[[str], tuple[Any, str, Iterable[str], dict] | None]
    candidates: Callable[[], Iterable[str]] = lambda: ()
    hint: str = ""


class Registry(Generic[T]):
    def __init__(
        self,
        kind: str,
        entry_point_group: str | None = None,
        method: bool = False,
        groups: dict[str, Callable[[Any], bool]] | None = None,
    ):
        self.kind = kind
        # Named subsets a selection may use like a name (`--attacks adaptive`); their
        # members are left out of `all`.
        self._groups = dict(groups or {})
        self._entries: dict[str, Entry[T]] = {}
        self._group = entry_point_group
        self._plugins_loaded = entry_point_group is None
        # Attacks and defenses: every entry must say which settings it supports and
        # carry a `Params` dataclass, checked when it registers (not when a grid runs).
        self._method = method
        self._resolvers: list[Resolver] = []
        self._resolved: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str, settings: Iterable[str] = (), **extra: Any) -> Callable[[F], F]:
        """Decorator: register `obj` under `name` with a one-line description."""

        def deco(obj: F) -> F:
            self.add(name, obj, description, settings, **extra)
            return obj

        return deco

    def add(self, name: str, obj: Any, description: str, settings: Iterable[str] = (), **extra: Any) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if "\n" in description.strip():
            raise ValueError(f"{self.kind} {name!r}: description must be one line")
        settings = tuple([settings] if isinstance(settings, str) else settings)
        if self._method:
            if not settings:
                raise ValueError(
                    f"{self.kind} {name!r} is registered without settings=(...); name the threat settings it "
                    f"supports (see bench list settings), or no grid cell could ever run it"
                )
            params = getattr(obj, "Params", None)
            if not (isinstance(params, type) and dataclasses.is_dataclass(params)):
                raise ValueError(
                    f"{self.kind} {name!r} has no Params dataclass (class attribute Params = a @dataclass "
                    f"of its knobs; an empty one when it has none)"
                )
        self._entries[name] = Entry(name, obj, description.strip(), settings, dict(extra))

    def _load_plugins(self) -> None:
        """The built-ins first, then every installed plugin, both through the entry-point
        group: the project's own distribution declares its built-ins there as a plugin
        would (pyproject.toml), so nothing here imports a method or a model module."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        group = self._group or ""
        eps = list(entry_points(group=group))
        own = sorted((ep for ep in eps if _distribution(ep) == OWN_DISTRIBUTION), key=lambda ep: ep.name)
        modules = [ep.value for ep in own] or BUILTIN_FALLBACK.get(group, [])
        for module in modules:
            importlib.import_module(module)  # a built-in that fails to import is a bug: it raises
        for ep in eps:
            if _distribution(ep) != OWN_DISTRIBUTION:
                _load_entry_point(ep, group)

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def entry(self, name: str) -> Entry[T]:
        self._load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            pass
        resolved = self._resolve_lazily(name)
        if resolved is None:
            raise UnknownNameError(self.unknown_message(name)) from None
        return resolved

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def unknown_message(self, name: str) -> str:
        names = self.names()
        hint = did_you_mean(name, names + [c for r in self._resolvers for c in r.candidates()])
        more = "".join(f"; {r.hint}" for r in self._resolvers if r.hint)
        more += f"; or a group: {', '.join(['all', 'builtin', *self._groups])}"
        return f"unknown {self.kind} {name!r}.{hint} Valid: {', '.join(names)}{more}"

    # ------------------------------------------------------------ lazy names

    def add_resolver(self, resolver: Resolver) -> None:
        """Names outside the registered ones that `resolver` builds on first use (open_clip's
        ARCH:TAG, timm:ARCH, ...). They are not listed by names() or iteration, so `all` and
        the listings stay the registered entries."""
        self._resolvers.append(resolver)

    def _resolve_lazily(self, name: str) -> Entry[T] | None:
        if name in self._resolved:
            return self._resolved[name]
        for r in self._resolvers:
            built = r.resolve(name)  # raises UnknownNameError for a name of its form that is wrong
            if built is not None:
                obj, description, settings, extra = built
                self._resolved[name] = Entry(name, obj, description, tuple(settings), dict(extra))
                return self._resolved[name]
        return None

    def resolve(self, spec: str | Iterable[str]) -> list[str]:
        """'all' | 'a,b' | ['a', 'b'] -> validated list of names (order kept, no duplicates).

        `all` is every entry outside the named groups, plugins included; `builtin` is the
        same restricted to this project's own entries, so a grid named by it (the ci
        suite's) never changes when a plugin is installed."""
        items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
        out: list[str] = []
        for item in (s for s in items if s):
            if item in ("all", "builtin") and item not in self._entries:
                out += [
                    n
                    for n in self.names()
                    if not any(self.in_group(n, g) for g in self._groups)
                    and (item == "all" or self._entries[n].builtin)
                ]
            elif item in self._groups and item not in self.names():
                out += [n for n in self.names() if self.in_group(n, item)]
            else:
                self.entry(item)
                out.append(item)
        return list(dict.fromkeys(out))

    def in_group(self, name: str, group: str) -> bool:
        return bool(self._groups[group](self.entry(name).obj))

    def group_names(self) -> list[str]:
        return list(self._groups)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        if name in self._entries:
            return True
        try:
            return isinstance(name, str) and self._resolve_lazily(name) is not None
        except UnknownNameError:
            return False

    def __iter__(self) -> Iterator[Entry[T]]:
        self._load_plugins()
        return iter(self._entries[n] for n in sorted(self._entries))


ATTACKS: Registry[Any] = Registry(
    "attack", "bench.attacks", method=True, groups={"adaptive": lambda obj: getattr(obj, "adaptive", None) is not None}
)
DEFENSES: Registry[Any] = Registry("defense", "bench.defenses", method=True)
DATASETS: Registry[Any] = Registry("dataset", "bench.datasets")
MODELS: Registry[Any] = Registry("model", "bench.models")
SETTINGS: Registry[Any] = Registry("setting", "bench.settings")
REGISTRIES = (ATTACKS, DEFENSES, DATASETS, MODELS, SETTINGS)


# The built-ins are entry points of this distribution (pyproject.toml). From a checkout that
# was never installed there is no metadata: the same modules, named here by the same strings.
OWN_DISTRIBUTION = "bench-harness"
OWN_PACKAGES = ("attacks", "defenses", "bench")
BUILTIN_FALLBACK = {
    "bench.attacks": ["attacks"],
    "bench.defenses": ["defenses"],
    "bench.datasets": ["bench.data.builtin", "bench.data.real"],
    "bench.models": ["bench.models.classifiers", "bench.models.ladder", "bench.models.published", "bench.models.zoo"],
    "bench.settings": ["bench.protocol.settings"],
}


def _distribution(ep) -> str | None:
    return getattr(getattr(ep, "dist", None), "name", None)


def _load_entry_point(ep, group: str) -> None:
    """Import one plugin module. A failure is one warning line on stderr naming the
    package, the entry point and the error; whatever the module had registered before
    it failed is withdrawn, so no half-loaded plugin stays behind."""
    package = getattr(getattr(ep, "dist", None), "name", None) or "?"
    status = PluginStatus(group, ep.name, ep.value, package)
    PLUGINS.append(status)
    before = {reg.kind: set(reg._entries) for reg in REGISTRIES}
    try:
        ep.load()  # importing the module runs its @register decorators
    except Exception as e:  # a broken plugin must not break the built-ins
        error = f"{type(e).__name__}: {e}".splitlines()[0]
        status.status = f"failed: {error}"
        for reg in REGISTRIES:
            for added in set(reg._entries) - before[reg.kind]:
                del reg._entries[added]
        print(
            f"bench: warning: plugin {package!r} (entry point {group}:{ep.name} = {ep.value}) failed to load and "
            f"is skipped: {error}",
            file=sys.stderr,
        )
        return
    status.registered = [f"{reg.kind} {n}" for reg in REGISTRIES for n in sorted(set(reg._entries) - before[reg.kind])]


def load_plugins() -> None:
    """Register the built-in methods, data and models, then every installed plugin."""
    for reg in REGISTRIES:
        reg._load_plugins()


def plugin_status() -> list[PluginStatus]:
    load_plugins()
    return list(PLUGINS)
