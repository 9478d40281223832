"""Alert rule and sink configuration (pydantic), loadable from the collector's TOML.

Example (see README.md and sample.toml)::

    [[alerts.rules]]
    name = "rack-idle"
    scope = "rack"
    util_below_pct = 10
    for_s = 1800
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from gridwatt.collector.alerts.model import ScopeWindow
from gridwatt.configfile import ConfigPath, StrictModel

DEFAULT_RESOLVE_MARGIN_PCT = 10.0


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
    return value


class AlertRule(StrictModel):
    """Alert when a scope's GPUs stay below ``util_below_pct`` for ``for_s`` seconds of sample time.

    Once firing, the alert resolves only after utilisation stayed above ``resolve_above_pct``
    (default ``util_below_pct + 10``) for ``resolve_after_s``.
    """

    name: str = Field(min_length=1, description="unique rule name; the Alertmanager alertname")
    scope: Literal["cluster", "group", "rack", "job", "slurm_job", "slurm_user"]
    group: str | None = Field(
        default=None, description="scope=group: the group's name in its windows (default: the rule name)"
    )
    racks: list[str] = Field(default_factory=list, description="group members, or a filter for scope=rack")
    nodes: list[str] = Field(default_factory=list, description="group members (scope=group only)")
    util_below_pct: float = Field(default=10.0, gt=0, le=100)
    for_s: float = Field(default=1800.0, ge=0)
    min_gpus: int = Field(default=1, ge=1)
    resolve_above_pct: float | None = Field(default=None, ge=0, lt=100)
    resolve_after_s: float = Field(default=300.0, ge=0)
    severity: str = Field(default="warning", min_length=1)

    @model_validator(mode="after")
    def _check(self) -> AlertRule:
        if self.resolve_above_pct is None:
            default = self.util_below_pct + DEFAULT_RESOLVE_MARGIN_PCT
            if default >= 100:
                raise ValueError(
                    f"util_below_pct={self.util_below_pct} leaves no room for the default "
                    f"resolve_above_pct ({default:g}); set resolve_above_pct below 100"
                )
            self.resolve_above_pct = default
        if self.resolve_above_pct < self.util_below_pct:
            raise ValueError(
                f"resolve_above_pct ({self.resolve_above_pct:g}) must be >= util_below_pct "
                f"({self.util_below_pct:g}), or the alert could resolve while still idle"
            )
        if self.scope == "group":
            if not self.racks and not self.nodes:
                raise ValueError("scope 'group' needs its members: racks and/or nodes")
        else:
            if self.group is not None:
                raise ValueError(f"group is only valid with scope 'group', not {self.scope!r}")
            if self.nodes:
                raise ValueError(f"nodes is only valid with scope 'group', not {self.scope!r}")
            if self.racks and self.scope != "rack":
                raise ValueError(f"racks is only valid with scope 'group' or 'rack', not {self.scope!r}")
        return self

    @property
    def resolve_above(self) -> float:
        """``resolve_above_pct`` after defaulting (always set once validated)."""
        assert self.resolve_above_pct is not None
        return self.resolve_above_pct

    @property
    def group_name(self) -> str:
        """The scope_name a group window must carry to match this rule."""
        return self.group or self.name

    @property
    def for_ns(self) -> int:
        return round(self.for_s * 1e9)

    @property
    def resolve_after_ns(self) -> int:
        return round(self.resolve_after_s * 1e9)

    def matches(self, window: ScopeWindow) -> bool:
        """Whether this rule watches the window's scope."""
        if window.scope_kind != self.scope:
            return False
        if self.scope == "rack" and self.racks:
            return window.scope_name in self.racks
        if self.scope == "group":
            return window.scope_name == self.group_name
        return True


EventKindName = Literal["pending", "firing", "resolved", "cancelled"]


def _all_kinds() -> list[EventKindName]:
    return ["pending", "firing", "resolved", "cancelled"]


def _firing_resolved() -> list[EventKindName]:
    return ["firing", "resolved"]


class LogSinkConfig(StrictModel):
    """One structured (JSON) log line per event."""

    enabled: bool = True
    logger: str = "gridwatt.alerts"
    events: list[EventKindName] = Field(default_factory=_all_kinds)


class WebhookSinkConfig(StrictModel):
    """JSON POST of each event, retried with exponential backoff and jitter."""

    url: str
    timeout_s: float = Field(default=5.0, gt=0)
    retries: int = Field(default=3, ge=0, description="retries after the first attempt")
    backoff_initial_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    headers: dict[str, str] = Field(default_factory=dict)
    events: list[EventKindName] = Field(default_factory=_firing_resolved)

    _url = field_validator("url")(_check_http_url)


class AlertmanagerSinkConfig(StrictModel):
    """Prometheus Alertmanager v2 (``POST /api/v2/alerts``); firing alerts are re-sent periodically."""

    url: str = Field(description="base URL, e.g. http://alertmanager:9093")
    timeout_s: float = Field(default=5.0, gt=0)
    retries: int = Field(default=3, ge=0)
    backoff_initial_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    resend_interval_s: float = Field(default=60.0, gt=0)
    ends_at_after_s: float = Field(
        default=300.0, gt=0, description="a firing alert's endsAt = now + this; must exceed resend_interval_s"
    )
    generator_url: str | None = Field(
        default=None, description="base of generatorURL, e.g. the /v1/alerts URL"
    )
    extra_labels: dict[str, str] = Field(default_factory=dict)

    _url = field_validator("url")(_check_http_url)

    @model_validator(mode="after")
    def _check(self) -> AlertmanagerSinkConfig:
        if self.ends_at_after_s <= self.resend_interval_s:
            raise ValueError(
                f"ends_at_after_s ({self.ends_at_after_s:g}) must exceed resend_interval_s "
                f"({self.resend_interval_s:g}), or Alertmanager expires alerts between re-sends"
            )
        return self


class SinksConfig(StrictModel):
    log: LogSinkConfig = Field(default_factory=LogSinkConfig)
    webhooks: list[WebhookSinkConfig] = Field(default_factory=list)
    alertmanager: AlertmanagerSinkConfig | None = None


class AlertsConfig(StrictModel):
    """The ``[alerts]`` section: rules, sinks, state file and how many resolved alerts to keep."""

    rules: list[AlertRule] = Field(default_factory=list)
    sinks: SinksConfig = Field(default_factory=SinksConfig)
    state_file: ConfigPath | None = None
    keep_resolved: int = Field(default=100, ge=0)
    #: Which replica evaluates (collector/alerts/README.md "Several replicas"): ``always`` (one
    #: collector), ``never`` (this replica only ingests), ``elected`` (a lease through InfluxDB).
    evaluate: Literal["always", "never", "elected"] = "always"
    #: elected: a replica whose heartbeat has not changed for lease_s is taken for dead.
    lease_s: float = Field(default=15.0, gt=0, le=3600)
    #: elected: how often each replica writes its heartbeat and reads the others'.
    heartbeat_s: float = Field(default=2.0, gt=0, le=600)

    @model_validator(mode="after")
    def _lease(self) -> AlertsConfig:
        if self.lease_s < 3 * self.heartbeat_s:
            raise ValueError(f"lease_s ({self.lease_s:g}) must be at least 3 x heartbeat_s "
                             f"({self.heartbeat_s:g}), or a live leader could look dead")
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> AlertsConfig:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice; rule names must be unique")
            seen.add(rule.name)
        return self
