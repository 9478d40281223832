"""The collector's configuration (TOML; see deploy/collector.example.toml), validated by pydantic."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gridwatt.collector.alerts.rules import AlertsConfig
from gridwatt.collector.intensity.registry import ProviderConfig
from gridwatt.collector.read_auth import ReadsConfig
from gridwatt.collector.report_config import ReportsConfig
from gridwatt.collector.schema import (
    AGENT_LEDGER,
    ALERT_EVENT,
    ALERT_PROGRESS,
    ALERT_STATE,
    GPU,
    HOST,
    JOB,
    JOB_WINDOW,
    NODE,
    RACK,
    REPLICA,
    WINDOW_WRITER,
)
from gridwatt.configfile import ConfigPath, StrictModel
from gridwatt.timeutil import parse_time_ns


class ZoneConfig(StrictModel):
    name: str = Field(min_length=1)
    #: constant, csv, electricitymaps, watttime, uk_carbon_intensity, or a chain of them
    #: (see collector/intensity/README.md).
    intensity: ProviderConfig


class PueStep(StrictModel):
    #: ISO 8601 UTC time from which this PUE holds.
    start: str
    pue: float = Field(ge=1.0, le=3.0)

    @field_validator("start")
    @classmethod
    def _is_time(cls, v: str) -> str:
        parse_time_ns(v)
        return v


class SiteConfig(StrictModel):
    """A site (building, hall) whose facility power is metered as a whole (see collector/README.md, PUE)."""

    name: str = Field(min_length=1)
    #: CSV with columns time,facility_power_w (or time,facility_power_kw); each row holds until the
    #: next, the last for one more step of the feed. Relative to the config file's folder.
    facility_power_csv: ConfigPath | None = None
    #: A feed-derived PUE outside [pue_min, pue_max] is clamped (with a warning).
    pue_min: float = Field(1.0, ge=1.0)
    pue_max: float = Field(3.0, gt=1.0, le=10.0)
    #: PUE used for a window when no recent complete window has IT energy and feed data.
    fallback_pue: float = Field(1.58, ge=1.0, le=10.0)
    #: Oldest complete window (seconds before the window being accounted) whose ratio may be used.
    max_lag_s: int = Field(3600, ge=1)

    @model_validator(mode="after")
    def _range(self) -> SiteConfig:
        if not self.pue_min < self.pue_max:
            raise ValueError(f"pue_min {self.pue_min} must be below pue_max {self.pue_max}")
        if not self.pue_min <= self.fallback_pue <= self.pue_max:
            raise ValueError(
                f"fallback_pue {self.fallback_pue} outside [pue_min, pue_max] = "
                f"[{self.pue_min}, {self.pue_max}]"
            )
        return self


class RackConfig(StrictModel):
    name: str = Field(min_length=1)
    zone: str = Field(min_length=1)
    nodes: list[str] = Field(default_factory=list)
    #: The site whose facility power feed covers this rack (default: the rack's name).
    site: str = ""
    #: A constant PUE, or use pue_schedule (inline steps), pue_csv (time,pue file) or
    #: pue_from_feed = true (facility power of the rack's site ÷ measured IT energy).
    pue: float | None = Field(None, ge=1.0, le=3.0)
    pue_schedule: list[PueStep] | None = None
    pue_csv: ConfigPath | None = None
    pue_from_feed: bool = False

    @model_validator(mode="after")
    def _one_pue(self) -> RackConfig:
        given = [x is not None for x in (self.pue, self.pue_schedule, self.pue_csv)] + [self.pue_from_feed]
        if sum(given) != 1:
            raise ValueError("give exactly one of pue, pue_schedule, pue_csv, pue_from_feed = true")
        if not self.site:
            self.site = self.name
        return self


#: Every measurement the collector writes (see "Data model in InfluxDB" in README.md).
MEASUREMENTS = (GPU, JOB, JOB_WINDOW, NODE, RACK, HOST, AGENT_LEDGER, REPLICA, ALERT_PROGRESS, ALERT_STATE,
                ALERT_EVENT)


class RetentionPolicyConfig(StrictModel):
    """An InfluxDB 1.x retention policy and the measurements written to and read from it."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    #: InfluxQL duration: a number and a unit of h, d or w (at least 1h), or INF.
    duration: str = Field(pattern=r"^(INF|[1-9][0-9]{0,5}[hdw])$")
    measurements: list[str] = Field(min_length=1)

    @field_validator("measurements")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if m not in MEASUREMENTS]
        if unknown:
            raise ValueError(f"unknown measurement(s) {unknown}; known: {list(MEASUREMENTS)}")
        return v


