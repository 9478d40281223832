"""Who is reading: principals for the query APIs (HTTP and gRPC ``Query``), and what each may see.

A read is made by a **principal**: a name, a role and the accounts it manages.

* ``user``: sees the jobs whose user is its name;
* ``account-manager``: also the jobs of the accounts it manages;
* ``operator``: everything, including racks, alerts and ``/metrics``.

A principal proves who it is with ``Authorization: Bearer <token>`` (HTTP header or gRPC metadata);
the collector keeps only SHA-256 digests and compares them with :func:`hmac.compare_digest` against
every known digest. Or a trusted reverse proxy names it in an identity header
(``X-Forwarded-User`` by default): the header is believed **only** when the connection comes from
one of ``[reads] trusted_proxies``; from any other address it is ignored. Node tokens are kept
apart (collector/auth.py) and never grant a read.

A job the caller may not see answers exactly like an unknown job (HTTP 404, gRPC ``NOT_FOUND``, the
same message). Reads are checked when ``[reads] principals_file`` or ``trusted_proxies`` is set;
without either every read is answered (a warning is logged at start).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import tomllib
from collections.abc import Iterable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gridwatt.configfile import ConfigError, ConfigPath, StrictModel

log = logging.getLogger("gridwatt.collector.read_auth")

Role = Literal["user", "account-manager", "operator"]
ROLES: tuple[str, ...] = ("user", "account-manager", "operator")
HASH_PREFIX = "sha256:"
MIN_TOKEN_CHARS = 16
#: Longest principal name or identity header value accepted.
MAX_NAME_CHARS = 256
#: Most principals one file may hold.
MAX_PRINCIPALS = 100_000


class ReadsConfig(StrictModel):
    """``[reads]``: authentication of the query APIs, HTTP TLS, and a local-only metrics listener.
    Relative paths are taken from the config file's folder."""

    #: TOML file of ``[[principals]]`` (name, role, accounts, token = "sha256:<hex>").
    principals_file: ConfigPath | None = None
    #: Addresses or networks (``10.0.0.5``, ``10.0.0.0/24``) whose identity header is believed.
    trusted_proxies: list[str] = Field(default_factory=list)
    #: The header (HTTP) or metadata key (gRPC) a trusted proxy names the user in.
    identity_header: str = Field("X-Forwarded-User", min_length=1, max_length=64)
    #: TLS for the HTTP API (set both).
    tls_cert_file: ConfigPath | None = None
    tls_key_file: ConfigPath | None = None
    #: Serve ``/metrics`` (and ``/healthz``) without authentication on this loopback address as well,
    #: e.g. ``127.0.0.1:9108``; empty: none.
    metrics_listen: str = ""

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for item in v:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
        return v

    @field_validator("metrics_listen")
    @classmethod
    def _loopback(cls, v: str) -> str:
        if not v:
            return v
        host, _, port = v.rpartition(":")
        host = host.strip("[]")
        if not port.isdigit():
            raise ValueError(f"{v!r}: expected host:port")
        if host != "localhost":
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise ValueError(f"{v!r}: the unauthenticated metrics listener must be on a loopback address")
        return v

    @model_validator(mode="after")
    def _tls_pair(self) -> ReadsConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("HTTP TLS needs both tls_cert_file and tls_key_file")
        return self

    @property
    def enabled(self) -> bool:
        return self.principals_file is not None or bool(self.trusted_proxies)


@dataclass(frozen=True)
class Principal:
    """Who is reading: name, role and the accounts it manages (account-manager)."""

    name: str
    role: str
    accounts: frozenset[str] = field(default_factory=frozenset)

    @property
    def operator(self) -> bool:
        return self.role == "operator"

    def may_see_job(self, user: str, account: str) -> bool:
        """Whether this principal may read a job run by ``user`` under ``account`` ("" = unknown)."""
        if self.role == "operator":
            return True
        if user and user == self.name:
            return True
        return self.role == "account-manager" and bool(account) and account in self.accounts

    def filter_users_accounts(self) -> tuple[str | None, frozenset[str]]:
        """For listings: (own user name, managed accounts); (None, {}) for an operator (no filter)."""
        if self.operator:
            return None, frozenset()
        return self.name, self.accounts if self.role == "account-manager" else frozenset()


#: The principal of every read when read authentication is off.
ANONYMOUS_OPERATOR = Principal("anonymous", "operator")
#: Sees nothing: the principal outside any authenticated request.
NOBODY = Principal("", "none")
#: The principal of the HTTP request being handled (set by the API's middleware for its handlers,
#: e.g. the web page's, which read it with ``current_principal()``).
_CURRENT: ContextVar[Principal] = ContextVar("gridwatt_read_principal", default=NOBODY)


def current_principal() -> Principal:
    """Who made the HTTP request being handled; NOBODY outside one."""
    return _CURRENT.get()


def set_current_principal(principal: Principal) -> Token[Principal]:
    return _CURRENT.set(principal)


def reset_current_principal(token: Token[Principal]) -> None:
    _CURRENT.reset(token)


class ReadAuthError(Exception):
    """A read without valid credentials (HTTP 401 / gRPC UNAUTHENTICATED); names no secret."""


class _PrincipalEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    role: Role
    accounts: list[str] = []
    #: ``sha256:<hex>`` (from ``gridwatt-collector hash-token``) or the token itself; none: the
    #: principal can only come through a trusted proxy's identity header.
    token: str | None = Field(None, repr=False)


