"""Wires the collector together and runs it: gRPC (ingest, query) and HTTP, until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from gridwatt.collector.alerts.monitor import AlertMonitor
from gridwatt.collector.auth import NodeAuth
from gridwatt.collector.auth_interceptor import TokenInterceptor
from gridwatt.collector.bounds import JobSeriesBudget, NodeSlots
from gridwatt.collector.config import CollectorConfig, ServerConfig
from gridwatt.collector.gc_tuning import tune_after_start
from gridwatt.collector.http_guard import HttpGuard
from gridwatt.collector.ingest import Ingestor, IngestService, NodeBounds
from gridwatt.collector.job_index import JobIndex
from gridwatt.collector.live_metrics import LiveAccounts
from gridwatt.collector.metrics import CollectorMetrics
from gridwatt.collector.query_service import QueryService, http_app
from gridwatt.collector.read_auth import ReadAuth
from gridwatt.collector.revisit import EstimateRevisor
from gridwatt.collector.rollup import RackRollup
from gridwatt.collector.store import InfluxStore
from gridwatt.collector.topology import Topology
from gridwatt.collector.validation import Limits
from gridwatt.collector.wiring import build_topology
from gridwatt.timeutil import parse_time_ns
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc

log = logging.getLogger("gridwatt.collector")


def server_options(config: CollectorConfig) -> list[tuple[str, int]]:
    """Keepalive settings that accept the agents' pings (see agent/shipper.py) without GOAWAY."""
    min_ping_ms = int(config.server.keepalive_min_ping_interval_s * 1000)
    return [
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", min_ping_ms),
        ("grpc.http2.min_ping_interval_without_data_ms", min_ping_ms),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # grpcio only times out an unanswered ping after ping_timeout_ms (default 60 s)
        ("grpc.http2.ping_timeout_ms", 10_000),
        # no BDP probing: HTTP/2 windows stay at their default, so calls refused before their body is
        # read (no token, too large) cannot make the collector buffer megabytes per stream (peak RSS in
        # tests/hostile/test_ingest_attacks.py's 60 MB messages: 91-288 MB with probing, 83-85 MB without)
        ("grpc.http2.bdp_probe", 0),
        # calls waiting to be taken up: one bound, without gRPC's random refusals between its default
        # 1,000 and 3,000 (a burst of agents reconnecting after a restart; collector/README.md "Bounds")
        ("grpc.server.max_pending_requests", config.server.max_pending_calls),
        ("grpc.server.max_pending_requests_hard_limit", config.server.max_pending_calls),
        ("grpc.max_receive_message_length", config.server.max_message_bytes),
        ("grpc.max_send_message_length", config.server.max_message_bytes),
    ]


@dataclass
class RunningCollector:
    grpc_server: grpc.aio.Server
    http_runner: web.AppRunner | None
    store: InfluxStore
    ingestor: Ingestor
    topology: Topology
    monitor: AlertMonitor | None
    grpc_port: int
    http_port: int | None
    metrics: CollectorMetrics
    health: HealthServicer
    revisor: EstimateRevisor | None = None
    metrics_runner: web.AppRunner | None = None
    metrics_port: int | None = None
    index_warm_up: asyncio.Task[None] | None = None
    http_servers: list[asyncio.Server] = field(default_factory=list)

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        if self.index_warm_up is not None:
            self.index_warm_up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.index_warm_up
        await self.grpc_server.stop(grace_s)
        if self.revisor is not None:
            await self.revisor.stop()
        if self.monitor is not None:
            await self.monitor.stop()
        for http_server in self.http_servers:
            http_server.close()
        if self.http_runner is not None:
            await self.http_runner.cleanup()
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
        await self.ingestor.rollup.close()
        await self.store.close()
        await self.topology.close()


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


#: Services whose status the gRPC health service reports ("" is the whole server).
HEALTH_SERVICES = ("", "gridwatt.v1.Ingest")


async def _health_service(store: InfluxStore, ingestor: Ingestor, server: grpc.aio.Server) -> HealthServicer:
    """grpc.health.v1: SERVING while InfluxDB accepts writes and the collector is not overloaded,
    NOT_SERVING otherwise, so that agents and load balancers back off."""
    servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    tasks: set[asyncio.Task[None]] = set()

    async def update(*_: object) -> None:
        response = health_pb2.HealthCheckResponse
        serving = store.serving and not ingestor.overloaded
        status = response.SERVING if serving else response.NOT_SERVING
        for name in HEALTH_SERVICES:
            await servicer.set(name, status)

    def on_overload(_: bool) -> None:
        task = asyncio.create_task(update())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    await update()
    store.add_health_listener(update)
    ingestor.overload_listeners.append(on_overload)
    return servicer


