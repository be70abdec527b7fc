"""The plugin manager: a typed facade over pluggy with per-plugin fault isolation.

Entry points of the ``depthsel`` group are loaded lazily, on the first lookup,
never at ``import depthsel``. Each plugin's hooks are called one plugin at a
time, so a plugin that fails to import, declares a misspelt hook, or raises
while registering is reported (``depthsel plugins``) and skipped: it never
takes down the others or the CLI. Set ``DEPTHSEL_STRICT_PLUGINS=1`` to make
any such failure raise instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginConflictError, PluginError, UnknownPluginError, suggest
from .plugin_sources import NAME_RE as _NAME_RE
from .plugin_sources import PluginSource, bundle_sources, entry_point_sources, warn_if_slow

__all__ = [
    "PluginEntry",
    "PluginStatus",
    "PluginManager",
    "get_plugin_manager",
    "register_plugin",
    "unregister_plugin",
]



@dataclass(frozen=True)
class PluginEntry:
    """One registered thing: a binner, model, analyzer, dataset, objective or command."""

    kind: str
    name: str
    factory: Any
    description: str
    source: str
    info: Any = None


@dataclass
class PluginStatus:
    """What ``depthsel plugins`` shows for one plugin."""

    name: str
    version: str
    source: str
    hooks: list[str] = field(default_factory=list)
    ok: bool = True
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable view."""
        return {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "hooks": list(self.hooks),
            "status": "ok" if self.ok else "failed",
            "error": self.error,
        }


def _strict() -> bool:
    return os.environ.get("DEPTHSEL_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes"}


