"""One registration pattern for the collector's and the agent's pluggable parts.

GPU sources (agent/sources), intensity providers (collector/intensity) and alert sinks
(collector/alerts/sinks) are each a :class:`Registry` of factories keyed by the name a config
uses for them. A part's own module registers its factory with one decorator::

    @SOURCES.register("nvml")
    def nvml_source(config: AgentConfig, replay: bool) -> GpuSource: ...

and one ``plugins.py`` per registry imports every such module (one line each, like Telegraf's
``plugins/inputs/all``), so the registry is complete wherever ``plugins`` was imported. An
unknown name is a :class:`~gridwatt.configfile.ConfigError` that names the config key and the
known names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from gridwatt.configfile import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[F]):
    """Name → factory of one kind of part; ``key`` is the config key that holds the name."""

    def __init__(self, what: str, key: str) -> None:
        self.what = what
        self.key = key
        self._factories: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: register ``factory`` under ``name`` (twice is a programming error)."""

        def add(factory: F) -> F:
            if name in self._factories:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return add

    def get(self, name: str) -> F:
        """The factory of ``name``; ConfigError naming the key and the known names otherwise."""
        try:
            return self._factories[name]
        except KeyError:
            known = ", ".join(self.names()) or "none registered"
            raise ConfigError(f"{self.key}: unknown {self.what} {name!r} (known: {known})") from None

    def names(self) -> tuple[str, ...]:
        """Registered names, sorted (so the order never depends on which module was imported first)."""
        return tuple(sorted(self._factories))

    def items(self) -> list[tuple[str, F]]:
        """(name, factory) pairs, sorted by name."""
        return sorted(self._factories.items())
