"""Line-protocol writers: one small interface, one implementation per InfluxDB write API.

* :class:`V1Writer`: InfluxDB 1.x ``POST /write`` (``db``, ``rp``) over aiohttp. Debian's
  InfluxDB 1.6 has no v2 endpoints, so this path knows nothing of them.
* :class:`V2Writer`: the v2 write API (InfluxDB 2.x/3.x, VictoriaMetrics) through
  ``influxdb-client``; its empty probe write goes to ``/api/v2/write`` over the shared session.

Both answer one request with an :class:`Answer` (the HTTP status, body and headers) and raise only
for transport failures (timeouts, connection errors), which collector/store.py turns into its
retry and health behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from gridwatt.collector.config import InfluxConfig


@dataclass
class Answer:
    """InfluxDB's answer to one write request."""

    status: int  # 0: no HTTP answer (timeout, connection error)
    body: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    error: str = ""  # for status 0: what went wrong
    timeout: bool = False


class LineWriter(Protocol):
    """Sends one line-protocol body (empty: a probe that checks the write path).

    ``rp``: the InfluxDB 1.x retention policy to write to (None: the configured one); the v2 API
    has none and ignores it.
    """

    async def post(self, body: bytes, rp: str | None = None) -> Answer: ...

    async def close(self) -> None: ...


async def _post_http(
    session: aiohttp.ClientSession, path: str, params: dict[str, str], body: bytes
) -> Answer:
    async with session.post(path, params=params, data=body) as resp:
        text = await resp.text(errors="replace")
        return Answer(resp.status, text, {k.lower(): v for k, v in resp.headers.items()})


class V1Writer:
    """InfluxDB 1.x ``/write`` (database and retention policy), nanosecond precision."""

    def __init__(self, config: InfluxConfig, session: aiohttp.ClientSession) -> None:
        self.database = config.database
        self.retention_policy = config.retention_policy
        self.session = session

    async def post(self, body: bytes, rp: str | None = None) -> Answer:
        params = {"db": self.database, "precision": "ns"}
        rp = self.retention_policy if rp is None else rp
        if rp:
            params["rp"] = rp
        return await _post_http(self.session, "write", params, body)

    async def close(self) -> None:
        return None


class V2Writer:
    """The v2 write API (org, bucket) through influxdb-client; probes over the shared session."""

    def __init__(self, config: InfluxConfig, session: aiohttp.ClientSession, token: str | None) -> None:
        from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

        self.config = config
        self.session = session
        self.params = {"org": config.org, "bucket": config.bucket, "precision": "ns"}
        self._client: Any = InfluxDBClientAsync(
            url=config.url, token=token or "", org=config.org, timeout=int(config.timeout_s * 1000),
        )
        self._write: Any = self._client.write_api()

    async def post(self, body: bytes, rp: str | None = None) -> Answer:
        if not body:
            return await _post_http(self.session, "api/v2/write", self.params, body)
        from influxdb_client.rest import ApiException

        try:
            await self._write.write(bucket=self.config.bucket, org=self.config.org,
                                    record=body.decode(), write_precision="ns")
        except ApiException as exc:
            if not exc.status:
                return Answer(0, error=f"ApiException: {exc.reason}")
            raw = exc.body
            text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw or "")
            headers = {str(k).lower(): str(v) for k, v in dict(exc.headers or {}).items()}
            return Answer(int(exc.status), text, headers)
        return Answer(204)

    async def close(self) -> None:
        await self._client.close()


def make_writer(config: InfluxConfig, session: aiohttp.ClientSession, token: str | None) -> LineWriter:
    """The writer of ``config.version`` (1: V1Writer, 2: V2Writer)."""
    return V2Writer(config, session, token) if config.version == 2 else V1Writer(config, session)
