"""Load a TOML config file into a pydantic model, with GRIDWATT_* environment overrides.

Every config model derives from :class:`StrictModel` (unknown keys are errors) and every path
field is a :data:`ConfigPath`: a relative path is taken from the config file's folder (the
``config_dir`` that :func:`load_config` passes as validation context), whatever section it is in.

Environment variables override file values: ``GRIDWATT_<FIELD>`` for a top-level
field and ``GRIDWATT_<SECTION>__<FIELD>`` for a nested one (case-insensitive), e.g.
``GRIDWATT_INFLUXDB__URL=http://db:8086``. Values are parsed as TOML scalars where
they parse (numbers, booleans), else taken as strings.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, ValidationInfo

ENV_PREFIX = "GRIDWATT_"

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(Exception):
    """A configuration problem, with the file, field and reason in its message."""


class StrictModel(BaseModel):
    """The base of every config model: a key the model does not know is an error, never ignored."""

    model_config = ConfigDict(extra="forbid")


def _from_config_dir(value: Any, info: ValidationInfo) -> Any:
    """A relative path from a config file, taken from the file's folder (when validating a file)."""
    if value is None or not isinstance(value, str | Path):
        return value  # None where allowed; anything else fails as "not a path" with the field's name
    if str(value) == "":
        raise ValueError("must not be empty")
    return resolve_path(value, (info.context or {}).get("config_dir"))


#: The type of every path field of a config: relative to the config file's folder unless absolute.
ConfigPath = Annotated[Path, BeforeValidator(_from_config_dir)]


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _field_names(model: type[BaseModel]) -> dict[str, str]:
    return {name.lower(): name for name in model.model_fields}


def apply_env_overrides(
    data: dict[str, Any], model: type[BaseModel], environ: Mapping[str, str]
) -> list[str]:
    """Merge GRIDWATT_* variables that name fields of ``model`` into ``data``; return their names."""
    used: list[str] = []
    top = _field_names(model)
    for key, raw in sorted(environ.items()):
        if not key.upper().startswith(ENV_PREFIX):
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        if path[0] not in top:
            continue
        target = data
        field_model: type[BaseModel] | None = model
        ok = True
        for depth, part in enumerate(path):
            names = _field_names(field_model) if field_model is not None else {}
            name = names.get(part, part)
            if depth == len(path) - 1:
                target[name] = _parse_env_value(raw)
                break
            child = target.get(name)
            if child is None:
                child = {}
                target[name] = child
            if not isinstance(child, dict):
                ok = False
                break
            target = child
            annotation = field_model.model_fields[name].annotation if field_model and name in (
                field_model.model_fields
            ) else None
            field_model = annotation if isinstance(annotation, type) and issubclass(
                annotation, BaseModel
            ) else None
        if ok:
            used.append(key)
    return used


def format_validation_error(path: Path | str, err: ValidationError) -> str:
    """One line per problem: ``FILE: field a.b: reason (got VALUE)``."""
    lines = []
    for problem in err.errors():
        field = ".".join(str(p) for p in problem["loc"]) or "(top level)"
        value = problem.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"{path}: field {field}: {problem['msg']}{shown}")
    return "\n".join(lines)


def load_config(
    path: Path | str, model: type[ModelT], environ: Mapping[str, str] | None = None
) -> ModelT:
    """Read, override from the environment, and validate; raise ConfigError naming file and field."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except PermissionError:
        raise ConfigError(f"{path}: config file not readable (permission denied)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    apply_env_overrides(data, model, os.environ if environ is None else environ)
    try:
        config = model.model_validate(data, context={"config_dir": path.resolve().parent})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None
    return config


PACKAGE_PREFIX = "package:"


def packaged_data(name: str) -> Path:
    """A grid data file shipped with gridwatt (``deploy/data/grid``, packaged as gridwatt.deploy)."""
    from gridwatt.resources import deploy_file

    return Path(str(deploy_file("data", "grid", name)))


def resolve_path(value: str | Path, config_dir: Path | None) -> Path:
    """A path from a config file, relative to the file's folder unless absolute.

    ``package:NAME`` names a data file shipped with gridwatt (see :func:`packaged_data`), so a
    config in /etc/gridwatt can use the grid data that comes with the installed package.
    """
    if isinstance(value, str) and value.startswith(PACKAGE_PREFIX):
        return packaged_data(value[len(PACKAGE_PREFIX):])
    p = Path(value).expanduser()
    if not p.is_absolute() and config_dir is not None:
        p = config_dir / p
    return p


def read_secret(value: str | None, file: str | Path | None, what: str) -> str | None:
    """A secret given inline (usually from the environment) or in a file; never logged."""
    if value:
        return value
    if file:
        try:
            return Path(file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read secret file {file}: {exc.strerror}") from None
    return None


def secret_from(env_name: str, path: Path | None, what: str) -> str:
    """A required secret: the environment variable ``env_name``, else the file ``path``; ConfigError
    saying where to put it when neither has one (the secret itself is never shown)."""
    value = read_secret(os.environ.get(env_name) or None, path, what)
    if not value:
        where = f"environment variable {env_name}" + (f" or file {path}" if path else "")
        raise ConfigError(f"{what}: no secret found (set {where})")
    return value
