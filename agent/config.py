"""The agent's configuration (TOML; see deploy/agent.example.toml), validated by pydantic."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator
from pydantic_core import InitErrorDetails

from gridwatt.agent.sources.registry import SOURCES
from gridwatt.configfile import ConfigPath, StrictModel
from gridwatt.registry import PartTables, Registry


class SourceConfig(PartTables):
    """``[source]``: the GPU source ``kind`` (a name registered in agent/sources/plugins.py) and,
    under a source's name, that source's own table (``[source.sim]``), validated by the config model
    the source registered with its factory."""

    part_registry: ClassVar[Registry[Any]] = SOURCES
    kind: str = Field("nvml", min_length=1)

    def _complete_tables(self, context: Any) -> list[InitErrorDetails]:
        """The configured source's table, from its model's defaults when the config has none (a
        model with required keys names them: ``source.NAME.KEY: Field required``)."""
        model = SOURCES.config_model(self.kind)
        if model is None or self.tables(self.kind):
            return []
        done, problems = SOURCES.validate_tables({self.kind: {}}, context, arrays=False)
        if not problems:
            assert self.__pydantic_extra__ is not None
            self.__pydantic_extra__[self.kind] = done[self.kind]
        return problems

    def settings(self) -> Any:
        """The configured source's own table (``[source.NAME]``, with its model's defaults), or None
        for a source without settings."""
        given = self.tables(self.kind)
        return given[0] if given else None


class AttributionConfig(StrictModel):
    #: Job id for the whole node (also GRIDWATT_JOB_ID); used when no process names a job.
    job_id: str = ""
    slurm: bool = True
    #: Kubernetes pod of each GPU process (from its cgroup), reported as job "k8s-pod/<uid>".
    kubernetes: bool = True
    #: dcgm-exporter style job-mapping folder (--hpc-job-mapping-dir): a file per GPU index naming its job(s).
    job_mapping_dir: ConfigPath | None = None
    proc_root: ConfigPath = Path("/proc")
    #: The kubelet's pod-resources socket: GPUs held by pods are attributed to "k8s-pod/<ns>/<pod>"
    #: (with kubernetes = true). A node without it falls back to the cgroups. "" = never ask.
    kubelet_socket: ConfigPath | None = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
    #: Seconds between pod-resources List calls.
    kubelet_refresh_s: float = Field(10.0, gt=0, le=3600)
    #: Resource names whose devices are GPUs (NVIDIA's device plugin: nvidia.com/gpu, nvidia.com/mig-...).
    kubelet_resource_prefixes: list[str] = Field(default_factory=lambda: ["nvidia.com/"], max_length=16)


class HostConfig(StrictModel):
    """Host telemetry (CPU utilisation, memory, RAPL CPU package energy) every interval."""

    #: None: on with the NVML source, off with simulated GPUs.
    enabled: bool | None = None
    proc_root: ConfigPath = Path("/proc")
    powercap_root: ConfigPath = Path("/sys/class/powercap")


class CollectorConnection(StrictModel):
    #: host:port of the collector's gRPC endpoint.
    address: str = "127.0.0.1:50051"
    #: Several collectors (host:port each) for failover; when set, it replaces ``address``. The agent
    #: starts at the one its node name hashes to (spreading nodes over them), stays while it works,
    #: and moves to the next at once when a session fails; it backs off only after trying them all.
    addresses: list[str] = Field(default_factory=list, max_length=64)
    tls: bool = False
    #: CA bundle that signed the collector's certificate (TLS).
    ca_file: ConfigPath | None = None
    #: Client certificate and key (mutual TLS).
    cert_file: ConfigPath | None = None
    key_file: ConfigPath | None = None
    #: Bearer token (inline value is best passed as GRIDWATT_COLLECTOR__TOKEN).
    token: str | None = Field(None, repr=False)
    token_file: ConfigPath | None = None
    #: A token_file readable by every user: "refuse" (exit with an error) or "warn".
    token_file_mode: Literal["refuse", "warn"] = "refuse"
    #: A batch is sent once this many samples are spooled, or once the oldest unsent sample has
    #: waited linger_s, whichever comes first. At most the collector's server.max_samples_per_batch
    #: (5000 by default).
    batch_max_samples: int = Field(1000, ge=1, le=5000)
    #: Seconds a sample may wait in the spool for more to join its batch (0: send at once). With
    #: 8 GPUs at 1 Hz, 5 s turns one 8-sample request a second into one ~40-sample request every 5 s
    #: (the collector's and InfluxDB's cost per sample falls with fewer, larger batches: README
    #: "Batching and several collectors"); the data then reaches InfluxDB within about linger_s plus
    #: the ack latency, well inside a 60 s accounting window. A backlog (reconnect, replay) and a
    #: stopping agent are sent without waiting.
    linger_s: float = Field(5.0, ge=0, le=60)
    max_in_flight: int = Field(4, ge=1, le=64)
    #: Seconds between keepalive pings on an idle stream (a dead collector is noticed in about
    #: keepalive_s + keepalive_timeout_s). Keep it at or above the collector's
    #: server.keepalive_min_ping_interval_s (10 s by default); values below are for tests.
    keepalive_s: float = Field(15.0, ge=1)
    keepalive_timeout_s: float = Field(10.0, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)

    @field_validator("address")
    @classmethod
    def _has_port(cls, v: str) -> str:
        if ":" not in v:
            raise ValueError("must be host:port")
        return v

    @field_validator("addresses")
    @classmethod
    def _each_has_port(cls, v: list[str]) -> list[str]:
        for address in v:
            if ":" not in address:
                raise ValueError(f"{address!r} must be host:port")
        if len(set(v)) != len(v):
            raise ValueError("lists an address twice")
        return v

    def targets(self) -> list[str]:
        """The collectors to ship to, in failover order: ``addresses``, else ``address``."""
        return list(self.addresses) or [self.address]


class AgentConfig(StrictModel):
    node: str = Field(default_factory=socket.gethostname, min_length=1)
    #: Seconds between samples of every GPU.
    interval_s: float = Field(1.0, gt=0, le=3600)
    #: An interval whose GPU utilisation is below this counts as idle.
    idle_below_pct: float = Field(5.0, ge=0, le=100)
    spool_path: ConfigPath = Path("/var/lib/gridwatt/spool.db")
    #: Where the agent writes how far the collector has stored what it read (agent/acked.py; the
    #: Slurm epilog waits on it). Default: beside the spool, named like it with ".acked".
    acked_path: ConfigPath | None = None
    #: Bound of the spool; default 24 h of 8 GPUs at 1 Hz. When full, the oldest samples are
    #: evicted (logged, counted in the ledger and reported to the collector).
    spool_max_samples: int = Field(24 * 3600 * 8, ge=100)
    #: Seconds between ledger lines in the log; also the longest the collector goes without a
    #: ledger report from an idle agent.
    ledger_report_s: float = Field(60.0, gt=0)
    source: SourceConfig = SourceConfig()
    attribution: AttributionConfig = AttributionConfig()
    host: HostConfig = HostConfig()
    collector: CollectorConnection = CollectorConnection()

    def acked_file(self) -> Path:
        """``acked_path``, or the spool's path with the suffix ``.acked``."""
        return self.acked_path or self.spool_path.with_suffix(".acked")

