"""One way to register and look up a named thing: a search space, a named architecture,
a strategy, an evaluator, a converter, a device kind, a device profile.

`Registry.get(name)` refuses an unknown name with one line that says what kind of thing
was asked for and lists the known names; `names()` feeds the CLI's choices and help, so
a name registered here is offered everywhere without editing a command. Only the standard
library loads here: registries are read by ``--help``.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from mnasfpn.errors import MnasfpnError

T = TypeVar("T")

# A name is echoed back in the error: a long one (a pasted file, a typo'd path) is cut.
_SHOW = reprlib.Repr()
_SHOW.maxstring = 60
_REQUIRED: Any = object()


class UnknownNameError(MnasfpnError):
    """A name no registry entry has; the message lists the known ones."""


def unknown_message(kind: str, name: object, known: list[str], hint: str = "") -> str:
    shown = _SHOW.repr(name).replace("\n", " ")
    text = f"unknown {kind} {shown}; known: {', '.join(known) or '(none)'}"
    return f"{text} ({hint})" if hint else text


class Registry(Generic[T]):
    """Named entries of one kind, in registration order.

    ``kind`` names the thing in messages ("search space"); ``hint`` says what else the
    user may give ("or give a genotype .json file"); ``error`` is the `MnasfpnError`
    subclass a caller may catch (a device layer's `DeviceError`, say)."""

    def __init__(
        self,
        kind: str,
        entries: Mapping[str, T] | None = None,
        *,
        hint: str = "",
        error: type[MnasfpnError] = UnknownNameError,
    ) -> None:
        self.kind = kind
        self.hint = hint
        self.error = error
        self._entries: dict[str, T] = {}
        for name, value in (entries or {}).items():
            self.register(name, value)

    def register(self, name: str, value: T) -> T:
        """Add an entry; a name registered twice is a bug (two things would share it)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = value
        return value

    def get(self, name: str, default: Any = _REQUIRED) -> T:
        """The entry called `name`, or one line listing the known names (unlike a dict's
        `get`, a missing name raises unless a `default` is given)."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable "name"
            if default is not _REQUIRED:
                return default  # type: ignore[no-any-return]
            raise self.unknown(name) from None

    def unknown(self, name: object) -> MnasfpnError:
        """The error for a name this registry does not have (for callers that accept
        something else as well, e.g. a file path, and find neither)."""
        return self.error(unknown_message(self.kind, name, self.names(), self.hint))

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def values(self) -> list[T]:
        return list(self._entries.values())

    def subset(
        self, keep: Callable[[T], bool], *, refuse: Callable[[str, T], str] | None = None
    ) -> Subset[T]:
        """The entries for which `keep` holds, read live (an entry registered later is
        in it too). `refuse(name, value)` is the message for an entry left out."""
        return Subset(self, keep, refuse)

    # Read like a mapping; item assignment replaces (tests swap entries in and out).
    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __setitem__(self, name: str, value: T) -> None:
        self._entries[name] = value

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"


class Subset(Generic[T]):
    """Some of a registry's entries (the searchable spaces, say), looked up the same way."""

    def __init__(
        self,
        parent: Registry[T],
        keep: Callable[[T], bool],
        refuse: Callable[[str, T], str] | None,
    ) -> None:
        self.parent = parent
        self.kind = parent.kind
        self._keep = keep
        self._refuse = refuse

    def get(self, name: str) -> T:
        if name not in self.parent:
            raise self.unknown(name)
        value = self.parent.get(name)
        if not self._keep(value):
            if self._refuse is not None:
                raise self.parent.error(self._refuse(name, value))
            raise self.unknown(name)
        return value

    def unknown(self, name: object) -> MnasfpnError:
        p = self.parent
        return p.error(unknown_message(p.kind, name, self.names(), p.hint))

    def names(self) -> list[str]:
        return [n for n, v in self.parent.items() if self._keep(v)]

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())
