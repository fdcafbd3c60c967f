"""A name -> object registry with close-match errors, after timm's `models/_registry.py`.

`Registry.register` sits next to the definition it registers; looking up an unknown name raises a
`ConfigError` that lists the closest registered names. Registering one name twice is an error.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Iterable, TypeVar

from tricks.errors import ConfigError

T = TypeVar("T")


def close_matches(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The registered names closest to `name` (difflib ratio, plus names that share its prefix)."""
    candidates = sorted(set(candidates))
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    for c in candidates:
        if len(found) >= n:
            break
        if c not in found and name and (c.startswith(name) or name.startswith(c)):
            found.append(c)
    return found


def unknown_name_message(kind: str, name: str, candidates: Iterable[str]) -> str:
    """One line: the unknown name, the close matches if any, else every known name."""
    candidates = sorted(set(candidates))
    near = close_matches(name, candidates)
    if near:
        return f"unknown {kind} '{name}'; did you mean {', '.join(repr(n) for n in near)}?"
    return f"unknown {kind} '{name}'; known: {', '.join(candidates) or '(none)'}"


class Registry:
    """Maps short names to objects (factories, classes, presets) with optional metadata."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator: `@REG.register("name", description=..., paper=...)` above a definition."""

        def deco(obj: T) -> T:
            self.add(name, obj, **meta)
            return obj

        return deco

    def add(self, name: str, obj: Any, **meta: Any) -> None:
        if name in self._entries:
            raise ConfigError(f"{self.kind} '{name}' is registered twice; each name must be unique")
        self._entries[name] = obj
        self._meta[name] = dict(meta)

    def get(self, name: str) -> Any:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(unknown_name_message(self.kind, name, self._entries)) from None

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return dict(self._meta[name])

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)
