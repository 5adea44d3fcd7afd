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


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._group = entry_point_group
        self._plugins_loaded = entry_point_group is None

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
            raise UnknownNameError(self.unknown_message(name)) from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def unknown_message(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Valid: {', '.join(names)}"

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
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        self._load_plugins()
        return iter(self._entries[n] for n in sorted(self._entries))


ATTACKS: Registry[Any] = Registry("attack", "bench.attacks")
DEFENSES: Registry[Any] = Registry("defense", "bench.defenses")
DATASETS: Registry[Any] = Registry("dataset", "bench.datasets")
MODELS: Registry[Any] = Registry("model", "bench.models")
SETTINGS: Registry[Any] = Registry("setting")
