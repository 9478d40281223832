"""One registration pattern for the collector's and the agent's pluggable parts.

GPU sources (agent/sources), intensity providers (collector/intensity) and alert sinks
(collector/alerts/sinks) are each a :class:`Registry` of factories keyed by the name a config
uses for them. A part's own module registers its factory (and its config model) with one decorator::

    @SOURCES.register("sim", SimConfig)
    def sim_source(sim: SimConfig, ctx: SourceContext) -> GpuSource: ...

and one ``plugins.py`` per registry imports every such module (one line each, like Telegraf's
``plugins/inputs/all``), so the registry is complete wherever ``plugins`` was imported. An
unknown name is a :class:`~gridwatt.configfile.ConfigError` that names the config key and the
known names.

A part with settings registers its pydantic config model with its factory (as above, or
``@PROVIDERS.register("csv", CsvConfig)``), and the config finds a part's table through the
registry, in one of two shapes:

* a table that names its part by ``kind`` (intensity providers: ``{ kind = "csv", path = ... }``):
  the field's type is ``Annotated[Base, WrapValidator(REGISTRY.validate_table)]``; the ``kind``
  picks the model (errors read as a discriminated union's: ``intensity.csv.path``);
* a section whose keys name parts (``[source.sim]``, ``[alerts.sinks.webhooks]``): the section's
  model derives from :class:`PartTables`; each key that is not one of its own fields must be a
  registered name, and its table (or array of tables) is validated by that part's model (errors:
  ``source.sim.gpus``, ``alerts.sinks.webhooks.0.url``; an unknown name lists the known ones).

Either way adding a part touches only its own module and its ``plugins.py`` line. The registry
imports its ``plugins`` module the first time it is asked for a name, so it is complete wherever
a config is validated.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, ClassVar, Generic, Self, TypeVar, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, PydanticKnownError

from gridwatt.configfile import ConfigError, StrictModel

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
            raise ValidationError.from_exception_data(err.title, moved_errors(err, (kind,))) from None

    def validate_tables(self, tables: dict[str, Any], context: Any, arrays: bool
                        ) -> tuple[dict[str, Any], list[InitErrorDetails]]:
        """Each of ``tables``' values validated by the model its key names in the registry.

        With ``arrays`` a value may also be an array of tables (a list of models comes back).
        Returns the validated tables and the problems, each at its path below the section.
        """
        done: dict[str, Any] = {}
        problems: list[InitErrorDetails] = []
        for name, value in tables.items():
            model = self.config_model(name)
            if model is None:
                problems.append(InitErrorDetails(type=self._no_table(name), loc=(name,), input=value))
                continue
            many = arrays and isinstance(value, list)
            items = list(enumerate(value)) if many else [(None, value)]
            models: list[BaseModel] = []
            for index, item in items:
                where: tuple[str | int, ...] = (name,) if index is None else (name, index)
                try:
                    models.append(item if isinstance(item, model) else
                                  model.model_validate(item, context=context))
                except ValidationError as err:
                    problems.extend(moved_errors(err, where))
            done[name] = models if many else models[0] if models else None
        return done, problems

    def _no_table(self, name: str) -> PydanticCustomError:
        """The error for a table of ``name``, which has no config model (or is not registered)."""
        if name in self._factories:
            known = ", ".join(self.configured_names()) or "none"
            return PydanticCustomError("part_without_settings", "{what} {name} has no settings of its own "
                                       "(those with settings: {known})",
                                       {"what": self.what, "name": repr(name), "known": known})
        known = ", ".join(self.names()) or "none registered"
        return PydanticCustomError("unknown_part", "unknown {what} {name} (known: {known})",
                                   {"what": self.what, "name": repr(name), "known": known})

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


def moved_errors(err: ValidationError, under: tuple[str | int, ...]) -> list[InitErrorDetails]:
    """``err``'s problems with ``under`` put before each one's field path (to re-raise them from an
    outer validator, which puts its own field's path in front)."""
    moved: list[InitErrorDetails] = []
    for e in err.errors():
        kind: str | PydanticCustomError = e["type"]
        try:
            PydanticKnownError(cast(Any, e["type"]), e.get("ctx"))
        except (KeyError, TypeError, ValueError):  # a custom error type: keep its message as it reads
            kind = PydanticCustomError(e["type"], e["msg"])
        details = InitErrorDetails(type=kind, loc=(*under, *e["loc"]), input=e["input"])
        if "ctx" in e and isinstance(kind, str):
            details["ctx"] = e["ctx"]
        moved.append(details)
    return moved


class PartTables(StrictModel):
    """A config section whose keys, besides its own fields, name parts of :attr:`part_registry`,
    each holding that part's own table (``[source.sim]``), validated by the part's config model.

    Strict as every config model: a key that is neither a field nor a registered part (with a
    config model) is an error naming the known parts. The validated tables are the section's
    extra attributes (``config.source.sim``); :meth:`tables` gives a part's tables as a list.
    """

    model_config = ConfigDict(extra="allow")
    #: the registry whose parts the section's other keys name
    part_registry: ClassVar[Registry[Any]]
    #: whether a part's key may hold an array of tables, one part each (``[[alerts.sinks.webhooks]]``)
    part_arrays: ClassVar[bool] = False

    @model_validator(mode="wrap")
    @classmethod
    def _part_tables(cls, data: Any, handler: ModelWrapValidatorHandler[Self], info: ValidationInfo) -> Self:
        if not isinstance(data, dict):
            return handler(data)  # a section already validated, or the base model's own error
        fields = cls.model_fields
        own = {k: v for k, v in data.items() if k in fields}
        tables, problems = cls.part_registry.validate_tables(
            {k: v for k, v in data.items() if k not in fields}, info.context, cls.part_arrays)
        section = None
        try:
            section = handler(own)
        except ValidationError as err:
            problems[:0] = moved_errors(err, ())
        if section is not None and not problems:
            section.__pydantic_extra__ = tables
            problems = section._complete_tables(info.context)
        if problems or section is None:
            raise ValidationError.from_exception_data(cls.__name__, problems)
        return section

    def _complete_tables(self, context: Any) -> list[InitErrorDetails]:
        """After validation: add the tables a section implies (none here); the problems found."""
        return []

    def tables(self, name: str) -> list[Any]:
        """The tables the section holds for part ``name`` (none, one, or an array's)."""
        value = (self.__pydantic_extra__ or {}).get(name)
        return [] if value is None else list(value) if isinstance(value, list) else [value]