class InfluxConfig(StrictModel):
    #: 1 for InfluxDB 1.x (v1 /write and /query); 2 for InfluxDB 2.x/3.x (v2 write API, InfluxQL reads).
    version: Literal[1, 2] = 1
    url: str = "http://127.0.0.1:8086"
    #: 1.x database (created at start if create_database); for 2.x/3.x the InfluxQL read needs a
    #: DBRP mapping of this name onto the bucket.
    database: str = "gridwatt"
    #: Retention policy of every measurement not in retention_policies ("" = the database's default).
    retention_policy: str = ""
    #: 1.x: retention policies per measurement, e.g. a shorter one for job (`gridwatt-collector
    #: init-db` creates them); points of those measurements are written to and read from them.
    retention_policies: list[RetentionPolicyConfig] = Field(default_factory=list)
    username: str | None = None
    password: str | None = Field(None, repr=False)
    password_file: ConfigPath | None = None
    #: 2.x/3.x: API token (best given as GRIDWATT_INFLUXDB__TOKEN or token_file), org and bucket.
    token: str | None = Field(None, repr=False)
    token_file: ConfigPath | None = None
    org: str = ""
    bucket: str = ""
    create_database: bool = True
    timeout_s: float = Field(10.0, gt=0)
    #: Lines per HTTP write request (halved automatically after an HTTP 413).
    write_batch_lines: int = Field(5000, ge=1)
    #: Group commit (collector/group_commit.py): one write request carries the lines of many
    #: batches (and window points) queued meanwhile, up to write_batch_lines and
    #: group_commit_max_bytes; each batch is acknowledged when the request that held it is stored.
    group_commit: bool = True
    #: Group writes in flight at once; the next group gathers while they are.
    group_commit_max_in_flight: int = Field(4, ge=1, le=64)
    #: Seconds an idle collector waits after the first line before writing, to gather more (0: none).
    group_commit_linger_s: float = Field(0.0, ge=0, le=1.0)
    #: Bytes of line protocol per group (InfluxDB 1.x refuses bodies over max-body-size, 25 MB).
    group_commit_max_bytes: int = Field(10_000_000, ge=1024, le=1_000_000_000)
    #: Fields of each ``gpu`` point: "all" (telemetry included: power, utilisation, memory,
    #: temperature, idle time, PUE, intensity, jobs...) or "accounting" (energy, facility energy,
    #: emissions, end, emission factor, digest: what gridwatt reads back). InfluxDB's write cost grows
    #: with the fields stored; "accounting" roughly halves it (README "Sizing and scaling"). Job, node,
    #: rack and job_window points, reports, alerts and dashboards are the same either way; the live
    #: per-GPU figures stay on /metrics.
    gpu_point_fields: Literal["all", "accounting"] = "all"
    #: Tries per write request for transient failures (5xx, 429, timeouts, connection errors)
    #: before the batch is answered UNAVAILABLE (the agent keeps it and resends).
    write_attempts: int = Field(4, ge=1, le=20)
    #: First backoff step; retry k waits uniform(0, min(retry_max_delay_s, retry_base_s * 2**k)).
    retry_base_s: float = Field(0.2, gt=0)
    #: Longest wait inside one write; a longer Retry-After defers the batch to the agent instead.
    retry_max_delay_s: float = Field(10.0, gt=0)
    #: While InfluxDB is unhealthy, how often an empty write probes it (reachability and credentials).
    health_probe_interval_s: float = Field(1.0, gt=0)
    #: While healthy and no write succeeded for this long, probe anyway, so /healthz and gRPC health
    #: notice an outage when no agent writes. 0 disables.
    health_check_interval_s: float = Field(10.0, ge=0)

    @model_validator(mode="after")
    def _v2_needs_bucket(self) -> InfluxConfig:
        if self.version == 2 and not self.bucket:
            raise ValueError("version 2 needs bucket (and token, org)")
        if self.version == 2 and self.retention_policies:
            raise ValueError(
                "retention_policies are for InfluxDB 1.x; with version 2 set the bucket's retention")
        seen: dict[str, str] = {}
        for rp in self.retention_policies:
            for m in rp.measurements:
                if m in seen:
                    raise ValueError(
                        f"measurement {m!r} is in two retention policies: {seen[m]!r} and {rp.name!r}")
                seen[m] = rp.name
        return self

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")) or len(v.split("://", 1)[1].strip("/")) == 0:
            raise ValueError("must start with http:// or https:// and name a host, e.g. http://127.0.0.1:8086")
        return v

    def retention_policy_of(self, measurement: str) -> str:
        """The retention policy ``measurement`` is written to and read from ("" = the default). Writer
        marks (``window_writer``) live as long as the ``job`` points they speak for: ``job``'s."""
        if measurement == WINDOW_WRITER:
            measurement = JOB
        for rp in self.retention_policies:
            if measurement in rp.measurements:
                return rp.name
        return self.retention_policy


