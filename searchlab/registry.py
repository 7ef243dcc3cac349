"""Name -> class registries: one per kind of component (strategies, tasks, executors,
trackers, fidelities).

A registry knows its built-in components by name *without importing them*: ``builtins``
maps each name to the module that registers it, so listing names (config validation,
``--help``) stays cheap and a component's module -- with its torch, DEAP or SB3 imports --
is imported only when that component is looked up.  Third-party components register
with the decorator; a name registered twice with different objects is an error.
"""

from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, Mapping, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Maps names to classes/factories; raises on a name collision and on unknown names.

    >>> strategies = Registry("strategy")
    >>> @strategies.register("random")
    ... class RandomSearch: ...

    Args:
        kind: what the registry holds, for messages ("strategy").
        builtins: name -> module that registers it (imported at the first ``get``).
        loader: called once before the first lookup of any kind (registers everything).
        on_register: called as ``on_register(name, obj)`` for every registration (e.g. to
            give a class its registered name).
    """

    def __init__(self, kind: str, loader: Callable[[], None] | None = None, *,
                 builtins: Mapping[str, str] | None = None,
                 on_register: Callable[[str, T], None] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._builtins = dict(builtins or {})
        self._loader = loader
        self._loaded = False
        self._on_register = on_register

    def _load(self) -> None:
        if not self._loaded and self._loader is not None:
            self._loaded = True
            self._loader()

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered "
                                 f"({self._items[name]!r})")
            self._items[name] = obj
            if self._on_register is not None:
                self._on_register(name, obj)
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items and name in self._builtins:
            module = self._builtins[name]
            importlib.import_module(module)
            if name not in self._items:
                raise RuntimeError(f"module {module} did not register {self.kind} {name!r}")
        if name not in self._items:
            self._load()
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """Every registered and built-in name, without importing any built-in module."""
        self._load()
        return sorted(set(self._items) | set(self._builtins))

    def __contains__(self, name: object) -> bool:
        if name in self._items or name in self._builtins:
            return True
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
