"""Hook specifications of the ``depthsel`` plugin system.

A plugin is any module or object with functions decorated by :data:`hookimpl`.
Each hook receives one ``register`` callback and calls it once per thing it
provides::

    from depthsel import hookimpl

    @hookimpl
    def register_binners(register):
        register("my_bins", MyBinner, description="bins from a lookup table")

Third-party packages expose such a module through the ``depthsel`` entry-point
group; first-party plugins do exactly the same.
"""

from __future__ import annotations

from typing import Any, Protocol

import pluggy

__all__ = ["hookspec", "hookimpl", "Register", "HOOK_KINDS"]

hookspec = pluggy.HookspecMarker("depthsel")
hookimpl = pluggy.HookimplMarker("depthsel")


class Register(Protocol):
    """The callback every ``register_*`` hook receives.

    Parameters
    ----------
    name
        The registry name (lower case, ``[a-z0-9_]``).
    factory
        A class or callable that builds the object from keyword configuration.
    description
        One line shown by ``depthsel <kind>`` listings.
    info
        Kind-specific metadata, e.g. a :class:`depthsel.ModelInfo` for models.
    """

    def __call__(
        self, name: str, factory: Any, *, description: str = "", info: Any = None
    ) -> None: ...


@hookspec
def register_binners(register: Register) -> None:
    """Register :class:`depthsel.Binner` factories."""


@hookspec
def register_objectives(register: Register) -> None:
    """Register :class:`depthsel.SelectivityObjective` factories."""


@hookspec
def register_models(register: Register) -> None:
    """Register depth network factories with a :class:`depthsel.ModelInfo`."""


@hookspec
def register_analyzers(register: Register) -> None:
    """Register :class:`depthsel.Analyzer` factories."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register dataset factories returning :class:`torch.utils.data.Dataset`."""


@hookspec
def register_results(register: Register) -> None:
    """Register :class:`depthsel.results.Result` subclasses by kind: ``register(cls.kind, cls)``.

    :func:`depthsel.results.load_result` never loads plugins itself; a caller
    asks for these classes with ``load_result(path, types=depthsel.api.result_types())``.
    """


@hookspec
def register_protocols(register: Register) -> None:
    """Register metric protocol presets (:class:`depthsel.protocols.MetricProtocol`).

    ``register(name, factory)``: ``factory()`` returns a protocol whose ``name``
    is ``name``. The core has only ``"default"``; presets that reproduce a
    paper's evaluation are plugins.
    """


@hookspec
def register_commands(register: Register) -> None:
    """Register CLI commands: ``register(name, function, description=...)``.

    ``function`` is added to the typer application with ``app.command(name)``.
    """


#: The kinds of thing a plugin can register, in listing order.
HOOK_KINDS: tuple[str, ...] = (
    "binners",
    "objectives",
    "models",
    "analyzers",
    "datasets",
    "results",
    "protocols",
    "commands",
)
