"""Registries: the one place a kind of named thing (detector, recipe, preset, ...) is listed.

Two ways to fill one, as the field's libraries do:

* **one module per entry** (``Registry(kind, package=...)``, like open_clip's model configs: the
  names are derived from what exists): the entry ``x`` is the module ``<package>.x``, which
  registers itself when imported. Its *names* come from the package's files, without importing
  any of them, so validating ``params.yaml`` stays cheap (no torch); ``get`` imports the one
  module asked for.
* **entries registered by one owner module** (``Registry(kind, owner=...)``, like timm's
  ``@register_model``): ``get`` and ``names`` import the owner, whose module body registers each
  entry.

Either way a name is typed once, by its owner; other modules (``config`` included) look names
up here and never keep a copy. An entry may list ``old_names``: params naming one get the
owner's explanation (``problem``); old bundles resolve them (``current``); ``get`` knows only
current names.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownName(KeyError, ValueError):
    """A name no entry of the registry has; the message lists the choices."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Name -> entry, filled by the entries' own modules (see the module docstring)."""

    def __init__(self, kind: str, *, package: str = "", owner: str = "") -> None:
        if bool(package) == bool(owner):
            raise ValueError("a registry has either a package (one module per entry) or an owner")
        self.kind, self.package, self.owner = kind, package, owner
        self._entries: dict[str, T] = {}
        self._old: dict[str, tuple[str, str]] = {}  # old name -> (current name, why)
        self._complete = False
        self._files: list[str] | None = None

    # --- filled by the owners ---------------------------------------------------------------
    def register(self, name: str, entry: T, old_names: Sequence[str] = (), why: str = "") -> T:
        """Add ``entry`` under ``name`` (once); ``old_names`` resolve to it (``why``: the
        explanation a user who names one reads)."""
        if self.package and name not in self._module_names():
            raise ValueError(f"{self.kind} {name!r} must live in {self.package}.{name}")
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        for old in old_names:
            self._old[old] = (name, why)
        return entry

    # --- read by everyone else --------------------------------------------------------------
    def names(self) -> tuple[str, ...]:
        """Every current name, without importing the entries of a package registry."""
        if self.package:
            return tuple(sorted(self._module_names()))
        self._load_all()
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def get(self, name: str) -> T:
        """The entry called ``name``; ``UnknownName`` (listing the names) otherwise."""
        if not isinstance(name, str):
            raise UnknownName(f"unknown {self.kind} {name!r}; choose one of "
                              f"{', '.join(self.names())}")
        if self.owner:
            self._load_all()
        if name in self._entries:
            return self._entries[name]
        if self.package and name in self._module_names():
            importlib.import_module(f"{self.package}.{name}")
            if name not in self._entries:
                raise RuntimeError(f"{self.package}.{name} does not register {self.kind} {name!r}")
            return self._entries[name]
        raise UnknownName(f"unknown {self.kind} {name!r}; choose one of "
                          f"{', '.join(self.names())}")

    def all(self) -> dict[str, T]:
        """Every entry by name (imports them all)."""
        self._load_all()
        return {n: self._entries[n] for n in self.names()}

    def current(self, name: str) -> str:
        """``name``, or the current name of an old one (``ufd`` -> ``composite_probe``)."""
        if name in self.names():
            return name
        self._load_all()
        return self._old.get(name, (name, ""))[0]

    def problem(self, name: str) -> str | None:
        """Why ``name`` is not a current name, as params validation says it (None if it is):
        the owner's explanation of an old name, else the choices."""
        if isinstance(name, str) and name in self.names():
            return None
        self._load_all()
        if isinstance(name, str) and name in self._old:
            new, why = self._old[name]
            return why or f"{name!r} was renamed {new!r}"
        return f"{name!r} is not one of {', '.join(self.names())}"

    # --- internals ----------------------------------------------------------------------------
    def _module_names(self) -> list[str]:
        if self._files is None:  # the package's files do not change while a process runs
            pkg = importlib.import_module(self.package)
            self._files = [m.name for m in pkgutil.iter_modules(pkg.__path__)
                           if not m.name.startswith("_") and not m.ispkg]
        return self._files

    def _load_all(self) -> None:
        if self._complete:
            return
        if self.owner:
            importlib.import_module(self.owner)
        else:
            for name in self._module_names():
                importlib.import_module(f"{self.package}.{name}")
        self._complete = True


# Every registry of the project, each filled by its owner (docs/development.md, "Registries").
METHODS: Registry = Registry("head", package="nsnet.heads.methods")
RECIPES: Registry = Registry("recipe", package="nsnet.extraction.recipes")
MAPPERS: Registry = Registry("mapper", owner="nsnet.heads.mappers")
PRESETS: Registry = Registry("preset", owner="nsnet.data.presets")
LAYOUTS: Registry = Registry("layout", owner="nsnet.data.layouts")
