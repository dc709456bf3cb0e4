"""A registry: named entries (preconditioner factories, presets), built explicitly and scoped.

``Registry(kind, entries)`` is a read-only mapping plus ``register``; ``copy()`` gives an
independent registry, and ``with registry.scoped():`` undoes every registration made inside
the block (a test adds its own entries without touching the library's)::

    with PRECONDITIONERS.scoped():
        register_preconditioner("mine", Mine)
        opt = modnorm.optimizer(model, Recipe(default=UpdateRule(preconditioner="mine")))
    # "mine" is gone again
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Name → entry; ``kind`` and ``hint`` (how to add one) word the error of an unknown name."""

    def __init__(self, kind: str, entries: Mapping[str, T] | None = None, hint: str = "") -> None:
        self.kind, self.hint = kind, hint
        self._entries: dict[str, T] = {}
        for name, entry in (entries or {}).items():
            self.register(name, entry)

    def register(self, name: str, entry: T) -> T:
        """Add (or replace) ``name``; returns the entry."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        self._entries[name] = entry
        return entry

    def get(self, name: str, *default: T) -> T:  # type: ignore[override]
        """The entry of ``name``; else ``default`` when given, else a KeyError listing the known names."""
        if not isinstance(name, str) or name not in self._entries:
            if default:
                return default[0]
            hint = f". {self.hint}" if self.hint else ""
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {sorted(self._entries)}{hint}")
        return self._entries[name]

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def copy(self) -> Registry[T]:
        """An independent registry with the same entries."""
        return Registry(self.kind, self._entries, self.hint)

    @contextmanager
    def scoped(self) -> Iterator[Registry[T]]:
        """Registrations made inside the block are undone at its end (replaced entries restored)."""
        saved = dict(self._entries)
        try:
            yield self
        finally:
            self._entries.clear()
            self._entries.update(saved)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"