class ServerConfig(StrictModel):
    grpc_listen: str = "127.0.0.1:50051"
    #: HTTP API (GET /v1/jobs/{job_id}, /healthz); empty disables it.
    http_listen: str = "127.0.0.1:8080"
    #: Accept nodes missing from [[racks]] (placed in accounting.default_rack).
    auto_register: bool = False
    #: This replica's name among several collectors (alert election, logs, /metrics); empty:
    #: ``<hostname>:<grpc port>``. Every replica needs its own.
    replica_id: str = Field("", max_length=128, pattern=r"^[A-Za-z0-9_.:@-]*$")
    #: Samples ending more than this after the collector's clock are rejected.
    max_future_s: float = Field(300.0, ge=0)
    #: Mean power above this is implausible for one GPU and rejected.
    max_power_w: float = Field(2000.0, gt=0)
    #: Longest interval one sample may cover.
    max_interval_s: float = Field(3600.0, gt=0)
    #: Earliest sample time accepted (ISO 8601).
    min_time: str = "2000-01-01T00:00:00Z"
    tls_cert_file: ConfigPath | None = None
    tls_key_file: ConfigPath | None = None
    #: CA for client certificates: set it to require mutual TLS.
    tls_client_ca_file: ConfigPath | None = None
    keepalive_min_ping_interval_s: float = Field(10.0, gt=0)
    #: Batches being stored at once (all streams and Write calls); beyond it a batch is answered
    #: UNAVAILABLE at once (the agent keeps it and resends).
    max_in_flight_batches: int = Field(64, ge=1)
    #: Retry hint (Ack.retry_after_ms, trailing metadata retry-after-ms) sent with an overload answer.
    overload_retry_after_s: float = Field(1.0, gt=0)
    # -- bounds on what one node or client may send (collector/README.md, "Bounds") --
    #: Largest gRPC message accepted (bytes); larger ones fail with RESOURCE_EXHAUSTED.
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=64 * 1024, le=64 * 1024 * 1024)
    #: GPU plus host samples in one batch (too_many_samples).
    max_samples_per_batch: int = Field(5000, ge=1, le=100_000)
    #: Job shares of one GPU sample (too_many_job_shares).
    max_job_shares_per_sample: int = Field(16, ge=1, le=1024)
    #: Job ids new to a node that it may introduce per hour (new InfluxDB series; too_many_new_jobs).
    max_new_jobs_per_node_per_hour: int = Field(1000, ge=1)
    #: gRPC calls that have arrived and wait to be taken up (all agents reconnecting at once after a
    #: collector restart); beyond it gRPC refuses new calls. Each may buffer up to 64 KiB of its first
    #: message (the HTTP/2 stream window). gRPC's own limits (1,000, then refusing at random up to
    #: 3,000) refused 4-6 % of 1,750 agents connecting at once.
    max_pending_calls: int = Field(4096, ge=16, le=65_536)
    #: Ingest streams one node may hold open (too_many_streams).
    max_streams_per_node: int = Field(4, ge=1)
    #: Batches of one node being stored at once (node_overload).
    max_in_flight_batches_per_node: int = Field(8, ge=1)
    #: Retry hint for a node in no rack (unknown_node: its samples stay at the agent).
    unknown_node_retry_after_s: float = Field(30.0, gt=0, le=3600)
    #: One GPU-second accounted once: refuse samples that overlap stored time of their GPU with other
    #: values (interval_conflict). Reads the store; needs accounting.rack_windows (a readable store).
    check_intervals: bool = True
    #: HTTP API: open connections (more are closed at once), seconds to receive a request's headers,
    #: and the largest request body.
    http_max_connections: int = Field(256, ge=1)
    http_header_timeout_s: float = Field(10.0, gt=0)
    http_max_body_bytes: int = Field(64 * 1024, ge=1024)

    @model_validator(mode="after")
    def _tls_complete(self) -> ServerConfig:
        # Half a TLS setup must not silently fall back to plaintext.
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both tls_cert_file and tls_key_file")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        return self