def _digest(where: str, value: str) -> bytes:
    value = value.strip()
    if value.startswith(HASH_PREFIX):
        hexpart = value[len(HASH_PREFIX):].lower()
        if len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
            raise ConfigError(f"{where}: token: sha256: must be followed by 64 hex digits")
        return bytes.fromhex(hexpart)
    if len(value) < MIN_TOKEN_CHARS or any(c.isspace() for c in value):
        raise ConfigError(f"{where}: token must be at least {MIN_TOKEN_CHARS} characters without spaces "
                          "(e.g. `openssl rand -hex 32`), or sha256:<hex>")
    return hashlib.sha256(value.encode()).digest()


def load_principals(path: Path) -> tuple[dict[str, Principal], list[tuple[bytes, str]]]:
    """(principals by name, [(token digest, name)]) from a principals file; ConfigError names the entry."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"reads.principals_file: cannot read {path}: {exc.strerror}") from None
    if len(raw) > 64 * 1024 * 1024:
        raise ConfigError(f"{path}: larger than 64 MiB")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"principals"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; expected [[principals]] tables")
    entries = data.get("principals", [])
    if not isinstance(entries, list) or len(entries) > MAX_PRINCIPALS:
        raise ConfigError(f"{path}: principals must be at most {MAX_PRINCIPALS} [[principals]] tables")
    principals: dict[str, Principal] = {}
    digests: list[tuple[bytes, str]] = []
    owner: dict[bytes, str] = {}
    for i, item in enumerate(entries, 1):
        where = f"{path}: principal #{i}"
        try:
            entry = _PrincipalEntry.model_validate(item)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err["loc"]) or "entry"
            raise ConfigError(f"{where}: field {loc}: {err['msg']}") from None
        where = f"{path}: principal {entry.name!r}"
        if entry.name in principals:
            raise ConfigError(f"{where}: listed twice")
        principals[entry.name] = Principal(entry.name, entry.role, frozenset(entry.accounts))
        if entry.token is not None:
            digest = _digest(where, entry.token)
            if digest in owner:
                raise ConfigError(f"{where}: same token as principal {owner[digest]!r}; give each its own")
            owner[digest] = entry.name
            digests.append((digest, entry.name))
    _warn_if_readable_by_others(path)
    return principals, digests


def _warn_if_readable_by_others(path: Path) -> None:
    try:
        if os.stat(path).st_mode & 0o004:
            log.warning("reads.principals_file %s is readable by every user; chmod 640 it", path)
    except OSError:
        pass


def peer_ip_of_grpc(peer: str) -> str:
    """The IP address in a gRPC peer string (``ipv4:10.0.0.1:5000``, ``ipv6:[::1]:5000``); "" if none."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return ""


class ReadAuth:
    """Identifies the principal of a read (see the module docstring)."""

    def __init__(
        self,
        principals: Mapping[str, Principal] | None = None,
        digests: Iterable[tuple[bytes, str]] = (),
        trusted_proxies: Iterable[str] = (),
        identity_header: str = "X-Forwarded-User",
        enabled: bool = True,
    ) -> None:
        self._principals = dict(principals or {})
        self._digests = list(digests)
        self._proxies = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]
        self.identity_header = identity_header.lower()
        self.enabled = enabled

    @classmethod
    def from_config(cls, config: ReadsConfig) -> ReadAuth:
        """Principals from ``principals_file``. A file that does not exist yet fails closed: reads stay
        on and nobody can read (warned), so a fresh install serves no job to anyone."""
        principals: dict[str, Principal] = {}
        digests: list[tuple[bytes, str]] = []
        if config.principals_file is not None and not config.principals_file.exists():
            log.warning("reads.principals_file %s does not exist: no principal can read until it does "
                        "(README: Giving users access)", config.principals_file)
        elif config.principals_file is not None:
            principals, digests = load_principals(config.principals_file)
        return cls(principals, digests, config.trusted_proxies, config.identity_header, config.enabled)

    def trusted(self, peer_ip: str) -> bool:
        """Whether ``peer_ip`` is one of the configured proxies."""
        try:
            addr = ipaddress.ip_address(peer_ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._proxies)

    def identify(self, headers: Mapping[str, str] | Iterable[tuple[str, Any]], peer_ip: str) -> Principal:
        """The principal of a read from its headers/metadata and peer address; ReadAuthError if none."""
        if not self.enabled:
            return ANONYMOUS_OPERATOR
        items = headers.items() if isinstance(headers, Mapping) else headers
        authorization = forwarded = None
        for key, value in items:
            k = key.lower()
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            if k == "authorization":
                authorization = text
            elif k == self.identity_header:
                forwarded = text
        if forwarded is not None and self._proxies and self.trusted(peer_ip):
            name = forwarded.strip()
            if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
                raise ReadAuthError(f"bad {self.identity_header} value from the proxy")
            return self._principals.get(name) or Principal(name, "user")
        if authorization is None:
            raise ReadAuthError("missing bearer token: send `Authorization: Bearer <token>`")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ReadAuthError("malformed Authorization: expected `Bearer <token>`")
        presented = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for digest, name in self._digests:  # no early exit: the time does not depend on the match
            if hmac.compare_digest(presented, digest):
                found = name
        if found is None:
            raise ReadAuthError("unknown bearer token")
        return self._principals[found]
