"""Name -> factory registries, in the style of timm's `register_model`.

Every pluggable kind of thing (attacks, defenses, datasets, models, settings,
suites) has one `Registry`. A module registers its factory with a decorator, the
listing commands read the registry, and third-party packages can add entries
through Python entry points (group ``bench.<kind>``) without editing this repo.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class UnknownNameError(ValueError):
    """A name that no registry entry has; the message is one line with a suggestion."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str
    settings: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


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
    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._group = entry_point_group
        self._plugins_loaded = entry_point_group is None
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
        self._entries[name] = Entry(name, obj, description.strip(), tuple(settings), dict(extra))

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self._group):
            ep.load()  # importing the module runs its @register decorators

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
        pool = names + [c for r in self._resolvers for c in r.candidates()]
        close = difflib.get_close_matches(name, pool, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        more = "".join(f"; {r.hint}" for r in self._resolvers if r.hint)
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
        """'all' | 'a,b' | ['a', 'b'] -> validated list of names (order kept, no duplicates)."""
        items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
        items = [s for s in items if s]
        if items == ["all"]:
            return self.names()
        for item in items:
            self.entry(item)
        return list(dict.fromkeys(items))

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


ATTACKS: Registry[Any] = Registry("attack", "bench.attacks")
DEFENSES: Registry[Any] = Registry("defense", "bench.defenses")
DATASETS: Registry[Any] = Registry("dataset", "bench.datasets")
MODELS: Registry[Any] = Registry("model", "bench.models")
SETTINGS: Registry[Any] = Registry("setting")
