"""InfluxDB: writes line protocol (v1 /write, or v2 write API via influxdb-client) and reads with InfluxQL.

InfluxQL (``/query``) is served by InfluxDB 1.x, 2.x (with a DBRP mapping) and 3.x,
so reads are the same for all. Writes retry transient failures (connection
errors, timeouts, 5xx, 429) a few times with backoff and full jitter, then raise
StoreUnavailable: the collector does not acknowledge, and the agent resends.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import aiohttp

from gridwatt.collector.config import InfluxConfig
from gridwatt.configfile import read_secret

log = logging.getLogger("gridwatt.collector.store")


class StoreUnavailable(Exception):
    """InfluxDB could not store the data now; try again later (maps to gRPC UNAVAILABLE)."""


class StoreRejected(Exception):
    """InfluxDB refused the data as bad (HTTP 400/422); resending will not help."""


class QueryError(Exception):
    """An InfluxQL query failed; the message carries InfluxDB's error."""


def _quote_ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    """An InfluxQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class InfluxStore:
    """One InfluxDB connection pool for writes and InfluxQL reads."""

    def __init__(self, config: InfluxConfig, write_attempts: int = 4) -> None:
        self.config = config
        self.write_attempts = write_attempts
        self._session: aiohttp.ClientSession | None = None
        self._v2_client: Any = None
        self._v2_write: Any = None
        self._headers: dict[str, str] = {}
        self._auth: aiohttp.BasicAuth | None = None
        password = read_secret(config.password, config.password_file, "influxdb password")
        token = read_secret(config.token, config.token_file, "influxdb token")
        if token:
            self._headers["Authorization"] = f"Token {token}"
        if config.username:
            self._auth = aiohttp.BasicAuth(config.username, password or "")
        self._token = token

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        self._session = aiohttp.ClientSession(
            base_url=self.config.url.rstrip("/") + "/", timeout=timeout, headers=self._headers,
            auth=self._auth,
        )
        if self.config.version == 2:
            from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

            self._v2_client = InfluxDBClientAsync(
                url=self.config.url, token=self._token or "", org=self.config.org,
                timeout=int(self.config.timeout_s * 1000),
            )
            self._v2_write = self._v2_client.write_api()
        elif self.config.create_database:
            await self.query(f"CREATE DATABASE {_quote_ident(self.config.database)}", method="POST")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._v2_client is not None:
            await self._v2_client.close()
            self._v2_client = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("InfluxStore.start() was not called")
        return self._session

    async def write_lines(self, lines: list[str]) -> None:
        """Write all lines or raise; idempotent, so a retry after a partial failure is safe."""
        step = self.config.write_batch_lines
        for i in range(0, len(lines), step):
            await self._write_chunk("\n".join(lines[i : i + step]))

    async def _write_chunk(self, body: str) -> None:
        last = ""
        for attempt in range(self.write_attempts):
            try:
                if self._v2_write is not None:
                    ok = await self._v2_write.write(
                        bucket=self.config.bucket, org=self.config.org, record=body, write_precision="ns"
                    )
                    if ok is False:
                        raise StoreUnavailable("InfluxDB v2 write returned failure")
                    return
                params = {"db": self.config.database, "precision": "ns"}
                if self.config.retention_policy:
                    params["rp"] = self.config.retention_policy
                async with self.session.post("write", params=params, data=body.encode()) as resp:
                    if resp.status == 204:
                        return
                    text = (await resp.text())[:500]
                    if resp.status in (400, 422):
                        raise StoreRejected(f"InfluxDB rejected the write ({resp.status}): {text}")
                    last = f"HTTP {resp.status}: {text}"
                    retry_after = resp.headers.get("Retry-After")
                    if resp.status in (401, 403):
                        log.error("InfluxDB refused our credentials (%s); data is kept by the agents", last)
                        raise StoreUnavailable(f"InfluxDB auth failed: {last}")
                    delay = float(retry_after) if retry_after and retry_after.isdigit() else None
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                delay = None
            except StoreRejected:
                raise
            except StoreUnavailable:
                raise
            except Exception as exc:  # influxdb-client raises its own ApiException
                status = getattr(exc, "status", None)
                if status in (400, 422):
                    raise StoreRejected(f"InfluxDB rejected the write ({status}): {exc}") from None
                last = f"{type(exc).__name__}: {exc}"
                delay = None
            if attempt + 1 < self.write_attempts:
                await asyncio.sleep(delay if delay is not None else random.uniform(0, 0.2 * 2**attempt))
        raise StoreUnavailable(f"InfluxDB write failed after {self.write_attempts} attempts: {last}")

    async def query(self, q: str, method: str = "GET") -> list[dict[str, Any]]:
        """Run InfluxQL; return the ``results`` list (one entry per statement); ns epoch times."""
        params = {"q": q, "db": self.config.database, "epoch": "ns"}
        if self.config.retention_policy:
            params["rp"] = self.config.retention_policy
        try:
            if method == "POST":
                cm = self.session.post("query", data=params)
            else:
                cm = self.session.get("query", params=params)
            async with cm as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    raise QueryError(f"InfluxDB query failed ({resp.status}): {body}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise QueryError(f"InfluxDB unreachable at {self.config.url}: {exc}") from None
        results: list[dict[str, Any]] = body.get("results", [])
        for r in results:
            if "error" in r:
                raise QueryError(f"InfluxQL error: {r['error']}")
        return results


def series_rows(result: dict[str, Any]) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """Flatten one statement's result into (tags, row-as-dict) pairs."""
    rows = []
    for series in result.get("series", []) or []:
        tags = series.get("tags", {}) or {}
        cols = series["columns"]
        for values in series["values"]:
            rows.append((tags, dict(zip(cols, values, strict=False))))
    return rows
