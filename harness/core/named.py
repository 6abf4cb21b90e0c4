"""Declarations of one kind by name: the metrics, ranking methods and probes a run can use. One mechanism for
all of them, so that adding to any reads the same way: `register_…(item)`, then the name works everywhere, and
an unknown name is an error that lists the registered ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from harness.core.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Items of one `kind` by name, in the order they were added. `builtins`: imports the modules that register
    the built-in items, called before the first look-up (so that they load only when needed)."""

    def __init__(self, kind: str, builtins: Callable[[], None] | None = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._builtins = builtins

    def _loaded(self) -> dict[str, T]:
        if self._builtins is not None:
            load, self._builtins = self._builtins, None
            load()
        return self._items

    def add(self, name: str, item: T, *, replace: bool = False) -> T:
        """Register `item`; re-declaring a name with another item needs `replace=True`, so that a typo never
        shadows a built-in."""
        items = self._loaded()
        if name in items and not replace and items[name] != item:
            raise ValueError(f"{self.kind} {name!r} is already registered; pass replace=True to redefine it")
        items[name] = item
        return item

    def get(self, name: str) -> T:
        items = self._loaded()
        if name not in items:
            raise UnknownNameError(self.kind, name, list(items))
        return items[name]

    def names(self) -> list[str]:
        return list(self._loaded())

    def values(self) -> list[T]:
        return list(self._loaded().values())
