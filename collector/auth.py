"""Who may send samples for which node: per-node bearer tokens, optionally bound to the client cert.

Every Ingest call of an agent carries ``authorization: Bearer <token>``. The collector keeps only
SHA-256 digests of the tokens (a tokens file may hold them already hashed, ``sha256:<hex>``) and
compares digests with :func:`hmac.compare_digest`, against every known token, so the time taken
does not reveal which one nearly matched.

* no token, a malformed header or an unknown token → ``UNAUTHENTICATED``; nothing is read;
* a valid token of node A on a batch for node B → ``PERMISSION_DENIED``; that batch is not stored;
* with ``bind_node_to_cert_cn`` (mutual TLS), a batch whose node is not the client certificate's
  CN → ``PERMISSION_DENIED``.

Auth is off when no token is configured (and no cert binding): any client that reaches the port can
then write for any node, so production should configure tokens. Tokens are never logged, and no
error message contains one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from gridwatt.collector.config import AuthConfig
from gridwatt.configfile import ConfigError, check_secret_file

log = logging.getLogger("gridwatt.collector.auth")

HASH_PREFIX = "sha256:"
MIN_TOKEN_CHARS = 16
_HEX64 = re.compile(r"[0-9a-f]{64}")


class AuthError(Exception):
    """A refused call: the gRPC status code and a message that names no secret."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Identity:
    """What a call proved: the node its token belongs to, and its client certificate's CN."""

    token_node: str | None = None
    cert_cn: str | None = None


def hash_token(token: str) -> str:
    """The form to store in a tokens file instead of the token: ``sha256:<hex>``."""
    return HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def _digest(where: str, node: str, value: str) -> bytes:
    value = value.strip()
    if value.startswith(HASH_PREFIX):
        hexpart = value[len(HASH_PREFIX) :].lower()
        if not _HEX64.fullmatch(hexpart):
            raise ConfigError(f"{where}: token of node {node!r}: sha256: must be followed by 64 hex digits")
        return bytes.fromhex(hexpart)
    if len(value) < MIN_TOKEN_CHARS or any(c.isspace() for c in value):
        raise ConfigError(
            f"{where}: token of node {node!r} must be at least {MIN_TOKEN_CHARS} characters without "
            "spaces (e.g. `openssl rand -hex 32`)"
        )
    return hashlib.sha256(value.encode()).digest()


def _parse_tokens_file(path: Path) -> list[tuple[str, str, str]]:
    """(where, node, token-or-hash) from a TOML file or a ``node token`` lines file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"auth.tokens_file: cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        data = None
    if data is not None and text.strip():
        table = data.get("tokens", data) if isinstance(data.get("tokens"), dict) else data
        out = []
        for node, value in table.items():
            if not isinstance(value, str):
                raise ConfigError(f"{path}: token of node {node!r} must be a string")
            out.append((str(path), node, value))
        return out
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ConfigError(f"{path}:{lineno}: expected `node token` (two fields), got {len(parts)} fields")
        out.append((f"{path}:{lineno}", parts[0], parts[1]))
    return out


class NodeAuth:
    """Checks the calls of the Ingest service (see the module docstring)."""

    def __init__(
        self, digests: Mapping[str, bytes] | None = None, bind_node_to_cert_cn: bool = False
    ) -> None:
        self._digests = dict(digests or {})
        self.bind_node_to_cert_cn = bind_node_to_cert_cn

    @classmethod
    def from_config(cls, config: AuthConfig) -> NodeAuth:
        """Load tokens from ``tokens_file`` and ``tokens``; ConfigError names file, line and node."""
        entries: list[tuple[str, str, str]] = []
        if config.tokens_file is not None:
            check_secret_file(config.tokens_file, "auth.tokens_file", config.tokens_file_mode,
                              "auth.tokens_file_mode")
            entries += _parse_tokens_file(config.tokens_file)
        entries += [("auth.tokens", node, value) for node, value in config.tokens.items()]
        digests: dict[str, bytes] = {}
        owner: dict[bytes, str] = {}
        for where, node, value in entries:
            if not node:
                raise ConfigError(f"{where}: empty node name")
            if node in digests:
                raise ConfigError(f"{where}: node {node!r} has a token already")
            digest = _digest(where, node, value)
            if digest in owner:
                raise ConfigError(f"{where}: node {node!r} has the same token as node {owner[digest]!r}; "
                                  "give every node its own")
            digests[node] = digest
            owner[digest] = node
        return cls(digests, config.bind_node_to_cert_cn)

    @property
    def enabled(self) -> bool:
        """True when calls must prove who they are."""
        return bool(self._digests) or self.bind_node_to_cert_cn

    @property
    def token_count(self) -> int:
        return len(self._digests)

    def identify(
        self, metadata: Iterable[tuple[str, Any]] | None, auth_context: Mapping[str, Any],
        tokens_only: bool = False,
    ) -> Identity:
        """The caller's identity; AuthError UNAUTHENTICATED when it has no valid credentials.

        ``tokens_only``: check the bearer token alone (the certificate binding needs the auth context).
        """
        token_node = None
        if self._digests:
            header = None
            for key, value in metadata or ():
                if key.lower() == "authorization":
                    header = value.decode() if isinstance(value, bytes) else str(value)
            if header is None:
                raise AuthError(grpc.StatusCode.UNAUTHENTICATED,
                                "missing bearer token: set collector.token_file in the agent's config")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthError(grpc.StatusCode.UNAUTHENTICATED,
                                "malformed authorization metadata: expected `Bearer <token>`")
            token_node = self._node_of(token.strip())
            if token_node is None:
                raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "unknown bearer token")
        cert_cn = None
        if self.bind_node_to_cert_cn and not tokens_only:
            names = auth_context.get("x509_common_name") or []
            if not names:
                raise AuthError(grpc.StatusCode.UNAUTHENTICATED,
                                "no client certificate: the collector binds nodes to certificate names")
            first = names[0]
            cert_cn = first.decode() if isinstance(first, bytes) else str(first)
        return Identity(token_node, cert_cn)

    def authorize(self, identity: Identity, node: str) -> None:
        """AuthError PERMISSION_DENIED unless ``identity`` may send for ``node``."""
        if identity.token_node is not None and identity.token_node != node:
            raise AuthError(grpc.StatusCode.PERMISSION_DENIED,
                            f"the token belongs to node {identity.token_node!r}, not to {node!r}")
        if identity.cert_cn is not None and identity.cert_cn != node:
            raise AuthError(grpc.StatusCode.PERMISSION_DENIED,
                            f"the client certificate is for {identity.cert_cn!r}, not for node {node!r}")

    def _node_of(self, token: str) -> str | None:
        presented = hashlib.sha256(token.encode()).digest()
        found = None
        for node, digest in self._digests.items():  # no early exit: time does not depend on the match
            if hmac.compare_digest(presented, digest):
                found = node
        return found