def _short_error(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit: the plugin called sys.exit({exc.code!r}) while being imported"
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt raised while the plugin was being imported"
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


class PluginManager:
    """Loads plugins and resolves registry names.

    Most users never touch this class; they call :func:`depthsel.get_binner`
    and friends. Tests and applications may create their own instance with
    ``load_entry_points=False`` and register plugin objects inline.
    """

    def __init__(self, *, load_entry_points: bool = True) -> None:
        self._pm = pluggy.PluginManager("depthsel")
        self._pm.add_hookspecs(hookspecs)
        self._load_entry_points = load_entry_points
        self._loaded = False
        self._statuses: dict[str, PluginStatus] = {}
        self._registries: dict[str, dict[str, PluginEntry]] | None = None
        self._conflicts: dict[tuple[str, str], list[str]] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ loading
    def _ensure_loaded(self) -> None:
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            if self._load_entry_points:
                self._load_from_entry_points()

    def _load_from_entry_points(self) -> None:
        for source in entry_point_sources():
            self._load_plugin(source)

    def _load_plugin(self, source: PluginSource) -> None:
        """Import and register one plugin, or each plugin of a bundle (see :mod:`.plugin_sources`)."""
        status = PluginStatus(name=source.label, version=source.version, source=source.source)
        self._statuses[source.label] = status
        t0, members = time.perf_counter(), None
        try:
            # stdout carries data (--format json), so plugin output goes to stderr; SystemExit
            # and KeyboardInterrupt from a plugin's import are a broken plugin, not an exit.
            with contextlib.redirect_stdout(sys.stderr):
                plugin = source.load()
            members = bundle_sources(plugin, source)
            if members is None:
                self._register_checked(plugin, source.label)
            else:
                del self._statuses[source.label]  # a bundle is listed as its plugins
                for member in members:
                    self._load_plugin(member)
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            if members is not None and isinstance(exc, PluginError) and _strict():
                raise  # a bundle member's strict-mode failure, already naming that member
            self._statuses[source.label] = status
            self._fail(status, exc)
        if members is None:  # a bundle's time is its members', each checked on its own
            warn_if_slow(source, time.perf_counter() - t0)

    def _register_checked(self, plugin: object, label: str) -> None:
        self._pm.register(plugin, name=label)
        try:
            # Catches misspelt hook names and wrong argument names early.
            self._pm.check_pending()
        except pluggy.PluginValidationError:
            self._pm.unregister(name=label)
            raise
        status = self._statuses[label]
        status.hooks = sorted(
            {impl.function.__name__ for impl in self._impls_of(label)}
        )

    def _impls_of(self, label: str) -> Iterator[pluggy.HookImpl]:
        for kind in hookspecs.HOOK_KINDS:
            caller = getattr(self._pm.hook, f"register_{kind}")
            for impl in caller.get_hookimpls():
                if impl.plugin_name == label:
                    yield impl

    def _fail(self, status: PluginStatus, exc: BaseException) -> None:
        status.ok = False
        status.error = _short_error(exc)
        if _strict():
            raise PluginError(
                f"plugin {status.name!r} failed: {status.error} "
                "(unset DEPTHSEL_STRICT_PLUGINS to skip broken plugins)"
            ) from exc
        warnings.warn(
            f"depthsel plugin {status.name!r} was skipped: {status.error}",
            RuntimeWarning,
            stacklevel=3,
        )
        self._statuses[status.name].ok = False

    # ------------------------------------------------------------ registration
    def register(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object or module in this process.

        Parameters
        ----------
        plugin
            An object or module with ``@hookimpl`` functions.
        name
            Its label in ``depthsel plugins``; defaults to its class or module name.

        Returns
        -------
        str
            The label, to pass to :meth:`unregister`.
        """
        self._ensure_loaded()
        with self._lock:
            label = name or getattr(plugin, "__name__", type(plugin).__name__)
            if label in self._statuses and self._pm.has_plugin(label):
                raise PluginError(f"a plugin named {label!r} is already registered; pass name=")
            status = PluginStatus(name=label, version="", source=f"inline:{label}")
            self._statuses[label] = status
            try:
                self._register_checked(plugin, label)
            except Exception as exc:
                self._fail(status, exc)
            self._registries = None
            return label

    def unregister(self, name: str) -> None:
        """Remove a plugin registered with :meth:`register`."""
        with self._lock:
            if self._pm.has_plugin(name):
                self._pm.unregister(name=name)
            self._statuses.pop(name, None)
            self._registries = None

    # --------------------------------------------------------------- registries
    def _build(self) -> dict[str, dict[str, PluginEntry]]:
        self._ensure_loaded()
        with self._lock:
            if self._registries is not None:
                return self._registries
            registries: dict[str, dict[str, PluginEntry]] = {k: {} for k in hookspecs.HOOK_KINDS}
            self._conflicts = {}
            for kind in hookspecs.HOOK_KINDS:
                caller = getattr(self._pm.hook, f"register_{kind}")
                # pluggy calls later-registered plugins first; reverse for a stable,
                # registration-ordered listing.
                for impl in reversed(caller.get_hookimpls()):
                    label = impl.plugin_name
                    status = self._statuses.get(label)
                    if status is not None and not status.ok:
                        continue
                    staged: dict[str, PluginEntry] = {}
                    register = self._make_register(kind, label, staged)
                    try:
                        # Hooks often import the plugin's submodules: same isolation as at import.
                        with contextlib.redirect_stdout(sys.stderr):
                            impl.function(register=register)
                    except (Exception, SystemExit, KeyboardInterrupt) as exc:
                        if status is None:
                            status = PluginStatus(name=label, version="", source="")
                            self._statuses[label] = status
                        self._fail(status, exc)
                        continue
                    for entry_name, entry in staged.items():
                        existing = registries[kind].get(entry_name)
                        if existing is not None:
                            sources = self._conflicts.setdefault(
                                (kind, entry_name), [existing.source]
                            )
                            sources.append(label)
                            if _strict():
                                raise PluginConflictError(self._conflict_message(kind, entry_name))
                            continue
                        registries[kind][entry_name] = entry
            for (kind, entry_name), sources in self._conflicts.items():
                for label in sources:
                    status = self._statuses.get(label)
                    if status is not None:
                        status.ok = False
                        status.error = self._conflict_message(kind, entry_name)
            self._registries = registries
            return registries

    @staticmethod
    def _make_register(
        kind: str, label: str, staged: dict[str, PluginEntry]
    ) -> Callable[..., None]:
        def register(
            name: str, factory: Any, *, description: str = "", info: Any = None
        ) -> None:
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise PluginError(
                    f"plugin {label!r} registered the invalid {kind[:-1]} name {name!r}: "
                    "use lower case letters, digits, '_' or '-'"
                )
            if name in staged:
                raise PluginConflictError(
                    f"plugin {label!r} registered the {kind[:-1]} {name!r} twice"
                )
            if not callable(factory):
                raise PluginError(f"plugin {label!r}: the factory of {name!r} is not callable")
            doc = description or (getattr(factory, "__doc__", "") or "").strip().split("\n")[0]
            staged[name] = PluginEntry(kind, name, factory, doc, label, info)

        return register

    def _conflict_message(self, kind: str, name: str) -> str:
        sources = self._conflicts.get((kind, name), [])
        return (
            f"the {kind[:-1]} name {name!r} is registered by more than one plugin: "
            + " and ".join(repr(s) for s in sources)
            + "; uninstall or rename one of them"
        )

    def entries(self, kind: str) -> dict[str, PluginEntry]:
        """Return ``{name: entry}`` for one kind, in registration order."""
        if kind not in hookspecs.HOOK_KINDS:
            raise UnknownPluginError(f"unknown plugin kind {kind!r}: {suggest(kind, hookspecs.HOOK_KINDS)}")
        return dict(self._build()[kind])

    def entry(self, kind: str, name: str) -> PluginEntry:
        """Return one entry, or raise a helpful :class:`UnknownPluginError`."""
        registry = self._build()[kind]
        if (kind, name) in self._conflicts:
            raise PluginConflictError(self._conflict_message(kind, name))
        if name not in registry:
            raise UnknownPluginError(
                f"no {kind[:-1]} named {name!r}: {suggest(name, registry)} "
                f"(run `depthsel {kind}` to list them, `depthsel plugins` for failed plugins)"
            )
        return registry[name]

    def create(self, kind: str, name: str, /, **config: Any) -> Any:
        """Build the named object with keyword configuration."""
        entry = self.entry(kind, name)
        _check_config(entry, config)
        try:
            return entry.factory(**config)
        except TypeError as exc:
            # Factories taking **config forward options to a class whose signature
            # _check_config cannot see; a bad option then surfaces as a TypeError.
            text = str(exc)
            if not any(s in text for s in ("unexpected keyword argument", "required positional argument",
                                           "required keyword-only argument")):
                raise
            raise PluginError(
                f"{kind[:-1]} {name!r} rejected its options {sorted(config)}: {text}; "
                "check the option names against its documentation"
            ) from exc

    def statuses(self) -> list[PluginStatus]:
        """Return every plugin seen, loaded or failed."""
        self._build()
        return list(self._statuses.values())

    def failures(self) -> list[PluginStatus]:
        """Return the plugins that failed to load or register."""
        return [s for s in self.statuses() if not s.ok]


def _check_config(entry: PluginEntry, config: dict[str, Any]) -> None:
    """Refuse unknown keyword options with a list of the accepted ones."""
    import inspect

    try:
        sig = inspect.signature(entry.factory)
    except (TypeError, ValueError):
        return
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                       inspect.Parameter.KEYWORD_ONLY)]
    unknown = [k for k in config if k not in accepted]
    if unknown:
        raise PluginError(
            f"{entry.kind[:-1]} {entry.name!r} got unknown option(s) {unknown}; "
            f"it accepts: {', '.join(accepted) or '(no options)'}"
        )


_DEFAULT: PluginManager | None = None
_DEFAULT_LOCK = threading.Lock()


def get_plugin_manager() -> PluginManager:
    """Return the process-wide plugin manager (created on first use)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = PluginManager()
        return _DEFAULT


def reset_plugin_manager() -> None:
    """Drop the process-wide manager; the next lookup reloads entry points."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        _DEFAULT = None


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object in the process-wide manager; see :meth:`PluginManager.register`."""
    return get_plugin_manager().register(plugin, name=name)


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered with :func:`register_plugin`."""
    get_plugin_manager().unregister(name)