async def _warm_index(index: JobIndex) -> None:
    """Fill the job index at start, so the first listing does not wait for it (errors: at first use)."""
    try:
        await index.fresh()
    except Exception as exc:  # InfluxDB not up yet: the first listing loads it
        log.info("job index not filled at start (%s); the first listing will", exc)


def _http_tls(config: CollectorConfig) -> ssl.SSLContext | None:
    """TLS for the HTTP API from ``[reads] tls_cert_file``/``tls_key_file``; None for plain HTTP."""
    reads = config.reads
    if reads.tls_cert_file is None or reads.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(reads.tls_cert_file, reads.tls_key_file)
    return context


async def _serve_http(app: web.Application, listen: str, tls: ssl.SSLContext | None,
                      opened: list[Callable[[], Awaitable[object]]], sc: ServerConfig,
                      servers: list[asyncio.Server]) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``listen`` (host:port; port 0 picks one); returns the runner and the port.
    Its cleanup goes into ``opened`` (closed if the start fails later). Connections, request heads
    and bodies are bounded by ``sc`` (collector/http_guard.py); the server goes into ``servers``."""
    guard = HttpGuard(sc.http_max_connections, sc.http_header_timeout_s)
    app.middlewares.insert(0, guard.middleware)
    app._client_max_size = sc.http_max_body_bytes  # body limit (aiohttp answers 413 beyond it)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=sc.http_header_timeout_s)
    await runner.setup()
    opened.append(runner.cleanup)
    host, port = _split_listen(listen)
    assert runner.server is not None
    server = await asyncio.get_running_loop().create_server(
        guard.factory(runner.server), host, port, ssl=tls, backlog=128)
    servers.append(server)

    async def close() -> None:
        server.close()

    opened.append(close)
    if port == 0 and server.sockets:
        port = server.sockets[0].getsockname()[1]
    return runner, port


async def start_collector(config: CollectorConfig) -> RunningCollector:
    """Start serving; returns handles (ports resolved when :0 was asked).

    A failure after the store started (a port in use, a bad TLS file) closes what was opened, so
    the caller sees one error and no unclosed-session noise.
    """
    metrics = CollectorMetrics()
    store = InfluxStore(config.influxdb, metrics)
    # loads every data file before anything starts; feed-derived PUEs read measured IT energy from store
    topology = build_topology(config, store)
    auth = NodeAuth.from_config(config.auth)
    if not auth.enabled:
        log.warning("agent authentication is off: any client can write for any node; "
                    "configure [auth] tokens_file in production")
    opened: list[Callable[[], Awaitable[object]]] = [topology.close, store.close]
    try:
        await store.start()
        return await _start_serving(config, topology, auth, metrics, store, opened)
    except BaseException:
        for close in reversed(opened):
            with contextlib.suppress(Exception):
                await close()
        raise


async def _start_serving(
    config: CollectorConfig, topology: Topology, auth: NodeAuth, metrics: CollectorMetrics,
    store: InfluxStore, opened: list[Callable[[], Awaitable[object]]],
) -> RunningCollector:
    rollup = RackRollup(store, config.accounting.rack_resolution_s,
                        settle_s=config.accounting.replica_settle_s,
                        rack_delay_s=config.accounting.rack_delay_s)
    opened.append(rollup.close)
    rollup.racks.configure(topology.rack_members())
    limits = Limits(
        max_future_ns=int(config.server.max_future_s * 1e9),
        max_power_w=config.server.max_power_w,
        max_interval_ns=int(config.server.max_interval_s * 1e9),
        min_time_ns=parse_time_ns(config.server.min_time),
        max_job_shares=config.server.max_job_shares_per_sample,
        max_batch_samples=config.server.max_samples_per_batch,
    )
    monitor = None
    if config.alerts.rules:
        monitor = AlertMonitor(
            config.alerts, store, config.accounting.rack_resolution_s,
            expected_nodes={node: rack.name for rack in config.racks for node in rack.nodes},
            replica=replica_id(config),
        )
        monitor.start()
        opened.append(monitor.stop)
    revisor = None
    if config.accounting.rack_windows and config.accounting.estimate_revisit_s > 0:
        revisor = EstimateRevisor(store, rollup, topology, interval_s=config.accounting.estimate_revisit_s,
                                  lookback_s=config.accounting.estimate_lookback_s)
    index = JobIndex(store, lookback_s=config.accounting.estimate_lookback_s)

    def stored(node: str, rack: str, first_window_ns: int, max_end_ns: int) -> None:
        index.note(node, rack, first_window_ns, max_end_ns)
        if monitor is not None:
            monitor.note(node, rack, first_window_ns, max_end_ns)

    ingestor = Ingestor(
        topology, store, rollup, limits,
        max_in_flight_batches=config.server.max_in_flight_batches,
        overload_retry_after_s=config.server.overload_retry_after_s,
        rack_windows=config.accounting.rack_windows,
        on_stored=stored,
        on_estimated=revisor.note if revisor else None,
        unknown_node_retry_after_s=config.server.unknown_node_retry_after_s,
        bounds=NodeBounds(
            jobs=JobSeriesBudget(config.server.max_new_jobs_per_node_per_hour),
            in_flight=NodeSlots(config.server.max_in_flight_batches_per_node),
            check_intervals=config.server.check_intervals and config.accounting.rack_windows,
            max_interval_ns=int(config.server.max_interval_s * 1e9),
        ),
    )
    live = LiveAccounts(config.metrics.job_series_ttl_s, config.metrics.max_job_series)
    ingestor.on_accounted = live.observe
    if monitor is not None:
        live.attach_monitor(monitor)
    metrics.live = live
    interceptors = [TokenInterceptor(auth)] if auth.token_count else []
    server = grpc.aio.server(options=server_options(config), interceptors=interceptors)
    opened.append(lambda: server.stop(0))
    ingest_service = IngestService(ingestor, auth, max_streams_per_node=config.server.max_streams_per_node)
    metrics.bind_ledger(lambda: ingestor.stats, lambda: ingest_service.connected_streams)
    metrics.bind_rollup(ingestor.rollup.counters, ingestor.rollup.pending_read_backs)
    server.add_generic_rpc_handlers((ingest_service.handler(),))
    health_servicer = await _health_service(store, ingestor, server)
    read_auth = ReadAuth.from_config(config.reads)
    if not read_auth.enabled:
        log.warning("read authentication is off: anyone who reaches the HTTP or gRPC port reads every "
                    "job; configure [reads] principals_file or trusted_proxies in production")
    pb_grpc.add_QueryServicer_to_server(QueryService(store, read_auth), server)
    sc = config.server
    if sc.tls_cert_file and sc.tls_key_file:
        creds = grpc.ssl_server_credentials(
            [(sc.tls_key_file.read_bytes(), sc.tls_cert_file.read_bytes())],
            root_certificates=sc.tls_client_ca_file.read_bytes() if sc.tls_client_ca_file else None,
            require_client_auth=sc.tls_client_ca_file is not None,
        )
    try:
        if sc.tls_cert_file and sc.tls_key_file:
            grpc_port = server.add_secure_port(sc.grpc_listen, creds)
        else:
            grpc_port = server.add_insecure_port(sc.grpc_listen)
    except RuntimeError:  # grpcio raises it for an address it cannot bind
        grpc_port = 0
    if grpc_port == 0:
        raise OSError(f"cannot listen for gRPC on {sc.grpc_listen}: address in use or not available "
                      "(server.grpc_listen)")
    await server.start()
    runner = None
    http_port = None
    http_servers: list[asyncio.Server] = []
    if sc.http_listen:
        zone_of_rack = {r.name: r.zone for r in config.racks}
        zone_of_rack.setdefault(config.accounting.default_rack, config.accounting.default_zone or "")
        app = http_app(store, metrics, monitor, overloaded=lambda: ingestor.overloaded, read_auth=read_auth,
                       zone_of_rack=zone_of_rack, config=config, index=index)
        runner, http_port = await _serve_http(app, sc.http_listen, _http_tls(config), opened, sc,
                                             http_servers)
    metrics_runner = metrics_port = None
    if config.reads.metrics_listen:
        local = http_app(store, metrics, None, overloaded=lambda: ingestor.overloaded,
                         local_metrics_only=True)
        metrics_runner, metrics_port = await _serve_http(local, config.reads.metrics_listen, None, opened,
                                                         sc, http_servers)
    log.info("collector serving gRPC on port %d, HTTP on %s; InfluxDB %s (v%d)", grpc_port,
             http_port, config.influxdb.url, config.influxdb.version)
    if revisor is not None:
        revisor.start()
    warm_up = asyncio.create_task(_warm_index(index))
    return RunningCollector(
        server, runner, store, ingestor, topology, monitor, grpc_port, http_port, metrics, health_servicer,
        revisor, metrics_runner, metrics_port, warm_up, http_servers,
    )


def replica_id(config: CollectorConfig) -> str:
    """``[server] replica_id``, else ``<hostname>:<gRPC port>`` (unique per replica on one host)."""
    port = config.server.grpc_listen.rsplit(":", 1)[-1]
    return config.server.replica_id or f"{socket.gethostname()}:{port}"


async def serve(config: CollectorConfig) -> None:
    """Run until SIGINT/SIGTERM."""
    running = await start_collector(config)
    tune_after_start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print(f"gridwatt-collector: gRPC on port {running.grpc_port}, HTTP on port {running.http_port}",
          flush=True)
    await stop.wait()
    log.info("stopping: finishing in-flight batches")
    await running.stop()
