"""One Registry type for models, attacks, defenses and datasets.

Three ways in, one lookup:

* ``@REG.register("name", summary=...)`` on a class or function inside robench. Built-in
  plugin modules are discovered by importing every module of the registry's ``packages``, so
  adding a dataset/model/attack is one file that registers itself (no central list to edit).
* ``REG.add_lazy("name", "module:Object", summary=...)``: imported on first use only.
* Third-party plugins: an entry point in the registry's group (``robench.models``,
  ``robench.attacks``, ``robench.defenses``, ``robench.datasets``) whose value is
  ``"module:Object"``; it becomes a lazy entry.

An unknown name raises :class:`UnknownNameError` with a did-you-mean suggestion; the CLI turns
it into exit code 2.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import threading
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Iterator

from robench.core.errors import UnknownNameError


@dataclass
class Entry:
    name: str
    summary: str = ""
    target: str | None = None  # "module:Object" for lazy entries
    obj: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    origin: str = "builtin"  # builtin | lazy | entry-point

    def load(self) -> Any:
        if self.obj is None:
            if self.target is None or ":" not in self.target:
                raise UnknownNameError(f"entry {self.name!r} has no importable target {self.target!r}")
            module, _, attr = self.target.partition(":")
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            self.obj = obj
            # objects may carry their own summary/meta (class attributes)
            if not self.summary:
                self.summary = _summary_of(obj)
        return self.obj


def _summary_of(obj: Any) -> str:
    s = getattr(obj, "summary", None)
    if isinstance(s, str) and s:
        return s
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def _name_from_registration(obj: Any, name: str) -> None:
    if not isinstance(obj, type) or not hasattr(obj, "name"):
        return
    own = obj.__dict__.get("name")
    if own not in (None, "") and own != name:
        raise ValueError(f"{obj.__qualname__} sets name = {own!r} but is registered as {name!r}")
    obj.name = name


class Registry:
    """A named collection of plugins of one kind."""

    def __init__(self, kind: str, packages: tuple[str, ...] = (), group: str | None = None):
        self.kind = kind  # "model", "attack", "defense", "dataset"
        self.packages = packages
        self.group = group or f"robench.{kind}s"
        self._entries: dict[str, Entry] = {}
        self._discovered = False
        self._lock = threading.RLock()

    # -- registration ---------------------------------------------------------------------
    def register(self, name: str, summary: str = "", **meta: Any) -> Callable[[Any], Any]:
        """Register ``obj`` as ``name``. A class whose bases declare a ``name`` attribute (attacks,
        datasets, defences, executors) gets it from here: the name is written once, in the
        registration (a class that sets its own ``name`` to something else is refused)."""

        def deco(obj: Any) -> Any:
            _name_from_registration(obj, name)
            self._add(Entry(name=name, summary=summary or _summary_of(obj), obj=obj, meta=meta))
            return obj

        return deco

    def add(self, name: str, obj: Any, summary: str = "", **meta: Any) -> None:
        self._add(Entry(name=name, summary=summary or _summary_of(obj), obj=obj, meta=meta))

    def add_lazy(self, name: str, target: str, summary: str = "", **meta: Any) -> None:
        self._add(Entry(name=name, summary=summary, target=target, meta=meta, origin="lazy"))

    def _add(self, entry: Entry) -> None:
        with self._lock:
            old = self._entries.get(entry.name)
            if old is not None and old.obj is not None and old.obj is not entry.obj and old.origin == "builtin":
                raise ValueError(f"{self.kind} {entry.name!r} registered twice")
            self._entries[entry.name] = entry

    def unregister(self, name: str) -> Entry:
        """Remove entry ``name`` and return it (tests and plugin reloads clean up with this); an
        unknown name raises :class:`UnknownNameError`. Discovery is not re-run, so a removed
        built-in stays removed for this process."""
        self._discover()
        with self._lock:
            if name not in self._entries:
                raise UnknownNameError(self.unknown_message(name))
            return self._entries.pop(name)

    # -- discovery ------------------------------------------------------------------------
    def _discover(self) -> None:
        with self._lock:
            if self._discovered:
                return
            self._discovered = True
            for pkg_name in self.packages:
                pkg = importlib.import_module(pkg_name)
                for mod in pkgutil.iter_modules(pkg.__path__, prefix=pkg_name + "."):
                    if not mod.name.rsplit(".", 1)[-1].startswith("_"):
                        importlib.import_module(mod.name)
            for ep in entry_points(group=self.group):
                if ep.name not in self._entries:
                    self._entries[ep.name] = Entry(name=ep.name, target=ep.value, origin="entry-point")

    # -- lookup ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def entry(self, name: str) -> Entry:
        self._discover()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def get(self, name: str) -> Any:
        return self.entry(name).load()

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(self._entries)) or "none"
        return f"unknown {self.kind} {name!r}{hint} (known: {known})"

    def info(self) -> list[dict[str, Any]]:
        """One dict per entry: at least ``name`` and ``summary`` plus the entry's metadata."""
        out = []
        for name in self.names():
            e = self._entries[name]
            try:
                e.load()
            except Exception as exc:  # a broken plugin must not break `robench ls`
                out.append({"name": name, "summary": f"(failed to load: {exc})", "origin": e.origin})
                continue
            row = {"name": name, "summary": e.summary, "origin": e.origin}
            meta = getattr(e.obj, "registry_meta", None)
            row.update((meta() if callable(meta) else meta) or {})
            row.update(e.meta)
            out.append(row)
        return out


# The four plugin families. Built-in plugins live in these packages and register themselves.
MODELS = Registry("model", packages=("robench.models",))
ATTACKS = Registry("attack", packages=("robench.attacks",))
DEFENSES = Registry("defense", packages=("robench.defenses",))
DATASETS = Registry("dataset", packages=("robench.data",))

REGISTRIES = {"models": MODELS, "attacks": ATTACKS, "defenses": DEFENSES, "datasets": DATASETS}


def default_of(registry: Registry) -> str:
    """The one entry of ``registry`` whose plugin declares ``default = True`` (the offline
    default dataset, the mission's target): the engine names no plugin itself."""
    # declared in the registry entry's meta: found without importing (a broken plugin elsewhere
    # must not break the lookup); else as a class attribute
    found = [n for n in registry.names() if registry.entry(n).meta.get("default") is True]
    if not found:
        found = [n for n in registry.names() if getattr(registry.get(n), "default", False) is True]
    if len(found) != 1:
        from robench.core.errors import RobenchError

        raise RobenchError(f"exactly one {registry.kind} must declare default = True, found {found or 'none'}")
    return found[0]


def default_dataset() -> str:
    return default_of(DATASETS)


def training_recipes() -> dict[str, Any]:
    """The registered defences that train weights (``kind = "training"``), name → class, in table
    order (each declares ``order``; ties by name): the one list of recipes."""
    rec = {n: DEFENSES.get(n) for n in DEFENSES.names()}
    rec = {n: c for n, c in rec.items() if getattr(c, "kind", None) == "training"}
    return dict(sorted(rec.items(), key=lambda kv: (getattr(kv[1], "order", 99), kv[0])))


def attack_suite() -> tuple[str, ...]:
    """``--attacks all``: every registered attack that declares a ``suite`` place, in order."""
    placed = [(getattr(ATTACKS.get(n), "suite", None), n) for n in ATTACKS.names()]
    return tuple(n for s, n in sorted((s, n) for s, n in placed if s is not None))
