"""A small explicit registry: names map to factories, unknown names give a clear error."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from deepshrink.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (models, datasets, criteria...), registered explicitly."""

    def __init__(self, kind: str, error: type[Exception] = ConfigError) -> None:
        self.kind = kind
        self._error = error
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        if name in self._entries:
            raise ConfigError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            choices = ", ".join(sorted(self._entries)) or "none"
            raise self._error(f"unknown {self.kind} {name!r}; choose one of: {choices}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