class AuthConfig(StrictModel):
    """Per-node bearer tokens (see collector/auth.py). Off when no token is configured.

    Production should enable it: without tokens any client that reaches the port can write
    samples for any node.
    """

    #: ``node token`` lines or TOML ``node = "token"``; a token may be stored as ``sha256:<hex>``.
    tokens_file: ConfigPath | None = None
    #: A tokens_file readable by every user: "refuse" (the collector does not start) or "warn".
    tokens_file_mode: Literal["refuse", "warn"] = "refuse"
    #: Inline node → token map, best given as GRIDWATT_AUTH__TOKENS='{ node = "token" }'.
    tokens: dict[str, Any] = Field(default_factory=dict, repr=False)
    #: With mutual TLS: a batch's node must equal the client certificate's common name (CN).
    bind_node_to_cert_cn: bool = False

    @field_validator("tokens", mode="before")
    @classmethod
    def _tokens_are_strings(cls, v: Any) -> Any:
        # Raised without the value, so a token never appears in an error message.
        if not isinstance(v, dict):
            raise ValueError("must be a table of node = \"token\"")
        bad = sorted(str(k) for k, t in v.items() if not isinstance(t, str))
        if bad:
            raise ValueError(f"token of node(s) {bad} must be a string")
        return v


class AccountingConfig(StrictModel):
    #: Width of the rack-level windows.
    rack_resolution_s: int = Field(60, ge=1, le=86400)
    #: Where auto-registered nodes go.
    default_rack: str = "unassigned"
    default_zone: str | None = None
    default_pue: float = Field(1.58, ge=1.0, le=3.0)
    #: Recompute rack windows after each write. They are read back with InfluxQL, so turn this off
    #: for a write-only store (e.g. VictoriaMetrics' InfluxDB write endpoint).
    rack_windows: bool = True
    #: Recompute each rack window read back once more this long after its recompute, and read each
    #: window written from held node or rack state back this long after its last write and its end,
    #: so that with several collector replicas the last write of a window is always a complete one;
    #: a rack is held only this long after its nodes' streams last changed. 0 disables (one replica).
    replica_settle_s: float = Field(2.0, ge=0, le=300)
    #: A rack's windows are recomputed this long after the first batch that touched them asks, so
    #: the nodes of a rack whose batches land meanwhile share one read. Their acks wait for it, so it
    #: adds to ack latency and batches in flight; 0: at once (batches landing while a recompute of
    #: the rack runs still share the next one).
    rack_delay_s: float = Field(0.0, ge=0, le=10)
    #: How often stretches accounted with estimated or held intensity are asked of their provider
    #: again; where a measured value has arrived, their samples and windows are re-accounted
    #: (collector/revisit.py). 0 disables. Needs rack_windows (it reads the stored samples back).
    estimate_revisit_s: float = Field(300.0, ge=0, le=86400)
    #: How long after a batch was accounted with an estimate it is revisited (the look-back bound).
    #: 48 h: Electricity Maps replaces its estimated hours within about a day (the recorded
    #: answers in tests/fixtures/grid show updates 23 h after the hour), UK actuals come within
    #: the hour, WattTime's historical MOER within minutes; 48 h covers those with a day to spare.
    estimate_lookback_s: float = Field(48 * 3600.0, ge=0, le=30 * 86400)


