"""The gridwatt.v1.Query gRPC service and the HTTP API (GET /v1/jobs/{job_id}, /healthz, /metrics).

Every read except ``/healthz`` is made by a principal (collector/read_auth.py): a job the caller may
not see answers exactly like an unknown job; racks, alerts and ``/metrics`` are for operators.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import grpc
from aiohttp import web

from gridwatt.collector.alerts.monitor import AlertMonitor
from gridwatt.collector.config import CollectorConfig
from gridwatt.collector.job_index import JobIndex, hour_ceil, hour_floor
from gridwatt.collector.job_owner import job_owner
from gridwatt.collector.jobs import JobNotFound, JobReport, job_report
from gridwatt.collector.listings import (
    SUM_KEYS,
    JobSums,
    ListingError,
    list_page,
    parse_limit,
    scan_jobs,
    usage_groups,
)
from gridwatt.collector.live_metrics import exposition
from gridwatt.collector.metrics import CONTENT_TYPE, CollectorMetrics
from gridwatt.collector.racks import rack_totals
from gridwatt.collector.read_auth import (
    ANONYMOUS_OPERATOR,
    Principal,
    ReadAuth,
    ReadAuthError,
    current_principal,
    peer_ip_of_grpc,
    reset_current_principal,
    set_current_principal,
)
from gridwatt.collector.report import HourRow, build_report, read_hours
from gridwatt.collector.store import InfluxStore, QueryError
from gridwatt.collector.web.pages import Pages
from gridwatt.timeutil import parse_time_ns
from gridwatt.v1 import telemetry_pb2 as pb
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc


async def scoped_job_report(store: InfluxStore, job_id: str, principal: Principal) -> JobReport:
    """The job's report if ``principal`` may see it; else JobNotFound with an unknown job's message."""
    report = await job_report(store, job_id)
    if not principal.operator:
        user, account = await job_owner(store, report.job_id)
        if not principal.may_see_job(user, account):
            raise JobNotFound(f"no samples stored for job {job_id!r}")
    return report


async def _as(principal: Principal, handler: Any, request: web.Request) -> web.StreamResponse:
    """Run ``handler`` with ``principal`` as the current principal."""
    token = set_current_principal(principal)
    try:
        response: web.StreamResponse = await handler(request)
        return response
    finally:
        reset_current_principal(token)


#: Paths only an operator may read (and the web page, /ui and below, which shows every job).
OPERATOR_PATHS = frozenset({"/v1/racks", "/v1/alerts", "/metrics"})


class QueryService(pb_grpc.QueryServicer):
    def __init__(self, store: InfluxStore, read_auth: ReadAuth | None = None) -> None:
        self.store = store
        self.read_auth = read_auth

    async def principal(self, context: grpc.aio.ServicerContext) -> Principal:
        """The caller; aborts the call UNAUTHENTICATED when it has no valid credentials."""
        if self.read_auth is None:
            return ANONYMOUS_OPERATOR
        try:
            peer_ip = peer_ip_of_grpc(context.peer())
            return self.read_auth.identify(context.invocation_metadata() or (), peer_ip)
        except ReadAuthError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise  # abort raises; this keeps type checkers informed

    async def GetJob(
        self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.JobReport:
        principal = await self.principal(context)
        try:
            report = await scoped_job_report(self.store, request.job_id, principal)
        except JobNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except QueryError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return report.to_proto()


def http_app(
    store: InfluxStore,
    metrics: CollectorMetrics | None = None,
    monitor: AlertMonitor | None = None,
    overloaded: Callable[[], bool] | None = None,
    read_auth: ReadAuth | None = None,
    local_metrics_only: bool = False,
    zone_of_rack: Mapping[str, str] | None = None,
    config: CollectorConfig | None = None,
    index: JobIndex | None = None,
) -> web.Application:
    """The collector's HTTP API: /v1/jobs/{job_id}, /v1/racks, /v1/alerts, /healthz, /metrics.

    ``/healthz`` answers 200 while InfluxDB accepts writes and 503 (with the reason) while it
    does not; ``/metrics`` is the Prometheus text exposition of ``metrics``. Paths other than
    ``/healthz`` need a principal (``read_auth``); racks, alerts and metrics need an operator.
    ``local_metrics_only``: just ``/healthz`` and ``/metrics``, unauthenticated (a loopback listener).
    """
    open_paths = frozenset({"/healthz", "/metrics"} if local_metrics_only else {"/healthz"})

    @web.middleware
    async def authenticate(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in open_paths or read_auth is None:
            return await _as(ANONYMOUS_OPERATOR, handler, request)
        try:
            principal = read_auth.identify(request.headers, request.remote or "")
        except ReadAuthError as exc:
            return web.json_response({"error": str(exc)}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="gridwatt"'})
        if (request.path in OPERATOR_PATHS or request.path == "/ui" or request.path.startswith("/ui/")) \
                and not principal.operator:
            return web.json_response({"error": f"{request.path} is for operators"}, status=403)
        return await _as(principal, handler, request)

    async def get_alerts(request: web.Request) -> web.Response:
        alerts = monitor.recent() if monitor is not None else []
        return web.json_response({"alerts": alerts, "rules": len(monitor.config.rules) if monitor else 0})

    async def get_job(request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        try:
            report = await scoped_job_report(store, job_id, current_principal())
        except JobNotFound as exc:
            return web.json_response({"error": str(exc)}, status=404)
        except QueryError as exc:
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response(report.to_json())

    async def healthz(request: web.Request) -> web.Response:
        if store.serving and overloaded is not None and overloaded():
            return web.json_response(
                {"status": "unavailable", "reason": "collector overloaded (max_in_flight_batches)"},
                status=503,
            )
        if store.serving:
            return web.json_response({"status": "ok"})
        return web.json_response(
            {"status": "unavailable", "reason": f"InfluxDB: {store.health_reason}",
             "retry_after_s": round(store.retry_after_s(), 3)},
            status=503,
        )

    async def metrics_text(request: web.Request) -> web.Response:
        if metrics is None:
            return web.Response(body=b"", headers={"Content-Type": CONTENT_TYPE})
        body, content_type = exposition(metrics, request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    def _range(request: web.Request) -> tuple[int | None, int | None]:
        try:
            since = parse_time_ns(request.query["since"]) if "since" in request.query else None
            until = parse_time_ns(request.query["until"]) if "until" in request.query else None
        except ValueError as exc:
            raise ListingError(f"since/until: {exc}") from None
        if since is not None and until is not None and until <= since:
            raise ListingError("until must be after since")
        return since, until

    async def jobs_in(since: int | None, until: int | None, per_rack: bool = False) -> dict[str, JobSums]:
        """Per-job sums over [since, until) taken to whole hours: from the index where it holds them."""
        if index is not None and index.covers(since):
            await index.fresh()
            return index.jobs(since, until, per_rack)
        return await scan_jobs(store, hour_floor(since) if since is not None else None,
                               hour_ceil(until) if until is not None else None)

    async def hours_in(since: int, until: int) -> tuple[list[HourRow], dict[str, dict[str, str]]]:
        if index is not None and index.covers(since):
            await index.fresh()
            rows = [HourRow(h, job, rack, dict(zip(SUM_KEYS, s.sums, strict=True)))
                    for h, job, rack, s in index.hour_rows(since, until)]
            return rows, {row.job_id: index.who(row.job_id) for row in rows}
        return await read_hours(store, hour_floor(since), hour_ceil(until))

    async def list_jobs(request: web.Request) -> web.Response:
        q = request.query
        try:
            since, until = _range(request)
            limit = parse_limit(q.get("limit"))
            jobs = await jobs_in(since, until)
            page = list_page(jobs, current_principal(), q.get("user"), q.get("account"), limit,
                             q.get("cursor"))
        except ListingError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except QueryError as exc:
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response(page)

    async def get_usage(request: web.Request) -> web.Response:
        try:
            since, until = _range(request)
            group_by = request.query.get("group_by", "account")
            jobs = await jobs_in(since, until, per_rack=group_by in ("rack", "zone"))
            groups = usage_groups(jobs, current_principal(), group_by, zone_of_rack or {})
        except ListingError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except QueryError as exc:
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response({"group_by": group_by, "since": request.query.get("since"),
                                  "until": request.query.get("until"), "groups": groups})

    async def get_report(request: web.Request) -> web.Response:
        try:
            since, until = _range(request)
            if since is None or until is None or config is None:
                raise ListingError("since and until are both needed for a report")
            rows, people = await hours_in(since, until)
            body = build_report(rows, people, current_principal(), request.query.get("by", "account"),
                                config, since, until, request.query.get("tz"))
        except ListingError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except QueryError as exc:
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response(body)

    async def get_racks(request: web.Request) -> web.Response:
        try:
            since = parse_time_ns(request.query["since"]) if "since" in request.query else None
            until = parse_time_ns(request.query["until"]) if "until" in request.query else None
        except ValueError as exc:
            return web.json_response({"error": f"bad since/until: {exc}"}, status=400)
        try:
            racks = await rack_totals(store, since, until)
        except QueryError as exc:
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response({"racks": racks})

    app = web.Application(middlewares=[authenticate])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_text)
    if not local_metrics_only:
        app.router.add_get("/v1/racks", get_racks)
        app.router.add_get("/v1/jobs", list_jobs)
        app.router.add_get("/v1/usage", get_usage)
        app.router.add_get("/v1/report", get_report)
        app.router.add_get("/v1/jobs/{job_id}", get_job)
        app.router.add_get("/v1/alerts", get_alerts)
        Pages(store, monitor).add_routes(app)  # the web page at /ui/ (operators: it is not scoped yet)
    return app
