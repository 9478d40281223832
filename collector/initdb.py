"""``gridwatt-collector init-db``: prepare InfluxDB 1.x for the collector, and say what was done.

From the collector's config (``[influxdb]``), with an admin account where InfluxDB has auth on:

1. ``CREATE DATABASE`` (a no-op when it exists);
2. each ``[[influxdb.retention_policies]]``: created, or altered when its duration differs;
   a ``retention_policy`` that is not among them must already exist;
3. the collector's ``username``: created with its password (``password_file`` or
   ``GRIDWATT_INFLUXDB__PASSWORD``), or its password set when it exists, and ``GRANT ALL`` on the
   database (read and write; it needs no admin rights, so set ``create_database = false``).

Running it again changes nothing that is already right. InfluxDB 2.x/3.x buckets are made with
their own tools (``influx bucket create --retention``), so ``version = 2`` is refused.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gridwatt.collector.config import InfluxConfig
from gridwatt.configfile import read_secret


class InitDbError(Exception):
    """A step failed; the message says which and InfluxDB's reason."""


def _ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _duration_ns(text: str) -> int:
    """InfluxQL duration (``90d``, ``2160h0m0s``, ``INF``/``0s``) in ns; 0 = infinite."""
    if text.upper() == "INF":
        return 0
    units = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
    total, number = 0, ""
    for ch in text:
        if ch.isdigit():
            number += ch
        elif ch in units and number:
            total += int(number) * units[ch]
            number = ""
    return total * 1_000_000_000


@dataclass
class InfluxAdmin:
    """InfluxQL statements against /query, as an admin (or without auth)."""

    url: str
    user: str | None = None
    password: str | None = None
    timeout_s: float = 10.0

    def query(self, q: str) -> list[dict[str, Any]]:
        data = urllib.parse.urlencode({"q": q}).encode()
        req = urllib.request.Request(self.url.rstrip("/") + "/query", data=data, method="POST")
        if self.user:
            token = base64.b64encode(f"{self.user}:{self.password or ''}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            try:
                reason = json.load(exc).get("error", exc.reason)
            except (ValueError, AttributeError):
                reason = exc.reason
            hint = " (give an admin with --admin-user and GRIDWATT_INFLUX_ADMIN_PASSWORD)" if exc.code in (
                401, 403) else ""
            raise InitDbError(f"InfluxDB at {self.url} refused `{_redact(q)}`: HTTP {exc.code} {reason}"
                              f"{hint}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise InitDbError(f"InfluxDB at {self.url} does not answer: {reason}") from None
        results: list[dict[str, Any]] = body.get("results", [])
        for r in results:
            if "error" in r:
                raise InitDbError(f"InfluxDB refused `{_redact(q)}`: {r['error']}")
        return results

    def rows(self, q: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for r in self.query(q):
            for series in r.get("series", []) or []:
                out += [dict(zip(series["columns"], v, strict=False)) for v in series.get("values", [])]
        return out


def _redact(q: str) -> str:
    """A statement with its password replaced, for messages."""
    for marker in ("PASSWORD ", "password "):
        if marker in q:
            return q.split(marker, 1)[0] + marker + "'…'"
    return q


def init_db(cfg: InfluxConfig, admin: InfluxAdmin, out: Callable[[str], None] = print) -> None:
    """Create the database, retention policies and user of ``cfg``; ``out`` gets one line per step."""
    if cfg.version != 1:
        raise InitDbError("init-db is for InfluxDB 1.x; for 2.x/3.x create the bucket (with its retention), "
                          "a token and the DBRP mapping with the influx CLI (see README, InfluxDB 2.x)")
    db = cfg.database
    known = {row.get("name") for row in admin.rows("SHOW DATABASES")}
    admin.query(f"CREATE DATABASE {_ident(db)}")
    out(f"database {db}: {'exists' if db in known else 'created'}")
    existing = {str(r["name"]): r for r in admin.rows(f"SHOW RETENTION POLICIES ON {_ident(db)}")}
    for rp in cfg.retention_policies:
        duration = "INF" if rp.duration == "INF" else rp.duration
        what = ", ".join(rp.measurements)
        have = existing.get(rp.name)
        if have is None:
            admin.query(f"CREATE RETENTION POLICY {_ident(rp.name)} ON {_ident(db)} "
                        f"DURATION {duration} REPLICATION 1")
            out(f"retention policy {rp.name} ({what}): created, duration {rp.duration}")
        elif _duration_ns(str(have.get("duration", ""))) != _duration_ns(rp.duration):
            admin.query(f"ALTER RETENTION POLICY {_ident(rp.name)} ON {_ident(db)} DURATION {duration}")
            out(f"retention policy {rp.name} ({what}): duration changed from {have.get('duration')} "
                f"to {rp.duration}")
        else:
            out(f"retention policy {rp.name} ({what}): exists, duration {rp.duration}")
    configured = {rp.name for rp in cfg.retention_policies}
    if cfg.retention_policy and cfg.retention_policy not in configured:
        if cfg.retention_policy not in existing:
            raise InitDbError(f"retention_policy {cfg.retention_policy!r} does not exist in database {db} "
                              "and has no duration here: add it to [[influxdb.retention_policies]]")
        out(f"retention policy {cfg.retention_policy} (other measurements): exists")
    elif not cfg.retention_policy:
        default = next((n for n, r in existing.items() if r.get("default")), "autogen")
        out(f"retention policy {default} (the database's default): other measurements")
    if not cfg.username:
        out("no [influxdb] username: the collector connects without credentials")
        return
    password = read_secret(cfg.password, cfg.password_file, "influxdb password")
    if not password:
        raise InitDbError(f"[influxdb] username {cfg.username!r} needs password_file or "
                          "GRIDWATT_INFLUXDB__PASSWORD")
    users = {row.get("user") for row in admin.rows("SHOW USERS")}
    if cfg.username in users:
        admin.query(f"SET PASSWORD FOR {_ident(cfg.username)} = {_string(password)}")
        out(f"user {cfg.username}: exists, password set from the config")
    else:
        admin.query(f"CREATE USER {_ident(cfg.username)} WITH PASSWORD {_string(password)}")
        out(f"user {cfg.username}: created")
    admin.query(f"GRANT ALL ON {_ident(db)} TO {_ident(cfg.username)}")
    out(f"user {cfg.username}: may read and write {db}")
    if cfg.create_database:
        out("! set [influxdb] create_database = false: the collector's user is no admin")