class LiveMetricsConfig(StrictModel):
    """The live view on /metrics (collector/live_metrics.py)."""

    #: A job's series go this long (wall seconds) after its last stored sample.
    job_series_ttl_s: float = Field(900.0, gt=0, le=30 * 86400)
    #: At most this many job series (the least recently seen go first).
    max_job_series: int = Field(10_000, ge=1, le=1_000_000)


class CollectorConfig(StrictModel):
    server: ServerConfig = ServerConfig()
    influxdb: InfluxConfig = InfluxConfig()
    accounting: AccountingConfig = AccountingConfig()
    auth: AuthConfig = AuthConfig()
    zones: list[ZoneConfig] = Field(min_length=1)
    racks: list[RackConfig] = Field(default_factory=list)
    #: Sites with a facility power feed, for racks with pue_from_feed = true.
    sites: list[SiteConfig] = Field(default_factory=list)
    #: Idle-GPU alert rules and sinks (see collector/alerts/README.md).
    alerts: AlertsConfig = AlertsConfig()
    #: Who may read (principals, trusted proxies), HTTP TLS, local metrics (collector/read_auth.py).
    reads: ReadsConfig = ReadsConfig()
    #: Sustainability reports: market-based factors, SCI embodied factor, time zone (collector/report.py).
    reports: ReportsConfig = ReportsConfig()
    #: Accounted energy and carbon on /metrics.
    metrics: LiveMetricsConfig = LiveMetricsConfig()
    #: Folder of the config file; relative paths in provider configs are taken from it.
    _config_dir: Path | None = PrivateAttr(default=None)

    @property
    def config_dir(self) -> Path | None:
        return self._config_dir

    @model_validator(mode="after")
    def _remember_dir(self, info: ValidationInfo) -> CollectorConfig:
        self._config_dir = (info.context or {}).get("config_dir")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> CollectorConfig:
        zones = [z.name for z in self.zones]
        _unique("zone", zones)
        _unique("rack", [r.name for r in self.racks])
        self._check_rack_zones_and_nodes(zones)
        self._check_feed_racks()
        if self.auth.bind_node_to_cert_cn and self.server.tls_client_ca_file is None:
            raise ValueError("auth.bind_node_to_cert_cn needs mutual TLS: set server.tls_client_ca_file")
        for market in self.reports.market:
            if market.zone not in zones:
                raise ValueError(f"reports.market: zone {market.zone!r} is not among zones {zones}")
        if self.accounting.default_zone is not None and self.accounting.default_zone not in zones:
            raise ValueError(f"accounting.default_zone {self.accounting.default_zone!r} is not a zone")
        return self

    def _check_rack_zones_and_nodes(self, zones: list[str]) -> None:
        """Every rack's zone exists; no node is in two racks."""
        seen: dict[str, str] = {}
        for rack in self.racks:
            if rack.zone not in zones:
                raise ValueError(f"rack {rack.name!r}: zone {rack.zone!r} is not among zones {zones}")
            for node in rack.nodes:
                if node in seen:
                    raise ValueError(f"node {node!r} is in two racks: {seen[node]!r} and {rack.name!r}")
                seen[node] = rack.name

    def _check_feed_racks(self) -> None:
        """Site names are unique; a pue_from_feed rack has a site with a feed, and rack windows on."""
        sites = {s.name: s for s in self.sites}
        if len(sites) != len(self.sites):
            raise ValueError(f"site names must be unique: {[s.name for s in self.sites]}")
        for rack in self.racks:
            if not rack.pue_from_feed:
                continue
            site = sites.get(rack.site)
            if site is None or site.facility_power_csv is None:
                raise ValueError(
                    f"rack {rack.name!r}: pue_from_feed needs site {rack.site!r} to have a facility power "
                    f"feed ([[sites]] name = {rack.site!r}, facility_power_csv = ...)"
                )
            if not self.accounting.rack_windows:
                raise ValueError(
                    f"rack {rack.name!r}: pue_from_feed reads the node windows back, so it needs "
                    "accounting.rack_windows = true"
                )


def _unique(what: str, names: list[str]) -> None:
    """ValueError listing ``names`` when one appears twice."""
    if len(set(names)) != len(names):
        raise ValueError(f"{what} names must be unique: {names}")
