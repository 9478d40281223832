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

A part may register its pydantic config model with its factory
(``@PROVIDERS.register("csv", CsvConfig)``); a config type that holds such a part's table is then
``Annotated[Base, WrapValidator(REGISTRY.validate_table)]``: the table's ``kind`` picks the model
from the registry (errors read as a discriminated union's: ``intensity.csv.path``), so adding a
part touches only its own module and its ``plugins.py`` line. The registry imports its
``plugins`` module the first time it is asked for a name, so it is complete wherever a config is
validated.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError, ValidationInfo, ValidatorFunctionWrapHandler
from pydantic_core import InitErrorDetails, PydanticKnownError

from gridwatt.configfile import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[F]):
    """Name → factory of one kind of part; ``key`` is the config key that holds the name."""

    def __init__(self, what: str, key: str, plugins: str | None = None) -> None:
        self.what = what
        self.key = key
        #: the module that imports every part's module (imported on the first look-up)
        self.plugins = plugins
        self._factories: dict[str, F] = {}
        self._configs: dict[str, type[BaseModel]] = {}

    def register(self, name: str, config: type[BaseModel] | None = None) -> Callable[[F], F]:
        """Decorator: register ``factory`` (and its config model, if any) under ``name`` (twice is
        a programming error)."""

        def add(factory: F) -> F:
            if name in self._factories:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._factories[name] = factory
            if config is not None:
                self._configs[name] = config
            return factory

        return add

    def _load(self) -> None:
        if self.plugins is not None:
            importlib.import_module(self.plugins)

    def config_model(self, name: str) -> type[BaseModel] | None:
        """The config model registered with ``name`` (None: the part has no settings of its own)."""
        self._load()
        return self._configs.get(name)

    def validate_table(self, value: Any, handler: ValidatorFunctionWrapHandler,
                       info: ValidationInfo) -> Any:
        """WrapValidator: validate a part's table by the model its ``kind`` names in the registry.

        Strict as the models are (extra keys refused); errors keep the field path below the
        table; an unknown or missing kind names the known ones. ``info.context`` (``config_dir``)
        is passed on, so ConfigPath fields resolve against the config file's folder.
        """
        if isinstance(value, BaseModel):
            model = self.config_model(getattr(value, "kind", ""))
            if model is not None and isinstance(value, model):
                return value
            value = value.model_dump()
        if not isinstance(value, dict):
            return handler(value)  # the base model's own error (a table is expected)
        kind = value.get("kind")
        if not isinstance(kind, str):
            raise PydanticKnownError("union_tag_not_found", {"discriminator": "'kind'"})
        model = self.config_model(kind)
        if model is None:
            known = ", ".join(repr(n) for n in self.configured_names())
            raise PydanticKnownError(
                "union_tag_invalid", {"discriminator": "'kind'", "tag": kind, "expected_tags": known})
        try:
            return model.model_validate(value, context=info.context)
        except ValidationError as err:
            # as a discriminated union reports it: each error's path under this field, after the kind
            raise ValidationError.from_exception_data(
                err.title,
                [InitErrorDetails(type=e["type"], loc=(kind, *e["loc"]), input=e["input"],
                                  **({"ctx": e["ctx"]} if "ctx" in e else {}))  # type: ignore[typeddict-item]
                 for e in err.errors()],
            ) from None

    def configured_names(self) -> tuple[str, ...]:
        """Names registered with a config model, sorted."""
        self._load()
        return tuple(sorted(self._configs))

    def get(self, name: str) -> F:
        """The factory of ``name``; ConfigError naming the key and the known names otherwise."""
        self._load()
        try:
            return self._factories[name]
        except KeyError:
            known = ", ".join(self.names()) or "none registered"
            raise ConfigError(f"{self.key}: unknown {self.what} {name!r} (known: {known})") from None

    def names(self) -> tuple[str, ...]:
        """Registered names, sorted (so the order never depends on which module was imported first)."""
        self._load()
        return tuple(sorted(self._factories))

    def items(self) -> list[tuple[str, F]]:
        """(name, factory) pairs, sorted by name."""
        self._load()
        return sorted(self._factories.items())
